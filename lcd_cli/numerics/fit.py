"""Fit long-convolution kernels with modal (diagonal SSM) kernels, batched over channels.

Dimensions:
    C  channels (independent kernels; fitted in fixed chunks of <= _CHUNK_CHANNELS)
    N  complex modes per channel (real state size 2N)
    K  candidate modes before selection (<= 2N) or real columns (2N or 4N)
    L  kernel length (LW: the refinement window, min(L, _REFINE_WINDOW))
    T  time-block length of the two-level sums, ceil(sqrt(L)); A = ceil(L / T) blocks
    P  pole pairs i <= j of the geometric-sum tables, N (N + 1) / 2
    m  Hankel rows of the ERA window

Model: h_hat[c, t] = Re sum_n R[c, n] p[c, n]^t, p = exp(s) with s the log-pole.
With R = a + i b the model is linear in the 2N real unknowns x = [a; b] over the real columns
u_n[t] = Re p_n^t and v_n[t] = Re(i p_n^t) = -Im p_n^t.

Method:
1. Poles (`_era_poles`): Kung's subspace method (Kung 1978; ERA, Juang & Pappa 1985) on the
   finite window h[:W]: leading r = 2N left singular vectors U of the Hankel matrix (randomized
   SVD with FFT products for long windows), shift invariance U[1:] ~ U[:-1] A, poles = eig(A).
   The real rank is 2N because the output is Re(...): a conjugate pair collapses into one
   complex mode (doubled residue), a real pole uses one mode. Poles outside the unit disk are
   pulled radially onto it (radius _R_MAX, angle kept): on a finite window, slightly growing
   modes are what the unconstrained fit prefers for non-decaying kernels, and the nearest
   stable mode is the clamped one, not the reflection 1/conj p, which decays fast. With more
   than N candidate modes (real poles), the N of largest least-squares energy are kept; with
   fewer (short windows), distinct padding poles fill the rest. Channels whose final error is
   far above the chunk's median restart from other starts, in order, while they stay far off
   (candidates from the window's second half, which expose slow tails; reflected poles;
   higher-rank realizations; a rank-N realization for kernels of many clustered real modes);
   their LM runs share batches, in two stages (`_restart_outliers`). One Hankel SVD, of the
   largest rank any start uses, serves them all (`_era_basis`). Kernels longer than the ERA
   window get one more start that sees all of them (`_coarse_start`): the fit of the
   decimated kernel h[D s] (poles p^D), mapped back by the principal D-th root. A source that
   already is an M-mode diagonal SSM (M <= N) with its residues is a candidate as it is
   (`_exact_source`), and the fit itself where it is exact on the whole chunk.
2. Residues (`_solve_residues`): real least squares via the normal equations. Every Gram entry is
   a geometric sum sum_{t<L} t^k e^{sigma t} in closed form (Taylor series near sigma = 0), so no
   L x N matrix is formed; the right-hand sides z = sum_t h[t] p^t are two-level sums
   (`_moments`: t = T a + b, one real (A, T) x (T, 2N) product per channel).
3. Refinement (`_refine`): Levenberg-Marquardt on the log-poles with variable projection
   (Golub & Pereyra 1973; Kaufman 1975 Jacobian): residues are eliminated by least squares at
   every step, J = -(I - P_A) dA/ds x. J^T J and the gradient also reduce to closed-form
   geometric sums plus one two-level pass per trial. Per-channel damping; a step is accepted
   only where it lowers the error; poles stay inside the disk. Channels that stop (frozen,
   stalled, over-damped) leave the batch, without changing any result.
4. Float32 safety: final poles are rounded to complex64 and the residues re-solved for the
   rounded poles over the full length L, with a Tikhonov term sized to the float32 unit roundoff
   (`_final_residues`), so near-collinear poles cannot take huge cancelling residues that
   rounding would destroy. The residues are then rounded too, and the error of exactly these
   stored values is computed directly, not from the normal equations (`_abs_error`).
   Storage is not evaluation: engines compute exp(t log p) and the recurrence in complex64,
   and a near-real pole with a huge imaginary residue (a fake double pole; its column's norm
   is small, so the storage penalty allows it) is exact in float64 and destroyed near
   arg p = pi, where complex64's log p keeps its angle to 2e-7 only (issue 14: complex64
   kernels 5.7e-4 off, up to 1e1 on double-pole kernels). So the chosen fit is evaluated as
   engines do over the first _F32_WINDOW samples (`_f32_guard`; channels whose modelled gap,
   `_f32_bound`, cannot reach the trigger are not evaluated); channels where that adds
   more than a tenth of their float64 error (_F32_GAP_RATIO, above the noise _F32_GAP_MIN),
   and whose modes cancel (sum |R| > _F32_CANCEL max |h|; else the gap is complex64's own
   evaluation noise, which no re-solve removes), are re-solved with a penalty modelled on
   the complex64 evaluation error or a stronger Tikhonov term, with near-real poles snapped
   onto or moved off the real axis and close pole pairs moved apart (a fake double pole at any
   angle), and keep the candidate with the lowest complex64-evaluated error. Other channels
   keep their parameters bit for bit.
5. Parallel fitting: the chunks are independent jobs (`lcd_cli.numerics.parallel`); worker
   processes with one torch thread each give bit for bit the in-process results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.numerics.finite import all_finite
from lcd_cli.numerics.hankel import hankel_shape, hankel_svd, sketch_width
from lcd_cli.numerics.metrics import f32_kernels
from lcd_cli.numerics.parallel import resolve_workers, run_jobs

_R_MAX = 1.0 - 1e-6  # pole radius cap: strictly stable, also after complex64 rounding
_R_MIN = 1e-6  # pole radius floor: keeps log-poles finite
_S_RE_MAX = math.log(_R_MAX)
_S_RE_MIN = math.log(_R_MIN)
_ERA_WINDOW = 8192  # samples used by the subspace step
_REFINE_WINDOW = 65536  # samples used by the refinement (the final residues use all L)
_EXACT_ROWS = 256  # dense Hankel SVD up to this many rows, randomized above
_ERA_POWER_ITERS = 2  # randomized-SVD power iterations for the initial poles (refined later)
_TAIL_POWER_ITERS = 1  # ... and for the second half's candidates, which only join a restart's pool
_REFINE_ITERS = 100
_MU_DOWN = 3.0  # Levenberg-Marquardt damping divisor after an accepted step (x4 after a rejection)
_RIDGE = 1e-12  # Tikhonov term on the unit-diagonal-scaled Gram matrix
_SERIES_TERMS = 22  # Taylor terms of the geometric sums for |sigma L| <= 1
_BLOCK_MIN = 8  # shortest time block of the two-level sums
_SIGNAL_BUDGET = 1 << 23  # float64 words of one channel block of a full-length pass (64 MiB)
_CHANNEL_BUDGET = 1 << 25  # float64 words of per-chunk (C, 4N, 4N) work arrays (256 MiB)
_CHUNK_CHANNELS = 64  # most channels per chunk: the unit of work of a worker process
# LM batches hold a multiple of _LANES rows: twice the float64 vector width of torch's CPU
# kernels (their vector loop takes two vectors a step), 16 where unknown.
_LANES = {"AVX2": 8, "AVX512": 16}.get(torch.backends.cpu.get_cpu_capability(), 16)
_FROZEN_REL = 1e-7  # channels below this relative error stop refining (normal-eq. resolution)
_STALL_ITERS = 8  # a channel stops when its squared error fell by less than
_STALL_RTOL = 1e-4  # this fraction over the last _STALL_ITERS iterations
_LSTSQ_BUDGET = 1 << 24  # float64 words of one explicit (C, L, 2N) least-squares basis
_F32_LAMBDA = 2.0**-24  # residue regularization for float32 storage (unit roundoff)
_F64_LAMBDA = 1e-13  # the same for float64 parameters (a numerical-rank cut-off)
_GRAM_REL_MIN = 1e-6  # below this relative error float32 residues are re-solved by SVD: the
# Gram solve squares the conditioning, which shows only on float32-exact sources (~1e-14)
# Outlier restarts, in order: (ERA realization rank a*N + b as (a, b), reflect unstable poles,
# add second-half modes). Rank N (not 2N) suits kernels made of many clustered real modes (an
# SSM source of higher order): its N eigenvalues need no selection, which modal truncation
# gets wrong for clustered poles.
_RESTARTS = (((2, 0), False, True), ((2, 0), True, False), ((2, 2), False, False),
             ((2, 4), False, True), ((1, 0), False, False))
_RESTART_FACTOR = 2.0  # a channel is an outlier above this multiple of the median error
# Channels above this share of the outlier threshold also join the first batch of restarts
# when it runs more than one (_RESTART_FIRST > 1): those that become outliers later did so at
# 1.85-1.95x the first median (the median fell 5-11 % as the first outliers improved; HyenaDNA
# example, L = 1024 and 8192). A channel that becomes an outlier at step k uses restarts k and
# on only, so with one restart in the first batch their rows would never be used.
_RESTART_NEAR = 0.9
# The first batch of restarts runs the first _RESTART_FIRST of them; the channels still
# outliers after those get all the others in one later batch. When the first batch ran all
# five, about half of its rows were refined for nothing (the channel was no longer an outlier
# when its turn came; HyenaDNA example, L = 8192: 47 of 95 and 29 of 90 rows used in two
# chunks). One restart first refines the fewest rows of the choices 1, 2, 3, 5.
_RESTART_FIRST = 1
_RESTART_BUDGET = 1 << 23  # float64 words of the (rows, 2A, T) blocks of one LM batch of restarts
# Float32 guard (`_f32_guard`): the stored parameters are also evaluated as complex64 engines
# do (exp(t log p) and the recurrence) over the first _F32_WINDOW samples (the recurrence is
# one Python step per sample). A channel is re-solved when what complex64 evaluation adds to
# its kernel, gap = ||h_c64 - h_c128|| / ||h||, exceeds both _F32_GAP_MIN (the evaluation
# noise of benign modes, ~1e-7) and a 1/_F32_GAP_RATIO share of its float64 error: then its
# complex64 error is no longer within (1 + 1/_F32_GAP_RATIO) of the float64 one the report
# shows. Untriggered channels keep their parameters bit for bit.
_F32_WINDOW = 8192
_F32_GAP_MIN = 1e-6
_F32_GAP_RATIO = 10.0
# ... and only where the modes cancel: sum_n |R_n| above this multiple of max_t |h[t]|. Without
# cancellation the gap is complex64's own evaluation noise (phase drift of slow modes: 1e-6 to
# 1.2e-5 on the StripedHyena example's exact fits at L = 8192, whose sum |R| / max |h| is 1.9
# median, 7 at most), which no re-solve removes: the guard then cost 3.4x the fit's time and
# traded float64 errors of 1e-14 for 1e-9 with the same gap. Cancelling fits are far above
# (f32_fidelity: 177 for slow poles, 4.9e8 near-real; double poles likewise).
_F32_CANCEL = 20.0
_F32_ROWS = 4096  # channel rows x modes scored at once: (rows, N, 4096) complex64 temporaries
# Screen before the (costly) complex64 evaluation: the modelled bound of `_f32_bound` was at
# least 1.8x the measured gap on every channel of the f32_fidelity cases (L 63..2048, N 4 and
# 8; typically 7x), so channels whose bound times this factor cannot reach the trigger are not
# evaluated (the trigger sees the same channels, the outputs are the same).
_F32_SCREEN = 2.0
# Poles within this angle of the real axis (|sin arg p| below it) are candidates for snapping
# onto it: a near-real pole with a huge imaginary residue fakes a double pole (t p^t), which
# complex64's log p cannot resolve near arg p = pi (its angle is pi -/+ eps, rounded to 2e-7).
# 3e-3 is the middle of the push angles' range below: a pole nearer the axis than the balanced
# angle of its memory still carries the residue ~ c / phi the push would shrink (seen: a pole
# at 2.2e-3 with residue 138 i, complex64 error 63x its float64 one at L = 1000).
_SNAP_SIN = 3e-3
# ... or moved to these angular distances from it: a complex mode r e^{i(pi - phi)} with a
# moderate phi reproduces (a + c t)(-r)^t to O(t^2 phi^2) with residues ~ c / phi, which
# complex64 resolves; balancing the two errors gives phi ~ (u pi / t)^(1/3), 1e-3..1e-2 for
# memories t of 10..1000 steps (u the float32 unit roundoff), so a geometric grid around it, of
# four points per decade: the two errors grow as phi^2 and 1/phi, so a half-decade step could
# miss the balance by 3x (seen on a double pole at L = 63: complex64 error 5.7x the float64 one).
_PUSH_ANGLES = (3e-4, 5.3e-4, 9.5e-4, 1.7e-3, 3e-3, 5.3e-3, 9.5e-3, 1.7e-2, 3e-2)
# The same for two distinct poles closer than a separation d of this grid in log-pole space
# (|log p_i - log p_j| < d): a fake double pole at a complex q, A (q_i^t - q_j^t) ~ A d t q^t,
# moved apart to d about their midpoint, which bounds their residues to ~ 1 / d.
_SPREAD_DISTANCES = _PUSH_ANGLES
# And the default residue solve with a stronger Tikhonov term, u times these factors: when the
# penalty model misjudges a basis (e.g. poles near 0 whose residues of 1e6..1e7 cancel over the
# first taps), trading some float64 accuracy for smaller residues is the plain remedy.
_STRONGER_RIDGE = (16.0, 256.0, 4096.0)


@dataclass
class FitResult:
    """A fitted modal kernel per channel (CPU tensors).

    Attributes:
        poles: (C, N) complex128, |p| < 1.
        residues: (C, N) complex128.
        rel_l2: (C,) float64, ||h - h_hat|| / max(||h||, tiny), tiny = 1e-12 max_c ||h_c||.
        method: name of the method.
        order: N.
    """

    poles: Tensor
    residues: Tensor
    rel_l2: Tensor
    method: str
    order: int


# ----------------------------------------------------------------------------- validation


def _check_kernel(h: Tensor) -> Tensor:
    """Validate (C, L) real kernels; return float64."""
    if not isinstance(h, Tensor) or h.ndim != 2:
        shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise LcdError(f"kernels must be a (channels, length) tensor, got {shape}")
    if h.is_complex():
        raise LcdError("kernels must be real, got a complex tensor")
    h = h.to(torch.float64)
    if h.numel() and not all_finite(h):
        raise LcdError("kernels contain NaN or Inf", hint="check the checkpoint or the config")
    return h


def _check_order(order: int, length: int) -> int:
    """1 <= N <= L - 1, else LcdError naming the order and the range."""
    if isinstance(order, bool) or not isinstance(order, int):
        raise LcdError(f"order must be an integer, got {order!r}", key="order")
    if length < 2:
        raise LcdError(
            f"kernel length {length} is too short to fit (order {order}): need length >= 2",
            key="order",
        )
    if not 1 <= order <= length - 1:
        raise LcdError(
            f"order {order} is out of range: valid orders are 1 to {length - 1} "
            f"for kernels of length {length}",
            key="order",
            hint=f"choose an order between 1 and {length - 1}",
        )
    return order


def rel_l2_error(h: Tensor, h_hat: Tensor) -> Tensor:
    """||h - h_hat|| / max(||h||, tiny) per channel, tiny = 1e-12 * max_c ||h_c||.

    Args:
        h, h_hat: (C, L).
    Returns:
        (C,) float64.
    """
    h = h.to(torch.float64)
    norm = torch.linalg.vector_norm(h, dim=-1)  # (C,)
    tiny = 1e-12 * norm.max() if norm.numel() else norm.new_tensor(0.0)
    den = torch.maximum(norm, tiny)  # (C,)
    err = torch.linalg.vector_norm(h - h_hat.to(torch.float64), dim=-1)  # (C,)
    return torch.where(den > 0, err / torch.where(den > 0, den, 1.0), err)


# ----------------------------------------------------------------------------- geometric sums


def _wrap_imag(z: Tensor) -> Tensor:
    """Shift Im z into [-pi, pi): exact for e^{z t} at integer t."""
    im = torch.remainder(z.imag + math.pi, 2 * math.pi) - math.pi
    return torch.complex(z.real, im)


def _cexpm1(z: Tensor) -> Tensor:
    """exp(z) - 1 for complex z, accurate near 0 (device-agnostic)."""
    a, b = z.real, z.imag
    re = torch.expm1(a) * torch.cos(b) - 2.0 * torch.sin(0.5 * b) ** 2
    im = torch.exp(a) * torch.sin(b)
    return torch.complex(re, im)


_POWER_MEANS: dict[tuple[int, str], Tensor] = {}


def _power_means(length: int, device: torch.device) -> Tensor:
    """Q_j = (1/L) sum_{t<L} (t/L)^j for j = 0 .. _SERIES_TERMS + 2: (J,) float64."""
    key = (length, str(device))
    if key not in _POWER_MEANS:
        x = torch.arange(length, dtype=torch.float64, device=device) / length  # (L,)
        j = torch.arange(_SERIES_TERMS + 3, dtype=torch.float64, device=device)  # (J,)
        # Chunked over t: (J, T) at a time.
        acc = torch.zeros(len(j), dtype=torch.float64, device=device)  # (J,)
        for start in range(0, length, 1 << 16):
            acc += (x[None, start : start + (1 << 16)] ** j[:, None]).sum(-1)
        if len(_POWER_MEANS) > 16:
            _POWER_MEANS.clear()
        _POWER_MEANS[key] = acc / length
    return _POWER_MEANS[key]


_SERIES_COEF: dict[tuple[int, int, str, torch.dtype], list[Tensor]] = {}


def _series_coef(length: int, kmax: int, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
    """The Taylor coefficients Q_{k+j} / j! of `_geom_sums`, J x (K,) in `dtype`, K = kmax + 1:
    a pure function of (L, kmax), cached like the Q_j (rebuilding them cost ~110 small ops per
    call, a tenth of an LM iteration at 8 rows)."""
    key = (length, kmax, str(device), dtype)
    if key not in _SERIES_COEF:
        q = _power_means(length, device).to(dtype)  # (J + 3,)
        if len(_SERIES_COEF) > 16:
            _SERIES_COEF.clear()
        _SERIES_COEF[key] = [torch.stack([q[k + j] for k in range(kmax + 1)])
                             / float(math.factorial(j)) for j in range(_SERIES_TERMS)]
    return _SERIES_COEF[key]


def _geom_sums(sigma: Tensor, length: int, kmax: int) -> list[Tensor]:
    """S_k(sigma) = sum_{t<L} t^k e^{sigma t} for k = 0 .. kmax (kmax <= 2), elementwise.

    Closed forms from S_0 = (e^{L sigma} - 1) / (e^sigma - 1) and its sigma-derivatives when
    |sigma L| > 1; the Taylor series L^{k+1} sum_j (sigma L)^j / j! Q_{k+j} otherwise.

    Args:
        sigma: (...) complex with Re sigma <= 0.
    Returns:
        [S_0, ..., S_kmax], each (...) complex.
    """
    sigma = _wrap_imag(sigma)
    big_l = float(length)
    u = sigma * big_l  # (...)
    small = u.abs() <= 1.0  # (...)
    # Closed form (evaluate on a safe argument where the series is used).
    sg = torch.where(small, torch.full_like(sigma, -1.0), sigma)  # (...)
    e = torch.exp(sg)  # (...)
    d = _cexpm1(sg)  # (...)
    big_e = torch.exp(sg * big_l)  # (...)
    em1 = _cexpm1(sg * big_l)  # (...)
    closed = [em1 / d]
    if kmax >= 1:
        closed.append(big_l * big_e / d - em1 * e / d**2)
    if kmax >= 2:
        closed.append(
            big_l**2 * big_e / d
            - 2.0 * big_l * big_e * e / d**2
            - em1 * e / d**2
            + 2.0 * em1 * e**2 / d**3
        )
    # Series, only where |sigma L| <= 1: sum_j u^j (Q_{k+j} / j!) by Horner's rule for all k at
    # once (elementwise: a channel's sums do not depend on what else is in the batch).
    out = [c.clone() for c in closed]
    idx = torch.nonzero(small.reshape(-1)).squeeze(-1)  # (S,)
    if idx.numel():
        coef = _series_coef(length, kmax, sigma.device, sigma.dtype)  # J x (K,)
        us = u.reshape(-1)[idx][:, None]  # (S, 1)
        acc = coef[-1].expand(us.shape[0], -1)  # (S, K)
        for j in range(_SERIES_TERMS - 2, -1, -1):
            acc = acc * us + coef[j]  # (S, K)
        for k in range(kmax + 1):
            out[k].reshape(-1)[idx] = acc[:, k] * big_l ** (k + 1)
    return out


# ----------------------------------------------------------------------------- two-level sums


def _block_len(length: int) -> int:
    """Time-block length T = ceil(sqrt(L)) (at least _BLOCK_MIN): t = T a + b, a < A, b < T."""
    return max(_BLOCK_MIN, math.isqrt(max(length - 1, 0)) + 1)


def _blocks(h: Tensor, length: int, with_t: bool) -> Tensor:
    """h[:, :L] cut into time blocks for the two-level sums, zero past L.

    Args:
        h: (C, >= L) float64.
    Returns:
        (C, A, T), or (C, 2A, T) with the blocks of t h[t] below those of h (with_t).
    """
    c = h.shape[0]
    t_len = _block_len(length)
    a_len = -(-length // t_len)
    x = h.new_zeros(c, a_len * t_len)  # (C, A T)
    x[:, :length] = h[:, :length]
    if with_t:
        t = torch.arange(a_len * t_len, dtype=h.dtype, device=h.device)  # (A T,)
        x = torch.cat([x, x * t], dim=1)  # (C, 2 A T)
    return x.view(c, -1, t_len)


def _doubling_powers(s: Tensor, step: int, count: int) -> Tensor:
    """e^{s step k} for k < count by doubling: the block k in [w, 2w) is the block [0, w) times
    the exact exponential e^{s step w}, so each entry is log2(count) products away from an exp.

    Args:
        s: (C, N) complex log-poles.
    Returns:
        (C, count, N) complex.
    """
    out = torch.empty(s.shape[0], count, s.shape[1], dtype=s.dtype, device=s.device)  # (C, K, N)
    out[:, 0] = 1.0
    width = 1
    while width < count:
        span = min(width, count - width)
        out[:, width : width + span] = out[:, :span] * torch.exp(s * (step * width))[:, None, :]
        width += span
    return out


def _pole_tables(s: Tensor, t_len: int, a_len: int) -> tuple[Tensor, Tensor]:
    """Powers e^{s b} (b < T) and e^{s T a} (a < A), by doubling from exact exponentials.

    Args:
        s: (C, N) complex log-poles.
    Returns:
        inner (C, T, N), outer (C, A, N) complex.
    """
    return _doubling_powers(s, 1, t_len), _doubling_powers(s, t_len, a_len)


def _as_real(z: Tensor) -> Tensor:
    """(C, R, N) complex -> (C, R, 2N) float64, [Re, Im] interleaved per mode (a view)."""
    return torch.view_as_real(z).flatten(-2)


def _moments(hb: Tensor, s: Tensor, length: int, with_t: bool) -> tuple[Tensor, Tensor | None]:
    """z[c, n] = sum_{t<L} h[c, t] e^{s t} and (optionally) d[c, n] = sum_t t h[c, t] e^{s t}.

    Two-level sums: with t = T a + b, z = sum_a e^{s T a} sum_b h[T a + b] e^{s b}. The inner
    sums of all blocks are one real (A, T) x (T, 2N) matrix product per channel (h is real), so
    a pass costs ~(A + T) N exponentials and one BLAS3 product instead of L N powers.

    Args:
        hb: (C, A | 2A, T) from _blocks(h, L, with_t).
        s: (C, N) complex128 log-poles.
    Returns:
        z (C, N) complex, d (C, N) complex or None.
    """
    c, rows, t_len = hb.shape
    n = s.shape[1]
    a_len = rows // 2 if with_t else rows
    inner, outer = _pole_tables(s, t_len, a_len)  # (C, T, N), (C, A, N)
    part = torch.view_as_complex((hb @ _as_real(inner)).view(c, rows, n, 2))  # (C, A | 2A, N)
    z = (outer * part[:, :a_len]).sum(1)  # (C, N)
    d = (outer * part[:, a_len:]).sum(1) if with_t else None  # (C, N)
    return z, d


def _signal_step(length: int) -> int:
    """Channels per block of a full-length pass (bounded memory at long L)."""
    return max(1, _SIGNAL_BUDGET // max(1, length))


def _moments_full(h: Tensor, s: Tensor, length: int) -> Tensor:
    """z = sum_{t<L} h[c, t] e^{s t} (C, N) over channel blocks of bounded size."""
    step = _signal_step(length)
    parts = [_moments(_blocks(h[i : i + step], length, False), s[i : i + step], length, False)[0]
             for i in range(0, h.shape[0], step)]
    return torch.cat(parts) if parts else s.new_zeros(s.shape)


def _abs_error(h: Tensor, poles: Tensor, residues: Tensor) -> Tensor:
    """||h - h_hat|| per channel, h_hat[t] = Re sum_n R p^t, computed directly in float64.

    The model is evaluated by the same two-level tables as the moments: the block of rows a is
    Re((R e^{s T a}) e^{s b}), one real (A, 2N) x (2N, T) product per channel.

    Args:
        h: (C, L) float64; poles, residues: (C, N) complex128.
    Returns:
        (C,) float64.
    """
    c, length = h.shape
    out = torch.zeros(c, dtype=torch.float64, device=h.device)  # (C,)
    if c == 0 or length == 0:
        return out
    step = _signal_step(length)
    for i in range(0, c, step):
        hb = _blocks(h[i : i + step], length, False)  # (Cb, A, T)
        cb, a_len, t_len = hb.shape
        inner, outer = _pole_tables(torch.log(poles[i : i + step]), t_len, a_len)
        # Re(R x) = Re R Re x - Im R Im x: conj(R) against [Re x, Im x].
        coef = torch.conj_physical(residues[i : i + step, None, :] * outer)  # (Cb, A, N)
        model = _as_real(coef) @ _as_real(inner).transpose(1, 2)  # (Cb, A, T)
        diff = (hb - model).view(cb, -1)[:, :length]  # (Cb, L)
        out[i : i + step] = torch.linalg.vector_norm(diff, dim=-1)
    return out


def _relative(err: Tensor, h: Tensor) -> Tensor:
    """err / max(||h||, tiny) per channel, tiny = 1e-12 max_c ||h_c|| (err where that is 0)."""
    norm = torch.linalg.vector_norm(h, dim=-1)  # (C,)
    tiny = 1e-12 * norm.max() if norm.numel() else norm.new_tensor(0.0)
    den = torch.maximum(norm, tiny)  # (C,)
    return torch.where(den > 0, err / torch.where(den > 0, den, 1.0), err)


# ----------------------------------------------------------------------------- least squares


def _gram_blocks(
    s: Tensor, gam_row: Tensor, gam_col: Tensor, tabs_p: Tensor, tabs_q: Tensor
) -> Tensor:
    """Real inner products <Re(g_k t^a z_k), Re(g_l t^b z_l)> for column families.

    Uses Re(x) Re(y) = (Re(x y) + Re(x conj y)) / 2:
        M[k, l] = 0.5 Re(g_k g_l P[k, l] + g_k conj(g_l) Q[k, l]),
    P = S_{a+b}(s_k + s_l), Q = S_{a+b}(s_k + conj s_l) (indexed per column).

    Args:
        gam_row: (C, K1) complex; gam_col: (C, K2) complex.
        tabs_p, tabs_q: (C, K1, K2) complex.
    Returns:
        (C, K1, K2) float64.
    """
    gr = gam_row[:, :, None]  # (C, K1, 1)
    return 0.5 * (gr * gam_col[:, None, :] * tabs_p + gr * gam_col.conj()[:, None, :] * tabs_q).real


def _pair_tables(s: Tensor, length: int, kmax: int) -> tuple[list[Tensor], list[Tensor]]:
    """S_k(s_i + s_j) and S_k(s_i + conj s_j) for k <= kmax, each (C, N, N) complex.

    Only i <= j is summed: the first table is symmetric and the second Hermitian
    (S_k(conj sigma) = conj S_k(sigma)), so the lower triangles are copies.
    """
    n = s.shape[1]
    iu, ju = torch.triu_indices(n, n, device=s.device)  # (P,), (P,) with i <= j
    si, sj = s[:, iu], s[:, ju]  # (C, P)
    both = _geom_sums(torch.stack([si + sj, si + sj.conj()]), length, kmax)  # [(2, C, P)] * (kmax + 1)
    tabs_p, tabs_q = [], []
    for pair in both:
        p = pair.new_empty(2, s.shape[0], n, n)  # (2, C, N, N)
        p[:, :, iu, ju] = pair
        p[0, :, ju, iu] = pair[0]
        p[1, :, ju, iu] = pair[1].conj()
        tabs_p.append(p[0])
        tabs_q.append(p[1])
    return tabs_p, tabs_q


def _rep2(x: Tensor) -> Tensor:
    """(C, N, N) -> (C, 2N, 2N) by repeating the pole index for the [u, v] column pairs."""
    return x.repeat(1, 2, 2)


def _lu_solver(a: Tensor) -> Callable[[Tensor], Tensor]:
    """Batched solves of a X = b, one LU of a (C, K, K) for every b (C, K, M), that never raise
    on a singular batch element: the elements whose factorization failed (or whose solution is
    not finite) fall back to the pseudo-inverse (minimum-norm least squares). Rounding can make
    a PD-by-construction matrix (e.g. duplicate candidate modes plus a tiny ridge) exactly
    singular for LU on some thread counts. (LU then triangular solves is what
    torch.linalg.solve_ex computes, bit for bit.)"""
    lu, piv, info = torch.linalg.lu_factor_ex(a)  # (C, K, K), (C, K), (C,)

    def solve(b: Tensor) -> Tensor:
        x = torch.linalg.lu_solve(lu, piv, b)  # (C, K, M)
        bad = (info != 0) | ~torch.isfinite(x).all(dim=(-2, -1))  # (C,)
        if bool(bad.any()):
            x = x.clone()
            x[bad] = torch.linalg.pinv(a[bad]) @ b[bad]
        return x

    return solve


def _solve(a: Tensor, b: Tensor) -> Tensor:
    """a X = b (C, K, K), (C, K, M) -> (C, K, M) by `_lu_solver`."""
    return _lu_solver(a)(b)


def _ridge_solver(g: Tensor, mask: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """Solves of (G + ridge) X = B after unit-diagonal scaling, one factorization for every B;
    masked unknowns get 0.

    Args:
        g: (C, K, K) symmetric PSD; mask: (C, K) bool, True = active.
    Returns:
        solve(B) for B (C, K) or (C, K, M), of B's shape.
    """
    diag = torch.diagonal(g, dim1=-2, dim2=-1)  # (C, K)
    scale = torch.sqrt(diag.clamp_min(0.0))  # (C, K)
    ref = scale.max(dim=-1, keepdim=True).values  # (C, 1)
    ok = scale > 1e-150 + 1e-30 * ref  # (C, K) columns that are not numerically zero
    if mask is not None:
        ok = ok & mask
    inv = torch.where(ok, 1.0 / torch.where(ok, scale, 1.0), 0.0)  # (C, K)
    gs = g * inv[:, :, None] * inv[:, None, :]  # (C, K, K), unit diagonal where ok
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)  # (K, K)
    gs = gs + eye * torch.where(ok, _RIDGE, 1.0)[:, None, :]  # (C, K, K)
    lu = _lu_solver(gs)

    def solve(b: Tensor) -> Tensor:
        vec = b.ndim == 2
        rhs = b[..., None] if vec else b  # (C, K, M)
        x = lu(rhs * inv[:, :, None]) * inv[:, :, None]  # (C, K, M)
        return x[..., 0] if vec else x

    return solve


def _ridge_solve(g: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Solve (G + ridge) X = B (`_ridge_solver`): g (C, K, K), b (C, K) or (C, K, M)."""
    return _ridge_solver(g, mask)(b)


