"""The distilled STU layer: a recurrence on a shared pole basis, per branch and input channel.

Dimensions:
    B  batch
    T  input length
    K  spectral filters
    N  shared basis poles (per sign branch)
    J  sign branches (2: poles p and -p)
    C  recurrent channels (d_in in exact mode; d_out = the projected input in approx mode)
    I  input features, O output features
    Q  scan chunk length

Basis (lcd_cli.numerics.fit_shared): phi_k[s] ~ Re sum_n R[k, n] p_n^s, so (-1)^s phi_k[s] ~
Re sum_n R[k, n] (-p_n)^s: the minus branch is the same basis with every pole negated.

Exact mode, per layer (M+/- (K, I, O) kept from the checkpoint):
    state   x_t[j, n, c] = P[j, n] x_{t-1}[j, n, c] + u_t[c],   P[0] = p, P[1] = -p
    output  y_t[o] = Re sum_{j,n,c} x_t[j, n, c] W[j, n, c, o]
    W[0] = sum_k R[k, n] M+[k, c, o],  W[1] = sum_k R[k, n] M-[k, c, o]      (J, N, I, O)
since sum_{j,n} P[j,n]^s W[j,n,c,o] = sum_k phi~_k[s] (M+[k,c,o] + (-1)^s M-[k,c,o]) = H~[s,c,o].
Approx mode: the input is first projected, v_t = u_t M_inputs (C = O), both branches share
W[j, n, c] = sum_k R[k, n] M_filters[k, c] (J, N, C) and the readout is per channel:
    y_t[c] = Re sum_{j,n} x_t[j, n, c] W[j, n, c]   (kernel (1 + (-1)^s) phi~ M_filters).
State per layer: 2 N C numbers (complex when the poles are complex). W is precomputed at load
(it is N / K times larger than M, so it is not stored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.numerics.fit_shared import shared_kernel
from lcd_cli.numerics.modal import pole_powers
from lcd_cli.numerics.stu_layer import causal_conv, exact_forward

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


@dataclass(eq=False)
class STURecurrent:
    """One distilled STU layer.

    Args:
        poles: (N,) complex shared basis poles.
        residues: (K, N) complex basis residues.
        mode: "exact" or "approx".
        m_plus, m_minus: (K, I, O) exact mode (m_minus None for the ``use_hankel_L`` variant).
        m_inputs: (I, C), m_filters: (K, C) approx mode.
        dtype: runtime precision, float32 (complex64 state) or float64.
    """

    poles: Tensor
    residues: Tensor
    mode: str
    m_plus: Tensor | None = None
    m_minus: Tensor | None = None
    m_inputs: Tensor | None = None
    m_filters: Tensor | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.dtype not in _COMPLEX_OF:
            raise LcdError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        cd = _COMPLEX_OF[self.dtype]
        if self.poles.ndim != 1 or self.residues.ndim != 2 or \
                self.residues.shape[1] != self.poles.shape[0]:
            raise LcdError(f"basis poles {tuple(self.poles.shape)} and residues "
                           f"{tuple(self.residues.shape)} must be (N,) and (K, N)")
        r = self.residues.to(torch.complex128)  # (K, N)
        p = self.poles.to(torch.complex128)  # (N,)
        self.branch_poles = torch.stack([p, -p]).to(cd)  # (J, N)
        if self.mode == "exact":
            assert self.m_plus is not None
            mp = self.m_plus.to(torch.complex128)  # (K, I, O)
            mm = (self.m_minus.to(torch.complex128) if self.m_minus is not None
                  else torch.zeros_like(mp))  # (K, I, O)
            self.w = torch.stack([torch.einsum("kn,kio->nio", r, mp),
                                  torch.einsum("kn,kio->nio", r, mm)]).to(cd)  # (J, N, I, O)
            self.channels = mp.shape[1]
        elif self.mode == "approx":
            assert self.m_inputs is not None and self.m_filters is not None
            w = torch.einsum("kn,kc->nc", r, self.m_filters.to(torch.complex128))  # (N, C)
            self.w = torch.stack([w, w]).to(cd)  # (J, N, C)
            self.channels = self.m_inputs.shape[1]
        else:
            raise LcdError(f"unknown STU mode '{self.mode}' (exact or approx)")

    @property
    def complex_dtype(self) -> torch.dtype:
        return _COMPLEX_OF[self.dtype]

    @property
    def order(self) -> int:
        return self.poles.shape[0]

    def _project(self, u: Tensor) -> Tensor:
        """The recurrent input v: u itself (exact) or u M_inputs (approx); (..., C) real."""
        u = u.to(self.dtype)
        if self.mode == "approx":
            assert self.m_inputs is not None
            return u @ self.m_inputs.to(self.dtype)
        return u

    def readout(self, x: Tensor) -> Tensor:
        """y = Re sum_{j,n,c} x W (exact) or Re sum_{j,n} x W (approx): x (..., J, N, C)."""
        if self.mode == "exact":
            return torch.einsum("...jnc,jnco->...o", x, self.w).real  # (..., O)
        return torch.einsum("...jnc,jnc->...c", x, self.w).real  # (..., C)

    def init_state(self, batch: int) -> Tensor:
        """Zero state (B, J, N, C), complex."""
        return torch.zeros(batch, 2, self.order, self.channels, dtype=self.complex_dtype)

    def step(self, u_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One token: u_t (B, I) -> y_t (B, O), state (B, J, N, C)."""
        v = self._project(u_t)  # (B, C)
        x = self.init_state(v.shape[0]) if state is None else state  # (B, J, N, C)
        x = self.branch_poles[None, :, :, None] * x + v[:, None, None, :]  # (B, J, N, C)
        return self.readout(x), x

    def kernels(self, length: int) -> Tensor:
        """The basis filters phi~ (L, K), float64 (for the prefill convolution)."""
        return shared_kernel(self.poles, self.residues, length).T.contiguous()  # (L, K)

    def prefill(self, u: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """A prompt at once: u (B, T, I) -> (y (B, T, O), state after the last token).

        Output: the layer's convolution with the distilled basis phi~ (FFT), plus the free
        response of an initial state, Re sum P^(t+1) x0 W. State: closed form
        x_{T-1} = sum_tau P^(T-1-tau) v_tau + P^T x0.
        """
        _b, t, _ = u.shape
        v = self._project(u)  # (B, T, C)
        phi = self.kernels(t)  # (T, K)
        if self.mode == "exact":
            assert self.m_plus is not None
            y = exact_forward(u, phi, self.m_plus, self.m_minus)  # (B, T, O)
        else:
            assert self.m_filters is not None
            sgn = 1.0 - 2.0 * (torch.arange(t) % 2).to(torch.float64)  # (T,)
            h = (1.0 + sgn)[:, None] * (phi @ self.m_filters.to(torch.float64))  # (T, C)
            y = causal_conv(v.to(torch.float64), h)  # (B, T, C)
        cd = self.complex_dtype
        pw = pole_powers(self.branch_poles.to(torch.complex128), torch.arange(t + 1))  # (J, N, T+1)
        rev = pw[..., :t].flip(-1).to(cd)  # (J, N, T): P^(T-1-tau)
        x = torch.einsum("jnt,btc->bjnc", rev, v.to(cd))  # (B, J, N, C)
        if state is not None:
            if self.mode == "exact":
                coef = torch.einsum("bjnc,jnco->bjno", state, self.w)  # (B, J, N, O)
                y = y + torch.einsum("jnt,bjno->bto", pw[..., 1:].to(cd), coef).real
            else:
                coef = state * self.w  # (B, J, N, C)
                y = y + torch.einsum("jnt,bjnc->btc", pw[..., 1:].to(cd), coef).real
            x = x + pw[..., t].to(cd)[None, :, :, None] * state
        return y.to(self.dtype), x

    def scan(self, u: Tensor, state: Tensor | None = None, chunk: int = 64
             ) -> tuple[Tensor, Tensor]:
        """Chunked recurrence: u (B, T, I) -> (y (B, T, O), final state).

        Per chunk of Q tokens, every state at once: x[q] = P^(q+1) x_prev + sum_{i<=q}
        P^(q-i) v[i] (a lower-triangular Toeplitz table of powers), then the readout; the last
        state is carried to the next chunk.
        """
        b, t, _ = u.shape
        v = self._project(u).to(self.complex_dtype)  # (B, T, C)
        x = self.init_state(b) if state is None else state  # (B, J, N, C)
        q = max(1, min(chunk, t))
        lag = torch.arange(q)[:, None] - torch.arange(q)[None, :]  # (Q, Q)
        pw = pole_powers(self.branch_poles.to(torch.complex128), torch.arange(q + 1))  # (J,N,Q+1)
        toep = torch.where(lag >= 0, pw[..., lag.clamp_min(0)], 0).to(self.complex_dtype)
        carry = pw[..., 1:].to(self.complex_dtype)  # (J, N, Q): P^(q+1)
        ys = []
        for t0 in range(0, t, q):
            w = min(q, t - t0)
            xs = torch.einsum("jnqi,bic->bqjnc", toep[:, :, :w, :w], v[:, t0 : t0 + w])
            xs = xs + carry[None, :, :, :w].permute(0, 3, 1, 2)[..., None] * x[:, None]
            ys.append(self.readout(xs))  # (B, w, O)
            x = xs[:, -1]  # (B, J, N, C)
        return torch.cat(ys, 1), x
