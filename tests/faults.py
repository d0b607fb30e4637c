"""Fault injection for I/O tests: make the k-th matching OS call fail with a chosen errno.

The tests run as root, and root writes through ``chmod 000`` folders, so a read-only folder or
a full disk cannot be staged with permissions; instead the calls lcd makes are replaced for the
duration of a ``with`` block::

    with inject("write", errno.ENOSPC, nth=3, times=None):  # the 3rd write and every later one
        ...
    with inject("open", errno.EROFS, match="report"):  # opening a path containing "report"
        ...                                             # for writing

Operations (each counts only calls that match ``match``, a substring of the path):
    open    creating / opening for writing: ``os.open`` with O_WRONLY, O_RDWR or O_CREAT, and
            ``io.open`` / ``open`` / ``Path.open`` / ``Path.write_text`` in a writing mode
    write   ``write()`` on a file opened for writing through ``io.open`` (hence ``Path.open``),
            and ``os.write``
    mkdir   ``os.mkdir`` (hence ``os.makedirs``)
    rename  ``os.rename`` and ``os.replace``; ``match`` is tried on the source and destination
    fsync   ``os.fsync`` (the path is unknown: ``match`` must be None)

``inject(...)`` yields a :class:`Fault` recording how many matching calls were seen and how
many failed; ``on_call`` runs a callback at the nth call instead of failing (e.g. to send a
signal mid-commit). :func:`tree_digest` fingerprints a folder to prove nothing changed.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPS = ("open", "write", "mkdir", "rename", "fsync")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


@dataclass
class Fault:
    op: str
    errno: int
    nth: int = 1
    times: int | None = 1  # consecutive failures from the nth call on; None: every later call
    match: str | None = None
    on_call: Callable[[], None] | None = None  # run at the nth call instead of failing
    calls: int = 0
    fired: int = 0

    def hit(self, *paths: object) -> None:
        """Count a call of ``op`` on ``paths``; raise when it is one of the failing calls."""
        if self.match is not None and not any(self.match in os.fsdecode(p) for p in paths
                                              if isinstance(p, (str, bytes, os.PathLike))):
            return
        self.calls += 1
        if self.calls < self.nth or (self.times is not None and self.calls >= self.nth + self.times):
            return
        self.fired += 1
        if self.on_call is not None:
            self.on_call()
            return
        name = next((os.fsdecode(p) for p in paths if isinstance(p, (str, bytes, os.PathLike))), None)
        raise OSError(self.errno, os.strerror(self.errno), name)


class _FaultyFile:
    """A file object whose writes go through a Fault first."""

    def __init__(self, f: Any, fault: Fault | None) -> None:
        self._f, self._fault = f, fault

    def write(self, data: Any) -> int:
        if self._fault is not None:
            self._fault.hit(getattr(self._f, "name", ""))
        return self._f.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextlib.contextmanager
def inject(op: str, err: int, *, nth: int = 1, times: int | None = 1, match: str | None = None,
           on_call: Callable[[], None] | None = None) -> Iterator[Fault]:
    """Within the block, the nth matching ``op`` call (and ``times - 1`` more) fails with ``err``."""
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; one of {OPS}")
    if op == "fsync" and match is not None:
        raise ValueError("fsync sees a file descriptor, not a path: match must be None")
    fault = Fault(op, err, nth, times, match, on_call)
    real = {"io.open": io.open, "os.open": os.open, "os.write": os.write, "os.mkdir": os.mkdir,
            "os.rename": os.rename, "os.replace": os.replace, "os.fsync": os.fsync}

    def fake_io_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        writing = any(c in mode for c in "wax+")
        if writing and op == "open":
            fault.hit(file)
        f = real["io.open"](file, mode, *args, **kwargs)
        return _FaultyFile(f, fault if op == "write" else None) if writing else f

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if op == "open" and flags & _WRITE_FLAGS:
            fault.hit(path)
        return real["os.open"](path, flags, *args, **kwargs)

    def fake_os_write(fd: int, data: Any) -> int:
        if op == "write":
            fault.hit(f"<fd {fd}>")
        return real["os.write"](fd, data)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if op == "mkdir":
            fault.hit(path)
        real["os.mkdir"](path, *args, **kwargs)

    def fake_rename(kind: str) -> Callable[..., None]:
        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if op == "rename":
                fault.hit(src, dst)
            real[kind](src, dst, *args, **kwargs)
        return rename

    def fake_fsync(fd: Any) -> None:
        if op == "fsync":
            fault.hit("<fsync>")
        real["os.fsync"](fd)

    patches = [(io, "open", fake_io_open), (builtins, "open", fake_io_open),
               (os, "open", fake_os_open), (os, "write", fake_os_write), (os, "mkdir", fake_mkdir),
               (os, "rename", fake_rename("os.rename")), (os, "replace", fake_rename("os.replace")),
               (os, "fsync", fake_fsync)]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, fake in patches:
            setattr(mod, name, fake)
        yield fault
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256 of the file | "dir" | "link -> target" | "fifo" ...} of a tree,
    to compare a folder before and after an operation."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link -> {os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "special"
    return out
