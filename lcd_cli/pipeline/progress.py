"""Progress of a long run: events from the pipeline, lines for people and logs, a heartbeat.

Layer 5 (pipeline). The pipeline calls :meth:`Progress.event` (``kind`` plus fields) at each
step it knows of: a run starts, a kind group starts, a layer is done, the output is written.
:class:`Progress` keeps track of what is running now and turns events into one-line messages
for its sinks (callables ``(level, message)``): plain timestamped lines for logs, CI, nohup
and SLURM; a rich bar on a terminal (lcd_cli.cli); the run's log file.

Outside a terminal nothing moves between events, so a heartbeat thread repeats what is
running (``still fitting layer 2/4 'x' (C=64, L=8192): 34 s``) whenever no line was written
for ``heartbeat_s`` seconds: a stalled run and a slow one look different in a log.

Events (fields) the pipeline sends:
    start     layers, source, device, order | tol + max_order   (a --tol run says it bisects)
    group     kind, layers (names, in fit order)                 (what is fitted next)
    layer     stats (a layer's report row)                       (done; the next one starts)
    phase     name (e.g. "writing", "report"), path              (a step after the fits)
    step      message                                            (anything else, e.g. bench)
    fit_step  message                                            (a fitter hook, see below)
    warning   message
    done      output, report, seconds

Inside a layer the kinds call :meth:`Progress.fit_step` (their ``on_step``) with a short
message: chunks of channels fitted, each bisection step of --tol. It becomes the *detail* of
what runs now: on the rich bar, in the heartbeat line (``still fitting layer 2/4 'x' (C=64,
L=8192): N=16: 128/256 channels fitted: 34 s ...``) and, verbose, in the log file.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2  # -q, default, -v
HEARTBEAT_S = 10.0  # longest silence outside a terminal during a long step
Sink = Callable[[int, str], None]  # (level, message): a sink shows messages up to its level


def tol_fits(max_order: int) -> int:
    """Fits per layer of `--tol` at most: one at --max-order, then bisection on [1, max]."""
    return 1 + math.ceil(math.log2(max_order)) if max_order > 1 else 1


def _fmt_s(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def timestamp(clock: Callable[[], float] = time.time) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(clock()))


def line_sink(stream: TextIO, level: int = NORMAL) -> Sink:
    """Plain timestamped lines ``2025-01-31T12:00:00 lcd: message`` up to ``level``."""
    lock = threading.Lock()

    def sink(msg_level: int, message: str) -> None:
        if msg_level <= level:
            with lock:
                stream.write(f"{timestamp()} lcd: {message}\n")
                stream.flush()

    return sink


def open_log(path: Path) -> TextIO:
    """The run's log file (every message, verbose included), truncated; line-buffered so a
    crashed or killed run leaves what it did. The output transaction may adopt this."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", buffering=1, encoding="utf-8")


