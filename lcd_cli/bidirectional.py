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
:class:`~lcd_cli.ssm.DiagonalSSM` on the time-reversed, one-step-shifted input: with
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

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.hankel import fft_size
from lcd_cli.metrics import DENSE_HANKEL_BUDGET, kernel_errors, relative_l2, sample_channels
from lcd_cli.modal import from_pairs, modal_kernel, to_pairs
from lcd_cli.ssm import DiagonalSSM

if TYPE_CHECKING:
    from lcd_cli.checkpoint import Checkpoint
    from lcd_cli.distill import DistillPlan, LayerResult, PlannedLayer
    from lcd_cli.layers import Layer

SSM_REV_POLES = "ssm_rev.poles"
SSM_REV_RESIDUES = "ssm_rev.residues"


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
                     rev: tuple[Tensor, Tensor], *, order: int) -> dict[str, Any]:
    """Error statistics of both halves and of the full two-sided kernel.

    fwd / rev: (poles, residues) (C, N) complex. Top-level numbers are of the two-sided kernel
    h = [k_fwd; k_rev] (relative l2 per channel over all 2L lags); ``floor`` is a lower bound
    on it: per sampled channel sqrt(f_f^2 ||k_fwd||^2 + f_r^2 ||k_rev||^2) / ||h|| from the
    halves' Eckart-Young floors (the halves are fitted with independent modes), median.
    """
    from lcd_cli.hankel import hankel_floor

    length = k_fwd.shape[1]
    halves = {"fwd": kernel_errors(k_fwd, *fwd, order=order),
              "rev": kernel_errors(k_rev, *rev, order=order)}
    h = torch.cat([k_fwd, k_rev], dim=1)  # (C, 2L)
    h_hat = torch.cat([modal_kernel(*fwd, length), modal_kernel(*rev, length)], dim=1)  # (C, 2L)
    rel = relative_l2(h, h_hat)  # (C,)
    n = 2 * length
    spec = torch.fft.rfft(two_sided_kernel(k_fwd, k_rev, n), n=n).abs()  # (C, L + 1)
    e = h - h_hat  # (C, 2L)
    err = torch.fft.rfft(two_sided_kernel(e[:, :length], e[:, length:], n), n=n).abs()  # (C,L+1)
    hinf = err.amax(-1) / spec.amax(-1).clamp_min(1e-300)  # (C,)
    idx = sample_channels(h.shape[0], 64)
    floors = []
    for half in (k_fwd, k_rev):
        fl = hankel_floor(half[idx], [order], max_dense=DENSE_HANKEL_BUDGET)
        floors.append((fl.values[:, 0], fl.rigorous))
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
    }


def fit_two_sided_layer(ckpt: Checkpoint, planned: PlannedLayer, plan: DistillPlan, *,
                        device: str | None, seed: int) -> LayerResult:
    """Materialize both halves of a non-causal layer, fit each (same order, or each half's own
    --tol search), score the float32 parameters as written."""
    from lcd_cli.distill import LayerResult
    from lcd_cli.fit import fit_modal, fit_modal_to_tolerance
    from lcd_cli.layers import materialize_two_sided

    start = time.perf_counter()
    k_fwd, k_rev, _ = materialize_two_sided(ckpt, planned.layer)  # (C, L) each
    fits = []
    for h in (k_fwd, k_rev):
        if plan.order is not None:
            fits.append(fit_modal(h, plan.order, device=device, seed=seed))
        else:
            assert plan.tol is not None
            fits.append(fit_modal_to_tolerance(h, plan.tol, plan.max_order, device=device,
                                               seed=seed))
    order = max(f.order for f in fits)
    pairs = [(to_pairs(f.poles), to_pairs(f.residues)) for f in fits]  # (C, N, 2) float32
    pairs = [_pad_pairs(p, r, order) for p, r in pairs]
    stats = two_sided_errors(k_fwd, k_rev, (from_pairs(pairs[0][0]), from_pairs(pairs[0][1])),
                             (from_pairs(pairs[1][0]), from_pairs(pairs[1][1])), order=order)
    stats |= {"name": planned.name, "family": planned.layer.config.name,
              "channels": planned.channels, "length": planned.length, "order": order,
              "state_modes": 2 * order, "method": fits[0].method,
              "seconds": round(time.perf_counter() - start, 3)}
    if plan.tol is not None:
        stats["tol_met"] = bool(max(stats["halves"][h]["rel_l2"]["max"]
                                    for h in ("fwd", "rev")) <= plan.tol)
    return LayerResult(planned.name, pairs[0][0], pairs[0][1], stats, rev=pairs[1])


