"""Non-causal (bidirectional, two-sided) long convolutions as a pair of diagonal SSMs.

Dimensions:
    B  batch
    C  channels
    N  modes per channel and per half
    T  input length
    L  kernel length (of each half)
    S  channels sampled for the Hankel floors

A non-causal layer (M2-BERT ``implicit_filter_rev``, safari ``LongConv(bidirectional=True)``,
non-causal TNN) convolves with a kernel over lags -(L-1) .. L-1. It is split into its causal half
k_fwd[tau] = h[tau] (tau = 0 .. L-1) and its anti-causal half k_rev[j] = h[-(j+1)] (j = 0 .. L-1):

    y_t = sum_{s<=t} k_fwd[t-s] u_s + sum_{s>t} k_rev[s-t-1] u_s + D u_t.

Upstream builds the two-sided kernel as ``pad(k_fwd, (0, L)) + pad(k_rev.flip(-1), (L, 0))``
and convolves circularly over 2L points, which is this formula (lag -d sits at index 2L - d,
i.e. at k_rev[d - 1]); :func:`two_sided_conv` is that reference.

Each half is fitted with its own modal kernel (poles p, residues R; order N each), so the
distilled layer holds a forward and a backward recurrence (2N modes per channel in all):

    forward   x_t = p x_{t-1} + u_t,        y^f_t = Re(R . x_t) + D u_t
    backward  x^b_t = p_b x^b_{t+1} + u_{t+1},  x^b_{T-1} = 0,  y^b_t = Re(R_b . x^b_t)
    output    y_t = y^f_t + y^b_t.

The backward state holds strictly-future inputs, x^b_t = sum_{j>=0} p_b^j u_{t+1+j}, so
y^b_t = sum_j k_rev[j] u_{t+1+j} with k_rev[j] = Re sum R_b p_b^j. It is run with the causal
:class:`~lcd_cli.numerics.ssm.DiagonalSSM` on the time-reversed, one-step-shifted input: with
r_t = u_{T-1-t} and w_t = r_{t-1} (w_0 = 0),

    y^b_{T-1-t} = sum_j k_rev[j] w_{t-j}     (the causal convolution of w with k_rev),

since u_{s+1+j} = r_{T-2-s-j} = w_{T-1-s-j}: reverse, shift by one, scan forward, reverse back
(:meth:`BidirectionalSSM.backward`). The backward pass needs the whole sequence, so a
non-causal layer has no token-by-token decoding; prefill and scan are its runtime.

Distilled layout: ``<prefix>.ssm.poles`` / ``.ssm.residues`` (causal half, as for causal
layers) and ``<prefix>.ssm_rev.poles`` / ``.ssm_rev.residues`` (anti-causal half), float32
[real, imag] pairs (C, N, 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.numerics.hankel import fft_size
from lcd_cli.numerics.metrics import (
    FLOOR_CHANNELS,
    f32eval_errors,
    kernel_errors_and_floors,
    relative_l2,
    relative_to_norm,
    sample_channels,
)
from lcd_cli.numerics.modal import modal_kernel
from lcd_cli.numerics.ssm import DiagonalSSM

# ---- reference ----------------------------------------------------------------------------


def two_sided_kernel(k_fwd: Tensor, k_rev: Tensor, n: int) -> Tensor:
    """The circular two-sided kernel of n >= Lf + Lr points: a[tau] = k_fwd[tau] (tau < Lf),
    a[n - d] = k_rev[d - 1] (d = 1 .. Lr). For n = 2L this is upstream's
    ``pad(k_fwd, (0, L)) + pad(k_rev.flip(-1), (L, 0))``.  (C, Lf), (C, Lr) -> (C, n)."""
    c, lf = k_fwd.shape
    lr = k_rev.shape[1]
    a = k_fwd.new_zeros(c, n)  # (C, n)
    a[:, :lf] = k_fwd
    if lr:
        a[:, n - lr :] = k_rev.flip(-1)  # (C, Lr): lags -Lr .. -1
    return a


def two_sided_conv(u: Tensor, k_fwd: Tensor, k_rev: Tensor, D: Tensor | None = None) -> Tensor:
    """Reference two-sided convolution by FFT (the upstream pad / flip construction).

    u (B, C, T), k_fwd / k_rev (C, L), D (C,) -> y (B, C, T), with taps beyond T ignored:
    y_t = sum_{s<=t} k_fwd[t-s] u_s + sum_{s>t} k_rev[s-t-1] u_s + D u_t.
    """
    if u.dim() != 3 or k_fwd.shape != k_rev.shape or k_fwd.shape[0] != u.shape[1]:
        raise ValueError(f"expected u (B, C, T) and two (C, L) halves, got {tuple(u.shape)}, "
                         f"{tuple(k_fwd.shape)}, {tuple(k_rev.shape)}")
    dtype = torch.promote_types(u.dtype, k_fwd.dtype)
    u = u.to(dtype)  # (B, C, T)
    length = u.shape[-1]
    if length == 0:
        return u.clone()
    lf = min(length, k_fwd.shape[-1])  # lags 0 .. lf-1 reachable
    lr = min(length - 1, k_rev.shape[-1])  # lags -lr .. -1 reachable
    # |t - s| <= T - 1: n >= T + max(lr, lf - 1) keeps the two ends apart (no wrap-around).
    n = fft_size(length + max(lr, lf - 1))
    a = two_sided_kernel(k_fwd[:, :lf].to(u.device, dtype), k_rev[:, :lr].to(u.device, dtype), n)
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(a, n=n), n=n)[..., :length]
    if D is not None:
        y = y + D.to(device=u.device, dtype=dtype)[:, None] * u  # (B, C, T)
    return y


# ---- runtime --------------------------------------------------------------------------------


@dataclass(eq=False)
class BidirectionalSSM:
    """A distilled non-causal layer: a forward DiagonalSSM (holding D) and a backward one.

    Args:
        fwd: the causal half, with the layer's skip term D.
        rev: the anti-causal half (its D must be None), run backward in time.
    """

    fwd: DiagonalSSM
    rev: DiagonalSSM

    def __post_init__(self) -> None:
        if self.rev.D is not None:
            raise LcdError("the backward half must not hold D (the skip term is added once)")
        if self.fwd.channels != self.rev.channels:
            raise LcdError(f"the halves have {self.fwd.channels} and {self.rev.channels} channels")

    @classmethod
    def from_pairs(cls, fwd: tuple[Tensor, Tensor], rev: tuple[Tensor, Tensor],
                   D: Tensor | None = None, dtype: torch.dtype = torch.float32
                   ) -> BidirectionalSSM:
        """From [real, imag] pairs (C, N, 2) of each half: fwd = (poles, residues), rev = ..."""
        return cls(DiagonalSSM.from_pairs(*fwd, D, dtype=dtype),
                   DiagonalSSM.from_pairs(*rev, None, dtype=dtype))

    @property
    def channels(self) -> int:
        return self.fwd.channels

    @property
    def max_pole_abs(self) -> float:
        return max((float(s.poles.abs().max()) for s in (self.fwd, self.rev) if s.poles.numel()),
                   default=0.0)

    def kernels(self, length: int) -> tuple[Tensor, Tensor]:
        """(k_fwd, k_rev), each (C, L) in the layer's real dtype."""
        return self.fwd.kernel(length), self.rev.kernel(length)

    def backward(self, u: Tensor, chunk: int = 256) -> Tensor:
        """Anti-causal part y^b (B, C, T): reverse u, shift it one step later, scan, reverse."""
        y, _ = self.rev.scan(_reverse_shift(u), chunk=chunk)  # (B, C, T) in reversed time
        return y.flip(-1)

    def scan(self, u: Tensor, chunk: int = 256) -> Tensor:
        """Whole-sequence output u (B, C, T) -> y (B, C, T): forward scan + backward scan."""
        y, _ = self.fwd.scan(u, chunk=chunk)  # (B, C, T), includes D u
        return y + self.backward(u, chunk=chunk)

    def prefill(self, u: Tensor) -> Tensor:
        """Same output by the closed-form (FFT) path of each half."""
        y, _ = self.fwd.prefill(u)  # (B, C, T)
        y_b, _ = self.rev.prefill(_reverse_shift(u))  # (B, C, T) in reversed time
        return y + y_b.flip(-1)