def _normal_equations(s: Tensor, z: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Closed-form Gram matrix G = A^T A (C, 2N, 2N) of the real columns [Re p^t, -Im p^t]
    (t < L) and the right-hand side A^T h = [Re z; -Im z] (C, 2N), z = sum_t h[t] p^t."""
    tp, tq = _pair_tables(s, length, 0)
    ones = torch.ones_like(s)  # (C, N)
    gam = torch.cat([ones, 1j * ones], dim=1)  # (C, 2N)
    g = _gram_blocks(s, gam, gam, _rep2(tp[0]), _rep2(tq[0]))  # (C, 2N, 2N)
    b = (gam * torch.cat([z, z], dim=1)).real  # (C, 2N)
    return g, b


def _solve_residues(
    h: Tensor, s: Tensor, length: int, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Least-squares residues for fixed log-poles over t < length.

    Args:
        h: (C, >= L) float64; s: (C, N) complex128; mask: (C, N) bool (False = unused mode).
    Returns:
        residues (C, N) complex128, squared residual (C,) from the normal equations.
    """
    n = s.shape[1]
    z = _moments_full(h, s, length)  # (C, N)
    g, b = _normal_equations(s, z, length)  # (C, 2N, 2N), (C, 2N)
    m2 = torch.cat([mask, mask], dim=1) if mask is not None else None  # (C, 2N)
    x = _ridge_solve(g, b, m2)  # (C, 2N)
    h2 = (h[:, :length] ** 2).sum(-1)  # (C,)
    res2 = h2 - 2 * (b * x).sum(-1) + (x[:, None, :] @ g @ x[:, :, None])[:, 0, 0]  # (C,)
    return torch.complex(x[:, :n], x[:, n:]), res2


# ----------------------------------------------------------------------------- poles


def _stabilize(p: Tensor, reflect: bool = False) -> Tensor:
    """Clamp |p| to [_R_MIN, _R_MAX], angle kept; with reflect, |p| > 1 first maps to 1/conj p."""
    r = p.abs()  # (...)
    if reflect:
        p = torch.where(r > 1.0, p / (r * r), p)  # (...)
        r = p.abs()
    ang = torch.where(r > 0, torch.angle(p), torch.zeros_like(r))  # (...)
    return torch.polar(r.clamp(_R_MIN, _R_MAX), ang)


def _pad_poles(c: int, count: int, device: torch.device) -> Tensor:
    """Distinct stable filler poles, radius 0.5, angles spread over (0, pi): (C, count)."""
    ang = math.pi * (torch.arange(count, dtype=torch.float64, device=device) + 0.5) / max(count, 1)
    p = torch.polar(torch.full_like(ang, 0.5), ang)  # (count,)
    return p.expand(c, count).clone()


def _collapse_eigs(lam: Tensor, reflect: bool = False) -> tuple[Tensor, Tensor]:
    """Eigenvalues of a real matrix -> candidate modes: one per conjugate pair, one per real.

    Args:
        lam: (C, K) complex eigenvalues.
    Returns:
        poles (C, K) complex (stabilized; real ones made exactly real), valid (C, K) bool.
    """
    tol = 1e-9 * (lam.abs() + 1e-300)  # (C, K)
    is_real = lam.imag.abs() <= tol  # (C, K)
    valid = is_real | (lam.imag > tol)  # (C, K)
    lam = torch.where(is_real, torch.complex(lam.real, torch.zeros_like(lam.real)), lam)
    return _stabilize(lam, reflect), valid


def _select_modes(
    h: Tensor, cand: Tensor, valid: Tensor, order: int, length: int
) -> Tensor:
    """Keep the `order` candidate modes of largest least-squares energy; pad if too few.

    Args:
        h: (C, >= L); cand: (C, K) complex poles; valid: (C, K) bool.
    Returns:
        (C, order) complex poles.
    """
    c, _k = cand.shape
    s = torch.log(cand)  # (C, K)
    res, _ = _solve_residues(h, s, length, valid)  # (C, K)
    s0 = _geom_sums(2 * s.real.to(s.dtype), length, 0)[0].real  # (C, K) sum |p|^{2t}
    energy = torch.where(valid, res.abs() ** 2 * s0, -math.inf)  # (C, K)
    pad = _pad_poles(c, order, cand.device)  # (C, order)
    allp = torch.cat([cand, pad], dim=1)  # (C, K + order)
    alle = torch.cat([energy, torch.full((c, order), -1.0, device=cand.device)], dim=1)
    idx = torch.topk(alle, order, dim=1).indices  # (C, order)
    return torch.gather(allp, 1, idx)


def _era_basis(hw: Tensor, order: int, rank: int, seed: int,
               power_iters: int = _ERA_POWER_ITERS) -> Tensor | None:
    """Leading left singular vectors U (C, m, r) of the window's square Hankel matrix,
    r = min(rank, m - 1, n), or None when r < 1.

    The randomized SVD uses the range-finder width of a rank-2N call, so U[..., :2N] is what
    that call returns and one SVD serves every start of rank <= `rank` (the restarts).
    """
    m, n = hankel_shape(hw.shape[1])
    r = min(rank, m - 1, n)
    if r < 1:
        return None
    base = min(2 * order, m - 1, n)
    u, _, _, _ = hankel_svd(
        hw, r, exact_max_rows=_EXACT_ROWS, seed=seed, power_iters=power_iters,
        sketch=sketch_width(max(base, 1)),
    )  # (C, m, r)
    if u is None:  # pragma: no cover - hankel_svd returns vectors when asked
        raise RuntimeError("hankel_svd returned no singular vectors")
    return u


def _kung_candidates(u: Tensor, rank: int, reflect: bool) -> tuple[Tensor, Tensor]:
    """Candidate modes of Kung's method from the leading `rank` columns of U (C, m, >= rank):
    shift invariance U[1:] ~ U[:-1] A, poles = eig(A). Returns (C, r) poles and validity."""
    u = u[..., :rank]  # (C, m, r)
    u1, u2 = u[:, :-1], u[:, 1:]  # (C, m-1, r)
    u1t = u1.transpose(-1, -2)  # (C, r, m-1)
    a = _solve(u1t @ u1, u1t @ u2)  # (C, r, r) shift operator
    return _collapse_eigs(torch.linalg.eigvals(a), reflect)  # (C, r) each


def _tail_basis(h: Tensor, order: int, seed: int) -> Tensor | None:
    """ERA basis (C, m', r') of the second half of the ERA window of h (C, L), r' <= 2N, or
    None when that half is too short (under 4 samples) or r' < 1."""
    w = min(h.shape[-1], _ERA_WINDOW)
    if w // 2 < 4:
        return None
    ht = h[:, w // 2 : w]  # (C, W - W/2)
    mt, nt = hankel_shape(ht.shape[1])
    return _era_basis(ht, order, min(2 * order, mt - 1, nt), seed, _TAIL_POWER_ITERS)


def _era_poles(h: Tensor, order: int, seed: int, rank: int | None = None, reflect: bool = False,
               tail: bool = False, basis: Tensor | None = None,
               tail_basis: Tensor | None = None) -> Tensor:
    """Initial log-poles by Kung's method on the window h[:, :W] (realization rank 2N unless
    given; the N modes of largest least-squares energy are kept; unstable ones clamped or
    reflected).
    With tail, the modes of the window's second half are candidates too: they see the slow part
    of the kernel that the fast, large early part otherwise hides.

    Args:
        h: (C, L) float64.
        basis: (C, m, >= r) from _era_basis of this window (computed here when None).
        tail_basis: (C, m', r') from _tail_basis of h (computed here when None and tail).
    Returns:
        (C, order) complex128 log-poles.
    """
    c, length = h.shape
    w = min(length, _ERA_WINDOW)
    hw = h[:, :w]  # (C, W)
    m, n = hankel_shape(w)
    rank = 2 * order if rank is None else rank
    r = min(rank, m - 1, n)
    if r < 1:
        return torch.log(_pad_poles(c, order, h.device))
    u = _era_basis(hw, order, r, seed) if basis is None else basis  # (C, m, >= r)
    cand, valid = _kung_candidates(u, r, reflect)  # (C, r)
    if tail:
        # Shifting the window rescales residues only: its poles are poles of hw as well.
        ut = _tail_basis(h, order, seed) if tail_basis is None else tail_basis  # (C, m', r')
        if ut is not None:
            ct, vt = _kung_candidates(ut, ut.shape[-1], reflect)  # (C, r')
            gap = (ct[:, :, None] - cand[:, None, :]).abs().amin(-1)  # (C, r') to the nearest main
            vt = vt & (gap > 1e-6)  # duplicates add nothing but a singular Gram matrix
            cand, valid = torch.cat([cand, ct], 1), torch.cat([valid, vt], 1)  # (C, r + r')
    poles = _select_modes(hw, cand, valid, order, w)  # (C, order)
    return torch.log(poles)


# ----------------------------------------------------------------------------- refinement


def _vp_state(hb: Tensor, s: Tensor, length: int, h2: Tensor) -> dict[str, Tensor]:
    """Variable-projection quantities at log-poles s over t < length.

    Args:
        hb: (C, 2A, T) from _blocks(h, length, with_t=True); h2: (C,) sum_t h[t]^2.
    Returns:
        a dict with x (C, 2N) residue coefficients [Re R; Im R], f (C,) squared residual,
        jtj (C, 2N, 2N) Kaufman Gauss-Newton matrix, grad (C, 2N) = j^T r (descent direction
        for the [Re s; Im s] parameters).
    """
    n = s.shape[1]
    z, d = _moments(hb, s, length, with_t=True)  # (C, N), (C, N)
    assert d is not None
    tp, tq = _pair_tables(s, length, 2)  # 3 x (C, N, N)
    ones = torch.ones_like(s)  # (C, N)
    gam_a = torch.cat([ones, 1j * ones], dim=1)  # (C, 2N)
    g = _gram_blocks(s, gam_a, gam_a, _rep2(tp[0]), _rep2(tq[0]))  # (C, 2N, 2N)
    b = (gam_a * torch.cat([z, z], dim=1)).real  # (C, 2N)
    solve_g = _ridge_solver(g)  # one factorization of G for x and G^-1 K^T
    x = solve_g(b)  # (C, 2N)
    f = h2 - 2 * (b * x).sum(-1) + (x[:, None, :] @ g @ x[:, :, None])[:, 0, 0]  # (C,)
    res = torch.complex(x[:, :n], x[:, n:])  # (C, N)
    gam_j = torch.cat([res, 1j * res], dim=1)  # (C, 2N): d/dRe s, d/dIm s columns
    kja = _gram_blocks(s, gam_j, gam_a, _rep2(tp[1]), _rep2(tq[1]))  # (C, 2N, 2N) <j, A>
    jj = _gram_blocks(s, gam_j, gam_j, _rep2(tp[2]), _rep2(tq[2]))  # (C, 2N, 2N) <j, j>
    bj = (gam_j * torch.cat([d, d], dim=1)).real  # (C, 2N) <j, h>
    grad = bj - (kja @ x[:, :, None])[..., 0]  # (C, 2N) = j^T r
    # Projected Gauss-Newton matrix j^T (I - P_A) j = jj - K G^-1 K^T.
    gk = solve_g(kja.transpose(-1, -2))  # (C, 2N, 2N) = G^-1 K^T
    jtj = jj - kja @ gk  # (C, 2N, 2N)
    jtj = 0.5 * (jtj + jtj.transpose(-1, -2))
    return {"x": x, "f": f, "jtj": jtj, "grad": grad}


def _clamp_log(s: Tensor) -> Tensor:
    """Keep log-poles inside the disk: Re s in [log _R_MIN, log _R_MAX], Im s wrapped."""
    return torch.complex(s.real.clamp(_S_RE_MIN, _S_RE_MAX), _wrap_imag(s).imag)


def _refine(h: Tensor, s: Tensor, length: int, iters: int, compact: bool = True) -> Tensor:
    """Variable-projection Levenberg-Marquardt on log-poles, batched over channels.

    A channel stops for good when it is frozen (error below _FROZEN_REL), stalled (squared
    error down by less than _STALL_RTOL over _STALL_ITERS iterations) or over-damped: an
    inactive channel's state never changes again, so it cannot become active. With compact,
    stopped channels leave the batch (their log-poles are written out) and every iteration
    computes only the channels still moving; without, all channels are carried to the end
    (the reference the compacted loop is tested against).

    The batch always holds a multiple of _LANES rows (zero-kernel filler rows, or stopped
    channels kept a little longer): torch's elementwise kernels then run their vector loop over
    whole tensors, never the scalar remainder loop (whose transcendental functions round
    differently), so a channel's iterates do not depend on which or how many channels share
    its batch, and compaction changes no result.

    Args:
        h: (C, >= L) float64; s: (C, N) complex128 initial log-poles.
    Returns:
        (C, N) refined log-poles (never worse than s on the window, up to the normal-equation
        resolution).
    """
    if iters <= 0 or s.shape[0] == 0:
        return s
    c, n = s.shape
    out = s.clone()  # (C, N)
    pad = (-c) % _LANES
    rows = torch.cat([torch.arange(c, device=s.device),
                      torch.full((pad,), -1, device=s.device)])  # (C',) chunk row, -1 = filler
    hb = _blocks(torch.cat([h[:, :length], h.new_zeros(pad, length)]), length, with_t=True)  # (C', 2A, T)
    s = torch.cat([s, s[:1].expand(pad, n)])  # (C', N)
    h2 = torch.cat([(h[:, :length] ** 2).sum(-1), h.new_zeros(pad)])  # (C',)
    frozen_at = (_FROZEN_REL**2) * h2  # (C',)
    st = _vp_state(hb, s, length, h2)
    mu = torch.full((len(rows),), 1e-3, dtype=torch.float64, device=s.device)  # (C',)
    hist = torch.empty(len(rows), iters + 1, dtype=torch.float64, device=s.device)  # (C', I + 1)
    hist[:, 0] = st["f"]  # objective per iteration, for the stall test
    for it in range(iters):
        stalled = torch.zeros(len(rows), dtype=torch.bool, device=s.device)  # (C',)
        if it >= _STALL_ITERS:
            stalled = st["f"] > (1.0 - _STALL_RTOL) * hist[:, it - _STALL_ITERS]
        active = (st["f"] > frozen_at) & (mu < 1e12) & ~stalled  # (C',)
        if not bool(active.any()):
            break
        moving = int(active.sum())
        size = -(-moving // _LANES) * _LANES  # rows kept: the moving ones, filled up to _LANES
        if compact and size < len(rows):
            stopped = (~active).nonzero()[:, 0]  # (S,)
            keep = torch.sort(torch.cat([active.nonzero()[:, 0], stopped[: size - moving]])).values
            gone = stopped[size - moving :]  # (G,) leave the batch
            real = gone[rows[gone] >= 0]
            out[rows[real]] = s[real]
            rows, s, mu, hb, h2, frozen_at, hist, active = (
                x[keep] for x in (rows, s, mu, hb, h2, frozen_at, hist, active))
            st = {key: val[keep] for key, val in st.items()}
        jtj = st["jtj"]  # (C', 2N, 2N)
        dg = torch.diagonal(jtj, dim1=-2, dim2=-1).clamp_min(0.0)  # (C', 2N)
        dg = dg + 1e-9 * dg.mean(-1, keepdim=True) + 1e-300  # (C', 2N)
        lhs = jtj + mu[:, None, None] * torch.diag_embed(dg)  # (C', 2N, 2N)
        step = _solve(lhs, st["grad"][..., None])[..., 0]  # (C', 2N)
        # Poles on the radius cap whose step points outward would be clamped back, wasting the
        # step: hold their radius fixed and re-solve for the rest (projected LM, active set).
        held = (s.real >= _S_RE_MAX - 1e-12) & (step[:, :n] > 0)  # (C', N)
        if bool(held.any()):
            fix = torch.cat([held, torch.zeros_like(held)], dim=1)  # (C', 2N)
            keep_col = (~fix).to(lhs.dtype)  # (C', 2N)
            lhs = (lhs * keep_col[:, :, None] * keep_col[:, None, :]
                   + torch.diag_embed(fix.to(lhs.dtype)))
            step = _solve(lhs, (st["grad"] * keep_col)[..., None])[..., 0]  # (C', 2N)
        step = torch.nan_to_num(step).clamp(-1.0, 1.0)  # trust cap on log-pole moves
        s_try = _clamp_log(s + torch.complex(step[:, :n], step[:, n:]))  # (C', N)
        s_try = torch.where(active[:, None], s_try, s)
        st_try = _vp_state(hb, s_try, length, h2)
        better = active & torch.isfinite(st_try["f"]) & (st_try["f"] < st["f"])  # (C',)
        s = torch.where(better[:, None], s_try, s)
        for key in st:
            sel = better.view(-1, *([1] * (st[key].ndim - 1)))
            st[key] = torch.where(sel, st_try[key], st[key])
        mu = torch.where(better, mu / _MU_DOWN, torch.where(active, mu * 4.0, mu))
        hist[:, it + 1] = st["f"]
    real = rows >= 0
    out[rows[real]] = s[real]
    return out


# ----------------------------------------------------------------------------- one chunk


def _channel_chunk(c: int, order: int) -> int:
    """Channels per chunk: at most _CHUNK_CHANNELS and within _CHANNEL_BUDGET, balanced (no
    small remainder chunk, which would cost a full set of iterations for a few channels).
    It depends on C and N only, never on the worker count: the chunks are the same however
    they are distributed, and so are the results (the restart test is per chunk)."""
    per = 8 * (4 * order) ** 2 + 64 * order  # words of work arrays per channel
    most = int(max(1, min(c, _CHUNK_CHANNELS, _CHANNEL_BUDGET // per)))
    chunks = -(-c // most)
    return -(-c // chunks)


def _source_start(h: Tensor, source: Tensor, order: int, length: int) -> Tensor:
    """Log-poles (C, N) from the poles (C, M) of an exact modal realization of h: all M when
    M <= N (padded), else the N of largest least-squares energy (modal truncation)."""
    cand = _stabilize(source)  # (C, M)
    valid = torch.ones(cand.shape, dtype=torch.bool, device=cand.device)  # (C, M)
    return torch.log(_select_modes(h, cand, valid, order, length))  # (C, N)


def _exact_source(h: Tensor, source: Tensor, source_res: Tensor, order: int, float32: bool
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """A source realization of M <= N modes as an N-mode fit: its own poles and residues, then
    N - M filler modes (`_pad_poles`) of zero residue; rounded to complex64 with float32 (exact
    for a source stored in float32 or narrower). Poles outside [_R_MIN, _R_MAX] are stabilized
    (then it is no longer exact, which its error shows); the others are kept bit for bit.

    Args:
        h: (C, L) float64; source, source_res: (C, M) complex128 with h = Re sum R p^t.
    Returns:
        poles, residues (C, N) complex128 and the direct error ||h - h_hat|| (C,).
    """
    c, m = source.shape
    mag = source.abs()  # (C, M)
    inside = (mag >= _R_MIN) & (mag <= _R_MAX)  # (C, M)
    poles = torch.cat([torch.where(inside, source, _stabilize(source)),
                       _pad_poles(c, order - m, h.device)], 1)  # (C, N)
    res = torch.cat([source_res, source_res.new_zeros(c, order - m)], 1)  # (C, N)
    if float32:
        poles = poles.to(torch.complex64).to(torch.complex128)
        res = res.to(torch.complex64).to(torch.complex128)
    return poles, res, _abs_error(h, poles, res)


def _coarse_start(h: Tensor, order: int, seed: int, refine_iters: int) -> Tensor:
    """Log-poles (C, N) for a kernel longer than the ERA window, from the whole of it:
    h[D s] = Re sum R (p^D)^s is modal in the poles q = p^D, so the decimated kernel (every
    D-th sample, D = ceil(L / _ERA_WINDOW), one ERA window long) is fitted as usual and
    p = q^(1/D) (principal root: |q|^(1/D), arg(q) / D). Modes faster than pi / D alias; they
    carry little of a long kernel's energy, and the start is only kept where it scores better."""
    step = -(-h.shape[-1] // _ERA_WINDOW)
    q, _, _ = _fit_chunk(h[:, ::step].contiguous(), order, seed, refine_iters, False)  # (C, N)
    p = torch.polar(q.abs() ** (1.0 / step), torch.angle(q) / step)  # (C, N)
    return _clamp_log(torch.log(_stabilize(p)))  # (C, N)


def _fit_chunk(
    h: Tensor, order: int, seed: int, refine_iters: int, float32: bool,
    source: Tensor | None = None, source_res: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fit one chunk of channels. h (C, L) float64 on the device -> poles, residues (C, N) and
    the direct error ||h - h_hat|| (C,) of exactly those parameters.
    ``source`` (C, M): poles of an exact modal realization of h, one more start; with its
    residues ``source_res`` (C, M) and M <= N, the realization itself is a candidate
    (`_exact_source`), and where it is at the normal equations' resolution (_FROZEN_REL) on
    every channel of the chunk it is the fit: no start or refinement could improve on it."""
    length = h.shape[-1]
    w = min(length, _REFINE_WINDOW)
    exact = None
    if source is not None and source_res is not None and source.shape[1] <= order:
        exact = _exact_source(h, source, source_res, order, float32)
        if bool((_relative(exact[2], h) <= _FROZEN_REL).all()):
            return _f32_guard(h, *exact) if float32 else exact
    ranks = [2 * order] + [a * order + b for (a, b), _, _ in (_RESTARTS if refine_iters > 0 else ())]
    # One Hankel SVD for every ERA start (the restarts' ranks are leading columns of it).
    basis = _era_basis(h[:, : min(length, _ERA_WINDOW)], order, max(ranks), seed)  # (C, m, r)
    s0 = _era_poles(h, order, seed, basis=basis)  # (C, N)
    best = _finish(h, _refine(h, s0, w, refine_iters), float32)
    if refine_iters > 0:
        # The refinement is guided by normal equations, which can mislead it on ill-conditioned
        # pole sets: the ERA start itself is a candidate too, scored directly.
        best = _keep_better(best, _finish(h, s0, float32))
    if source is not None:
        # An SSM source's own modes: exact when M <= N (clustered poles that ERA resolves
        # poorly), a modal-truncation start otherwise.
        s1 = _source_start(h, source, order, w)  # (C, N)
        best = _keep_better(best, _finish(h, _refine(h, s1, w, refine_iters), float32))
    if exact is not None:
        best = _keep_better(best, exact)
    if length > _ERA_WINDOW and refine_iters > 0:
        # Past the ERA window the starts above never see the kernel's tail: a fit of the
        # decimated kernel does. It is scored as it is: refining it again costs a second LM
        # run for little (HyenaDNA, L = 65536, N = 16: worst 1.36e-2 -> 1.28e-2, +30 % time),
        # and on a head-only window (L > _REFINE_WINDOW) trades the tail away again.
        # Channels already at the normal equations' resolution (an exact modal source) skip it.
        rel = _relative(best[2], h)  # (C,)
        idx = (rel > _FROZEN_REL).nonzero()[:, 0]  # (Cb,)
        if idx.numel():
            hb = h[idx]  # (Cb, L)
            merged = _keep_better((best[0][idx], best[1][idx], best[2][idx]),
                                  _finish(hb, _coarse_start(hb, order, seed, refine_iters),
                                          float32))
            best[0][idx], best[1][idx], best[2][idx] = merged
    poles, res, err = best
    if refine_iters > 0:
        poles, res, err = _restart_outliers(h, order, seed, refine_iters, float32, basis,
                                            (poles, res, err))
    if float32:
        poles, res, err = _f32_guard(h, poles, res, err)
    return poles, res, err


def _outliers(err: Tensor, h: Tensor, factor: float = _RESTART_FACTOR) -> Tensor:
    """(C,) bool: channels far worse than the chunk's median (above `factor` times it) and
    above the normal equations' resolution."""
    rel = _relative(err, h)  # (C,)
    return (rel > factor * rel.quantile(0.5)) & (rel > _FROZEN_REL)


def _restart_fits(
    h: Tensor, idx: Tensor, restarts: list[int], order: int, seed: int, refine_iters: int,
    float32: bool, basis: Tensor | None, tail: Tensor | None,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The restarts `restarts` (indices into _RESTARTS) of channels idx of the chunk h, their
    LM runs in batches of restarts within _RESTART_BUDGET.

    Args:
        h: (C, L) float64; idx: (Cb,) channels; basis: the chunk's ERA basis (C, m, r) or
            None; tail: the channels' second-half basis (Cb, m', r') (`_tail_basis`), or None.
    Returns:
        per restart, the finished (poles, residues, error), each (Cb, ...).
    """
    w = min(h.shape[-1], _REFINE_WINDOW)
    hb = h[idx]  # (Cb, L)
    sub = None if basis is None else basis[idx]  # (Cb, m, r)
    starts = [_era_poles(hb, order, seed, a * order + b, reflect, tail=use_tail, basis=sub,
                         tail_basis=tail)
              for (a, b), reflect, use_tail in (_RESTARTS[k] for k in restarts)]  # (Cb, N) each
    cb = idx.numel()
    group = max(1, _RESTART_BUDGET // max(1, 2 * cb * w))  # restarts per LM batch
    out = []
    for g0 in range(0, len(starts), group):
        part = starts[g0 : g0 + group]
        refined = _refine(hb[:, :w].repeat(len(part), 1), torch.cat(part), w,
                          refine_iters)  # (G Cb, N)
        out += [_finish(hb, refined[k * cb : (k + 1) * cb], float32) for k in range(len(part))]
    return out


def _restart_outliers(
    h: Tensor, order: int, seed: int, refine_iters: int, float32: bool, basis: Tensor | None,
    best: tuple[Tensor, Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Outlier channels (`_outliers`) restart from the other ERA starts of _RESTARTS, in order
    (second-half candidates, reflected instead of clamped poles, realizations of other ranks):
    each restart is kept where it scores better, and only channels still outliers go on to
    the next.

    Restarts run in LM batches, each (channel, restart) at most once (rows grouped within
    _RESTART_BUDGET): at the few rows of one restart an LM iteration is mostly fixed cost
    (about 6 ms at 8 rows against 24-30 ms at 64, L = 8192, N = 16), so restarts are batched
    ahead of need, in two stages. The first outliers (and, when _RESTART_FIRST > 1, the
    channels just below the threshold, above _RESTART_NEAR of it, in case the median falls
    enough to make them outliers) run the first _RESTART_FIRST restarts in one batch. A
    channel that is an outlier at a restart it has no fit of (one still far off after the
    first stage, or one that became an outlier later) runs all the restarts left in the batch
    of that step. A row's iterates do not depend on its batch (`_refine`), and neither does a
    channel's second-half basis (computed once per channel, `_tail_basis`), so every restart
    gives what it would alone: the result is that of the one-restart-at-a-time loop, bit for
    bit.
    (Keeping the best of every restart instead lowers the float64 error but can pick fits
    whose modes cancel more than the float32 guard repairs: the double-pole case of
    tests/test_f32_fidelity.py at L = 63 went from a complex64 error of 2.1e-5 to 4.4e-5.)

    Args:
        h: (C, L) float64; basis: the chunk's ERA basis (C, m, r) or None; best: the
            current (poles, residues, error), each (C, ...).
    Returns:
        the updated (poles, residues, error).
    """
    poles, res, err = best
    tails: Tensor | None = None  # (C, m', r') second-half bases, rows filled as needed
    have_tail = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)  # (C,)

    def tail_basis(idx: Tensor) -> Tensor | None:
        """The second-half bases of channels idx (Cb, m', r'), each computed once."""
        nonlocal tails
        need = idx[~have_tail[idx]]  # (Cn,)
        if need.numel():
            got = _tail_basis(h[need], order, seed)  # (Cn, m', r'), None for short kernels
            if got is None:
                return None
            if tails is None:
                tails = got.new_empty(h.shape[0], *got.shape[1:])
            tails[need] = got
            have_tail[need] = True
        return None if tails is None else tails[idx]

    def run(idx: Tensor, restarts: list[int]) -> list[tuple[Tensor, Tensor, Tensor]]:
        tail = tail_basis(idx) if any(_RESTARTS[k][2] for k in restarts) else None
        return _restart_fits(h, idx, restarts, order, seed, refine_iters, float32, basis, tail)

    # Each (channel, restart) runs at most once, in the batch of the step where the channel
    # first needs it: the first outliers (and near ones) the first _RESTART_FIRST restarts;
    # a channel that needs a restart it has no fit of, all the restarts left.
    count = len(_RESTARTS)
    batch = torch.full((h.shape[0], count), -1, dtype=torch.long, device=h.device)  # (C, R)
    row = torch.full_like(batch, -1)  # (C, R) its row there
    batches: list[tuple[int, list[tuple[Tensor, Tensor, Tensor]]]] = []  # (first restart, fits)
    for k in range(count):
        bad = _outliers(err, h)  # (C,) the channels still far off
        if not bool(bad.any()):
            break
        idx = bad.nonzero()[:, 0]  # (Cb,)
        new = idx[batch[idx, k] < 0]  # (Cn,) outliers without a fit of restart k
        stop = count
        if k == 0:
            stop = min(count, _RESTART_FIRST)
            if stop > 1:
                # Channels just below the threshold become outliers when the median falls;
                # they join the first batch, whose rows cost far less than a later batch of a
                # few. Only its restarts 1 .. stop - 1 can serve them (an outlier of step k
                # uses restart k), so with one restart there it would refine them for nothing.
                near = _outliers(err, h, _RESTART_FACTOR * _RESTART_NEAR) & ~bad  # (C,)
                new = torch.sort(torch.cat([new, near.nonzero()[:, 0]])).values  # (Cn,)
        if new.numel():
            batch[new, k:stop] = len(batches)
            row[new, k:stop] = torch.arange(new.numel(), device=h.device)[:, None]
            batches.append((k, run(new, list(range(k, stop)))))
        alt = [x.clone() for x in (poles[idx], res[idx], err[idx])]
        for b, (k0, fits) in enumerate(batches):
            mine = (batch[idx, k] == b).nonzero()[:, 0]  # (Cm,) positions in idx
            if mine.numel():
                for a, f in zip(alt, fits[k - k0], strict=True):
                    a[mine] = f[row[idx[mine], k]]
        poles[idx], res[idx], err[idx] = _keep_better((poles[idx], res[idx], err[idx]),
                                                      (alt[0], alt[1], alt[2]))
    return poles, res, err


def _finish(h: Tensor, s: Tensor, float32: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Stable poles, their residues and the direct error ||h - h_hat||; with float32, the
    parameters are rounded to complex64 (poles before the residue solve) and scored as
    rounded. float32 residues come from the Gram-matrix solve; channels it leaves below
    _GRAM_REL_MIN relative error (where its squared conditioning could show) are solved again
    by the SVD of the basis, and the better of the two is kept."""
    poles = _stabilize(torch.exp(s))  # (C, N)
    if not float32:
        res = _final_residues(h, poles, _F64_LAMBDA, gram=False)  # (C, N)
        return poles, res, _abs_error(h, poles, res)
    poles = poles.to(torch.complex64).to(torch.complex128)  # (C, N)
    res = _final_residues(h, poles, _F32_LAMBDA, gram=True).to(torch.complex64).to(torch.complex128)
    err = _abs_error(h, poles, res)  # (C,)
    fine = (_relative(err, h) < _GRAM_REL_MIN).nonzero()[:, 0]  # (Cf,)
    if fine.numel() and h.shape[1] * 2 * poles.shape[1] <= _LSTSQ_BUDGET:
        hf, pf = h[fine], poles[fine]  # (Cf, L), (Cf, N)
        rf = _final_residues(hf, pf, _F32_LAMBDA, gram=False).to(torch.complex64).to(torch.complex128)
        _, res[fine], err[fine] = _keep_better((pf, res[fine], err[fine]),
                                               (pf, rf, _abs_error(hf, pf, rf)))
    return poles, res, err


def _f32_errors(h: Tensor, poles: Tensor, res: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per channel over the window t < min(L, _F32_WINDOW), relative to ||h[:window]||: the
    float64 error ||h - h_hat64||, the complex64 gap ||h_c64 - h_hat64|| and the complex64
    error ||h - h_c64||, h_c64 the worse of the exp(t log p) and recurrence evaluations
    (`metrics.f32_kernels`).

    Args:
        h: (C, L) float64; poles, res: (C, N) complex128 holding complex64 values.
    Returns:
        three (C,) float64.
    """
    window = min(h.shape[1], _F32_WINDOW)
    hw = h[:, :window]  # (C, W)
    pp, rp = torch.view_as_real(poles.to(torch.complex64)), torch.view_as_real(res.to(torch.complex64))
    h_exp, h_rec = f32_kernels(pp, rp, window)  # (C, W) each
    h64 = torch.empty_like(hw)  # (C, W): Re sum R p^t by the two-level tables
    _, a_len, t_len = _blocks(hw, window, False).shape
    inner, outer = _pole_tables(torch.log(poles), t_len, a_len)  # (C, T, N), (C, A, N)
    coef = torch.conj_physical(res[:, None, :] * outer)  # (C, A, N)
    h64[:] = (_as_real(coef) @ _as_real(inner).transpose(1, 2)).flatten(1)[:, :window]
    gap = torch.maximum(torch.linalg.vector_norm(h_exp - h64, dim=-1),
                        torch.linalg.vector_norm(h_rec - h64, dim=-1))  # (C,)
    e32 = torch.maximum(torch.linalg.vector_norm(hw - h_exp, dim=-1),
                        torch.linalg.vector_norm(hw - h_rec, dim=-1))  # (C,)
    err = torch.linalg.vector_norm(hw - h64, dim=-1)  # (C,)
    return _relative(err, hw), _relative(gap, hw), _relative(e32, hw)


def _f32_bound(h: Tensor, poles: Tensor, res: Tensor, window: int) -> Tensor:
    """A model of the complex64 gap over t < window, relative to ||h[:window]||: per mode the
    evaluation error of `_weighted_residues`' W (u |p|^t (1 + t (1 + |arg p| + |log |p||))),
    times |R|, summed over modes. ||.||_t in closed form (`_geom_sums` at sigma = 2 log |p|).

    Args:
        h: (C, L) float64; poles, res: (C, N) complex128.
    Returns:
        (C,) float64.
    """
    log_mag = torch.log(poles.abs().clamp_min(1e-300))  # (C, N)
    slope = 1.0 + poles.angle().abs() + log_mag.abs()  # (C, N)
    s0, s1, s2 = (x.real for x in _geom_sums(torch.complex(2.0 * log_mag,
                                                           torch.zeros_like(log_mag)),
                                             window, 2))  # (C, N) each
    env = torch.sqrt((s0 + 2.0 * slope * s1 + slope * slope * s2).clamp_min(0.0))  # (C, N)
    num = _F32_LAMBDA * (res.abs() * env).sum(-1)  # (C,)
    return _relative(num, h[:, :window])


def _weighted_residues(h: Tensor, poles: Tensor) -> Tensor:
    """Residues for fixed poles that are accurate *as complex64 engines evaluate them*.

    Minimizes ||h - A x||^2 + ||W x||^2 over the real basis A = [Re p^t, -Im p^t] (L, 2N) by
    the SVD of A W^-1 (filter factors s / (s^2 + 1)). W models the complex64 evaluation error
    of each column per unit coefficient: exp(t log p) with log p rounded to relative u (its
    angle to u |arg p|, the product t log p and the exp to u each) and the recurrence's
    t roundings give an error of u |p|^t (1 + t (1 + |arg p| + |log |p||)), so
    W_n = u ||that||_t for both columns of mode n (u = _F32_LAMBDA). A near-real pole's
    imaginary column, whose norm ~ |Im p| ||t p^t|| is far below W near arg p = pi, gets no
    coefficient; the default penalty (u times the column norm) allowed a huge one.

    Args:
        h: (C, L) float64; poles: (C, N) complex128 (complex64 values).
    Returns:
        (C, N) complex128 residues.
    """
    length = h.shape[1]
    n = poles.shape[1]
    t = torch.arange(length, dtype=torch.float64, device=h.device)  # (L,)
    mag = poles.abs().clamp_min(1e-300)  # (C, N)
    slope = 1.0 + poles.angle().abs() + torch.log(mag).abs()  # (C, N) error growth per step
    env = torch.exp(torch.log(mag)[..., None] * t) * (1.0 + slope[..., None] * t)  # (C, N, L)
    w = _F32_LAMBDA * torch.linalg.vector_norm(env, dim=-1).clamp_min(1e-300)  # (C, N)
    w2 = torch.cat([w, w], dim=1)  # (C, 2N): Re and Im columns of each mode
    t_len = _block_len(length)
    a_len = -(-length // t_len)
    inner, outer = _pole_tables(torch.log(poles), t_len, a_len)  # (C, T, N), (C, A, N)
    v = (outer[:, :, None, :] * inner[:, None, :, :]).flatten(1, 2)[:, :length]  # (C, L, N)
    a = torch.cat([v.real, -v.imag], dim=2) / w2[:, None, :]  # (C, L, 2N) = A W^-1
    u, sv, vh = torch.linalg.svd(a, full_matrices=False)
    coef = (u.transpose(1, 2) @ h[:, :, None])[..., 0] * (sv / (sv * sv + 1.0))  # (C, 2N)
    x = (vh.transpose(1, 2) @ coef[..., None])[..., 0] / w2  # (C, 2N)
    return torch.complex(x[:, :n], x[:, n:])


def _push_angle(p: Tensor, phi: float) -> Tensor:
    """p moved to the angle phi from the real axis it is nearest (same radius, same side):
    arg p -> +-phi near 0, +-(pi - phi) near pi (the sign of Im p, + for real p)."""
    sign = torch.where(p.imag < 0, -1.0, 1.0)  # (...)
    angle = torch.where(p.real >= 0, torch.full_like(p.real, phi),
                        torch.full_like(p.real, math.pi - phi)) * sign  # (...)
    return torch.polar(p.abs(), angle)


def _spread_pairs(p: Tensor, dist: float) -> Tensor | None:
    """Poles (C, N) with each close pair moved apart to ``dist`` in log-pole space: pairs
    (i, j) with 0 < |s_i - s_j| < dist (s = log p, nearest first, each pole in one pair) get
    s_mid +- dist/2 along their own direction, radius capped at _R_MAX. None when no channel
    has such a pair."""
    s = torch.log(p)  # (C, N)
    gap = (s[:, :, None] - s[:, None, :]).abs()  # (C, N, N)
    close = (gap > 0) & (gap < dist)  # (C, N, N)
    if not bool(close.any()):
        return None
    out = s.clone()  # (C, N)
    for c in close.any(-1).any(-1).nonzero()[:, 0].tolist():
        used: set[int] = set()
        pairs = close[c].nonzero().tolist()  # [[i, j], ...] both orders
        for i, j in sorted(pairs, key=lambda ij: float(gap[c, ij[0], ij[1]])):
            if i in used or j in used:
                continue
            used |= {i, j}
            mid, half = (s[c, i] + s[c, j]) / 2, (s[c, i] - s[c, j]) / 2  # complex scalars
            step = half / half.abs() * (dist / 2)
            out[c, i], out[c, j] = mid + step, mid - step
    return _stabilize(torch.exp(out))


def _candidate_scores(h: Tensor, cands: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Complex64-evaluated error (`_f32_errors`) of K candidate (poles, residues) pairs, each
    (C, N), against h (C, L): (K, C). Candidates are stacked along the channel axis so that
    one recurrence loop over the window serves several (its cost is the number of steps), at
    most _F32_ROWS channel rows x modes at a time (bounded (rows, N, chunk) temporaries)."""
    c, n = cands[0][0].shape
    per = max(1, _F32_ROWS // max(1, c * n))  # candidates per batch
    out = []
    for start in range(0, len(cands), per):
        group = cands[start : start + per]
        p = torch.cat([cp for cp, _ in group])  # (G C, N)
        r = torch.cat([cr for _, cr in group])  # (G C, N)
        out.append(_f32_errors(h.repeat(len(group), 1), p, r)[2].view(len(group), c))
    return torch.cat(out)  # (K, C)


def _f32_guard(h: Tensor, poles: Tensor, res: Tensor, err: Tensor
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Re-solve the channels whose complex64 evaluation is far off their float64 kernel.

    Triggered channels (see _F32_GAP_RATIO) get these candidates, all rounded to complex64:
    the residues re-solved with the complex64-error penalty (`_weighted_residues`) and with
    the default penalty made stronger (_STRONGER_RIDGE); near-real poles (|sin arg p| <
    _SNAP_SIN) snapped onto the real axis, with the default residue solve and with the
    penalty; near-real poles moved to each angle of _PUSH_ANGLES from the axis, and close pole
    pairs moved apart to each distance of _SPREAD_DISTANCES, with the penalty.
    Per channel the one with the lowest complex64-evaluated error on the window is kept, the
    fitted parameters included (unchanged bit for bit when no candidate beats them); the
    returned error is the direct float64 one over all of L, as for every fit. Skipped
    (parameters as fitted) where one channel's explicit basis exceeds _LSTSQ_BUDGET
    (L 2N > 2^24, e.g. N = 64 beyond L = 131072).

    Args:
        h: (C, L) float64; poles, res: (C, N) complex128 (complex64 values); err: (C,) direct
        float64 errors ||h - h_hat||.
    """
    length, n = h.shape[1], poles.shape[1]
    if h.shape[0] == 0 or length * 2 * n > _LSTSQ_BUDGET:
        return poles, res, err
    window = min(length, _F32_WINDOW)
    floor = torch.full_like(err, _F32_GAP_MIN)  # (C,) the least gap that can trigger
    if length <= window:  # the window's float64 error is the direct one
        floor = torch.maximum(floor, _relative(err, h) / _F32_GAP_RATIO)
    cancel = res.abs().sum(-1) > _F32_CANCEL * h.abs().amax(-1)  # (C,) the modes cancel
    seen = ((_F32_SCREEN * _f32_bound(h, poles, res, window) > floor)
            & cancel).nonzero()[:, 0]  # (Cs,)
    if not seen.numel():
        return poles, res, err
    e64, gap, _ = _f32_errors(h[seen], poles[seen], res[seen])  # (Cs,) each
    hit = seen[(gap > _F32_GAP_MIN) & (gap * _F32_GAP_RATIO > e64)]  # (Ct,)
    if not hit.numel():
        return poles, res, err
    step = max(1, _LSTSQ_BUDGET // (length * 2 * n))
    for start in range(0, hit.numel(), step):
        idx = hit[start : start + step]  # (Cc,)
        hc, pc = h[idx], poles[idx]  # (Cc, L), (Cc, N)
        near = (pc.imag.abs() < _SNAP_SIN * pc.abs()) & (pc.imag != 0)  # (Cc, N)
        snapped = torch.where(near, torch.complex(pc.real, torch.zeros_like(pc.real)), pc)
        cands = [(pc, _weighted_residues(hc, pc))]
        cands += [(pc, _final_residues(hc, pc, _F32_LAMBDA * k, gram=False))
                  for k in _STRONGER_RIDGE]
        if bool(near.any()):
            cands += [(snapped, _final_residues(hc, snapped, _F32_LAMBDA, gram=True)),
                      (snapped, _weighted_residues(hc, snapped))]
            for phi in _PUSH_ANGLES:
                pushed = torch.where(near, _push_angle(pc, phi), pc)  # (Cc, N)
                pushed = pushed.to(torch.complex64).to(torch.complex128)
                cands.append((pushed, _weighted_residues(hc, pushed)))
        for d in _SPREAD_DISTANCES:
            spread = _spread_pairs(pc, d)  # (Cc, N)
            if spread is not None:
                spread = spread.to(torch.complex64).to(torch.complex128)
                cands.append((spread, _weighted_residues(hc, spread)))
        stored = [(pc, res[idx])] + [(cp, cr.to(torch.complex64).to(torch.complex128))
                                     for cp, cr in cands]  # as stored, the fit's own first
        scores = _candidate_scores(hc, stored)  # (K, Cc)
        best_p, best_r, best_score = pc, res[idx], scores[0]  # (Cc, N), (Cc, N), (Cc,)
        changed = torch.zeros(idx.numel(), dtype=torch.bool, device=h.device)  # (Cc,)
        for (cp, cr), score in zip(stored[1:], scores[1:], strict=True):
            take = (score < best_score) & torch.isfinite(score)  # (Cc,)
            best_p = torch.where(take[:, None], cp, best_p)
            best_r = torch.where(take[:, None], cr, best_r)
            best_score = torch.where(take, score, best_score)
            changed |= take
        if bool(changed.any()):
            sel = idx[changed]  # (Cs,)
            poles[sel], res[sel] = best_p[changed], best_r[changed]
            err[sel] = _abs_error(h[sel], poles[sel], res[sel])
    return poles, res, err


def _keep_better(a: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor]
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Per channel, the (poles, residues, error) with the lower error."""
    take = b[2] < a[2]  # (C,)
    return (torch.where(take[:, None], b[0], a[0]), torch.where(take[:, None], b[1], a[1]),
            torch.where(take, b[2], a[2]))


def _tikhonov_solve(g: Tensor, b: Tensor, lam: float) -> Tensor:
    """argmin ||h - A x||^2 + lam^2 ||S x||^2 from G = A^T A (C, K, K) and b = A^T h (C, K),
    S = diag(column norms): unit-diagonal scaling, then the eigen-decomposition G_s = V M V^T
    gives x_s = V (M + lam^2)^-1 V^T b_s, the SVD filter factors s / (s^2 + lam^2) with
    s^2 = M. Columns of norm <= 1e-12 of the largest get 0 (-Im p^t = 0 for real p).
    G's rounding (~sqrt(L) unit roundoffs on the unit diagonal) is comparable to lam^2 for
    lam = _F32_LAMBDA and moves only the filter of directions that carry almost no output
    (docs/math.md); far above lam^2 for _F64_LAMBDA, whose parameters use the SVD of A."""
    norm = torch.sqrt(torch.diagonal(g, dim1=-2, dim2=-1).clamp_min(0.0))  # (C, K)
    live = norm > 1e-12 * norm.amax(-1, keepdim=True)  # (C, K)
    inv = torch.where(live, 1.0 / torch.where(live, norm, 1.0), 0.0)  # (C, K)
    gs = g * inv[:, :, None] * inv[:, None, :]  # (C, K, K) unit diagonal on live columns
    mu, v = torch.linalg.eigh(0.5 * (gs + gs.transpose(-1, -2)))  # (C, K), (C, K, K)
    coef = (v.transpose(-1, -2) @ (b * inv)[..., None])[..., 0]  # (C, K)
    coef = coef / (mu.clamp_min(0.0) + lam * lam)  # (C, K) Tikhonov filter
    return (v @ coef[..., None])[..., 0] * inv  # (C, K)


def _final_residues(h: Tensor, poles: Tensor, lam: float, gram: bool) -> Tensor:
    """Residues for fixed poles over all of L that stay accurate after rounding.

    Minimizes ||h - A x||^2 + lam^2 ||S x||^2 over the explicit real basis A = [Re p^t, -Im p^t]
    (L, 2N), S = diag(column norms). Rounding each stored coefficient to relative precision u
    adds an output error of about u ||S x|| (columns unit-normalized), so lam = u trades fit
    error against rounding error instead of letting near-collinear poles take huge cancelling
    residues. With gram: G = A^T A by one matrix product over the basis (built from the
    two-level power tables), then `_tikhonov_solve` (for lam = _F32_LAMBDA: its eigenvalue
    errors ~ the unit roundoff are small against lam^2). Else the SVD filter factors
    s / (s^2 + lam^2) of A (conditioning cond(A), not cond(A)^2; needed for lam = _F64_LAMBDA,
    whose lam^2 is far below the unit roundoff). Either when the basis fits in memory; by the
    closed-form normal equations otherwise.

    Args:
        h: (C, L) float64; poles: (C, N) complex128; lam: regularization (relative precision).
    Returns:
        (C, N) complex128 residues.
    """
    c, length = h.shape
    n = poles.shape[1]
    per_channel = length * 2 * n
    if per_channel > _LSTSQ_BUDGET:
        return _solve_residues(h, torch.log(poles), length)[0]
    out = torch.empty_like(poles)  # (C, N)
    step = max(1, _LSTSQ_BUDGET // per_channel)
    t_len = _block_len(length)
    a_len = -(-length // t_len)
    for start in range(0, c, step):
        p = poles[start : start + step]  # (Cc, N)
        hc = h[start : start + step]  # (Cc, L)
        inner, outer = _pole_tables(torch.log(p), t_len, a_len)  # (Cc, T, N), (Cc, A, N)
        v = (outer[:, :, None, :] * inner[:, None, :, :]).flatten(1, 2)[:, :length]  # (Cc, L, N)
        a = torch.cat([v.real, -v.imag], dim=2)  # (Cc, L, 2N)
        if gram:
            g = a.transpose(1, 2) @ a  # (Cc, 2N, 2N)
            rhs = (a.transpose(1, 2) @ hc[:, :, None])[..., 0]  # (Cc, 2N)
            x = _tikhonov_solve(g, rhs, lam)  # (Cc, 2N)
        else:
            norm = torch.linalg.vector_norm(a, dim=1)  # (Cc, 2N)
            live = norm > 1e-12 * norm.amax(-1, keepdim=True)  # (Cc, 2N)
            scale = torch.where(live, norm, 1.0)  # (Cc, 2N)
            a = torch.where(live[:, None, :], a / scale[:, None, :], 0.0)  # (Cc, L, 2N)
            u, sv, vh = torch.linalg.svd(a, full_matrices=False)
            filt = sv / (sv * sv + lam * lam)  # (Cc, 2N) Tikhonov filter factors
            coef = (u.transpose(1, 2) @ hc[:, :, None])[..., 0] * filt  # (Cc, 2N)
            x = (vh.transpose(1, 2) @ coef[..., None])[..., 0] / scale  # (Cc, 2N)
            x = torch.where(live, x, 0.0)  # (Cc, 2N)
        out[start : start + step] = torch.complex(x[:, :n], x[:, n:])
    return out


# ----------------------------------------------------------------------------- public API


def _distinct_rows(h: Tensor) -> tuple[Tensor, Tensor] | None:
    """(first, inverse) when some rows of h (C, L) are exactly equal: h[first] are the distinct
    rows and h = h[first][inverse]; None when all rows differ. A random projection finds the
    candidates; equality is then checked exactly, channel chunk by chunk (bounded memory)."""
    c, length = h.shape
    if c < 2:
        return None
    g = torch.Generator().manual_seed(0)
    w = torch.randn(length, generator=g, dtype=torch.float64).to(h.device)  # (L,)
    key = torch.stack([h @ w, h.sum(-1)], dim=1)  # (C, 2)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # (C,)
    groups = int(inverse.max()) + 1
    if groups == c:
        return None
    first = torch.full((groups,), c, dtype=torch.long, device=h.device)  # (U,)
    first = first.scatter_reduce(0, inverse, torch.arange(c, device=h.device), "amin")
    step = max(1, _SIGNAL_BUDGET // max(1, length))
    for start in range(0, c, step):
        rep = h[first[inverse[start : start + step]]]  # (Cc, L)
        if not torch.equal(rep, h[start : start + step]):
            return None  # a projection collision between different rows: fit all
    return first.cpu(), inverse.cpu()


def _fit_chunk_job(
    h: np.ndarray, order: int, seed: int, refine_iters: int, float32: bool,
    source: np.ndarray | None, source_res: np.ndarray | None, device: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_fit_chunk` on arrays, for a worker process: (C, L) float64 kernels (and (C, M) source
    poles and residues) in, poles and residues (C, N) complex128 and the direct error (C,) out."""
    dev = torch.device(device)
    hc = torch.from_numpy(h).to(dev)  # (C, L)
    src, src_res = (None if x is None else torch.from_numpy(x).to(dev)
                    for x in (source, source_res))  # (C, M) each
    poles, res, err = _fit_chunk(hc, order, seed, refine_iters, float32, src, src_res)
    return poles.cpu().numpy(), res.cpu().numpy(), err.cpu().numpy()


def fit_modal(
    h: Tensor,
    order: int,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    refine_iters: int = _REFINE_ITERS,
    progress: Callable[[int, int], None] | None = None,
    float32: bool = True,
    source: Tensor | None = None,
    source_residues: Tensor | None = None,
    workers: int | None = None,
) -> FitResult:
    """Fit every channel of h with an `order`-mode modal kernel (ERA + variable-projection LM).

    Identical channels (grouped filters stored once per group, e.g. Evo 2 Hyena-MR) are fitted
    once and share the result.

    Args:
        h: (C, L) real kernels (computed in float64).
        order: N complex modes, 1 <= N <= L - 1.
        device: where to compute (default: h's device); results are returned on the CPU.
        seed: seed of the randomized Hankel SVD (results are deterministic per seed and device).
        refine_iters: Levenberg-Marquardt iterations (0 = ERA + least squares only).
        progress: called as progress(channels_done, channels_total) after each chunk.
        float32: return parameters that are exactly representable in complex64 (the stored
            format) and scored as such: poles rounded before the residue solve, residues
            regularized against rounding and then rounded (the default). This limits the
            attainable error to ~1e-7..1e-6 relative for slowly decaying modes. False keeps
            float64 parameters (e.g. to check exact recovery to ~1e-10).
        source: (C, M) complex poles of an exact modal realization h = Re sum R p^t (an
            SSM-parameterised layer, see ``Materializer.modes``): one more start per channel,
            kept where it scores better.
        source_residues: (C, M) complex residues of that realization. With M <= N the
            realization itself, padded with zero-residue modes, is a candidate; a chunk of
            channels that it reproduces to the normal equations' resolution (relative error
            <= 1e-7, e.g. a layer that already is an M-mode diagonal SSM stored in float32)
            keeps it as its fit without ERA or refinement.
        workers: None or 1 = fit here, with one torch thread (numerics.parallel.one_thread;
            the caller's count is restored after); 0 = one worker process per core
            (os.sched_getaffinity); n >= 2 = n worker processes with one torch thread each,
            CPU only. The channels are cut into the same chunks whatever the count (from C
            and N alone), so the results do not depend on it: bit for bit the same.
    Returns:
        FitResult with poles/residues (C, N) complex128, rel_l2 (C,) of exactly these
        parameters (computed directly in float64), method "era+vp-lm", or "source
        realization" where every channel's fit is the source's own (``source_residues``).
    Raises:
        LcdError: bad kernel tensor, order out of range, bad worker count, or workers > 1 on a
            non-CPU device.
    """
    h = _check_kernel(h)
    c, length = h.shape
    _check_order(order, length)
    if source is not None and (source.ndim != 2 or source.shape[0] != c):
        raise LcdError(f"source poles must be ({c}, M), got {tuple(source.shape)}")
    if source_residues is not None and (source is None or source_residues.shape != source.shape):
        want = "given with the source poles" if source is None else f"{tuple(source.shape)}"
        raise LcdError(f"source residues must be {want}, got {tuple(source_residues.shape)}")
    count = resolve_workers(workers)
    dev = torch.device(device) if device is not None else h.device
    if count > 1 and dev.type != "cpu":
        raise LcdError(f"worker processes fit on the CPU, not on {dev}", key="workers",
                       hint="use workers=1 with a GPU device")
    rows = _distinct_rows(h)
    if rows is not None:
        first, inverse = rows
        sub = fit_modal(h[first], order, device=device, seed=seed, refine_iters=refine_iters,
                        progress=progress, float32=float32,
                        source=None if source is None else source[first],
                        source_residues=None if source_residues is None else source_residues[first],
                        workers=workers)
        return FitResult(poles=sub.poles[inverse], residues=sub.residues[inverse],
                         rel_l2=sub.rel_l2[inverse], method=sub.method, order=order)
    step = _channel_chunk(c, order) if c else 1
    bounds = [(start, min(start + step, c)) for start in range(0, c, step)]
    if count > 1:
        h_cpu = h.cpu()
        src_cpu = [None if x is None else x.to("cpu", torch.complex128)
                   for x in (source, source_residues)]  # (C, M) each
        jobs = [(h_cpu[a:b].numpy(), order, seed, refine_iters, float32,
                 *(None if x is None else x[a:b].numpy() for x in src_cpu), "cpu")
                for a, b in bounds]
        fn: Callable[..., tuple] = _fit_chunk_job
    else:
        h_dev = h.to(dev)
        src_dev = [None if x is None else x.to(dev, torch.complex128)
                   for x in (source, source_residues)]  # (C, M) each
        jobs = [(h_dev[a:b], order, seed, refine_iters, float32,
                 *(None if x is None else x[a:b] for x in src_dev)) for a, b in bounds]
        fn = _fit_chunk
    done = [0]

    def report(i: int) -> None:
        done[0] += bounds[i][1] - bounds[i][0]
        if progress is not None:
            progress(done[0], c)

    results = run_jobs(fn, jobs, count, report)
    as_t = (lambda x: torch.as_tensor(x).cpu()) if count > 1 else (lambda x: x.cpu())
    poles = torch.cat([as_t(r[0]) for r in results]) if results else torch.empty(0, order,
                                                                                 dtype=torch.complex128)
    residues = torch.cat([as_t(r[1]) for r in results]) if results else torch.empty_like(poles)
    err = torch.cat([as_t(r[2]) for r in results]) if results else torch.empty(0, dtype=torch.float64)
    rel = _relative(err, h.cpu())  # (C,) relative to the layer's largest channel norm
    method = "era+vp-lm"
    if source is not None and source_residues is not None and _is_realization(
            poles, residues, source, source_residues, float32):
        method = "source realization"
    return FitResult(poles=poles, residues=residues, rel_l2=rel, method=method, order=order)


def _is_realization(poles: Tensor, residues: Tensor, source: Tensor, source_res: Tensor,
                    float32: bool) -> bool:
    """Whether a fit (C, N) is the source realization (C, M <= N) itself on every channel (as
    stored: rounded to complex64 with float32), padded with zero-residue modes."""
    m = source.shape[1]
    if m > poles.shape[1] or poles.shape[0] == 0:
        return False
    src, src_res = (x.to("cpu", torch.complex128) for x in (source, source_res))  # (C, M)
    if float32:
        src, src_res = (x.to(torch.complex64).to(torch.complex128) for x in (src, src_res))
    return (torch.equal(poles[:, :m], src) and torch.equal(residues[:, :m], src_res)
            and bool((residues[:, m:] == 0).all()))


def fit_modal_to_tolerance(
    h: Tensor, tol: float, max_order: int, *, workers: int | None = None,
    on_step: Callable[[str], None] | None = None, **kw: object
) -> FitResult:
    """Smallest order whose worst channel meets rel_l2 <= tol, by bisection on the order.

    Fits max_order first; if even that misses tol, that fit is returned (check rel_l2). Else
    bisects on [1, max_order], assuming the error falls with the order (the returned order
    meets tol; a smaller order could too if the error is not monotone).

    Args:
        h: (C, L) kernels; tol: relative l2 tolerance on the max over channels;
        max_order: largest order tried; workers: as in fit_modal (the worker processes are
        started once and kept for every order tried); on_step: called with a short message as
        each fit's chunks finish and after each fit (its order and worst error); kw: passed to
        fit_modal.
    """
    h = _check_kernel(h)
    _check_order(max_order, h.shape[-1])
    fits = 1 + math.ceil(math.log2(max_order)) if max_order > 1 else 1  # at most
    count = [0]

    def fit_at(order: int) -> FitResult:
        count[0] += 1
        what = f"bisection fit {count[0]}/<={fits} at N={order}"
        chunks = None if on_step is None else (
            lambda done, total: on_step(f"{what}: {done}/{total} channels"))
        res = fit_modal(h, order, workers=workers, progress=chunks, **kw)  # type: ignore[arg-type]
        worst = float(res.rel_l2.max())
        if on_step is not None:
            on_step(f"{what}: worst rel_l2 {worst:.2e} {'meets' if worst <= tol else 'misses'} "
                    f"tol {tol:g}")
        return res

    best = fit_at(max_order)
    if float(best.rel_l2.max()) > tol:
        return best
    lo, hi = 0, max_order
    while hi - lo > 1:
        mid = (lo + hi) // 2
        res = fit_at(mid)
        if float(res.rel_l2.max()) <= tol:
            hi, best = mid, res
        else:
            lo = mid
    return best


__all__ = ["FitResult", "fit_modal", "fit_modal_to_tolerance", "rel_l2_error"]
