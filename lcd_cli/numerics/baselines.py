"""Reference fitting methods lcd is compared against (benchmarks and tests).

Dimensions:
    C  channels
    N  complex modes kept
    L  kernel length
    P  pencil parameter (matrix pencil)

All take (h (C, L) float64, order) and return a FitResult (CPU tensors), like fit_modal.
They are re-implementations of the published ideas, written for lcd:
- fit_dft_truncation: ETSC (arXiv 2311.08756) exact modal form, poles at gamma * roots of unity
  from one FFT, keeping the N largest modes (no refit).
- fit_real_pole_bank: SpectraLDS-style (arXiv 2505.17868) fixed real poles + least squares.
- fit_matrix_pencil: Hua & Sarkar (1990) matrix pencil poles + least squares, no refinement.
- fit_modal_adam: Laughing-Hyena-style (arXiv 2310.18780) gradient distillation: Adam on
  log-poles (radius via a sigmoid, so stable) and residues from a random start.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lcd_cli.numerics.fit import (
    _R_MAX,
    FitResult,
    _check_kernel,
    _check_order,
    _collapse_eigs,
    _select_modes,
    _solve_residues,
    _stabilize,
    rel_l2_error,
)
from lcd_cli.numerics.modal import modal_kernel

_PENCIL_MAX = 512  # cap of the pencil parameter (dense SVD cost ~ L P^2)


def _result(h: Tensor, poles: Tensor, residues: Tensor, method: str, order: int) -> FitResult:
    """Package CPU complex128 parameters with their directly computed error."""
    poles = poles.to(torch.complex128).cpu()  # (C, N)
    residues = residues.to(torch.complex128).cpu()  # (C, N)
    err = rel_l2_error(h.cpu(), modal_kernel(poles, residues, h.shape[-1]))  # (C,)
    return FitResult(poles=poles, residues=residues, rel_l2=err, method=method, order=order)


def fit_dft_truncation(h: Tensor, order: int, *, gamma: float | None = None) -> FitResult:
    """ETSC-style truncation of the exact DFT modal form.

    With g[t] = h[t] gamma^-t and G = DFT_L(g): h[t] = sum_k (G_k / L) (gamma w^k)^t exactly for
    t < L, w = e^{2 pi i / L}. Conjugate bins pair into one complex mode (residue 2 G_k / L);
    the N modes of largest |residue| are kept, residues unchanged.

    Args:
        h: (C, L); order: N; gamma: pole radius (default 0.5^(1/L), clamped below 1).
    """
    h = _check_kernel(h).cpu()
    c, length = h.shape
    _check_order(order, length)
    gam = gamma if gamma is not None else 0.5 ** (1.0 / length)
    gam = min(gam, _R_MAX)
    t = torch.arange(length, dtype=torch.float64)  # (L,)
    g = h * gam ** (-t)  # (C, L)
    spec = torch.fft.fft(g, dim=-1) / length  # (C, L) complex
    kk = torch.arange(length // 2 + 1)  # (K,) one bin per mode
    res = spec[:, kk].clone()  # (C, K)
    paired = (kk > 0) & (2 * kk != length)  # (K,) bins with a conjugate partner
    res[:, paired] *= 2
    poles = gam * torch.exp(2j * math.pi * kk.to(torch.float64) / length)  # (K,)
    keep = torch.topk(res.abs(), min(order, len(kk)), dim=1).indices  # (C, N')
    p = poles.expand(c, -1).gather(1, keep)  # (C, N')
    r = res.gather(1, keep)  # (C, N')
    if p.shape[1] < order:  # fewer bins than modes: unused modes with zero residue
        pad = order - p.shape[1]
        p = torch.cat([p, torch.full((c, pad), 0.5, dtype=p.dtype)], 1)
        r = torch.cat([r, torch.zeros(c, pad, dtype=r.dtype)], 1)
    return _result(h, p, r, "dft-truncation", order)


def fit_real_pole_bank(h: Tensor, order: int) -> FitResult:
    """SpectraLDS-style fixed real poles + least-squares residues.

    Poles p_k = exp(-a_k) with decay rates a_k geometric from 1/L to 2 (time constants from
    the whole window down to half a sample), the same for every channel.
    """
    h = _check_kernel(h).cpu()
    c, length = h.shape
    _check_order(order, length)
    rates = torch.logspace(math.log10(1.0 / length), math.log10(2.0), order, dtype=torch.float64)
    s = (-rates).to(torch.complex128).expand(c, -1).clone()  # (C, N)
    res, _ = _solve_residues(h, s, length)  # (C, N)
    return _result(h, torch.exp(s), res, "real-pole-bank", order)


def fit_matrix_pencil(h: Tensor, order: int, *, pencil: int | None = None) -> FitResult:
    """Matrix pencil (Hua & Sarkar 1990) poles + least-squares residues, no refinement.

    Y[i, :] = h[i : i + P + 1] ((L - P) x (P + 1)); rank-2N right singular vectors V;
    poles = eig(pinv(V[:-1]) V[1:]) (rows of V^T shifted), collapsed to complex modes, made
    stable, the N of largest energy kept (same rule as lcd).

    Args:
        pencil: P (default min(L // 3, 512)).
    """
    h = _check_kernel(h).cpu()
    _c, length = h.shape
    _check_order(order, length)
    pp = pencil if pencil is not None else max(1, min(length // 3, _PENCIL_MAX))
    y = h.unfold(-1, pp + 1, 1)  # (C, L - P, P + 1)
    r = min(2 * order, pp, y.shape[1])
    _, _, vh = torch.linalg.svd(y, full_matrices=False)  # vh (C, P + 1, P + 1)
    v = vh[:, :r].transpose(-1, -2)  # (C, P + 1, r)
    v1, v2 = v[:, :-1], v[:, 1:]  # (C, P, r)
    a = torch.linalg.lstsq(v1, v2).solution  # (C, r, r)
    lam = torch.linalg.eigvals(a)  # (C, r)
    cand, valid = _collapse_eigs(lam)  # (C, r)
    poles = _select_modes(h, cand, valid, order, length)  # (C, N)
    res, _ = _solve_residues(h, torch.log(poles), length)  # (C, N)
    return _result(h, poles, res, "matrix-pencil", order)


def fit_modal_adam(
    h: Tensor,
    order: int,
    *,
    steps: int = 2000,
    lr: float = 0.01,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> FitResult:
    """Laughing-Hyena-style distillation: Adam on (log-poles, residues) from a random start.

    Radius = sigmoid(rho) (strictly stable), angle theta, residue (a, b) per mode; loss = mean
    over channels of ||h - h_hat||^2 / ||h||^2 over the whole window. Deterministic per seed.

    Args:
        steps: Adam steps; lr: learning rate; seed: init seed; device: where to run.
    """
    h = _check_kernel(h)
    c, length = h.shape
    _check_order(order, length)
    dev = torch.device(device) if device is not None else h.device
    hd = h.to(dev)  # (C, L)
    norm2 = (hd * hd).sum(-1).clamp_min(1e-300)  # (C,)
    gen = torch.Generator().manual_seed(seed)
    radius0 = 0.5 + 0.49 * torch.rand(c, order, generator=gen, dtype=torch.float64)  # (C, N)
    rho = torch.log(radius0 / (1 - radius0)).to(dev).requires_grad_()  # (C, N)
    theta = (math.pi * torch.rand(c, order, generator=gen, dtype=torch.float64)).to(dev)
    theta.requires_grad_()
    scale = torch.sqrt(norm2 / length).cpu()[:, None]  # (C, 1)
    ra = (torch.randn(c, order, generator=gen, dtype=torch.float64) * scale).to(dev)
    rb = (torch.randn(c, order, generator=gen, dtype=torch.float64) * scale).to(dev)
    ra.requires_grad_()
    rb.requires_grad_()
    t = torch.arange(length, dtype=torch.float64, device=dev)  # (L,)
    opt = torch.optim.Adam([rho, theta, ra, rb], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        logr = torch.nn.functional.logsigmoid(rho)  # (C, N) log radius < 0
        decay = torch.exp(logr[..., None] * t)  # (C, N, L)
        ang = theta[..., None] * t  # (C, N, L)
        # Re(R p^t) = r^t (a cos(theta t) - b sin(theta t))
        hh = (decay * (ra[..., None] * torch.cos(ang) - rb[..., None] * torch.sin(ang))).sum(1)
        loss = (((hd - hh) ** 2).sum(-1) / norm2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        radius = torch.sigmoid(rho)  # (C, N)
        poles = _stabilize(torch.polar(radius, theta))  # (C, N)
        residues = torch.complex(ra, rb)  # (C, N)
    return _result(h, poles, residues, "adam", order)


def etsc_modes(h: Tensor, gamma: float | Tensor) -> tuple[Tensor, Tensor]:
    """ETSC (Qin et al., arXiv 2311.08756) exact Toeplitz-to-SSM conversion, all modes.

    With g[t] = h[t] gamma^-t (t < L), padded by g[L] = -sum_t g[t] so that its mean vanishes,
    and G = DFT_{L+1}(g) / (L+1): h[t] = sum_{k=1}^{L} G_k (gamma w^k)^t exactly for t < L,
    w = e^{2 pi i / (L+1)} (G_0 = 0). Bins k and L+1-k are conjugate and form one complex
    mode (residue 2 G_k); for even L+1 the bin (L+1)/2 is a real mode (pole -gamma).

    Args:
        h: (C, L); gamma: decay, a float or per channel (C,).
    Returns:
        poles, residues (C, K) complex128, K = floor((L+1)/2): Re sum R p^t = h[t] for t < L.
    """
    h = _check_kernel(h).cpu()
    c, length = h.shape
    m = length + 1
    gam = torch.as_tensor(gamma, dtype=torch.float64).reshape(-1, 1).expand(c, 1)  # (C, 1)
    t = torch.arange(length, dtype=torch.float64)  # (L,)
    g = h * gam ** (-t)  # (C, L)
    g = torch.cat([g, -g.sum(-1, keepdim=True)], dim=-1)  # (C, L + 1), zero mean
    spec = torch.fft.fft(g, dim=-1) / m  # (C, m): G_k = (1/m) sum_t g[t] w^{-kt}
    kk = torch.arange(1, m // 2 + 1)  # (K,)
    res = spec[:, kk].clone()  # (C, K)
    paired = 2 * kk != m  # (K,)
    res[:, paired] *= 2
    poles = gam * torch.exp(2j * math.pi * kk.to(torch.float64) / m)  # (C, K)
    return poles.to(torch.complex128), res.to(torch.complex128)


def fit_etsc(h: Tensor, order: int, gamma: float | Tensor) -> FitResult:
    """ETSC's exact modes (:func:`etsc_modes`) truncated to the N of largest |residue|."""
    poles, res = etsc_modes(h, gamma)  # (C, K)
    keep = torch.topk(res.abs(), min(order, res.shape[1]), dim=1).indices  # (C, N')
    p, r = poles.gather(1, keep), res.gather(1, keep)  # (C, N')
    return _result(h.to(torch.float64).cpu(), p, r, "etsc", p.shape[1])


__all__ = [
    "etsc_modes",
    "fit_dft_truncation",
    "fit_etsc",
    "fit_matrix_pencil",
    "fit_modal_adam",
    "fit_real_pole_bank",
]
