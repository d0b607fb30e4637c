"""Fit long-convolution kernels with real-pole modal kernels: poles on (0, 1), real residues.

Dimensions:
    C  channels (independent kernels; fitted in chunks of <= _CHUNK_CHANNELS)
    N  real modes per channel (state size N)
    M  poles of a start before selection (candidates, or an SSM source's own modes)
    L  kernel length (W: the refinement window, min(L, _REFINE_WINDOW))
    B  time-block length of the blocked full-length passes (_TIME_BLOCK)
    m  Hankel rows of the subspace step's window

Model: h_hat[c, t] = sum_n r[c, n] p[c, n]^t with 0 < p < 1 and r real, p = exp(s), s < 0 the
log-pole. This is the class of Evo 2's Hyena-LI filters and the only one the vortex engine runs
(it stores real ``log_poles`` and real ``residues``): a kernel that oscillates cannot be matched
by it, so its error can lie far above the complex fit's (``lcd_cli.numerics.fit``) at the same
order. The model is linear in r over the columns e_n[t] = p_n^t.

Method:
1. Starts (each refined, the best kept per channel):
   a. Kung's subspace method (Kung 1978; ERA, Juang & Pappa 1985) on the window h[:W_e], of
      realization rank N and 2N (then the N of largest least-squares energy are kept):
      leading left singular vectors of the Hankel matrix (``numerics.hankel.hankel_svd``),
      shift invariance U[1:] ~ U[:-1] A, candidates eig(A) mapped onto the real axis by their
      modulus (a conjugate pair's decay rate is the closest real-pole description of it),
      clamped into [_R_MIN, _R_MAX];
   b. a geometric grid of decay rates from 1/L to _GRID_RATE_MAX (no information about the
      kernel; robust where the subspace step sees mostly oscillation);
   c. an SSM source's own poles where they are real and positive (Evo 2 LI: exactly the
      source's modes; with M > N the N of largest least-squares energy, modal truncation);
   d. the moduli of another fit's poles when given (``start``: `lcd distill --poles real`
      passes the unconstrained complex fit at the same order, whose poles on real-modal
      kernels are mostly real already).
2. Residues: real linear least squares for fixed poles, regularized for float32 evaluation:
   min ||h - E r||^2 + lam^2 ||S r||^2 (S = diag of E's column norms, lam = _EVAL_LAMBDA), by
   the SVD of the augmented system [E S^-1; lam I] (Tikhonov 1963): real exponentials with
   close rates are nearly collinear and fit t p^t-like shapes with large cancelling residues,
   which an engine's float32 sums amplify; the normal equations would square the conditioning.
3. Refinement: Levenberg-Marquardt on the real log-poles s with variable projection (Golub &
   Pereyra 1973; Kaufman 1975 Jacobian J = -(I - P) (t E) diag(r), P the projector of the
   augmented basis, S held fixed in J) on the regularized objective, batched over channels,
   per-channel damping, a step accepted only where it lowers the objective, s clamped into
   [log _R_MIN, log _R_MAX] so the poles stay strictly inside (0, 1) and their logs finite.
   Channels far above the chunk's median error then restart from their best poles with
   log-normally perturbed decay rates (_RESTARTS rounds, seeded), the better kept.
4. Storage: poles rounded to float32, residues solved over the full length L for exactly those
   poles with the same regularization (Gram matrix accumulated over time blocks, eigen-
   decomposition of its unit-diagonal scaling), rounded too; the error of exactly these stored
   values is computed directly over L.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.numerics.finite import all_finite
from lcd_cli.numerics.fit import FitResult, rel_l2_error
from lcd_cli.numerics.hankel import hankel_shape, hankel_svd
from lcd_cli.numerics.parallel import one_thread

_R_MAX = 1.0 - 1e-6  # pole cap: strictly below 1, also after float32 rounding
_R_MIN = 1e-6  # pole floor: strictly above 0, so log p is finite
_S_MAX = math.log(_R_MAX)
_S_MIN = math.log(_R_MIN)
_ERA_WINDOW = 4096  # samples of the subspace step
_EXACT_ROWS = 256  # dense Hankel SVD up to this many rows, randomized above
_REFINE_WINDOW = 8192  # samples of the refinement (the final residues use all of L)
_REFINE_ITERS = 100
_MU0 = 1e-3  # initial Levenberg-Marquardt damping
_MU_DOWN = 3.0  # damping divisor after an accepted step (x4 after a rejection)
_MU_MAX = 1e12  # a channel whose damping passes this has stopped
_STEP_MAX = 1.0  # trust cap on one log-pole move
_FROZEN_REL = 1e-9  # channels below this relative error stop refining
_STALL_ITERS = 8  # a channel stops when its squared error fell by less than
_STALL_RTOL = 1e-4  # this fraction over the last _STALL_ITERS iterations
_RCOND = 1e-13  # relative singular-value cut-off of the window least squares
_GRID_RATE_MAX = 3.0  # fastest decay rate (-log p) of the grid start
# Residue regularization for float32 parameters run in float32 (the refinement's objective and
# the final residues): 16 unit roundoffs, the evaluation noise of an engine's sum over modes
# (exp(t log p), products, FFT) per unit of ||S r||. Real exponentials of close rates fit
# t p^t-like shapes by large cancelling residues; unregularized, an order-8 fit of an Evo 2-like
# layer took ||S r|| ~ 1e4 ||h|| and the engine's float32 paths then disagreed at ~1e-3 of h.
_EVAL_LAMBDA = 2.0**-20
_F64_LAMBDA = 1e-13  # the same for float64 parameters
_RESTARTS = 6  # rounds of perturbed restarts for outlier channels
_RESTART_FACTOR = 2.0  # a channel is an outlier above this multiple of the chunk's median error
_RESTART_SPREAD = 0.7  # log-normal spread of the restarts' decay rates
_RESTART_FLOOR = 1e-6  # no restart below this relative error (float32 storage precision)
_TIME_BLOCK = 4096  # samples per block of the full-length passes
_CHUNK_CHANNELS = 64  # most channels per chunk
_CHUNK_WORDS = 1 << 22  # float64 words of one chunk's (C, W, N) basis and its products


def _check(h: Tensor, order: int) -> Tensor:
    if not isinstance(h, Tensor) or h.ndim != 2 or h.is_complex():
        raise LcdError("kernels must be a real (channels, length) tensor")
    h = h.to(torch.float64)
    if h.numel() and not all_finite(h):
        raise LcdError("kernels contain NaN or Inf", hint="check the checkpoint or the config")
    length = h.shape[1]
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= length - 1:
        raise LcdError(f"order {order!r} is out of range: valid orders are 1 to {length - 1} "
                       f"for kernels of length {length}", key="order")
    return h


def _basis(s: Tensor, length: int, start: int = 0) -> Tensor:
    """E[c, t, n] = exp(s[c, n] (start + t)) for t < length: (C, length, N) float64."""
    t = torch.arange(start, start + length, dtype=torch.float64, device=s.device)  # (T,)
    return torch.exp(s[:, None, :] * t[None, :, None])


def _lstsq(e: Tensor, h: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Regularized least-squares residues: min ||h - e r||^2 + lam^2 ||S r||^2, S = diag of
    the column norms of e (C, W, N), as the plain least squares of the augmented system
    [e S^-1; lam I] (S r) = [h; 0] by its SVD (singular values >= lam, cut-off _RCOND).

    Returns r (C, N), U (C, W + N, N) of the augmented basis (cut-off columns zeroed), its
    residual (C, W + N) (the fit residual above the penalty lam S r) and S (C, N)."""
    c, w, n = e.shape
    norm = torch.linalg.vector_norm(e, dim=1).clamp_min(1e-300)  # (C, N)
    eye = lam * torch.eye(n, dtype=e.dtype, device=e.device).expand(c, n, n)  # (C, N, N)
    aug = torch.cat([e / norm[:, None, :], eye], dim=1)  # (C, W + N, N)
    u, sv, vh = torch.linalg.svd(aug, full_matrices=False)
    keep = sv > _RCOND * sv[:, :1]  # (C, N)
    u = u * keep[:, None, :]  # (C, W + N, N)
    rhs = torch.cat([h, h.new_zeros(c, n)], dim=1)  # (C, W + N)
    coef = (u[:, :w].transpose(1, 2) @ h[:, :, None])[..., 0]  # (C, N)
    inv = torch.where(keep, 1.0 / torch.where(keep, sv, 1.0), 0.0)  # (C, N)
    r = (vh.transpose(1, 2) @ (coef * inv)[..., None])[..., 0] / norm  # (C, N)
    resid = rhs - (u @ coef[..., None])[..., 0]  # (C, W + N)
    return r, u, resid, norm