class Progress:
    """Thread-safe event tracker: what runs now, messages to the sinks, a heartbeat.

    Use as a context manager to run the heartbeat thread (``heartbeat_s`` None: no thread).
    """

    def __init__(self, sinks: list[Sink] | None = None, *, heartbeat_s: float | None = HEARTBEAT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sinks = list(sinks or [])
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.total = 0  # layers in the run
        self.done = 0  # layers finished
        self.pending: list[str] = []  # layers of the current group not finished yet
        self.shapes: dict[str, str] = {}  # layer name -> "C=.., L=.."
        self.activity = "starting"
        self.detail = ""  # the fitter's latest message inside the current step
        self.started = clock()
        self.step_started = self.started
        self.last_line = self.started
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []  # e.g. a rich bar

    # ---- sinks
    def say(self, message: str, level: int = NORMAL) -> None:
        with self._lock:
            self.last_line = self.clock()
            for sink in self.sinks:
                sink(level, message)

    def warn(self, message: str) -> None:
        self.say(f"warning: {message}", QUIET)

    # ---- events
    def event(self, name: str, /, **fields: Any) -> None:
        """Record one pipeline event and say what it means (see the module docstring)."""
        with self._lock:
            handler = getattr(self, f"_on_{name}", None)
            if handler is None:
                self.say(f"{name}: " + ", ".join(f"{k}={v}" for k, v in fields.items()), VERBOSE)
            else:
                handler(**fields)
            for listener in self.listeners:
                listener(name, fields)

    def fit_step(self, message: str) -> None:
        """Hook for a fitter: what it does now inside the current layer (see the module doc)."""
        with self._lock:
            self.detail = message
            self.say(f"  {self.activity}: {message}", VERBOSE)
            for listener in self.listeners:
                listener("fit_step", {"message": message})

    @property
    def now(self) -> str:
        """What runs now, with the fitter's latest detail."""
        return f"{self.activity}: {self.detail}" if self.detail else self.activity

    def _on_start(self, layers: int, source: str = "", device: str | None = None,
                  order: int | None = None, tol: float | None = None, max_order: int = 64,
                  shapes: dict[str, str] | None = None) -> None:
        self.total = layers
        self.shapes = dict(shapes or {})
        how = f"order N={order}" if order is not None else f"--tol {tol:g}"
        self.say(f"distilling {layers} layer(s) of {source} on {device or 'auto'}, {how}")
        if tol is not None:
            self.say(f"--tol {tol:g}: each layer's order is found by bisection on 1..{max_order}: "
                     f"up to {tol_fits(max_order)} fits per layer (one at --max-order, then "
                     "halving), each as long as a fixed-order fit")

    def _on_group(self, kind: str, layers: list[str]) -> None:
        self.pending = list(layers)
        self.say(f"{kind}: {len(layers)} layer(s)", VERBOSE)
        self._next_activity()

    def _on_layer(self, stats: dict[str, Any]) -> None:
        name = stats["name"]
        if name in self.pending:
            self.pending.remove(name)
        self.done += 1
        rel = stats.get("rel_l2", {})
        took = stats.get("seconds")
        self.say(f"layer {self.done}/{self.total} {name}: N={stats.get('order')} rel_l2 median "
                 f"{rel.get('median', math.nan):.2e} max {rel.get('max', math.nan):.2e} (floor "
                 f"{stats.get('floor', math.nan):.2e})" + (f" {took:.1f}s" if took is not None
                                                          else ""))
        self._next_activity()

    def _on_phase(self, name: str, path: str | None = None) -> None:
        self.activity = f"{name} {path}" if path else name
        self.detail = ""
        self.step_started = self.clock()
        self.say(f"{name}: {path}" if path else name)

    def _on_step(self, message: str) -> None:
        """A free-form step (e.g. of `lcd bench`): what runs now."""
        self.activity = message
        self.detail = ""
        self.step_started = self.clock()
        self.say(message)

    def _on_warning(self, message: str) -> None:
        self.warn(message)

    def _on_done(self, output: str = "", report: str = "", seconds: float | None = None) -> None:
        took = self.clock() - self.started if seconds is None else seconds
        self.activity = "done"
        self.say(f"done in {_fmt_s(took)}: wrote {output} and {report}")

    def _next_activity(self) -> None:
        self.step_started = self.clock()
        self.detail = ""
        if self.pending:
            name = self.pending[0]
            shape = f" ({self.shapes[name]})" if name in self.shapes else ""
            self.activity = f"fitting layer {self.done + 1}/{self.total} {name}{shape}"
            self.say(self.activity, VERBOSE)
        else:
            self.activity = "finishing"

    # ---- heartbeat
    def beat(self) -> bool:
        """Say what is running if nothing was said for ``heartbeat_s``; True when it spoke."""
        with self._lock:
            now = self.clock()
            if self.heartbeat_s is None or now - self.last_line < self.heartbeat_s:
                return False
            self.say(f"still {self.now}: {_fmt_s(now - self.step_started)} in this step, "
                     f"{_fmt_s(now - self.started)} in all")
            return True

    def _run(self) -> None:
        assert self.heartbeat_s is not None
        tick = min(1.0, self.heartbeat_s / 4)
        while not self._stop.wait(tick):
            self.beat()

    def __enter__(self) -> Progress:
        if self.heartbeat_s is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="lcd-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