def _reverse_shift(u: Tensor) -> Tensor:
    """w_t = u_{T-t} for t >= 1, w_0 = 0: time reversal, then one step later.  (B, C, T)."""
    if u.shape[-1] == 0:
        return u.clone()
    return F.pad(u.flip(-1)[..., :-1], (1, 0))  # (B, C, T)


# ---- distillation ---------------------------------------------------------------------------


def two_sided_errors(k_fwd: Tensor, k_rev: Tensor, fwd: tuple[Tensor, Tensor],
                     rev: tuple[Tensor, Tensor], *, order: int,
                     workers: int | None = None) -> dict[str, Any]:
    """Error statistics of both halves and of the full two-sided kernel.

    fwd / rev: (poles, residues) (C, N) complex. Top-level numbers are of the two-sided kernel
    h = [k_fwd; k_rev] (relative l2 per channel over all 2L lags); ``floor`` is a lower bound
    on it: per sampled channel sqrt(f_f^2 ||k_fwd||^2 + f_r^2 ||k_rev||^2) / ||h|| from the
    halves' Eckart-Young floors (the halves are fitted with independent modes), median. Each
    half is scored once (`kernel_errors_and_floors`, by ``workers`` processes where heavy).
    """
    length = k_fwd.shape[1]
    scored = {"fwd": kernel_errors_and_floors(k_fwd, *fwd, order=order, workers=workers),
              "rev": kernel_errors_and_floors(k_rev, *rev, order=order, workers=workers)}
    halves = {name: stats for name, (stats, _) in scored.items()}
    h = torch.cat([k_fwd, k_rev], dim=1)  # (C, 2L)
    h_hat = torch.cat([modal_kernel(*fwd, length), modal_kernel(*rev, length)], dim=1)  # (C, 2L)
    rel = relative_l2(h, h_hat)  # (C,)
    n = 2 * length
    spec = torch.fft.rfft(two_sided_kernel(k_fwd, k_rev, n), n=n).abs()  # (C, L + 1)
    e = h - h_hat  # (C, 2L)
    err = torch.fft.rfft(two_sided_kernel(e[:, :length], e[:, length:], n), n=n).abs()  # (C,L+1)
    hinf = err.amax(-1) / spec.amax(-1).clamp_min(1e-300)  # (C,)
    idx = sample_channels(h.shape[0], FLOOR_CHANNELS)  # the halves' sampled channels
    floors = [(scored[name][1].to(h.device), halves[name]["floor_exact"])
              for name in ("fwd", "rev")]  # (S,) each, from the scoring jobs (CPU)
    nf2 = (k_fwd[idx] ** 2).sum(-1)  # (S,)
    nr2 = (k_rev[idx] ** 2).sum(-1)  # (S,)
    comb = torch.sqrt((floors[0][0] ** 2 * nf2 + floors[1][0] ** 2 * nr2)
                      / (nf2 + nr2).clamp_min(1e-300))  # (S,)
    return {
        "rel_l2": {"median": float(rel.quantile(0.5)), "mean": float(rel.mean()),
                   "max": float(rel.max())},
        "max_abs": float((h - h_hat).abs().max()),
        "hinf_rel": float(hinf.max()),
        "floor": float(comb.quantile(0.5)),
        "floor_exact": floors[0][1] and floors[1][1],
        "floor_channels": int(idx.numel()),
        "max_pole_abs": max(halves["fwd"]["max_pole_abs"], halves["rev"]["max_pole_abs"]),
        "causal": False,
        "halves": halves,
        "rel_l2_channels": rel.tolist(),  # (C,) two-sided kernel, per channel
    }


