"""Finiteness of large tensors in bounded memory.

``torch.isfinite(x).all()`` builds |x| and two boolean masks the size of x: on a 1M-long layer
of 256 channels (2 GB of float64) that was 9.2 s, 8.4 s of it the kernel zeroing fresh pages.
Blocks of _BLOCK elements reuse one small buffer instead."""

from __future__ import annotations

import torch
from torch import Tensor

_BLOCK = 1 << 21  # elements per block (16 MiB of float64: under glibc's largest mmap threshold, 32 MiB,
# so the buffers are reused, not mapped and zeroed again)


def all_finite(x: Tensor) -> bool:
    """True when no element of x is NaN or +-Inf (integer and bool tensors always are)."""
    if not (x.is_floating_point() or x.is_complex()):
        return True
    flat = x.reshape(-1)  # a view for contiguous x
    return all(bool(torch.isfinite(flat[i : i + _BLOCK]).all())
               for i in range(0, flat.numel(), _BLOCK))


def count_nonfinite(x: Tensor) -> int:
    """How many elements of x are NaN or +-Inf."""
    if not (x.is_floating_point() or x.is_complex()):
        return 0
    flat = x.reshape(-1)
    return sum(int((~torch.isfinite(flat[i : i + _BLOCK])).sum())
               for i in range(0, flat.numel(), _BLOCK))
