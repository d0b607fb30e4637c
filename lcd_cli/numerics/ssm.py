"""Runtime of a distilled layer: a diagonal state space model (SSM), plus naive references.

Dimensions:
    B  batch
    C  channels (one independent single-input single-output system each)
    N  modes per channel (complex poles)
    T  input length (time steps)
    L  kernel length
    K  chunk length (scan chunk, or block of the closed-form prefill state)
    M  number of chunks (ceil(T / K))

Math, per channel (p, R: (N,) complex, D real, x0 the state before the first token):
    state     x_t = p * x_{t-1} + u_t,              x_{-1} = x0
    output    y_t = Re(sum_n R_n x_t[n]) + D u_t
    unrolled  x_t = p^(t+1) x0 + sum_{tau<=t} p^(t-tau) u_tau
    kernel    h[t] = Re sum_n R_n p_n^t             (modal kernel = impulse response)
so for an input of length T:
    y = causal_conv(u, h[:T]) + D u + Re sum_n R_n p_n^(t+1) x0[n].

Precision: every power p^k is evaluated as exp(k log p) in complex128 (k exact in float64),
then cast to the layer's complex dtype (complex64 for float32 layers, complex128 for float64).
Powers of small |p| underflow to 0, which is their correct limit; p = 0 is set explicitly
(0^0 = 1, 0^k = 0), since exp(0 * log 0) would be NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.numerics.hankel import fft_size
from lcd_cli.numerics.modal import from_pairs as _pairs_to_complex
from lcd_cli.numerics.modal import modal_kernel, pole_powers, to_pairs

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}
# Budget, in complex numbers, for one temporary tensor of the closed-form computations.
_BUDGET = 1 << 22
# modal_kernel evaluates at most this many time steps at once (its own internal chunk).
_MODAL_CHUNK = 8192


def _powers(poles: Tensor, exponents: Tensor) -> Tensor:
    """p^e for every pole and exponent, in complex128: (C, N) x (E,) -> (C, N, E)."""
    return pole_powers(poles.to(torch.complex128), exponents)


def _channel_blocks(channels: int, per_channel: int, budget: int | None = None) -> Iterator[slice]:
    """Slices of the channel axis such that a block holds at most ~budget (default _BUDGET)
    temporaries; a single channel over budget still forms a block."""
    size = max(1, (_BUDGET if budget is None else budget) // max(1, per_channel))
    for start in range(0, channels, size):
        yield slice(start, min(start + size, channels))


def _split(length: int) -> tuple[int, int]:
    """(K, M) with K * M >= length and K ~ M ~ sqrt(length): p^(mK + k) = p^(mK) p^k."""
    k = max(1, math.isqrt(max(length - 1, 0)) + 1)
    return k, -(-length // k)


@dataclass(eq=False)
class DiagonalSSM:
    """A distilled layer: C independent diagonal recurrences of N complex modes each.

    Args:
        poles: (C, N) complex64 or complex128; the dtype sets the layer's precision.
        residues: (C, N) complex (or real); cast to the poles' dtype and device.
        D: (C,) real skip term, or None.
    """

    poles: Tensor
    residues: Tensor
    D: Tensor | None = None

    def __post_init__(self) -> None:
        p, r = self.poles, self.residues
        if not isinstance(p, Tensor) or not isinstance(r, Tensor):
            raise LcdError("poles and residues must be torch tensors")
        if p.dtype not in _REAL_OF:
            raise LcdError(
                f"poles must be complex64 or complex128, got {p.dtype}",
                key="poles",
                hint="use DiagonalSSM.from_pairs for [real, imag] float pairs",
            )
        if p.dim() != 2 or tuple(r.shape) != tuple(p.shape):
            raise LcdError(
                f"poles {tuple(p.shape)} and residues {tuple(r.shape)} must both be (C, N)",
                key="residues",
            )
        self.residues = r.to(device=p.device, dtype=p.dtype)  # (C, N)
        if self.D is not None:
            if tuple(self.D.shape) != (p.shape[0],) or self.D.is_complex():
                raise LcdError(
                    f"D must be real of shape ({p.shape[0]},), got {tuple(self.D.shape)}",
                    key="D",
                )
            self.D = self.D.to(device=p.device, dtype=self.dtype)  # (C,)

    # ---- construction and properties -------------------------------------------------------

    @classmethod
    def from_pairs(
        cls,
        poles_pairs: Tensor,
        residues_pairs: Tensor,
        D: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> DiagonalSSM:
        """Build from [real, imag] pairs (C, N, 2); StripedHyena's (C, N, 1, 2) is accepted too.

        dtype: float32 (complex64 runtime) or float64 (complex128 runtime).
        """
        if dtype not in _COMPLEX_OF:
            raise LcdError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        cdtype = _COMPLEX_OF[dtype]
        parts = []
        for name, pairs in (("poles", poles_pairs), ("residues", residues_pairs)):
            if pairs.dim() == 4 and pairs.shape[2] == 1:
                pairs = pairs[:, :, 0]  # (C, N, 2)
            if pairs.dim() != 3 or pairs.shape[-1] != 2:
                raise LcdError(
                    f"expected [real, imag] pairs of shape (C, N, 2), got {tuple(pairs.shape)}",
                    key=name,
                )
            parts.append(_pairs_to_complex(pairs).to(cdtype))  # (C, N)
        return cls(parts[0], parts[1], None if D is None else D.to(dtype))

    def to_pairs(self) -> tuple[Tensor, Tensor]:
        """(poles, residues) as float32 [real, imag] pairs (C, N, 2), the checkpoint layout."""
        return to_pairs(self.poles), to_pairs(self.residues)

    @property
    def channels(self) -> int:
        return self.poles.shape[0]

    @property
    def order(self) -> int:
        """N, the number of complex modes per channel."""
        return self.poles.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        """Real dtype of the layer (float32 or float64)."""
        return _REAL_OF[self.poles.dtype]

    @property
    def complex_dtype(self) -> torch.dtype:
        return self.poles.dtype

    @property
    def device(self) -> torch.device:
        return self.poles.device

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> DiagonalSSM:
        """A copy on `device` and/or in real precision `dtype` (float32 / float64)."""
        if dtype is not None and dtype not in _COMPLEX_OF:
            raise LcdError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        cdtype = self.poles.dtype if dtype is None else _COMPLEX_OF[dtype]
        rdtype = _REAL_OF[cdtype]
        return DiagonalSSM(
            self.poles.to(device=device, dtype=cdtype),
            self.residues.to(device=device, dtype=cdtype),
            None if self.D is None else self.D.to(device=device, dtype=rdtype),
        )

    # ---- input checks ------------------------------------------------------------------------

    def _input(self, u: Tensor, ndim: int) -> Tensor:
        if u.dim() != ndim or u.shape[1] != self.channels or u.is_complex():
            want = "(B, C)" if ndim == 2 else "(B, C, T)"
            raise ValueError(
                f"input must be real {want} with C={self.channels}, got {tuple(u.shape)}"
            )
        return u.to(device=self.device, dtype=self.dtype)

    def _state(self, state: Tensor | None, batch: int) -> Tensor:
        if state is None:
            return self.init_state(batch)
        if tuple(state.shape) != (batch, self.channels, self.order):
            raise ValueError(
                f"state must be (B, C, N) = {(batch, self.channels, self.order)}, "
                f"got {tuple(state.shape)}"
            )
        return state.to(device=self.device, dtype=self.complex_dtype)

    # ---- runtime ---------------------------------------------------------------------------

    def init_state(self, batch: int) -> Tensor:
        """Zero state (B, C, N), complex."""
        return torch.zeros(
            batch, self.channels, self.order, dtype=self.complex_dtype, device=self.device
        )

    def step(self, u_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One token: u_t (B, C) -> (y_t (B, C), new state (B, C, N)). O(N) per channel."""
        u_t = self._input(u_t, 2)  # (B, C)
        x = self._state(state, u_t.shape[0])  # (B, C, N)
        x = self.poles * x + u_t[..., None]  # (B, C, N)
        y = (self.residues * x).sum(-1).real  # (B, C)
        if self.D is not None:
            y = y + self.D * u_t  # (B, C)
        return y, x

    def kernel(self, length: int) -> Tensor:
        """Modal kernel (C, L) in the layer's real dtype (evaluated in float64, then cast)."""
        out = torch.empty(self.channels, length, dtype=torch.float64, device=self.device)  # (C, L)
        per_channel = self.order * max(1, min(length, _MODAL_CHUNK))
        for blk in _channel_blocks(self.channels, per_channel):
            out[blk] = modal_kernel(
                self.poles[blk].to(torch.complex128),
                self.residues[blk].to(torch.complex128),
                length,
            )  # (c, L)
        return out.to(self.dtype)

    def prefill(self, u: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """A prompt at once: u (B, C, T) -> (y (B, C, T), state after the last token (B, C, N)).

        Outputs: FFT convolution with the length-T modal kernel (+ D u), plus the free response
        of the initial state, Re sum_n R_n p_n^(t+1) x0[n]. State: closed form
        x_{T-1} = sum_tau p^(T-1-tau) u_tau + p^T x0, with no loop over time.
        """
        u = self._input(u, 3)  # (B, C, T)
        batch, _, length = u.shape
        x0 = None if state is None else self._state(state, batch)  # (B, C, N)
        if length == 0:
            return u.clone(), self._state(x0, batch)
        y = fft_conv(u, self.kernel(length), self.D)  # (B, C, T)
        x = self._input_state(u)  # (B, C, N)
        if x0 is not None:
            y = y + self._free_response(x0, length)  # (B, C, T)
            p_t = _powers(self.poles, torch.tensor([length]))[..., 0]  # (C, N)
            x = x + p_t.to(self.complex_dtype) * x0  # (B, C, N)
        return y, x

    def _input_state(self, u: Tensor) -> Tensor:
        """sum_tau p^(T-1-tau) u_tau for u (B, C, T) -> (B, C, N).

        With T padded at the front to M*K (zeros change nothing), tau = mK + k and
        p^(T'-1-tau) = p^(K(M-1-m)) * p^(K-1-k): two small power tables instead of one (C, N, T).
        """
        batch, channels, length = u.shape
        n = self.order
        k, m = _split(length)
        u_c = F.pad(u, (m * k - length, 0)).reshape(batch, channels, m, k)  # (B, C, M, K)
        inner = _powers(self.poles, torch.arange(k - 1, -1, -1))  # (C, N, K): p^(K-1-k)
        outer = _powers(self.poles, k * torch.arange(m - 1, -1, -1))  # (C, N, M): p^(K(M-1-m))
        cd = self.complex_dtype
        x = torch.empty(batch, channels, n, dtype=cd, device=self.device)  # (B, C, N)
        per_channel = batch * m * (n + k) + n * (k + m)
        for blk in _channel_blocks(channels, per_channel):
            z = torch.einsum("bcmk,cnk->bcnm", u_c[:, blk].to(cd), inner[blk].to(cd))  # (B,c,N,M)
            x[:, blk] = torch.einsum("bcnm,cnm->bcn", z, outer[blk].to(cd))  # (B, c, N)
        return x

    def _free_response(self, x0: Tensor, length: int) -> Tensor:
        """Re sum_n R_n p_n^(t+1) x0[n] for t < T -> (B, C, T), factored as p^(mK) p^(k+1)."""
        batch, channels, n = x0.shape
        k, m = _split(length)
        inner = _powers(self.poles, torch.arange(1, k + 1))  # (C, N, K): p^(k+1)
        outer = _powers(self.poles, k * torch.arange(m))  # (C, N, M): p^(mK)
        cd = self.complex_dtype
        coef = self.residues * x0  # (B, C, N)
        y = torch.empty(batch, channels, m * k, dtype=self.dtype, device=self.device)  # (B, C, MK)
        per_channel = batch * (n * m + m * k) + n * (k + m)
        for blk in _channel_blocks(channels, per_channel):
            a = coef[:, blk, :, None] * outer[blk].to(cd)  # (B, c, N, M)
            y_blk = torch.einsum("bcnm,cnk->bcmk", a, inner[blk].to(cd)).real  # (B, c, M, K)
            y[:, blk] = y_blk.reshape(batch, -1, m * k)  # (B, c, MK)
        return y[..., :length]  # (B, C, T)

    def scan(
        self, u: Tensor, state: Tensor | None = None, chunk: int = 256
    ) -> tuple[Tensor, Tensor]:
        """Chunked scan: u (B, C, T) -> (y (B, C, T), final state (B, C, N)).

        Per chunk of K tokens (all chunks at once, as real matrix products):
          intra  y[k] += sum_{j<=k} h[k-j] u[j]          lower-triangular Toeplitz of h[:K]
          local  z = sum_j p^(K-1-j) u[j]                 the chunk's own end state
          cross  y[k] += Re sum_n R_n p_n^(k+1) x_prev[n] state carried into the chunk
        Across chunks the state is carried, x_next = p^K x_prev + z (a loop over T/K chunks,
        not over tokens). Work O(T (K + N)) per (batch, channel); channels are processed in
        blocks so temporaries stay bounded.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        u = self._input(u, 3)  # (B, C, T)
        batch, channels, length = u.shape
        x0 = self._state(state, batch)  # (B, C, N)
        if length == 0:
            return u.clone(), x0
        k = min(chunk, length)
        m = -(-length // k)
        last = length - (m - 1) * k  # tokens in the last chunk, 1..K
        y = torch.empty_like(u)  # (B, C, T)
        x = torch.empty_like(x0)  # (B, C, N)
        n = self.order
        per_channel = batch * m * (3 * k + 8 * n) + k * k + 8 * n * k  # real numbers
        for blk in _channel_blocks(channels, per_channel, budget=4 * _BUDGET):
            y[:, blk], x[:, blk] = _scan_block(
                u[:, blk], x0[:, blk], self.poles[blk], self.residues[blk], k, last
            )
        if self.D is not None:
            y = y + self.D[:, None] * u  # (B, C, T)
        return y, x


def _toeplitz(h: Tensor) -> Tensor:
    """h (C, K) -> (C, K, K) lower-triangular Toeplitz, out[c, k, j] = h[c, k - j]."""
    k = h.shape[-1]
    lag = torch.arange(k, device=h.device)[:, None] - torch.arange(k, device=h.device)  # (K, K)
    return h[:, lag.clamp(min=0)] * (lag >= 0).to(h.dtype)  # (C, K, K)


def _scan_block(
    u: Tensor, x0: Tensor, poles: Tensor, residues: Tensor, k: int, last: int
) -> tuple[Tensor, Tensor]:
    """DiagonalSSM.scan without D on a block of c channels, chunk K.

    u (B, c, T) real, x0 (B, c, N) complex, poles / residues (c, N) -> (y (B, c, T), state).
    Tables are evaluated in complex128 and cast; the products run in u's real dtype.
    """
    batch, channels, length = u.shape
    n = poles.shape[-1]
    m = -(-length // k)
    real = u.dtype
    p64, r64 = poles.to(torch.complex128), residues.to(torch.complex128)  # (c, N)
    # Tables: Toeplitz of h[:K]; p^(K-1-j) as real columns [Re | Im]; R p^(k+1) as real rows.
    toeplitz = _toeplitz(modal_kernel(p64, r64, k)).to(real)  # (c, K, K)
    local_c = _powers(p64, torch.arange(k - 1, -1, -1))  # (c, N, K)
    local = torch.cat([local_c.real, local_c.imag], dim=1).transpose(1, 2).to(real)  # (c, K, 2N)
    cross_c = r64[..., None] * _powers(p64, torch.arange(1, k + 1))  # (c, N, K)
    cross = torch.cat([cross_c.real, cross_c.imag], dim=1).to(real)  # (c, 2N, K)
    jump = _powers(p64, torch.tensor([k, last])).to(x0.dtype)  # (c, N, 2): p^K, p^last

    u_c = F.pad(u, (0, m * k - length)).reshape(batch, channels, m, k)  # (B, c, M, K)
    y = torch.einsum("bcmj,ckj->bcmk", u_c, toeplitz)  # (B, c, M, K) intra-chunk
    z = torch.einsum("bcmj,cjq->bcmq", u_c, local)  # (B, c, M, 2N): chunk end states
    z = torch.complex(z[..., :n], z[..., n:])  # (B, c, M, N)
    # Carry across chunks: entering[:, :, i] = state before chunk i.
    entering = torch.empty(batch, channels, m, n, dtype=x0.dtype, device=x0.device)  # (B,c,M,N)
    x = x0  # (B, c, N)
    for i in range(m):
        entering[:, :, i] = x
        if i < m - 1:
            x = jump[..., 0] * x + z[:, :, i]  # (B, c, N)
    # Final state: the last chunk holds `last` tokens, p^(last-1-j) = local[:, K-last+j].
    z_last = torch.einsum("bcj,cjq->bcq", u[..., length - last :], local[:, k - last :])  # (B,c,2N)
    x = jump[..., 1] * x + torch.complex(z_last[..., :n], z_last[..., n:])  # (B, c, N)
    # Re sum_n G x = sum_n (Re G Re x - Im G Im x), one real product for all chunks.
    ent = torch.cat([entering.real, -entering.imag], dim=-1)  # (B, c, M, 2N)
    y = y + torch.einsum("bcmq,cqk->bcmk", ent, cross)  # (B, c, M, K) cross-chunk
    return y.reshape(batch, channels, m * k)[..., :length], x


# ---- references -------------------------------------------------------------------------------


def naive_step_loop(
    ssm: DiagonalSSM, u: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Reference recurrence, one token at a time in float64 / complex128.

    u (B, C, T) -> (y (B, C, T) float64, final state (B, C, N) complex128).
    """
    p = ssm.poles.to(torch.complex128)  # (C, N)
    r = ssm.residues.to(torch.complex128)  # (C, N)
    u64 = u.to(device=p.device, dtype=torch.float64)  # (B, C, T)
    batch, channels, length = u64.shape
    if state is None:
        x = torch.zeros(batch, channels, ssm.order, dtype=torch.complex128, device=p.device)
    else:
        x = state.to(device=p.device, dtype=torch.complex128)  # (B, C, N)
    y = torch.empty_like(u64)  # (B, C, T)
    for t in range(length):
        x = p * x + u64[:, :, t, None]  # (B, C, N)
        y[:, :, t] = (r * x).sum(-1).real  # (B, C)
    if ssm.D is not None:
        y = y + ssm.D.to(torch.float64)[:, None] * u64  # (B, C, T)
    return y, x


def direct_conv(u: Tensor, h: Tensor, D: Tensor | None = None) -> Tensor:
    """Reference causal convolution by direct summation over taps (no FFT), O(T L).

    u (B, C, T), h (C, L), D (C,) -> y (B, C, T) with y[t] = sum_{tau<=t, tau<L} h[tau] u[t-tau].
    """
    dtype = torch.promote_types(u.dtype, h.dtype)
    u = u.to(dtype)  # (B, C, T)
    h = h.to(device=u.device, dtype=dtype)  # (C, L)
    length = u.shape[-1]
    y = torch.zeros_like(u)  # (B, C, T)
    for tau in range(min(h.shape[-1], length)):
        y[..., tau:] += h[:, tau, None] * u[..., : length - tau]  # (B, C, T - tau)
    if D is not None:
        y = y + D.to(device=u.device, dtype=dtype)[:, None] * u  # (B, C, T)
    return y


def fft_conv(u: Tensor, h: Tensor, D: Tensor | None = None) -> Tensor:
    """Fast causal convolution: u (B, C, T), h (C, L), D (C,) -> y (B, C, T).

    rfft with n >= T + min(L, T) - 1 (taps beyond T never reach the first T outputs), so the
    circular convolution has no wrap-around in the kept outputs; truncated to T.
    """
    if u.dim() != 3 or h.dim() != 2 or h.shape[0] != u.shape[1]:
        raise ValueError(
            f"expected u (B, C, T) and h (C, L), got {tuple(u.shape)}, {tuple(h.shape)}"
        )
    dtype = torch.promote_types(u.dtype, h.dtype)
    u = u.to(dtype)  # (B, C, T)
    length = u.shape[-1]
    h = h[:, :length].to(device=u.device, dtype=dtype)  # (C, L'), L' = min(L, T)
    if length == 0 or h.shape[-1] == 0:
        y = torch.zeros_like(u)  # (B, C, T)
    else:
        n = fft_size(length + h.shape[-1] - 1)
        spec = torch.fft.rfft(u, n=n) * torch.fft.rfft(h, n=n)  # (B, C, n // 2 + 1)
        y = torch.fft.irfft(spec, n=n)[..., :length]  # (B, C, T)
    if D is not None:
        y = y + D.to(device=u.device, dtype=dtype)[:, None] * u  # (B, C, T)
    return y