def two_sided_f32eval(k_fwd: Tensor, k_rev: Tensor, fwd: tuple[Tensor, Tensor],
                      rev: tuple[Tensor, Tensor], window: int,
                      workers: int | None = None) -> dict[str, Any]:
    """rel_l2 of the stored float32 parameters evaluated in complex64 (`metrics.f32_kernels`:
    exp(t log p) and the recurrence, the worse of the two), over each half's first ``window``
    lags: of the two-sided kernel [k_fwd; k_rev] (top level: per path
    sqrt(e_fwd^2 + e_rev^2) / ||h||) and of each half. The evaluations run by ``workers``
    processes where large (`metrics.f32eval_errors`).

    Args:
        k_fwd, k_rev: (C, L) float64 halves; fwd, rev: (poles, residues) float32 [real, imag]
        pairs (C, N, 2) as stored.
    Returns:
        {"median", "max", "window", "halves": {"fwd": {"median", "max"}, "rev": {...}}}.
    """
    w = min(window, k_fwd.shape[1])
    ref = {"fwd": k_fwd[:, :w].to(torch.float64), "rev": k_rev[:, :w].to(torch.float64)}
    errs = {"fwd": f32eval_errors(ref["fwd"], *fwd, workers),
            "rev": f32eval_errors(ref["rev"], *rev, workers)}  # (2, C) per path, each
    halves = {}
    for name in ("fwd", "rev"):
        rel = relative_to_norm(errs[name].amax(0), ref[name])  # (C,)
        halves[name] = {"median": float(rel.quantile(0.5)), "max": float(rel.max())}
    h = torch.cat([ref["fwd"], ref["rev"]], dim=1)  # (C, 2W)
    both = torch.sqrt(errs["fwd"] ** 2 + errs["rev"] ** 2).amax(0)  # (C,) the worse path
    rel = relative_to_norm(both, h)  # (C,)
    return {"median": float(rel.quantile(0.5)), "max": float(rel.max()), "window": w,
            "halves": halves}
