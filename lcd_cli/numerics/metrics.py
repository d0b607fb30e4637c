"""Kernel approximation error of a distilled layer, as written in the report.

Dimensions: C channels, N modes, L kernel length.
  rel_l2[c]  = ||h_c - h_hat_c||_2 / ||h_c||_2           (denominator floored, see below)
  max_abs    = max_{c,t} |h - h_hat|
  hinf_rel   = max_c max_w |H_c(w) - H_hat_c(w)| / max_w |H_c(w)|   (DFT on 2L points)
  rel_l2_channels = rel_l2[c] for every channel, in channel order (the report keeps the worst)
  floor      = median over sampled channels of the Eckart-Young lower bound on rel_l2 at order N
               (the tightest over several Hankel shapes; rigorous when every SVD is dense)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lcd_cli.numerics.hankel import hankel_floor as floors_over_shapes
from lcd_cli.numerics.modal import modal_kernel

FLOOR_CHANNELS = 64  # channels sampled (evenly) for the Hankel floor
DENSE_HANKEL_BUDGET = 1 << 21  # m * n entries up to which a Hankel shape gets a dense SVD


def relative_l2(h: Tensor, h_hat: Tensor) -> Tensor:
    """(C,) relative l2 error per channel; the norm is floored at 1e-12 * the largest norm."""
    norms = torch.linalg.vector_norm(h, dim=-1)  # (C,)
    tiny = 1e-12 * norms.max().clamp_min(1e-300)
    return torch.linalg.vector_norm(h - h_hat, dim=-1) / norms.clamp_min(tiny)  # (C,)


def sample_channels(channels: int, most: int) -> Tensor:
    """Evenly spaced channel indices, at most ``most``."""
    if channels <= most:
        return torch.arange(channels)
    return torch.linspace(0, channels - 1, most).round().long()


def hankel_floor(h: Tensor, order: int) -> tuple[float, bool, int]:
    """Median Eckart-Young floor at ``order`` over sampled channels; (floor, rigorous, channels)."""
    idx = sample_channels(h.shape[0], FLOOR_CHANNELS)
    floor = floors_over_shapes(h[idx], [order], max_dense=DENSE_HANKEL_BUDGET)
    return float(floor.values[:, 0].quantile(0.5)), floor.rigorous, int(idx.numel())


def kernel_errors(h: Tensor, poles: Tensor, residues: Tensor, *, order: int) -> dict[str, Any]:
    """Error statistics of the modal kernel (poles, residues: (C, N) complex) against h (C, L)."""
    length = h.shape[1]
    h_hat = modal_kernel(poles, residues, length)  # (C, L) float64
    rel = relative_l2(h, h_hat)  # (C,)
    H = torch.fft.rfft(h, n=2 * length).abs()  # (C, L+1)
    E = torch.fft.rfft(h - h_hat, n=2 * length).abs()  # (C, L+1)
    hinf = E.amax(-1) / H.amax(-1).clamp_min(1e-300)  # (C,)
    floor, exact, sampled = hankel_floor(h, order)
    return {
        "rel_l2": {"median": float(rel.quantile(0.5)), "mean": float(rel.mean()),
                   "max": float(rel.max())},
        "max_abs": float((h - h_hat).abs().max()),
        "hinf_rel": float(hinf.max()),
        "floor": floor,
        "floor_exact": exact,
        "floor_channels": sampled,
        "max_pole_abs": float(poles.abs().max()),
        "rel_l2_channels": rel.tolist(),  # (C,) per channel, appended last
    }
