"""Modal (diagonal SSM) kernels: the representation lcd distils into.

Dimensions:
    C  channels (independent kernels)
    N  modes per channel (complex poles; N modes = 2N real state numbers)
    L  kernel length, t = 0 .. L-1

A modal kernel is h[c, t] = Re sum_n R[c, n] * p[c, n]^t  (StripedHyena / Evo-1 form).
It is the impulse response of the diagonal recurrence
    x_t = p * x_{t-1} + u_t,   y_t = Re(sum_n R_n x_t[n]) + D u_t.
Complex parameters are stored in checkpoints as float32 [real, imag] pairs, shape (C, N, 2).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Time steps evaluated per chunk (bounds memory at C * CHUNK complex numbers), and the length
# of the inner power table (the time axis is split as t = t0 + INNER * m + k).
_CHUNK = 8192
_INNER = 128


def pole_powers(poles: Tensor, exponents: Tensor) -> Tensor:
    """p^e = exp(e log p) for every pole and exponent, in the poles' precision.

    Args:
        poles: (C, N) complex.
        exponents: (E,) non-negative integers (any real dtype).
    Returns:
        (C, N, E) complex, 0^0 = 1 and 0^e = 0 (exp(0 * log 0) would be NaN).
    """
    real_dtype = torch.float64 if poles.dtype == torch.complex128 else torch.float32
    e = exponents.to(device=poles.device, dtype=real_dtype)  # (E,)
    out = torch.exp(torch.log(poles)[..., None] * e)  # (C, N, E); NaN where p = 0, fixed below
    return torch.where((poles == 0)[..., None], (e == 0).to(out.dtype), out)  # (C, N, E)


def modal_kernel(poles: Tensor, residues: Tensor, length: int) -> Tensor:
    """h[c, t] = Re sum_n R[c, n] p[c, n]^t for t < length, in the poles' real precision.

    Args:
        poles: (C, N) complex.
        residues: (C, N) complex.
        length: L.
    Returns:
        (C, L) real tensor (float64 for complex128 input, float32 for complex64).
    """
    if poles.shape != residues.shape:
        raise ValueError(f"poles {tuple(poles.shape)} and residues {tuple(residues.shape)} differ")
    real_dtype = torch.float64 if poles.dtype == torch.complex128 else torch.float32
    c = poles.shape[0]
    # p^(t0 + K m + k) = p^(t0 + K m) p^k: two small power tables and one batched matmul per
    # chunk, instead of one exp per (c, n, t).
    k = min(_INNER, max(1, length))
    inner = pole_powers(poles, torch.arange(k, device=poles.device))  # (C, N, K)
    out = torch.empty(c, length, dtype=real_dtype, device=poles.device)  # (C, L)
    for start in range(0, length, _CHUNK):
        width = min(_CHUNK, length - start)
        m = -(-width // k)
        outer = pole_powers(poles, start + k * torch.arange(m, device=poles.device))  # (C, N, M)
        coef = (residues[..., None] * outer).transpose(1, 2)  # (C, M, N)
        block = (coef @ inner).reshape(c, m * k)  # (C, M K)
        out[:, start : start + width] = block[:, :width].real
    return out


def to_pairs(z: Tensor) -> Tensor:
    """Complex (...,) -> float32 (..., 2) holding [real, imag]."""
    return torch.view_as_real(z.to(torch.complex64)).contiguous()


def from_pairs(pairs: Tensor) -> Tensor:
    """Float (..., 2) [real, imag] -> complex128 (...,)."""
    if pairs.shape[-1] != 2:
        raise ValueError(f"expected a trailing [real, imag] axis of size 2, got {tuple(pairs.shape)}")
    return torch.view_as_complex(pairs.to(torch.float64).contiguous())
