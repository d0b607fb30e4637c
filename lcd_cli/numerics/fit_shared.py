"""Fit K real filters with ONE shared set of poles and per-filter residues.

Dimensions:
    K  filters (e.g. the 24 STU spectral filters)
    N  shared modes (real poles: N real states; complex modes: 2N real states, conjugate
       pairs implied by the real part of the output)
    L  filter length
    P  LM parameters (N real poles, or 2N = [Re p; Im p] for complex modes)
    q  columns of the randomized range finder

Model: h_hat[k, t] = Re sum_n R[k, n] p_n^t, the same p_n for every filter k.

Method:
1. Poles: Kung's subspace method (ERA; Kung 1978, Juang & Pappa 1985) on the stacked block
   Hankel matrix [H(h_1) ... H(h_K)] (m x K n): its leading left singular vectors span the
   shared column space, whose shift-invariance gives the shared poles. The SVD is randomized
   with FFT Hankel products (lcd_cli.numerics.hankel), so no Hankel matrix is formed.
2. Residues: least squares over the explicit basis A = [Re p^t, -Im p^t] (L, N or 2N) with
   unit-normalized columns, solved by SVD filter factors s / (s^2 + lam^2) (Tikhonov), so
   near-collinear poles cannot take huge cancelling residues that rounding would destroy
   (lam = float32 unit roundoff for stored float32 parameters; see fit._final_residues).
3. Refinement: Levenberg-Marquardt with variable projection (Golub & Pereyra 1973; Kaufman
   1975) on the shared poles. With E = (I - P_A) dA/dp (the derivative columns projected off
   the basis) and C the (N, K) residues, the Kaufman Jacobian of filter k is E diag(C[:, k]),
   so J^T J = sum_k diag(c_k) E^T E diag(c_k) = (E^T E) o (C C^T): one (L, N) product per
   iteration whatever K is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.numerics.finite import all_finite
from lcd_cli.numerics.fit import _F32_LAMBDA, _F64_LAMBDA, _R_MAX
from lcd_cli.numerics.hankel import _hankel_apply, _orth_rows, fft_size, hankel_shape
from lcd_cli.numerics.modal import modal_kernel, pole_powers

_OVERSAMPLE = 10  # extra range-finder columns
_POWER_ITERS = 3  # power iterations of the stacked randomized SVD
_REFINE_ITERS = 200
_RANK_RTOL = 1e-15  # singular values below this (relative) span no direction of the basis
_MU0 = 1e-3  # initial Levenberg-Marquardt damping
_F32_NOISE = 1e-6  # relative Hankel singular value of float32-rounded filters' rounding
_F64_NOISE = 1e-13  # the same for float64 filters
_ROUNDS = 4  # LM restarts per start while each gains >= 1%


@dataclass
class SharedFit:
    """Shared poles and per-filter residues (CPU, complex128).

    Attributes:
        poles: (N,) complex128, |p| < 1 (imaginary part 0 when real).
        residues: (K, N) complex128 (real when the poles are real).
        rel_l2: (K,) ||h_k - h_hat_k|| / ||h_k|| of exactly these parameters.
        mse: mean over K and L of (h - h_hat)^2.
        real: whether the poles are real.
        seconds: wall time of the fit.
    """

    poles: Tensor
    residues: Tensor
    rel_l2: Tensor
    mse: float
    real: bool
    seconds: float = 0.0

    @property
    def order(self) -> int:
        return self.poles.shape[0]

    @property
    def states(self) -> int:
        """Real state numbers per input of one sign branch: N (real) or 2N (complex)."""
        return self.order if self.real else 2 * self.order


# ----------------------------------------------------------------------------- helpers


def shared_kernel(poles: Tensor, residues: Tensor, length: int) -> Tensor:
    """h_hat[k, t] = Re sum_n R[k, n] p_n^t in float64: (N,), (K, N) -> (K, L)."""
    k = residues.shape[0]
    p = poles.to(torch.complex128)[None].expand(k, -1)  # (K, N)
    return modal_kernel(p, residues.to(torch.complex128), length)  # (K, L)


def _basis(poles: Tensor, length: int, real: bool) -> Tensor:
    """Real columns [Re p^t] (real) or [Re p^t, -Im p^t] (complex): (L, N) or (L, 2N)."""
    t = torch.arange(length, dtype=torch.float64)  # (L,)
    v = pole_powers(poles.to(torch.complex128)[None], t)[0]  # (N, L)
    cols = v.real if real else torch.cat([v.real, -v.imag], 0)  # (N | 2N, L)
    return cols.T.contiguous()  # (L, N | 2N)


def _svd_basis(a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SVD of the column-normalized basis: U (L, r), s (r), Vh (r, P), scale (P,)."""
    norm = torch.linalg.vector_norm(a, dim=0)  # (P,)
    live = norm > 1e-300
    scale = torch.where(live, norm, 1.0)  # (P,)
    u, s, vh = torch.linalg.svd(a / scale, full_matrices=False)  # (L, P), (P,), (P, P)
    return u, s, vh, scale


