"""One transaction for all the outputs of a command (layer 2, io).

A command that writes a checkpoint and a report must never leave one without the other, a
half-written file, or a temporary as large as the model. Usage::

    txn = OutputTransaction([Target(out, "file", nbytes=size), Target(report, label="report")],
                            inputs=ckpt.inputs, force=force)  # validates, before any fitting
    ...  # fit (minutes)
    with txn:  # validates again, creates every temporary (and missing parent folders)
        write_safetensors(txn.path(out), entries, metadata)
        txn.path(report).write_text(text)
        txn.commit()  # renames everything into place together

API:
    ``Target(path, kind="file" | "dir", nbytes=None, label="output")``: one output; ``nbytes``
    its planned size (for the free-space check), ``label`` how messages name it.
    ``OutputTransaction(targets, *, inputs, force)``: checks everything that can be checked
    before writing (raises :class:`LcdError`, exit 2):
      - the targets are distinct from each other and from every input, symbolic and hard links
        resolved (same ``st_dev``/``st_ino``), and none lies inside another target or inside an
        input folder, and no target folder holds an input;
      - each target's nearest existing ancestor is a folder (not a file), writable, and not on a
        read-only file system;
      - an existing target is of the same kind (a file is never replaced by a folder or back, even
        with ``force``), is a regular file or a folder (never a FIFO, socket or device), and is
        replaced only with ``force``;
      - each file system has room for the planned bytes of the targets on it, plus a margin.
    ``with txn:`` re-checks (the fit may have taken hours), creates missing parent folders and
    one temporary per target beside it, named ``.NAME.lcd-tmp-<pid>-<random>`` (an empty file,
    or an empty folder for a "dir" target).
    ``txn.path(target) -> Path``: the temporary to write that target to.
    ``txn.commit()``: flushes every temporary to disk (fsync), moves each existing target aside
    (``.NAME.lcd-old-<pid>-<random>``), renames each temporary onto its target, fsyncs the
    folders, then deletes the old copies. If a rename fails midway, the targets already renamed
    are moved back and the old copies restored, so the outputs are all new or all as before.
    Termination signals are held back during the commit (see :mod:`lcd_cli.io.signals`).
    Leaving the block without a commit (an exception, Ctrl-C, SIGTERM with
    :func:`~lcd_cli.io.signals.handle_termination`) removes every temporary and every parent
    folder it created; existing outputs are untouched. An ``OSError`` raised inside the block
    (the disk filled while writing) leaves it as an :class:`LcdError` naming the target and
    what the errno means.

Modes: temporaries are created with ``os.open(..., 0o666)`` / ``os.mkdir(..., 0o777)``, so the
kernel applies the process umask (files 0o644 and folders 0o755 under umask 022), as for any
file a program creates; the umask itself is never read or changed. Files written inside a
temporary folder get the same treatment from ``open()``.

What it cannot do: a SIGKILL or power loss leaves the temporaries (hidden, named as above, safe
to delete) and, in the middle of a commit, possibly an ``.lcd-old-`` copy of a previous output.
Each rename is atomic; a group of renames is not, which is why a failed one is rolled back.

:func:`atomic_output` is the one-target form, kept for callers that write one output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from lcd_cli.errors import LcdError
from lcd_cli.io.oserrors import os_error
from lcd_cli.io.signals import deferred_signals

Kind = Literal["file", "dir"]
# Free space wanted beyond the planned bytes: file-system block rounding and metadata, and
# outputs whose size is not planned (a report is a few kB).
SPACE_MARGIN = 4 << 20
# Bytes of a target's name kept in its temporary's name: NAME_MAX is 255 on common file
# systems, and ".<name>.lcd-tmp-<pid>-<8 hex>" adds at most 32.
_NAME_KEEP = 200
_TMP, _OLD = "lcd-tmp", "lcd-old"


@dataclass(frozen=True)
class Target:
    """One output: a file or a folder, its planned size (bytes, if known) and its name in
    messages ("checkpoint", "report")."""

    path: Path
    kind: Kind = "file"
    nbytes: int | None = None
    label: str = "output"


def _ident(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what ``path`` names (links followed), or None if nothing is there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` (itself excluded) that exists."""
    parent = path.absolute().parent
    while not _lexists(parent) and parent != parent.parent:
        parent = parent.parent
    return parent


