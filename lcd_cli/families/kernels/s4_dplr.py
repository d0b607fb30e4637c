"""S4 DPLR kernels (state-spaces/s4 ``SSMKernelDPLR``): Cauchy + Woodbury on roots of unity.

Dimensions:
    C  output channels of the SSM (upstream ``channels``)
    H  heads (d_model)
    N  stored modes: half of the state, one of each conjugate pair (state size 2N)
    R  rank of the low-rank term
    F  frequency nodes, Ld // 2 + 1
    Ld length the stored C~ is attuned to (the ``l_kernel`` buffer, doubled as needed)
    L  kernel length returned (<= Ld)

Math (Gu, Goel & Re 2022, "Efficiently Modeling Long Sequences with Structured State Spaces",
Sec. 3 and Alg. 1). Full conjugate-doubled state of size 2N:
    Lambda = [lam, conj lam],  p = [P, conj P],  q = conj p,  A = Lambda - p q^T  (= Lambda - p p^*)
    M = diag(dt) A,  B' = dt B                          (dt per head, or per mode when untied)
    bilinear:  dA = (I - M/2)^{-1} (I + M/2),  dB = (I - M/2)^{-1} B'
    kernel     K[l] = C^T dA^l dB                      (real: the system is conjugate-symmetric)
The checkpoint stores C~ = (I - dA^Ld)^T C, so that on the Ld-th roots of unity w
    sum_{l<Ld} K[l] w^l = 2/(1+w) C~^T (z - M)^{-1} B',   z = 2 (1 - w) / (1 + w)
and K[:Ld] = irfft over Ld points. The resolvent is evaluated by a Cauchy sum over the diagonal
and a rank-R Woodbury correction. Multiplying through by (1 + w) removes the pole of z at
w = -1 (even Ld): with rho_XY(w) = sum_n X_n Y_n dt_n / (2(1-w) - dt_n lam_n (1+w)) (+ conj),
    K^(w) = 2 [rho_BC - (1+w) rho_BQ (I + (1+w) rho_PQ)^{-1} rho_PC],
the same function as upstream's 2/(1+w) [r_BC - r_BQ (I + r_PQ)^{-1} r_PC], r = (1+w) rho.
``l_kernel = 0`` (C not yet converted) and lengths beyond l_kernel follow upstream's
``_setup_C``: C~ = (I - dA^L)^T C, then doubling C~ <- (I + dA^Ld)^T C~, Ld <- 2 Ld.

A DPLR matrix is diagonalizable, but not normal: its eigenvector matrix V can be very badly
conditioned (HiPPO-LegS: cond(V) grows exponentially with N), so the kernel is never computed
through eig(A); :func:`eigen_facts` reports cond(V) for information.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _conj_cat(x: Tensor) -> Tensor:
    """(..., N) -> (..., 2N): [x, conj x]."""
    return torch.cat([x, x.conj()], dim=-1)


def _full_dt(dt: Tensor, n: int) -> Tensor:
    """dt (H, 1) or (H, N) -> (H, 2N) real."""
    return _conj_cat(dt.expand(dt.shape[0], n).to(torch.complex128)).real  # (H, 2N)


def dense_system(dt: Tensor, lam: Tensor, P: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear discretization of the full 2N-state system, dense (float64 complex).

    Args:
        dt: (H, 1) or (H, N) step sizes; lam: (H, N) diagonal; P: (R, H, N); B: (H, N).
    Returns:
        dA (H, 2N, 2N) and dB (H, 2N), complex128.
    """
    n = lam.shape[-1]
    d = _full_dt(dt, n)  # (H, 2N)
    p = _conj_cat(P)  # (R, H, 2N)
    a = torch.diag_embed(_conj_cat(lam)) - torch.einsum("rhm,rhn->hmn", p, p.conj())  # (H, 2N, 2N)
    m = d[..., None] * a  # (H, 2N, 2N) rows scaled by dt
    eye = torch.eye(2 * n, dtype=torch.complex128)  # (2N, 2N)
    lhs = eye - m / 2  # (H, 2N, 2N)
    dA = torch.linalg.solve(lhs, eye + m / 2)  # (H, 2N, 2N)
    dB = torch.linalg.solve(lhs, (d * _conj_cat(B))[..., None])[..., 0]  # (H, 2N)
    return dA, dB


def matrix_power(m: Tensor, k: int) -> Tensor:
    """m^k for a batch of square matrices (repeated squaring)."""
    out = torch.eye(m.shape[-1], dtype=m.dtype).expand_as(m).clone()  # (H, 2N, 2N)
    base = m
    while k:
        if k & 1:
            out = out @ base
        k >>= 1
        if k:
            base = base @ base
    return out