def _coefficients(h: Tensor, a: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Tikhonov least squares h^T ~ A X for all filters: X (P, K) and the SVD's U (L, r)."""
    u, s, vh, scale = _svd_basis(a)
    filt = s / (s * s + lam * lam)  # (P,)
    coef = (u.T @ h.T) * filt[:, None]  # (P, K)
    x = (vh.T @ coef) / scale[:, None]  # (P, K)
    keep = s > _RANK_RTOL * s[0] if s.numel() else s.bool()
    return x, u[:, keep]


def _to_complex(x: Tensor, real: bool) -> Tensor:
    """Coefficients (P, K) -> residues (K, N) complex128."""
    if real:
        return x.T.to(torch.complex128)  # (K, N)
    n = x.shape[0] // 2
    return torch.complex(x[:n], x[n:]).T.contiguous()  # (K, N)


def shared_residues(h: Tensor, poles: Tensor, lam: float = _F64_LAMBDA) -> Tensor:
    """Residues (K, N) complex128 for fixed shared poles (N,), Tikhonov-regularized by lam."""
    real = bool((poles.imag == 0).all())
    a = _basis(poles, h.shape[1], real)  # (L, P)
    x, _ = _coefficients(h.to(torch.float64), a, lam)  # (P, K)
    return _to_complex(x, real)


def rel_l2(h: Tensor, h_hat: Tensor) -> Tensor:
    """||h - h_hat|| / ||h|| per filter (absolute where ||h|| = 0): (K,)."""
    num = torch.linalg.vector_norm(h - h_hat, dim=-1)  # (K,)
    den = torch.linalg.vector_norm(h, dim=-1)  # (K,)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), num)


def _clamp_poles(p: Tensor, real: bool, reflect: bool = False) -> Tensor:
    """|p| <= _R_MAX (radius clamped, angle kept); with reflect, |p| > 1 first maps to
    1 / conj(p) (for ERA candidates: a clamped pole would start on the boundary)."""
    if reflect:
        r = p.abs()
        p = torch.where(r > 1.0, p / (r * r).clamp_min(1e-300), p)
    if real:
        return p.real.clamp(-_R_MAX, _R_MAX).to(torch.complex128)
    r = p.abs().clamp(1e-6, _R_MAX)
    return torch.polar(r, torch.angle(p))


# ----------------------------------------------------------------------------- poles


def shared_era_poles(h: Tensor, order: int, *, real: bool, seed: int = 0,
                     split_pairs: bool = True, denoise: bool = True) -> Tensor:
    """Initial shared poles from the stacked block Hankel matrix of all K filters.

    Args:
        h: (K, L) float64.
        order: N.
        real: N real poles (rank N), else N complex modes (rank 2N, one per conjugate pair).
        split_pairs: (real only) a conjugate pair a +- ib becomes the reals a +- |b|, else
            its real part a twice.
        denoise: drop realization directions below the data's rounding level (float32 data:
            1e-6 of the largest singular value); missing modes are filled from a grid.
    Returns:
        (N,) complex128 stable poles.
    """
    k, length = h.shape
    m, n = hankel_shape(length)
    rank = order if real else 2 * order
    r = min(rank, m - 1, n)
    q = min(r + _OVERSAMPLE, m - 1, n)
    nfft = fft_size(length)
    hf = torch.fft.rfft(h, n=nfft, dim=-1)  # (K, F)
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(k, q, n, generator=gen, dtype=torch.float64)  # (K, q, n): one per block
    qt = _orth_rows(_hankel_apply(hf, omega, m, n, nfft).sum(0, keepdim=True))  # (1, q, m)
    for _ in range(_POWER_ITERS):
        zt = _orth_rows(_hankel_apply(hf, qt, n, m, nfft))  # (K, q, n): blocks of Hs^T Q
        qt = _orth_rows(_hankel_apply(hf, zt, m, n, nfft).sum(0, keepdim=True))  # (1, q, m)
    b = _hankel_apply(hf, qt, n, m, nfft)  # (K, q, n) = blocks of Q^T Hs
    bs = b.permute(1, 0, 2).reshape(q, k * n)  # (q, K n)
    ub, sv, _ = torch.linalg.svd(bs, full_matrices=False)  # (q, q), (q,)
    # Directions below the data's rounding level are noise: their poles are spurious.
    noise = _F32_NOISE if bool((h == h.float().double()).all()) else _F64_NOISE
    if denoise:
        r = max(1, min(r, int((sv > noise * sv[0]).sum())))
    u = (qt[0].T @ ub)[:, :r]  # (m, r) leading left singular vectors of Hs
    u1, u2 = u[:-1], u[1:]  # (m-1, r)
    a = torch.linalg.lstsq(u1, u2).solution  # (r, r) shift operator
    lam = torch.linalg.eigvals(a)  # (r,)
    if real:
        # A conjugate pair a +- ib becomes the two distinct reals a +- |b| (keeps the count,
        # avoids duplicate columns), or its real part twice.
        cand = (lam.real + lam.imag if split_pairs else lam.real).to(torch.complex128)  # (r,)
    else:
        cand = lam[lam.imag >= -1e-12 * lam.abs().clamp_min(1e-300)]  # one per conjugate pair
        cand = torch.where(cand.imag.abs() <= 1e-12, cand.real.to(cand.dtype), cand)
    cand = _clamp_poles(cand, real, reflect=True)
    if cand.numel() > order:
        # Keep the modes of largest energy summed over the filters.
        res = shared_residues(h, cand)  # (K, r')
        t = torch.arange(length, dtype=torch.float64)
        col2 = (pole_powers(cand[None], t)[0].abs() ** 2).sum(-1)  # (r',)
        energy = (res.abs() ** 2).sum(0) * col2  # (r',)
        cand = cand[torch.topk(energy, order).indices]
    if cand.numel() < order:
        extra = order - cand.numel()
        fill = 1 - torch.logspace(-0.5, -3, extra, dtype=torch.float64)  # distinct slow poles
        fill = fill.to(torch.complex128) if real else torch.polar(fill, torch.full_like(fill, 0.05))
        cand = torch.cat([cand, fill])
    return cand


# ----------------------------------------------------------------------------- refinement


def _vp_state(h: Tensor, poles: Tensor, real: bool) -> dict[str, Tensor]:
    """Variable-projection objective, Kaufman J^T J (P, P) and gradient J^T r (P,)."""
    length = h.shape[1]
    a = _basis(poles, length, real)  # (L, P)
    x, u = _coefficients(h, a, _F64_LAMBDA)  # (P, K), (L, r)
    resid = h.T - a @ x  # (L, K)
    f = float((resid * resid).sum())
    t = torch.arange(length, dtype=torch.float64)
    # g_n[t] = d p_n^t / d p_n = t p_n^(t-1) (p^(t-1) by powers of exponent t - 1 >= 0).
    g = pole_powers(poles[None], (t - 1).clamp_min(0))[0] * t  # (N, L)
    d = torch.cat([g.real, g.imag], 0).T if not real else g.real.T  # (L, N | 2N)
    e = d - u @ (u.T @ d)  # (L, N | 2N) projected off the basis
    n = poles.shape[0]
    if real:
        c = x  # (N, K)
        jtj = (e.T @ e) * (c @ c.T)  # (N, N)
        grad = (c * (e.T @ resid)).sum(-1)  # (N,)
    else:
        ca, cb = x[:n], x[n:]  # (N, K) Re R, Im R
        e_re, e_im = e[:, :n], e[:, n:]  # (L, N)
        grr, gri, gii = e_re.T @ e_re, e_re.T @ e_im, e_im.T @ e_im  # (N, N)
        # Parameter blocks: d/dRe p -> (alpha, beta) = (a, -b); d/dIm p -> (-b, -a).
        blocks = [(ca, -cb), (-cb, -ca)]
        er, ei = e_re.T @ resid, e_im.T @ resid  # (N, K)
        rows = []
        for ax, bx in blocks:
            rows.append(torch.cat([grr * (ax @ ay.T) + gri * (ax @ by.T) + gri.T * (bx @ ay.T)
                                   + gii * (bx @ by.T) for ay, by in blocks], 1))  # (N, 2N)
        jtj = torch.cat(rows, 0)  # (2N, 2N)
        grad = torch.cat([(ax * er).sum(-1) + (bx * ei).sum(-1) for ax, bx in blocks])  # (2N,)
    return {"f": torch.tensor(f), "jtj": jtj, "grad": grad}


def refine_shared(h: Tensor, poles: Tensor, *, real: bool, iters: int = _REFINE_ITERS) -> Tensor:
    """Variable-projection Levenberg-Marquardt on the shared poles (never worse than the start).

    Args:
        h: (K, L) float64; poles: (N,) complex128.
    Returns:
        (N,) refined poles.
    """
    n = poles.shape[0]
    st = _vp_state(h, poles, real)
    mu = _MU0
    f0 = float((h * h).sum())
    for _ in range(iters):
        if float(st["f"]) <= 1e-30 * f0 or mu > 1e12:
            break
        jtj = st["jtj"]
        dg = torch.diagonal(jtj).clamp_min(0.0)
        dg = dg + 1e-12 * dg.mean() + 1e-300
        step = torch.linalg.solve(jtj + mu * torch.diag(dg), st["grad"])  # (P,)
        if not bool(torch.isfinite(step).all()):
            mu *= 10.0
            continue
        dp = step.to(torch.complex128) if real else torch.complex(step[:n], step[n:])
        # A move past the radius cap is pulled back onto it (angle kept); the damping sizes it.
        trial = _clamp_poles(poles + dp, real)
        st_try = _vp_state(h, trial, real)
        if bool(torch.isfinite(st_try["f"])) and float(st_try["f"]) < float(st["f"]):
            stalled = float(st_try["f"]) > (1 - 1e-6) * float(st["f"])
            poles, st, mu = trial, st_try, mu / 3.0
            if stalled and mu < 1e-6:
                break
        else:
            mu *= 4.0
    return poles


# ----------------------------------------------------------------------------- public API


def _objective(h: Tensor, poles: Tensor, real: bool) -> float:
    """Squared error sum over K and L of the float64 least-squares fit on these poles."""
    res = shared_residues(h, poles)  # (K, N)
    return float(((h - shared_kernel(poles, res, h.shape[1])) ** 2).sum())


def _starts(h: Tensor, order: int, real: bool, seed: int) -> list[Tensor]:
    """Starting pole sets: stacked ERA, and a geometric grid of 1 - p over [1e-4, 0.5] (the
    filters lie near span{alpha^t, alpha in [0, 1)}, Agarwal et al. 2023); for real poles also
    ERA with conjugate pairs replaced by their real part; for complex modes also the grid
    rotated off the axis and the refined real-pole solution."""
    starts = [shared_era_poles(h, order, real=real, seed=seed),
              shared_era_poles(h, order, real=real, seed=seed, denoise=False)]
    grid = 1 - torch.logspace(math.log10(0.5), -4, order, dtype=torch.float64)  # (N,)
    if real:
        starts.append(shared_era_poles(h, order, real=True, seed=seed, split_pairs=False))
        starts.append(grid.to(torch.complex128))
    else:
        # Slightly rotated off the axis, so the LM can turn them into oscillating modes.
        starts.append(torch.polar(grid, torch.full_like(grid, 1e-3)))
        # The refined real-pole solution with N poles: complex modes include it (their
        # imaginary columns unused), so the complex fit is never worse than the real one.
        seed_poles = refine_shared(h, grid.to(torch.complex128), real=True)
        starts.append(seed_poles)
    return starts


def fit_shared(
    h: Tensor,
    order: int,
    *,
    real: bool = True,
    float32: bool = True,
    refine_iters: int = _REFINE_ITERS,
    seed: int = 0,
    pole_target: Tensor | None = None,
    normalize: bool = True,
) -> SharedFit:
    """Fit K filters with N shared poles (ERA on the stacked Hankel + VP-LM + residues).

    Args:
        h: (K, L) real filters.
        order: N shared poles (real) or complex modes.
        real: restrict the poles to the real axis (N real states) or use complex modes
            (2N real states, conjugate pairs through Re).
        float32: poles rounded to float32 before the final residue solve, residues solved with
            the float32 Tikhonov term and rounded; the error is that of the stored values.
        refine_iters: Levenberg-Marquardt iterations (0: ERA + least squares only).
        pole_target: (K, L) filters to place the poles on (e.g. a float64 recomputation of
            rounded stored filters, whose rounding noise derails ERA); residues and errors
            are always for h.
        normalize: place the poles on unit-norm filters (minimizes the sum of squared
            relative errors); False minimizes the plain squared error (the MSE of SpectraLDS),
            which lets filters of small norm go. Residues are per filter either way.
    Returns:
        SharedFit (CPU).
    Raises:
        LcdError: bad filters or order.
    """
    import time

    start = time.perf_counter()
    if not isinstance(h, Tensor) or h.ndim != 2 or h.is_complex():
        raise LcdError(f"filters must be a real (K, L) tensor, got {getattr(h, 'shape', h)}")
    h = h.to(torch.float64)
    if not all_finite(h):
        raise LcdError("filters contain NaN or Inf")
    _k, length = h.shape
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= length // 4:
        raise LcdError(f"order {order} is out of range 1..{length // 4} for filters of length "
                       f"{length}", key="order")
    raw = h if pole_target is None else pole_target.to(torch.float64)
    unit = raw / torch.linalg.vector_norm(raw, dim=-1, keepdim=True).clamp_min(1e-300)
    # normalize: every filter counts equally (relative error), not by its energy (MSE); the
    # LM is run on both objectives (local minima differ) and scored on the relative one.
    targets = [unit, raw] if normalize else [raw]
    best, best_f = None, math.inf
    for target, start_poles in [(t, p) for t in targets for p in _starts(t, order, real, seed)]:
        poles = start_poles  # (N,)
        f = _objective(target, poles, real)
        # The LM stops when its damping runs away; a restart (fresh damping) often goes on.
        for _ in range(_ROUNDS if refine_iters > 0 else 0):
            trial = refine_shared(target, poles, real=real, iters=refine_iters)
            f_trial = _objective(target, trial, real)
            if not f_trial < (1 - 1e-2) * f:
                if f_trial < f:
                    poles, f = trial, f_trial
                break
            poles, f = trial, f_trial
        score = _objective(targets[0], poles, real)
        if score < best_f:
            best, best_f = poles, score
    assert best is not None
    poles = best
    if float32:
        poles = poles.to(torch.complex64).to(torch.complex128)
    res = shared_residues(h, poles, _F32_LAMBDA if float32 else _F64_LAMBDA)  # (K, N)
    if float32:
        res = res.to(torch.complex64).to(torch.complex128)
    h_hat = shared_kernel(poles, res, length)  # (K, L)
    err = rel_l2(h, h_hat)
    mse = float(((h - h_hat) ** 2).mean())
    return SharedFit(poles, res, err, mse, real, round(time.perf_counter() - start, 3))


def recurrence_impulse(poles: Tensor, residues: Tensor, length: int,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Impulse responses of the recurrence run step by step in `dtype`: (K, L) float64.

    x_t = p x_{t-1} + delta_t (state rounded to dtype at every step), y_t = Re sum_n R x_t.
    """
    cd = torch.complex64 if dtype == torch.float32 else torch.complex128
    p = poles.to(cd)  # (N,)
    r = residues.to(cd)  # (K, N)
    x = torch.ones_like(p)  # (N,) state after the impulse at t = 0
    out = torch.empty(residues.shape[0], length, dtype=torch.float64)  # (K, L)
    chunk = 256
    block = torch.empty(p.shape[0], chunk, dtype=cd)  # (N, chunk)
    for t0 in range(0, length, chunk):
        width = min(chunk, length - t0)
        for j in range(width):
            block[:, j] = x
            x = p * x
        out[:, t0 : t0 + width] = (r @ block[:, :width]).real.to(torch.float64)
    return out


def float32_recurrence_error(h: Tensor, fit: SharedFit) -> Tensor:
    """Per-filter relative error (K,) of the float32 step-by-step recurrence against h."""
    return rel_l2(h.to(torch.float64), recurrence_impulse(fit.poles, fit.residues, h.shape[1]))


__all__ = ["SharedFit", "fit_shared", "float32_recurrence_error", "recurrence_impulse",
           "refine_shared", "rel_l2", "shared_era_poles", "shared_kernel", "shared_residues"]

