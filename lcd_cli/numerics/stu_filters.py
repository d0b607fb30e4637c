"""The STU spectral filters (Agarwal, Suo, Chen, Hazan 2023, "Spectral State Space Models").

Dimensions: L filter length (the model's seq_len), K kept eigenpairs (num_eigh).

Upstream (Hazan-Lab flash-stu ``utils/stu_utils.py``: get_hankel, get_spectral_filters):
    Z[i, j] = 2 / ((i + j)^3 - (i + j)),                         i, j = 1 .. L (1-based)
    Z_L[i, j] = ((-1)^(i+j-2) + 1) * 8 / ((i+j+3)(i+j-1)(i+j+1))  (the ``use_hankel_L`` variant)
    sigma, V = eigh(Z) in float64 (ascending); keep the last K pairs (the largest);
    phi[:, k] = V[:, k] * sigma_k^(1/4)                           phi: (L, K)
Column k of phi is filter phi_k; columns stay in eigh's ascending order (phi[:, -1] is the
largest). Eigenvector signs are arbitrary and differ between LAPACK builds; the trained M
matrices depend on them, so a stored ``phi`` buffer always wins over a recomputed one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hankel_matrix(length: int, use_hankel_l: bool = False) -> Tensor:
    """Z (L, L) float64 (or Z_L with use_hankel_l)."""
    idx = torch.arange(1, length + 1, dtype=torch.float64)  # (L,)
    s = idx[:, None] + idx[None, :]  # (L, L) i + j
    if use_hankel_l:
        sgn = torch.where(torch.remainder(s, 2) == 0, 2.0, 0.0)  # (-1)^(i+j-2) + 1
        return sgn * 8.0 / ((s + 3) * (s - 1) * (s + 1))  # (L, L)
    return 2.0 / (s**3 - s)  # (L, L)


def spectral_filters(length: int, k: int, use_hankel_l: bool = False) -> Tensor:
    """phi (L, K) float64: the top-K eigenvectors of Z scaled by sigma^(1/4)."""
    sigma, v = torch.linalg.eigh(hankel_matrix(length, use_hankel_l))  # (L,), (L, L)
    sigma_k, phi = sigma[-k:], v[:, -k:]  # (K,), (L, K)
    return phi * sigma_k.clamp_min(0.0) ** 0.25  # (L, K)


def signed_basis(phi: Tensor) -> Tensor:
    """The 2K basis filters of exact mode: [phi_k[s]; (-1)^s phi_k[s]] as rows (2K, L)."""
    sgn = 1.0 - 2.0 * (torch.arange(phi.shape[0]) % 2).to(phi.dtype)  # (L,) (-1)^s
    return torch.cat([phi.T, phi.T * sgn], 0)  # (2K, L)
