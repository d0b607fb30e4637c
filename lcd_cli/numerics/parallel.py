"""Worker processes for fitting independent chunks of channels on the CPU.

Dimensions: none (jobs are opaque tuples; the fitter defines them).

A job is one chunk of channels of one layer. The chunks are cut by the caller from the layer's
channel count alone, never from the worker count, so the same chunks are computed whatever the
number of workers, and each worker runs with one torch thread: a job's result depends on its
inputs only, not on which process ran it or what ran beside it.

Processes are started with the 'spawn' context (a fork after torch's thread pools have started
can deadlock) and kept for reuse by later calls with the same worker count (starting one costs
an interpreter and a torch import); they are shut down at exit. Inputs and outputs travel
pickled (numpy arrays by value), so a worker holds one chunk at a time and peak memory grows
with the worker count by one chunk's working set each (see docs/math.md, "Parallel fitting").
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

import torch

from lcd_cli.errors import LcdError
from lcd_cli.numerics.allocator import keep_freed_memory

_POOLS: dict[int, ProcessPoolExecutor] = {}


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None) -> int:
    """Worker processes for `workers`: None or 1 = in-process (1), 0 = one per core, n >= 2 = n.

    Raises:
        LcdError: not a non-negative integer.
    """
    if workers is None:
        return 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise LcdError(
            f"workers must be a non-negative integer, got {workers!r}",
            key="workers",
            hint="use 1 (in-process), 0 (one worker per core) or a worker count",
        )
    return cpu_count() if workers == 0 else workers


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch (intra-op) thread, then restore the caller's count.

    The fitter's work is many small batched LAPACK calls and (C, 4N, 4N) products; on the CPU
    MKL's thread pool costs more there than it gains (2 threads: 2-10x slower when the other
    core is busy, and measured 4x slower on an idle 2-core VM for a real-pole --tol fit), and
    one thread makes an in-process fit bit for bit a worker's. Worker processes are the
    parallelism."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_worker() -> None:
    """One torch thread per worker (the workers are the parallelism); freed memory kept for
    reuse (`allocator.keep_freed_memory`)."""
    torch.set_num_threads(1)
    keep_freed_memory()


def _shutdown() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


atexit.register(_shutdown)


def _pool(workers: int) -> ProcessPoolExecutor:
    """The kept pool of `workers` spawned processes (started on first use)."""
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        )
    return _POOLS[workers]


def run_jobs(
    fn: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    workers: int,
    done: Callable[[int], None] | None = None,
) -> list[Any]:
    """[fn(*job) for job in jobs], in job order.

    With workers <= 1 (or a single job) the jobs run here, one after the other, with one torch
    thread (:func:`one_thread`); else in min(workers, len(jobs)) spawned processes with one torch
    thread each. `fn` must be a module-level function (it is pickled by name).

    Args:
        done: called with the job's index as each job finishes (in completion order).
    Returns:
        the results, in the order of `jobs`.
    """
    if workers <= 1 or len(jobs) <= 1:
        out = []
        with one_thread():
            for i, job in enumerate(jobs):
                out.append(fn(*job))
                if done is not None:
                    done(i)
        return out
    count = min(workers, len(jobs))
    pool = _pool(count)
    try:
        futures: dict[Future[Any], int] = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
    except BrokenProcessPool:  # a worker died in an earlier call: start afresh
        _POOLS.pop(count, None)
        pool = _pool(count)
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
    results: list[Any] = [None] * len(jobs)
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(finished, key=futures.__getitem__):
                results[futures[fut]] = fut.result()
                if done is not None:
                    done(futures[fut])
    except BaseException:
        for fut in pending:
            fut.cancel()
        if any(isinstance(f.exception(), BrokenProcessPool) for f in futures if f.done()
               and not f.cancelled()):
            _POOLS.pop(count, None)
        raise
    return results


__all__ = ["cpu_count", "one_thread", "resolve_workers", "run_jobs"]