def attune(C: Tensor, dA: Tensor, stored: int, length: int) -> tuple[Tensor, int]:
    """C~ and Ld for a kernel of ``length`` as upstream's ``_setup_C`` builds them.

    Args:
        C: (C, H, N) stored C (plain C when ``stored`` is 0, else C~ for Ld = stored).
        dA: (H, 2N, 2N); stored: the ``l_kernel`` buffer; length: L wanted.
    Returns:
        (C~ (C, H, N), Ld) with Ld >= length.
    """
    n = C.shape[-1]
    ld = stored
    if ld == 0:
        full = _conj_cat(C)  # (C, H, 2N)
        full = full - torch.einsum("hnm,chn->chm", matrix_power(dA, length), full)
        return full[..., :n], length
    while ld < length:
        full = _conj_cat(C)  # (C, H, 2N)
        C = (full + torch.einsum("hnm,chn->chm", matrix_power(dA, ld), full))[..., :n]
        ld *= 2
    return C, ld


def cauchy_kernel(dt: Tensor, lam: Tensor, P: Tensor, B: Tensor, Ct: Tensor, ld: int,
                  length: int) -> Tensor:
    """K[:length] from C~ attuned to Ld, by Cauchy sums and Woodbury on the Ld-th roots of unity.

    Args:
        dt: (H, 1) or (H, N); lam: (H, N); P: (R, H, N); B: (H, N); Ct: (C, H, N) C~.
    Returns:
        (C, H, L) float64.
    """
    channels, rank = Ct.shape[0], P.shape[0]
    f = torch.arange(ld // 2 + 1, dtype=torch.float64)  # (F,)
    w = torch.polar(torch.ones_like(f), -2 * math.pi * f / ld)  # (F,) roots of unity
    dtc = dt.to(torch.complex128).expand_as(lam)  # (H, N)
    a = dtc * lam  # (H, N)
    g = 1 / (2 * (1 - w) - a[..., None] * (1 + w))  # (H, N, F)
    g_conj = 1 / (2 * (1 - w) - a.conj()[..., None] * (1 + w))  # (H, N, F)
    left = torch.cat([B[None], P], dim=0)  # (1+R, H, N)
    right = torch.cat([Ct, P.conj()], dim=0)  # (C+R, H, N)
    v = left[:, None] * right[None] * dtc  # (1+R, C+R, H, N)
    rho = (torch.einsum("ijhn,hnf->ijhf", v, g)
           + torch.einsum("ijhn,hnf->ijhf", v.conj(), g_conj))  # (1+R, C+R, H, F)
    s = 1 + w  # (F,)
    rho_bc = rho[0, :channels]  # (C, H, F)
    rho_bq = rho[0, channels:]  # (R, H, F)
    rho_pc = rho[1:, :channels]  # (R, C, H, F)
    rho_pq = rho[1:, channels:]  # (R, R, H, F) [p, q]
    eye = torch.eye(rank, dtype=torch.complex128)  # (R, R)
    t = eye + s[:, None, None] * rho_pq.permute(2, 3, 0, 1)  # (H, F, R, R) [p, q]
    sol = torch.linalg.solve(t, rho_pc.permute(2, 3, 0, 1))  # (H, F, R, C) = T^{-1} rho_PC
    corr = torch.einsum("qhf,hfqc->chf", rho_bq, sol)  # (C, H, F)
    k_f = 2 * (rho_bc - s * corr)  # (C, H, F)
    return torch.fft.irfft(k_f, n=ld)[..., :length]  # (C, H, L)


def eigen_facts(dt: Tensor, lam: Tensor, P: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvector conditioning and modal order of M = diag(dt) A, per head.

    Returns:
        cond (H,) float64: 2-norm condition number of the unit-column eigenvector matrix
            (near 1/eps: eig(A) is numerically meaningless);
        order (H,) int64: complex modes of the kernel in the Re(...) form, i.e. conjugate
            pairs + real eigenvalues (a real pole takes a whole mode).
    """
    n = lam.shape[-1]
    p = _conj_cat(P)  # (R, H, 2N)
    a = torch.diag_embed(_conj_cat(lam)) - torch.einsum("rhm,rhn->hmn", p, p.conj())  # (H, 2N, 2N)
    val, vec = torch.linalg.eig(_full_dt(dt, n)[..., None] * a)  # (H, 2N), (H, 2N, 2N)
    vec = vec / torch.linalg.vector_norm(vec, dim=-2, keepdim=True)  # unit columns
    sv = torch.linalg.svdvals(vec)  # (H, 2N)
    real = val.imag.abs() <= 1e-9 * val.abs().clamp_min(1e-300)  # (H, 2N)
    order = real.sum(-1) + (val.imag > 0).logical_and(~real).sum(-1)  # (H,)
    return sv[:, 0] / sv[:, -1].clamp_min(1e-300), order  # (H,), (H,)