def _refine(h: Tensor, s: Tensor, iters: int, lam: float) -> Tensor:
    """Variable-projection Levenberg-Marquardt on real log-poles.

    A channel stops for good when frozen (error below _FROZEN_REL), stalled (squared error down
    by less than _STALL_RTOL over _STALL_ITERS iterations) or over-damped (mu > _MU_MAX); each
    iteration computes the channels still moving only (a channel's iterates do not depend on
    the others).

    Args:
        h: (C, W) float64 window; s: (C, N) float64 initial log-poles.
    Returns:
        (C, N) log-poles, never worse than s on the window.
    """
    if iters <= 0 or s.shape[0] == 0:
        return s
    w = h.shape[1]
    t = torch.arange(w, dtype=torch.float64, device=h.device)  # (W,)
    frozen = (_FROZEN_REL**2) * (h * h).sum(-1)  # (C,)

    def state(s_: Tensor, h_: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e = _basis(s_, w)  # (Ca, W, N)
        r, u, resid, _ = _lstsq(e, h_, lam)
        te = e * t[None, :, None] * r[:, None, :]  # (Ca, W, N) d(E r)/ds, S held fixed
        te = torch.cat([te, te.new_zeros(te.shape[0], te.shape[2], te.shape[2])], dim=1)
        j = te - u @ (u.transpose(1, 2) @ te)  # (Ca, W + N, N) = (I - P) t E diag(r)
        return (resid * resid).sum(-1), j, resid  # f (Ca,), J, residual (Ca, W + N)

    s = s.clone()
    f, j, resid = state(s, h)
    mu = torch.full_like(f, _MU0)  # (C,)
    hist = [f.clone()]  # objective per iteration, for the stall test
    live = torch.ones_like(f, dtype=torch.bool)  # (C,) channels still refining
    for it in range(iters):
        live &= (f > frozen) & (mu < _MU_MAX)
        if it >= _STALL_ITERS:
            live &= f <= (1.0 - _STALL_RTOL) * hist[it - _STALL_ITERS]
        idx = live.nonzero()[:, 0]  # (Ca,)
        if idx.numel() == 0:
            break
        ja, ra = j[idx], resid[idx]  # (Ca, W, N), (Ca, W)
        jtj = ja.transpose(1, 2) @ ja  # (Ca, N, N)
        g = (ja.transpose(1, 2) @ ra[:, :, None])[..., 0]  # (Ca, N): -grad f / 2 along +s
        dg = torch.diagonal(jtj, dim1=-2, dim2=-1).clamp_min(0.0)  # (Ca, N)
        dg = dg + 1e-9 * dg.mean(-1, keepdim=True) + 1e-300
        lhs = jtj + mu[idx, None, None] * torch.diag_embed(dg)  # (Ca, N, N)
        step = torch.linalg.lstsq(lhs, g[..., None]).solution[..., 0]  # (Ca, N)
        step = torch.nan_to_num(step).clamp(-_STEP_MAX, _STEP_MAX)
        s_try = (s[idx] + step).clamp(_S_MIN, _S_MAX)  # (Ca, N)
        f_try, j_try, r_try = state(s_try, h[idx])
        better = torch.isfinite(f_try) & (f_try < f[idx])  # (Ca,)
        take = idx[better]  # (Cb,)
        s[take], f[take] = s_try[better], f_try[better]
        j[take], resid[take] = j_try[better], r_try[better]
        mu[idx] = torch.where(better, mu[idx] / _MU_DOWN, mu[idx] * 4.0)
        hist.append(f.clone())
    return s


def _select(h: Tensor, cand: Tensor, order: int) -> Tensor:
    """The `order` candidate poles (C, M) of largest least-squares energy r^2 sum_t p^2t,
    padded from the grid when M < order: (C, order) log-poles."""
    c, m = cand.shape
    w = h.shape[1]
    cand = cand.clamp(_R_MIN, _R_MAX)
    if m < order:
        cand = torch.cat([cand, torch.exp(_grid(c, order - m, w, h.device))], dim=1)
        return torch.log(cand)
    r, _, _, _ = _lstsq(_basis(torch.log(cand), w), h, _F64_LAMBDA)  # (C, M)
    p2 = cand * cand  # (C, M)
    energy = r * r * -torch.expm1(w * torch.log(p2)) / -torch.expm1(torch.log(p2))  # (C, M)
    idx = torch.topk(torch.nan_to_num(energy, nan=-1.0), order, dim=1).indices  # (C, N)
    return torch.log(torch.gather(cand, 1, idx))


def _grid(c: int, order: int, length: int, device: torch.device) -> Tensor:
    """Log-poles of a geometric grid of decay rates from 1/L to _GRID_RATE_MAX: (C, order)."""
    lo, hi = math.log(1.0 / max(length, 2)), math.log(_GRID_RATE_MAX)
    k = torch.arange(order, dtype=torch.float64, device=device)  # (N,)
    rate = torch.exp(lo + (hi - lo) * (k + 0.5) / order)  # (N,)
    return (-rate).clamp(_S_MIN, _S_MAX).expand(c, order).clone()


def _kung(h: Tensor, order: int, seed: int, rank: int) -> Tensor:
    """Real log-poles (C, N) from Kung's method of realization rank `rank` on the window
    h[:, :W_e] (module docstring), the N of largest energy kept."""
    c, length = h.shape
    w = min(length, _ERA_WINDOW)
    m, n = hankel_shape(w)
    r = min(rank, m - 1, n)
    if r < 1:
        return _grid(c, order, length, h.device)
    u, _, _, _ = hankel_svd(h[:, :w], r, exact_max_rows=_EXACT_ROWS, seed=seed)  # (C, m, r)
    assert u is not None
    u1, u2 = u[:, :-1], u[:, 1:]  # (C, m - 1, r)
    a = torch.linalg.lstsq(u1, u2).solution  # (C, r, r) shift operator
    lam = torch.linalg.eigvals(a).abs()  # (C, r) decay per step of each mode
    return _select(h[:, : min(length, _REFINE_WINDOW)], lam, order)


def _finish(h: Tensor, s: Tensor, float32: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Poles (C, N) float64 (float32-exact with float32), their residues (C, N) over all of L
    (Tikhonov-regularized for the stored precision, rounded with float32) and the direct error
    ||h - h_hat|| (C,) of exactly these values."""
    c, length = h.shape
    p = torch.exp(s.clamp(_S_MIN, _S_MAX))  # (C, N)
    if float32:
        p = p.to(torch.float32).clamp(_R_MIN, _R_MAX).to(torch.float64)
    lp = torch.log(p)  # (C, N)
    n = p.shape[1]
    gram = h.new_zeros(c, n, n)  # (C, N, N)
    rhs = h.new_zeros(c, n)  # (C, N)
    for t0 in range(0, length, _TIME_BLOCK):
        e = _basis(lp, min(_TIME_BLOCK, length - t0), t0)  # (C, B, N)
        gram += e.transpose(1, 2) @ e
        rhs += (e.transpose(1, 2) @ h[:, t0 : t0 + e.shape[1], None])[..., 0]
    lam = _EVAL_LAMBDA if float32 else _F64_LAMBDA
    norm = torch.sqrt(torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0.0))  # (C, N)
    inv = 1.0 / norm.clamp_min(1e-300)  # (C, N)
    gs = gram * inv[:, :, None] * inv[:, None, :]  # (C, N, N) unit diagonal
    ev, v = torch.linalg.eigh(0.5 * (gs + gs.transpose(1, 2)))  # (C, N), (C, N, N)
    coef = (v.transpose(1, 2) @ (rhs * inv)[..., None])[..., 0] / (ev.clamp_min(0.0) + lam * lam)
    r = (v @ coef[..., None])[..., 0] * inv  # (C, N)
    if float32:
        r = r.to(torch.float32).to(torch.float64)
    err2 = h.new_zeros(c)  # (C,)
    for t0 in range(0, length, _TIME_BLOCK):
        e = _basis(lp, min(_TIME_BLOCK, length - t0), t0)  # (C, B, N)
        d = h[:, t0 : t0 + e.shape[1]] - (e @ r[..., None])[..., 0]  # (C, B)
        err2 += (d * d).sum(-1)
    return p, r, err2.sqrt()


def _keep_better(a: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor]
                 ) -> tuple[Tensor, Tensor, Tensor]:
    take = b[2] < a[2]  # (C,)
    return (torch.where(take[:, None], b[0], a[0]), torch.where(take[:, None], b[1], a[1]),
            torch.where(take, b[2], a[2]))


def _real_source(source: Tensor | None) -> Tensor | None:
    """An SSM source's poles (C, M) as real values in (0, 1) when every one of them is real
    and positive, else None (a complex source is no real-pole start)."""
    if source is None:
        return None
    src = source.to(torch.complex128)
    if bool((src.imag != 0).any()) or bool((src.real <= 0).any()):
        return None
    return src.real


def _fit_chunk(h: Tensor, order: int, seed: int, iters: int, float32: bool,
               source: Tensor | None, start: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk (C, L): poles, residues (C, N) float64 and the direct error (C,)."""
    c, length = h.shape
    hw = h[:, : min(length, _REFINE_WINDOW)]  # (C, W)
    starts = [_kung(h, order, seed, order), _kung(h, order, seed, 2 * order),
              _grid(c, order, hw.shape[1], h.device)]
    if source is not None:
        starts.insert(0, _select(hw, source, order))
    if start is not None:
        starts.insert(0, _select(hw, start, order))
    best: tuple[Tensor, Tensor, Tensor] | None = None
    lam = _EVAL_LAMBDA if float32 else _F64_LAMBDA
    for s0 in starts:
        s0 = s0.clamp(_S_MIN, _S_MAX)
        for s in ((s0, _refine(hw, s0, iters, lam)) if iters > 0 else (s0,)):
            got = _finish(h, s, float32)
            best = got if best is None else _keep_better(best, got)
    assert best is not None
    if iters <= 0:
        return best
    # Outliers (far above the chunk's median) restart from their best poles with each decay
    # rate scaled by exp(_RESTART_SPREAD z), z ~ N(0, 1) seeded: the real-pole objective has
    # many local minima in the rates; each restart is kept where it scores better.
    norm = torch.linalg.vector_norm(h, dim=-1).clamp_min(1e-300)  # (C,)
    g = torch.Generator().manual_seed(seed)
    for _ in range(_RESTARTS):
        rel = best[2] / norm  # (C,)
        bad = ((rel > _RESTART_FACTOR * rel.quantile(0.5)) & (rel > _RESTART_FLOOR)).nonzero()[:, 0]
        if bad.numel() == 0:
            break
        rate = -torch.log(best[0][bad])  # (Cb, N) decay rates of the best poles
        z = torch.randn(rate.shape, generator=g, dtype=torch.float64).to(h.device)  # (Cb, N)
        s0 = (-rate * torch.exp(_RESTART_SPREAD * z)).clamp(_S_MIN, _S_MAX)  # (Cb, N)
        got = _finish(h[bad], _refine(hw[bad], s0, iters, lam), float32)
        merged = _keep_better((best[0][bad], best[1][bad], best[2][bad]), got)
        for part, value in zip(best, merged, strict=True):
            part[bad] = value
    return best


def fit_real_modal(h: Tensor, order: int, *, device: str | torch.device | None = None,
                   seed: int = 0, refine_iters: int = _REFINE_ITERS, float32: bool = True,
                   source: Tensor | None = None, start: Tensor | None = None) -> FitResult:
    """Fit every channel of h with `order` real modes, poles in (0, 1), real residues.

    Args:
        h: (C, L) real kernels (computed in float64).
        order: N real modes, 1 <= N <= L - 1.
        device: where to compute (default: h's device); results are returned on the CPU.
        seed: seed of the randomized Hankel SVD (long windows).
        refine_iters: Levenberg-Marquardt iterations (0: starts + least squares only).
        float32: parameters exactly representable in float32 and scored as such (default).
        source: (C, M) poles of an exact modal realization of h; used as a start when they
            are all real and positive (Evo 2 Hyena-LI), ignored otherwise.
        start: (C, M) poles of another fit of h (e.g. the complex fit at this order): their
            moduli are one more start (the N of largest energy when M > N).
    Returns:
        FitResult with poles (C, N) complex128 of zero imaginary part, 0 < p < 1, residues
        (C, N) complex128 of zero imaginary part, rel_l2 (C,) of exactly these values,
        method "real:era+vp-lm".
    """
    h = _check(h, order)
    c, length = h.shape
    for name, poles in (("source", source), ("start", start)):
        if poles is not None and (poles.ndim != 2 or poles.shape[0] != c):
            raise LcdError(f"{name} poles must be ({c}, M), got {tuple(poles.shape)}")
    dev = torch.device(device) if device is not None else h.device
    src = _real_source(source)
    w = min(length, _REFINE_WINDOW)
    per = max(1, _CHUNK_WORDS // max(1, 4 * w * order))
    step = max(1, min(_CHUNK_CHANNELS, per))
    poles, residues, err = [], [], []
    with one_thread():  # small batched solves: MKL threads cost more than they gain
        for a in range(0, c, step):
            hc = h[a : a + step].to(dev)  # (Cc, L)
            sc = None if src is None else src[a : a + step].to(dev)  # (Cc, M)
            st = None if start is None else start[a : a + step].abs().to(dev, torch.float64)
            p, r, e = _fit_chunk(hc, order, seed, refine_iters, float32, sc, st)
            poles.append(p.cpu())
            residues.append(r.cpu())
            err.append(e.cpu())
    p_all = torch.cat(poles) if poles else torch.empty(0, order, dtype=torch.float64)
    r_all = torch.cat(residues) if residues else torch.empty(0, order, dtype=torch.float64)
    e_all = torch.cat(err) if err else torch.empty(0, dtype=torch.float64)
    norm = torch.linalg.vector_norm(h, dim=-1)  # (C,)
    tiny = 1e-12 * norm.max() if norm.numel() else norm.new_tensor(0.0)
    den = torch.maximum(norm, tiny)  # (C,)
    rel = torch.where(den > 0, e_all / torch.where(den > 0, den, 1.0), e_all)  # (C,)
    return FitResult(poles=p_all.to(torch.complex128), residues=r_all.to(torch.complex128),
                     rel_l2=rel, method="real:era+vp-lm", order=order)


def fit_real_modal_to_tolerance(h: Tensor, tol: float, max_order: int, **kw: object
                                ) -> FitResult:
    """Smallest order whose worst channel meets rel_l2 <= tol, by bisection (as
    ``fit.fit_modal_to_tolerance``); the max_order fit when even that misses tol."""
    h = _check(h, max_order)
    best = fit_real_modal(h, max_order, **kw)  # type: ignore[arg-type]
    if float(best.rel_l2.max()) > tol:
        return best
    lo, hi = 0, max_order
    while hi - lo > 1:
        mid = (lo + hi) // 2
        res = fit_real_modal(h, mid, **kw)  # type: ignore[arg-type]
        if float(res.rel_l2.max()) <= tol:
            hi, best = mid, res
        else:
            lo = mid
    return best


__all__ = ["fit_real_modal", "fit_real_modal_to_tolerance", "rel_l2_error"]
