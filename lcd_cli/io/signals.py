"""Termination signals as exceptions, so that every cleanup runs (layer 2, io).

Python turns SIGINT into ``KeyboardInterrupt``, so ``finally`` blocks and ``__exit__`` methods
remove temporary files on Ctrl-C; SIGTERM (``kill``, a batch scheduler's time limit) and SIGHUP
(the terminal closed) kill the process outright by default, leaving temporaries as large as the
model. Here all three are handled alike:

* :func:`handle_termination` (a context manager, main thread only) makes SIGINT, SIGTERM and SIGHUP
  raise :class:`Terminated` (a ``BaseException``, like ``KeyboardInterrupt``, so ``except
  Exception`` does not swallow it). A signal whose disposition is "ignore" when the block starts
  (``nohup`` ignores SIGHUP; a shell's background job ignores SIGINT) stays ignored.
* :func:`deferred_signals` holds those signals back for a short critical section (a commit's
  renames, a cleanup) and delivers the first one when the section ends, through whatever
  handler was in place. It does not mask signals (a mask is per thread, and torch's worker
  threads would still receive them): it installs a handler that only records the signal.
* :func:`run_terminable` runs a CLI's main function under :func:`handle_termination` and turns
  :class:`Terminated` into a one-line message on stderr and the shell's convention for a death
  by signal: exit ``128 + signum`` (SIGINT 130, SIGTERM 143, SIGHUP 129).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

TERMINATING: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_EXIT_BY_SIGNAL = 128  # shells report a death by signal s as exit status 128 + s


class Terminated(BaseException):
    """The process was asked to stop by a signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {self.name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return _EXIT_BY_SIGNAL + self.signum


_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None
_pending: list[int] = []  # signals recorded during a deferred section, first one delivered
_depth = 0  # nesting of deferred_signals()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    if _depth:
        _pending.append(signum)
        return
    raise Terminated(signum)


def _record(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """Within the block, SIGINT / SIGTERM / SIGHUP raise :class:`Terminated` (main thread only;
    elsewhere the block runs unchanged). The previous handlers come back at the end."""
    if not _in_main_thread():
        yield
        return
    # Ignored signals stay ignored; None (a handler installed outside Python) is left alone.
    old = {s: h for s in TERMINATING if (h := signal.getsignal(s)) not in (signal.SIG_IGN, None)}
    try:
        for s in old:
            signal.signal(s, _raise_terminated)
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)  # type: ignore[arg-type]


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT / SIGTERM / SIGHUP until the block ends, then deliver the first one received
    through the handler that was in place (so a rename sequence or a cleanup is never cut
    short). Nested blocks deliver at the outermost end. Outside the main thread: no effect."""
    global _depth
    if not _in_main_thread():
        yield
        return
    saved: dict[signal.Signals, _Handler] = {}
    if _depth == 0:
        saved = {s: h for s in TERMINATING
                 if (h := signal.getsignal(s)) not in (signal.SIG_IGN, None, _raise_terminated)}
        for s in saved:
            signal.signal(s, _record)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for s, handler in saved.items():
                signal.signal(s, handler)  # type: ignore[arg-type]
            if _pending:
                signum = _pending[0]
                _pending.clear()
                _deliver(signum, saved.get(signal.Signals(signum), _raise_terminated))


def _deliver(signum: int, handler: _Handler) -> None:
    """Act on a held signal as its handler would have when it arrived."""
    if handler is signal.SIG_IGN:
        return
    if callable(handler):
        handler(signum, None)  # _raise_terminated raises Terminated; Python's default SIGINT
        return  # handler raises KeyboardInterrupt
    os.kill(os.getpid(), signum)  # SIG_DFL: the default action (the process ends by the signal)


def run_terminable(main: Callable[[], object], *, prog: str) -> None:
    """Run ``main()`` with termination signals raising :class:`Terminated`; on one, print
    ``"<prog>: stopped by SIGTERM; unfinished outputs were removed"`` on stderr and exit
    128 + signum. ``SystemExit`` from ``main`` passes through unchanged."""
    try:
        with handle_termination():
            main()
    except Terminated as stop:
        sys.stderr.write(f"{prog}: stopped by {stop.name}; unfinished outputs were removed\n")
        sys.stderr.flush()
        raise SystemExit(stop.exit_code) from None