def _pad_pairs(poles: Tensor, residues: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """Pad a half fitted at a lower order (--tol) to ``order`` modes with zero-residue,
    zero poles, so both halves are stored with the same N."""
    extra = order - poles.shape[1]
    if extra <= 0:
        return poles, residues
    pad = poles.new_zeros(poles.shape[0], extra, 2)  # (C, extra, 2)
    return torch.cat([poles, pad], 1), torch.cat([residues, pad], 1)


# ---- verification -----------------------------------------------------------------------------


def verify_two_sided_layer(distilled: Checkpoint, ref: Checkpoint, layer: Layer, *, tol: float,
                           length: int | None, seed: int, channels: int | None,
                           reported: dict[str, Any] | None) -> dict[str, Any]:
    """`lcd verify` row of a non-causal layer.

    Each half is checked as a causal layer (its three runtime paths against its own
    convolution, see verify_core); the combined output (forward scan + backward scan, and the
    closed-form prefill of both) is compared with :func:`two_sided_conv` of the original halves
    on the same seeded inputs, over t < min(T, L). Fails on an unstable pole in either half,
    NaN/Inf, or an error above tol.
    """
    from lcd_cli.distill import SSM_POLES, SSM_RESIDUES
    from lcd_cli.layers import materialize_two_sided
    from lcd_cli.verify import load_ssm
    from lcd_cli.verify_core import INPUT_KINDS, even_channels, make_inputs, verify_layer

    k_fwd, k_rev, D_ref = materialize_two_sided(ref, layer)  # (C, L) each
    D = (distilled.get(layer.skip_key, torch.float64).reshape(-1)
         if layer.skip_key and layer.skip_key in distilled else D_ref)
    n_ch, kernel_len = k_fwd.shape
    hint = "a non-causal layer needs both ssm.* and ssm_rev.* tensors"
    fwd = load_ssm(distilled, layer.prefix, D, n_ch, (SSM_POLES, SSM_RESIDUES), hint)
    rev = load_ssm(distilled, layer.prefix, None, n_ch, (SSM_REV_POLES, SSM_REV_RESIDUES), hint)
    T = length or kernel_len
    checks = {"fwd": verify_layer(k_fwd, D, fwd, length=T, seed=seed, max_channels=channels),
              "rev": verify_layer(k_rev, None, rev, length=T, seed=seed, max_channels=channels)}

    idx = even_channels(n_ch, channels) if channels is not None else torch.arange(n_ch)
    bssm = BidirectionalSSM(
        DiagonalSSM(fwd.poles[idx], fwd.residues[idx], None if D is None else D[idx]),
        DiagonalSSM(rev.poles[idx], rev.residues[idx]))
    window = min(T, kernel_len)
    batch = 2
    inputs = make_inputs(batch, int(idx.numel()), window, window, seed + 1)
    u = torch.cat([inputs[k] for k in INPUT_KINDS])  # (3B, C', W)
    y_ref = two_sided_conv(u, k_fwd[idx], k_rev[idx], None if D is None else D[idx])  # (3B,C',W)
    outputs = {"scan": bssm.scan(u), "prefill": bssm.prefill(u)}  # (3B, C', W) each
    errors: dict[str, float] = {}
    for i, kind in enumerate(INPUT_KINDS):
        rows = slice(i * batch, (i + 1) * batch)
        for path, y in outputs.items():
            num = torch.linalg.vector_norm(y[rows] - y_ref[rows]).item()
            den = torch.linalg.vector_norm(y_ref[rows]).item()
            errors[f"{kind}/{path}"] = num / den if den > 0 else num
    finite = (checks["fwd"].finite and checks["rev"].finite
              and all(bool(torch.isfinite(y).all()) for y in outputs.values()))
    values = [*errors.values(), checks["fwd"].worst, checks["rev"].worst]
    worst = max(values) if all(math.isfinite(v) for v in values) else math.inf
    row: dict[str, Any] = {
        "name": layer.prefix, "causal": False, "max_pole_abs": bssm.max_pole_abs,
        "finite": finite, "errors": errors, "worst": worst, "two_sided_worst": max(
            errors.values()) if all(math.isfinite(v) for v in errors.values()) else math.inf,
        "beyond_length": checks["fwd"].beyond_length, "length": T,
        "kernel_length": kernel_len, "window": window,
        "checked_channels": None if channels is None else idx.tolist(), "seed": seed,
        "halves": {h: c.to_dict() for h, c in checks.items()},
    }
    reasons = []
    if not finite:
        reasons.append("NaN/Inf")
    for h, name in (("fwd", "forward"), ("rev", "reverse")):
        if checks[h].max_pole_abs >= 1:
            reasons.append(f"unstable pole in the {name} half |p|={checks[h].max_pole_abs:.6f}")
    if not worst <= tol:
        reasons.append(f"error {worst:.2e} > {tol:.1e}")
    if reported and (reported["channels"] != n_ch or reported["order"] != fwd.order
                     or reported["order"] != rev.order):
        reasons.append(f"shape differs from the report (C={reported['channels']}, "
                       f"N={reported['order']})")
    row["passed"] = not reasons
    row["reason"] = "; ".join(reasons)
    return row


# ---- inspection -------------------------------------------------------------------------------


def two_sided_compressibility(k_fwd: Tensor, k_rev: Tensor, *, channels: int = 16
                              ) -> dict[str, Any]:
    """Compressibility of both halves (lcd_cli.inspection.compressibility) and the worse of the
    two in the same fields: per order the larger floor, per tolerance the larger order."""
    from lcd_cli.inspection import compressibility

    halves = {"fwd": compressibility(k_fwd, channels=channels),
              "rev": compressibility(k_rev, channels=channels)}
    f, r = halves["fwd"], halves["rev"]
    floors = {}
    for n, a in f["floor_median"].items():
        b = r["floor_median"][n]
        floors[n] = None if a is None or b is None else max(a, b)
    order_for = {}
    for tol, a in f["order_for"].items():
        b = r["order_for"][tol]
        order_for[tol] = None if a is None or b is None else max(a, b)
    return {
        "channels_sampled": f["channels_sampled"],
        "svd": f["svd"] if f["svd"] == r["svd"] else "randomized (floors are estimates)",
        "floor_median": floors,
        "order_for": order_for,
        "max_order_searched": min(f["max_order_searched"], r["max_order_searched"]),
        "halves": halves,
    }
