"""Keep freed memory for reuse: glibc malloc settings for the fitter's large temporaries.

glibc serves an allocation above its mmap threshold (dynamic, 32 MiB at most by default) with
a fresh mapping and unmaps it at free, so every such temporary of a loop (a channel block of a
1M-long pass, a scoring block) is a new mapping whose pages the kernel zeroes on first touch.
On a 1M-long HyenaDNA layer (256 channels, `lcd distill --order 16`, 2 workers) that was 113 s
of system time in a 2 min 31 s run; the settings below alone made it 56 s in 2 min 08 s (the
same bytes written), and with the blocked passes of the same change 33 s in 1 min 39 s at a
peak RSS of 4.65 GB instead of 6.9 GB (docs/benchmarks.md, 6b).

Settings: allocations below _MMAP_THRESHOLD come from the heap, and the heap's free top is
returned to the system only above _TRIM_THRESHOLD. A process-wide choice, made once by the CLI
(for its own process) and by every worker process at start; `LCD_MALLOC=system` keeps glibc's
defaults. Elsewhere than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # 1 GiB: every block of the fitter and the scoring is below it
_TRIM_THRESHOLD = 1 << 30
_ENV = "LCD_MALLOC"


def _glibc() -> bool:
    """Whether this process runs on glibc (whose malloc the settings are for)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # no such name: not glibc
        return False


def keep_freed_memory() -> bool:
    """Apply the settings above to this process; True when they were applied."""
    if os.environ.get(_ENV, "").strip().lower() == "system" or not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