@dataclass(frozen=True)
class _Where:
    """Where a path points, to compare paths whatever links or mounts lead there."""

    real: str  # symbolic links resolved
    ident: tuple[int, int] | None  # (st_dev, st_ino) if it exists
    folders: frozenset[tuple[int, int]]  # identities of every existing folder above it

    @staticmethod
    def of(path: Path) -> _Where:
        folders = frozenset(i for p in path.absolute().parents if (i := _ident(p)) is not None)
        return _Where(os.path.realpath(path), _ident(path), folders)

    def same(self, other: _Where) -> bool:
        return self.real == other.real or (self.ident is not None and self.ident == other.ident)

    def inside(self, folder: _Where) -> bool:
        return (folder.ident is not None and folder.ident in self.folders) or \
            self.real.startswith(folder.real.rstrip(os.sep) + os.sep)


def _short(name: str) -> str:
    raw = name.encode()
    return raw[:_NAME_KEEP].decode(errors="ignore") if len(raw) > _NAME_KEEP else name


def _sibling(target: Path, tag: str) -> Path:
    return target.with_name(f".{_short(target.name)}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def _remove(path: Path) -> None:
    """Delete a file, a symbolic link or a folder tree; nothing if it is gone."""
    if not _lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _fsync_path(path: Path, *, directory: bool) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # folders that cannot be fsynced
            raise
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder (deepest first)."""
    if not path.is_dir():
        _fsync_path(path, directory=False)
        return
    for root, _dirs, files in os.walk(path, topdown=False):
        for f in files:
            _fsync_path(Path(root) / f, directory=False)
        _fsync_path(Path(root), directory=True)


class OutputTransaction:
    """All outputs of one command, written to temporaries and committed together (see the
    module docstring)."""

    def __init__(self, targets: Sequence[Target], *, inputs: Sequence[Path] = (),
                 force: bool) -> None:
        self.targets = [Target(Path(t.path), t.kind, t.nbytes, t.label) for t in targets]
        self.inputs = [Path(p) for p in inputs]
        self.force = force
        self._temps: dict[Path, Path] = {}  # target path -> its temporary
        self._made: list[Path] = []  # parent folders this transaction created, top first
        self._current: Target | None = None  # the target last handed out by path()
        self._state = "new"  # new -> open -> committed | closed
        self.validate()

    # ------------------------------------------------------------------ checks

    def validate(self) -> None:
        """Every check that can be made before writing; LcdError on the first problem."""
        self._check_distinct()
        for t in self.targets:
            self._check_target(t)
        self._check_space()

    def _check_distinct(self) -> None:
        where = [_Where.of(t.path) for t in self.targets]
        inputs = [(p, _Where.of(p), p.is_dir()) for p in self.inputs]
        for i, (t, w) in enumerate(zip(self.targets, where, strict=True)):
            for other, ow in zip(self.targets[:i], where[:i], strict=True):
                if w.same(ow):
                    raise LcdError(f"the {t.label} and the {other.label} are the same path",
                                   file=t.path, hint="give them different paths")
            for other, ow in zip(self.targets, where, strict=True):
                if other is not t and other.kind == "dir" and w.inside(ow):
                    raise LcdError(f"the {t.label} would lie inside the {other.label} folder "
                                   f"'{other.path}'", file=t.path, hint="write it elsewhere")
            for p, pw, is_dir in inputs:
                if w.same(pw):
                    raise LcdError(f"the {t.label} would overwrite the input '{p}'", file=t.path,
                                   hint="choose another path for the output")
                if is_dir and w.inside(pw):
                    raise LcdError(f"the {t.label} would be written inside the input folder "
                                   f"'{p}'", file=t.path, hint="write it outside that folder")
                if pw.inside(w):
                    raise LcdError(f"the {t.label} path is a folder holding the input '{p}'; "
                                   "replacing it would delete the input", file=t.path,
                                   hint="choose another path for the output")

    def _check_target(self, t: Target) -> None:
        want = "folder" if t.kind == "dir" else "file"
        if _lexists(t.path):
            try:
                st = t.path.stat()
            except OSError as e:  # e.g. a dangling symbolic link
                if not t.path.is_symlink():
                    raise os_error(e, t.path, f"cannot inspect the {t.label}") from e
                st = None
            if st is not None:
                is_dir, is_reg = stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode)
                if not is_dir and not is_reg:
                    raise LcdError(f"the {t.label} path exists and is not a regular file "
                                   f"({_kind_name(st.st_mode)})", file=t.path,
                                   hint="choose another path for the output")
                if is_dir != (t.kind == "dir"):
                    have = "folder" if is_dir else "file"
                    raise LcdError(f"the {t.label} is to be a {want}, but a {have} is there "
                                   f"(even --force never replaces a {have} by a {want})",
                                   file=t.path, hint="remove it, or choose another path")
            if not self.force:
                raise LcdError(f"the {t.label} already exists", file=t.path,
                               hint="pass --force to overwrite it, or choose another path")
        anc = _existing_ancestor(t.path)
        if not anc.is_dir():
            raise LcdError(f"cannot create the {t.label}: '{anc}' is a file, not a folder",
                           file=t.path, hint="choose an output path inside a folder")
        if _read_only(anc):
            raise LcdError(f"cannot write the {t.label}: the file system holding '{anc}' is "
                           "read-only (EROFS)", file=t.path, hint="write to a writable folder")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise LcdError(f"cannot write the {t.label}: permission denied on the folder "
                           f"'{anc}' (EACCES)", file=t.path,
                           hint="check the folder's permissions, or write elsewhere")

    def _check_space(self) -> None:
        need: dict[int, tuple[Path, int, list[str]]] = {}
        for t in self.targets:
            if t.nbytes is None:
                continue
            anc = _existing_ancestor(t.path)
            dev = anc.stat().st_dev
            where, total, names = need.get(dev, (anc, 0, []))
            need[dev] = (where, total + t.nbytes, [*names, t.label])
        for where, total, names in need.values():
            try:
                free = shutil.disk_usage(where).free
            except OSError:
                continue  # cannot tell; the write will say if it runs out
            if free < total + SPACE_MARGIN:
                raise LcdError(f"not enough free space for the {' and '.join(names)}: "
                               f"{_size(total)} needed (plus a {_size(SPACE_MARGIN)} margin), "
                               f"{_size(free)} free on the file system holding '{where}'",
                               file=where, hint="free some space there, or write elsewhere")

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> OutputTransaction:
        if self._state != "new":
            raise RuntimeError("an OutputTransaction is entered once")
        self._state = "open"
        try:
            self.validate()
            for t in self.targets:
                self._make_parents(t)
                tmp = _sibling(t.path, _TMP)
                try:
                    if t.kind == "dir":
                        os.mkdir(tmp, 0o777)  # the umask applies
                    else:
                        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                except OSError as e:
                    raise os_error(e, t.path, f"cannot create the {t.label}") from e
                self._temps[t.path] = tmp
        except BaseException:
            self._rollback()
            raise
        return self

    def _make_parents(self, t: Target) -> None:
        missing = []
        parent = t.path.absolute().parent
        while not _lexists(parent):
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o777)
            except OSError as e:
                raise os_error(e, folder, f"cannot create the folder for the {t.label}") from e
            self._made.append(folder)

    def path(self, target: Path | str) -> Path:
        """The temporary to write ``target`` to (inside ``with``)."""
        if self._state != "open":
            raise RuntimeError("OutputTransaction.path() is used inside `with` before commit()")
        key = Path(target)
        for t in self.targets:
            if t.path == key:
                self._current = t
                return self._temps[t.path]
        raise KeyError(f"{target} is not a target of this transaction")

    def commit(self) -> None:
        """Move every temporary onto its target, all or none (see the module docstring)."""
        if self._state != "open":
            raise RuntimeError("OutputTransaction.commit() is called once, inside `with`")
        with deferred_signals():
            for t in self.targets:
                try:
                    _fsync_tree(self._temps[t.path])
                except OSError as e:
                    raise os_error(e, t.path, f"cannot write the {t.label} to disk") from e
            done: list[tuple[Target, Path | None, bool]] = []  # (target, old copy, renamed in)
            try:
                for t in self.targets:
                    old = _sibling(t.path, _OLD) if _lexists(t.path) else None
                    if old is not None:
                        os.rename(t.path, old)
                    done.append((t, old, False))
                    os.rename(self._temps[t.path], t.path)
                    done[-1] = (t, old, True)
            except OSError as e:
                failed = done[-1][0] if done else self.targets[0]
                stuck = self._undo(done)
                raise os_error(e, failed.path, f"cannot put the {failed.label} in place" + (
                    "" if not stuck else "; could not restore " + "; ".join(stuck)),
                    hint=None if stuck else "nothing was changed; " + _hint_for(e)) from e
            self._state = "committed"
            problems = []
            for folder in {t.path.absolute().parent for t in self.targets}:
                with contextlib.suppress(OSError):
                    _fsync_path(folder, directory=True)
            for _, old, _ in done:
                if old is not None:
                    try:
                        _remove(old)
                    except OSError as e:
                        problems.append(f"'{old}' ({e.strerror})")
        if problems:
            raise LcdError("the new outputs are in place, but the previous copies could not be "
                           "deleted: " + ", ".join(problems), file=self.targets[0].path,
                           hint="delete them by hand")

    def _undo(self, done: list[tuple[Target, Path | None, bool]]) -> list[str]:
        """Reverse a partial commit; the problems met (normally none)."""
        stuck = []
        for t, old, renamed in reversed(done):
            try:
                if renamed:
                    os.rename(t.path, self._temps[t.path])
                if old is not None:
                    os.rename(old, t.path)
            except OSError as e:
                stuck.append(f"'{t.path}' (its previous version is '{old}'; {e.strerror})")
        return stuck

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if self._state == "committed":
            return False
        self._rollback()
        if isinstance(exc, OSError):
            t = self._target_of(exc)
            raise os_error(exc, t.path, f"cannot write the {t.label}",
                           hint=f"nothing was changed; {_hint_for(exc)}") from exc
        return False

    def _rollback(self) -> None:
        """Remove every temporary and the folders made for them; never raises OSError."""
        self._state = "closed"
        with deferred_signals():
            for tmp in self._temps.values():
                with contextlib.suppress(OSError):
                    _remove(tmp)
            self._temps.clear()
            for folder in reversed(self._made):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only if still empty
            self._made.clear()

    def _target_of(self, e: OSError) -> Target:
        """The target an OSError from inside the block concerns: by the path it names, else
        the one whose temporary was handed out last."""
        for name in (e.filename, e.filename2):
            if name is None:
                continue
            p = Path(os.fsdecode(name)).absolute()
            for t in self.targets:
                tmp = self._temps.get(t.path)
                if p == t.path.absolute() or (tmp is not None and (
                        p == tmp.absolute() or tmp.absolute() in p.parents)):
                    return t
        return self._current or self.targets[0]


def _hint_for(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on that file system, or write elsewhere"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "write to a folder you can write to"
    return "check the path and try again"


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    if n < 1 << 20:
        return f"{n} bytes"
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


@contextlib.contextmanager
def atomic_output(target: Path, *, force: bool, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The one-target form of :class:`OutputTransaction`: an existing target needs ``force``; on
    any error the temporary is removed and the old target (if any) is left untouched.
    """
    txn = OutputTransaction([Target(Path(target), "dir" if directory else "file")], force=force)
    with txn:
        yield txn.path(target)
        txn.commit()
