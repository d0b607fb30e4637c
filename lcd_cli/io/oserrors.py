"""Operating-system errors as LcdErrors a user can act on (layer 2, io).

An ``OSError`` says *what* failed in the C library's words ("[Errno 28] No space left on
device"); :func:`os_error` turns it into one paragraph naming the file, what lcd was doing,
what the errno means in plain words and how to get past it.
"""

from __future__ import annotations

import errno
from pathlib import Path

from lcd_cli.errors import LcdError

# errno -> (what it means, how to get past it)
MEANINGS: dict[int, tuple[str, str | None]] = {
    errno.ENOSPC: ("the disk is full", "free some space on that file system, or write elsewhere"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space within your quota, or write elsewhere"),
    errno.EFBIG: ("the file is too large for this file system", "write to another file system"),
    errno.EROFS: ("the file system is read-only", "write to a writable folder"),
    errno.EACCES: ("permission denied", "check the permissions of the file and its folder"),
    errno.EPERM: ("the operation is not permitted", "check the permissions and attributes of the file"),
    errno.EISDIR: ("it is a folder, not a file", "give a file path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check every folder in the path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EEXIST: ("it already exists", None),
    errno.ENOTEMPTY: ("the folder is not empty", None),
    errno.EXDEV: ("it is on another file system (a rename cannot cross file systems)", None),
    errno.ENAMETOOLONG: ("the name is too long for the file system", "choose a shorter name"),
    errno.ELOOP: ("too many levels of symbolic links", "check the symbolic links in the path"),
    errno.EBUSY: ("the file or folder is busy (in use, or a mount point)", None),
    errno.ETXTBSY: ("the file is busy (in use by a running program)", None),
    errno.EMLINK: ("too many links", None),
    errno.EIO: ("an input/output error (a failing disk or network file system)",
                "check the disk and its kernel log (dmesg)"),
    errno.ESTALE: ("a stale network file handle", "remount the network file system"),
}


def meaning(e: OSError) -> str:
    """What an OSError means, in words: "the disk is full (ENOSPC)"."""
    code = e.errno
    name = errno.errorcode.get(code, "") if code is not None else ""
    known = MEANINGS.get(code) if code is not None else None
    text = known[0] if known else (e.strerror or str(e) or type(e).__name__)
    return f"{text} ({name})" if name else text


def os_error(e: OSError, path: str | Path | None, doing: str, hint: str | None = None) -> LcdError:
    """An LcdError (exit 2) for ``e``, raised while ``doing`` (e.g. "cannot write the report")."""
    known = MEANINGS.get(e.errno) if e.errno is not None else None
    advice = hint or (known[1] if known else None)
    return LcdError(f"{doing}: {meaning(e)}", file=path if path is not None else e.filename,
                    hint=advice)
