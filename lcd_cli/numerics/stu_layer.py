"""The STU layer's convolutions as in the checkpoint (the reference for distillation).

Dimensions:
    B  batch
    T  input length (T <= L)
    L  filter length
    K  spectral filters
    I  input features (d_in)
    O  output features (d_out)
    C  channels of approx mode (= O: the projected input x M_inputs)

Upstream (Hazan-Lab flash-stu ``modules/stu.py`` STU.forward, ``utils/stu_utils.py`` convolve):
causal linear convolution, irfft(rfft(u, n) rfft(phi, n), n)[:T] with n >= 2T - 1 (no shift,
no skip term D). With sgn[t] = (-1)^t,
    U+[t, k, i] = sum_s phi_k[s] u[t - s, i]
    U-[t, k, i] = sgn[t] sum_s phi_k[s] sgn[t - s] u[t - s, i] = sum_s (-1)^s phi_k[s] u[t - s, i]
exact mode:   y[t, o] = sum_{k,i} U+[t,k,i] M+[k,i,o] + U-[t,k,i] M-[k,i,o]
              i.e. the matrix-valued kernel H[s,i,o] = sum_k phi_k[s] (M+[k,i,o] + (-1)^s M-[k,i,o])
              (``use_hankel_L``: no M- term)
approx mode:  x~ = u M_inputs (T, C); phi~ = phi M_filters (L, C) (M_filters is (K, C));
              y = conv(x~, phi~) + sgn conv(sgn x~, phi~): depthwise h_c[s] = (1 + (-1)^s) phi~[s, c]
              (odd taps vanish).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcd_cli.numerics.hankel import fft_size


def _sign(length: int, dtype: torch.dtype) -> Tensor:
    """(-1)^t for t < length: (L,)."""
    return 1.0 - 2.0 * (torch.arange(length) % 2).to(dtype)


def causal_conv(u: Tensor, h: Tensor) -> Tensor:
    """y[b, t, c] = sum_{s<=t} h[s, c] u[b, t - s, c] by FFT: u (B, T, C), h (L, C) -> (B, T, C)."""
    t = u.shape[1]
    n = fft_size(2 * t)
    hf = torch.fft.rfft(h[:t], n=n, dim=0)  # (F, C)
    uf = torch.fft.rfft(u, n=n, dim=1)  # (B, F, C)
    return torch.fft.irfft(uf * hf, n=n, dim=1)[:, :t]  # (B, T, C)


def exact_forward(u: Tensor, phi: Tensor, m_plus: Tensor, m_minus: Tensor | None) -> Tensor:
    """Exact-mode STU: u (B, T, I), phi (L, K), M+/- (K, I, O) -> y (B, T, O), float64."""
    u = u.to(torch.float64)
    b, t, d_in = u.shape
    k = phi.shape[1]
    sgn = _sign(t, torch.float64)[None, :, None]  # (1, T, 1)
    # One depthwise convolution per (k, i): channels flattened as k * I + i.
    ph = phi.to(torch.float64).repeat_interleave(d_in, dim=1)  # (L, K I)
    uk = u.repeat(1, 1, k)  # (B, T, K I)
    u_plus = causal_conv(uk, ph).reshape(b, t, k, d_in)  # (B, T, K, I)
    y = torch.einsum("btki,kio->bto", u_plus, m_plus.to(torch.float64))  # (B, T, O)
    if m_minus is not None:
        u_minus = (sgn * causal_conv(sgn * uk, ph)).reshape(b, t, k, d_in)  # (B, T, K, I)
        y = y + torch.einsum("btki,kio->bto", u_minus, m_minus.to(torch.float64))
    return y


def approx_forward(u: Tensor, phi: Tensor, m_inputs: Tensor, m_filters: Tensor) -> Tensor:
    """Approx-mode STU: u (B, T, I), phi (L, K), M_inputs (I, C), M_filters (K, C) -> (B, T, C)."""
    x = u.to(torch.float64) @ m_inputs.to(torch.float64)  # (B, T, C)
    return causal_conv(x, approx_kernels(phi, m_filters).T)  # (B, T, C)


def approx_kernels(phi: Tensor, m_filters: Tensor) -> Tensor:
    """Depthwise kernels of approx mode, h_c[s] = (1 + (-1)^s) (phi M_filters)[s, c]: (C, L)."""
    ph = phi.to(torch.float64) @ m_filters.to(torch.float64)  # (L, C)
    return ((1.0 + _sign(ph.shape[0], torch.float64))[:, None] * ph).T.contiguous()  # (C, L)


def exact_kernel(phi: Tensor, m_plus: Tensor, m_minus: Tensor | None) -> Tensor:
    """The matrix-valued kernel H[s, i, o] of exact mode (L, I, O), float64 (small sizes only)."""
    h = torch.einsum("sk,kio->sio", phi.to(torch.float64), m_plus.to(torch.float64))  # (L, I, O)
    if m_minus is not None:
        sgn = _sign(phi.shape[0], torch.float64)  # (L,)
        h = h + torch.einsum("sk,kio->sio", phi.to(torch.float64) * sgn[:, None],
                             m_minus.to(torch.float64))
    return h
