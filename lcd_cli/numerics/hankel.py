"""Hankel singular values of kernels and the Eckart-Young lower bound on modal fit error.

Dimensions:
    C  channels (independent kernels)
    L  kernel length
    m  Hankel rows, m = ceil(L / 2); n = L - m + 1 columns (n = m or m + 1, so min(m, n) = m)
    k  singular values requested
    q  sketch width of the randomized SVD (k + oversampling)
    F  rfft bins of the FFT size used for Hankel products

The Hankel matrix of a kernel is H[c, i, j] = h[c, i + j] for i < m, j < n.

Why it bounds modal fits: an N-mode real-output modal kernel h_N[t] = Re sum_n R_n p_n^t has a
Hankel matrix of rank <= r = 2N. Each h[t] appears in H mult(t) <= min(m, n) times, so
||H(h) - H(h_N)||_F^2 <= min(m, n) ||h - h_N||_2^2, and by Eckart-Young (1936)
||H(h) - H(h_N)||_F^2 >= sum_{k >= r} sigma_k^2. Hence

    ||h - h_N||_2 >= sqrt(sum_{k >= r} sigma_k(H)^2 / min(m, n)).

The bound is rigorous only with exact singular values. A randomized SVD (Halko, Martinsson,
Tropp 2011) returns values <= the true ones, so the tail (Frobenius norm minus the captured
energy) is over-estimated and the "floor" becomes an estimate that can exceed the true bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# Element budget for one batch of FFT intermediates / dense Hankel matrices (float64 words).
_BUDGET = 1 << 25
# Complex bins of one block of Hankel-product FFTs (16 MiB): blocks that stay in the last-level
# cache make the products 2.4x faster than one batch of every vector (64 channels x 48
# vectors at L = 8192: 0.32 s against 0.77 s, 2-core EPYC guest with 32 MiB L3, measured).
_FFT_BLOCK = 1 << 20
_OVERSAMPLE = 10
_OVERSAMPLE_DIV = 2  # sketch width q = k + max(_OVERSAMPLE, k // _OVERSAMPLE_DIV)
_POWER_ITERS = 3
# The Gram route's rounding bound on each eigenvalue, delta = _GRAM_ROUNDING m eps (lambda_max +
# log2(nfft) ||h||^2): the m x m eigenproblem's backward error (eps ||G|| per step) and the FFT
# lag sums' (eps log2(nfft) ||h||^2 per entry), m of each. Its tails are lowered by (m - r) delta
# (Weyl), so that a floor never exceeds the exact one. Against dense SVDs of the same shapes
# (m = 33-264; L = 1000 to 1,000,002; decaying, exact low-rank, noise, constant and spike
# kernels), a tail came out at most 0.14 (m - r) delta / _GRAM_ROUNDING above the exact one.
_GRAM_ROUNDING = 4.0
# The largest dense Hankel SVD of a floor, by its cost m^2 n (m^2 n = 1e9 at m = 528,
# n = 3569: 0.09 s per channel here, through the QR): larger shapes take the Gram route. It
# admits every shape up to L = 2048 (the square m = ceil(L/2) included, at m^3 for even L:
# `floor_shapes`), m <= 264 at L = 8192, m <= 66 at L = 65536 and m <= 32 at L = 1M (none of
# the report's at N = 16).
DENSE_COST = 1 << 30
# The dense cost m^2 n' of each prefix shape: the m-row Hankel matrix of h[:w] for a row count m
# whose full-length matrix is too large for a dense SVD (0.02-0.07 s per channel here). Exact to
# rounding where the Gram route's resolution (about 2e-7 relative at L = 1M) hides the floor:
# the 32 HyenaDNA-1m-like channels of docs/math.md get a median floor of 3.2e-8 from prefixes
# of 2188-123280 samples at N = 16, where the Gram route gives 0 (a dense SVD of the whole
# 65-row shape, 30x the cost: 6.5e-8).
PREFIX_COST = 1 << 27
_QR_FIRST = 2  # values-only dense SVDs of shapes this elongated or more go through a QR
_TSQR_ROWS = 4096  # rows per block of that QR (`_tall_r`) ...
_TSQR_WORDS = 1 << 23  # ... for matrices of more float64 words than this (64 MiB, twice the L3 here)


@dataclass(frozen=True)
class HankelSpectrum:
    """Leading Hankel singular values of a batch of kernels.

    Attributes:
        sigma: (C, k) leading singular values, descending (zero-padded past the rank).
        frob2: (C,) squared Frobenius norm of H, exact (closed form from h).
        rows: m, the number of Hankel rows (= min(m, n)).
        exact: True when sigma comes from a dense SVD; False for a randomized SVD.
        tail2: (C, m + 1) with tail2[:, r] = sum_{j >= r} sigma_j^2, only for exact spectra
            (accurate tails without the cancellation of frob2 - sum sigma^2; from a Gram
            matrix, less its rounding bound: see `gram_spectrum`); else None.
    """

    sigma: Tensor
    frob2: Tensor
    rows: int
    exact: bool
    tail2: Tensor | None = None


@dataclass(frozen=True)
class EckartYoungFloor:
    """Lower bounds on the relative l2 error of N-mode fits.

    Attributes:
        values: (C, len(orders)) floor on ||h - h_N|| / ||h|| per channel and order.
        orders: the orders N (complex modes; real rank 2N).
        rigorous: True when computed from an exact spectrum. False means the values are
            estimates (randomized SVD) that may exceed the true bound: print them as "estimate".
    """

    values: Tensor
    orders: tuple[int, ...]
    rigorous: bool

    @property
    def label(self) -> str:
        return "floor" if self.rigorous else "estimate"


def hankel_shape(length: int, rows: int | None = None) -> tuple[int, int]:
    """(m, n) of the Hankel matrix of a length-L kernel: m + n = L + 1.

    Default m = ceil(L/2) (square-ish, so min(m, n) = m); `rows` picks another m in [1, L].
    """
    m = (length + 1) // 2 if rows is None else int(rows)
    if not 1 <= m <= max(1, length):
        raise ValueError(f"Hankel rows must be in [1, {length}], got {m}")
    return m, length - m + 1


def hankel_frob2(h: Tensor, rows: int | None = None) -> Tensor:
    """Exact ||H||_F^2 per channel: sum_t mult(t) h[t]^2, mult(t) = min(t + 1, m, n, L - t).

    Args:
        h: (C, L) real.
        rows: Hankel rows m (default ceil(L/2)).
    Returns:
        (C,) same dtype.
    """
    length = h.shape[-1]
    m, n = hankel_shape(length, rows)
    t = torch.arange(length, device=h.device)  # (L,)
    mult = torch.minimum(torch.minimum(t + 1, length - t), torch.tensor(min(m, n)))  # (L,)
    return (h * h * mult.to(h.dtype)).sum(-1)  # (C,)


def fft_size(n: int) -> int:
    """Smallest 5-smooth integer >= n (fast FFT length)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _hankel_apply(hf: Tensor, xt: Tensor, rows: int, cols: int, nfft: int) -> Tensor:
    """(H X)^T for the rows x cols Hankel matrix of h (rows + cols = L + 1), via FFT.

    y[i] = sum_j h[i + j] x[j] is a cross-correlation: irfft(rfft(h) conj(rfft(x)))[i] at a
    size nfft >= L has no wrap-around for i < rows (i + j <= L - 1). Vectors are stored as
    rows (FFT along the last axis).

    Args:
        hf: (C, F) rfft of h at size nfft.
        xt: (C | 1, q, cols) real, X transposed.
    Returns:
        (C, q, rows) real, (H X) transposed.
    """
    c, bins = hf.shape
    q = xt.shape[1]
    out = torch.empty(c, q, rows, dtype=xt.dtype, device=xt.device)  # (C, q, rows)
    cs = min(c, max(1, _FFT_BLOCK // bins))  # channels per block
    qs = min(q, max(1, _FFT_BLOCK // (cs * bins)))  # vectors per block
    shared = xt.shape[0] == 1  # one X for every channel (the test matrix)
    # The zero-padded input of each block's rfft, its tail zeroed once: the same transform as
    # rfft(x, n=nfft), without a padded copy per block.
    pad = None if shared else xt.new_zeros(cs, qs, nfft)  # (Cb, qb, nfft)
    for start in range(0, q, qs):
        # A shared X is transformed once per vector block, for every channel block.
        xf_shared = torch.fft.rfft(xt[:, start : start + qs], n=nfft, dim=-1).conj() if shared \
            else None  # (1, qb, F)
        for c0 in range(0, c, cs):
            hc = hf[c0 : c0 + cs, None, :]  # (Cb, 1, F)
            if xf_shared is not None:
                prod = hc * xf_shared  # (Cb, qb, F)
            else:
                assert pad is not None
                block = xt[c0 : c0 + cs, start : start + qs]  # (Cb, qb, cols)
                buf = pad[: block.shape[0], : block.shape[1]]  # (Cb, qb, nfft)
                buf[..., :cols] = block
                xf = torch.fft.rfft(buf, dim=-1)
                xf.imag.neg_()  # conj, in place
                prod = xf.mul_(hc)  # (Cb, qb, F)
            yb = torch.fft.irfft(prod, n=nfft, dim=-1)  # (Cb, qb, nfft)
            out[c0 : c0 + cs, start : start + qs] = yb[..., :rows]
    return out


def _orth_rows(yt: Tensor) -> Tensor:
    """Orthonormal basis of the column space of Y, given and returned transposed (C, q, rows)."""
    return torch.linalg.qr(yt.transpose(-1, -2)).Q.transpose(-1, -2)


def sketch_width(k: int, sketch: int | None = None) -> int:
    """Range-finder width of the randomized SVD for k vectors: the given q (at least k), else
    k plus the default oversampling max(_OVERSAMPLE, k // _OVERSAMPLE_DIV)."""
    return max(k, sketch) if sketch is not None else k + max(_OVERSAMPLE, k // _OVERSAMPLE_DIV)


def _randomized_svd(
    h: Tensor,
    k: int,
    seed: int,
    rows: int | None = None,
    power_iters: int = _POWER_ITERS,
    sketch: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Leading k left singular vectors and values of H(h), never forming H.

    Halko-Martinsson-Tropp range finder with power iterations; one Gaussian test matrix shared
    by all channels (so a channel's result does not depend on its batch), drawn on the CPU
    from `seed` (so CPU and CUDA runs start identically).

    Args:
        h: (C, L) float64.
        sketch: range-finder width q >= k (default k + max(_OVERSAMPLE, k // _OVERSAMPLE_DIV)).
    Returns:
        U (C, m, k), sigma (C, k).
    """
    length = h.shape[-1]
    m, n = hankel_shape(length, rows)
    q = min(sketch_width(k, sketch), m, n)
    nfft = fft_size(length)
    hf = torch.fft.rfft(h, n=nfft, dim=-1)  # (C, F)
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(1, q, n, generator=gen, dtype=h.dtype).to(h.device)  # (1, q, n)
    qt = _orth_rows(_hankel_apply(hf, omega, m, n, nfft))  # (C, q, m)
    for _ in range(power_iters):
        zt = _orth_rows(_hankel_apply(hf, qt, n, m, nfft))  # (C, q, n) from H^T Q
        qt = _orth_rows(_hankel_apply(hf, zt, m, n, nfft))  # (C, q, m) from H Z
    b = _hankel_apply(hf, qt, n, m, nfft)  # (C, q, n) = Q^T H
    # B = R^T Q2^T from B^T = Q2 R: B's left singular vectors and values are those of the
    # q x q R^T (a third of the time of the wide SVD at q = 48, n = 4097).
    rb = torch.linalg.qr(b.transpose(-1, -2), mode="r").R  # (C, q, q)
    ub, s, _ = torch.linalg.svd(rb.transpose(-1, -2))  # ub (C, q, q), s (C, q)
    u = qt.transpose(-1, -2) @ ub  # (C, m, q): H ~ Q B = (Q Ub) S Vb^T
    return u[..., :k], s[..., :k]


def _dense_svd(
    h: Tensor, want_vectors: bool, rows: int | None = None
) -> tuple[Tensor | None, Tensor]:
    """SVD of the explicit Hankel matrix. Returns U (C, m, p) or None, sigma (C, p), p = min(m, n)."""
    m, n = hankel_shape(h.shape[-1], rows)
    hm = h.unfold(-1, n, 1)  # (C, m, n), row i = h[i : i + n]
    if want_vectors:
        u, s, _ = torch.linalg.svd(hm, full_matrices=False)  # (C, m, m), (C, m)
        return u, s
    if m == n:
        # Square: H[i, j] = h[i + j] is symmetric, so its singular values are the magnitudes
        # of its eigenvalues (backward stable as the SVD; 1.6-2.5x faster at m = 256-1024).
        return None, torch.linalg.eigvalsh(hm).abs().sort(dim=-1, descending=True).values
    if min(m, n) * _QR_FIRST > max(m, n):  # near-square: one SVD
        return None, torch.linalg.svdvals(hm)  # (C, p)
    # Short and wide: the p x p triangular factor of the tall side's Householder QR has the
    # same singular values (to rounding, as the QR is backward stable), and QR plus its SVD
    # is 2-6x faster than the wide SVD (m = 66, n = 65471: 0.07 against 0.45 s per channel).
    tall = hm.transpose(-1, -2) if m <= n else hm  # (C, max, min)
    return None, torch.linalg.svdvals(_tall_r(tall))  # (C, p)


def _tall_r(a: Tensor) -> Tensor:
    """The triangular factor R (C, p, p) of a tall (C, M, p) matrix. One Householder QR,
    or for a matrix of more than _TSQR_WORDS a one-level TSQR (Demmel et al. 2012): QRs of
    row blocks of _TSQR_ROWS, then one of their stacked R factors and the remainder rows.
    Backward stable like one QR of the whole, and faster where the matrix is far larger than
    the cache, as each block's panels stay in it (16 channels of 1M x 24, one at a time:
    5.4 -> 3.1 s here), and slower on the report's floor at L = 65536, whose largest such
    matrices (65471 x 66) are 4.3 M words (1.1-1.25x)."""
    c, rows, p = a.shape
    blocks = rows // _TSQR_ROWS
    if rows * p <= _TSQR_WORDS or blocks < 2 or p > _TSQR_ROWS // 4:
        return torch.linalg.qr(a, mode="r").R
    head = a[:, : blocks * _TSQR_ROWS].reshape(c * blocks, _TSQR_ROWS, p)
    rs = torch.linalg.qr(head, mode="r").R.reshape(c, blocks * p, p)  # (C, B p, p)
    return torch.linalg.qr(torch.cat([rs, a[:, blocks * _TSQR_ROWS :]], 1), mode="r").R


def hankel_svd(
    h: Tensor,
    k: int,
    *,
    exact_max_rows: int = 1024,
    seed: int = 0,
    want_vectors: bool = True,
    rows: int | None = None,
    power_iters: int = _POWER_ITERS,
    sketch: int | None = None,
) -> tuple[Tensor | None, Tensor, bool, Tensor | None]:
    """Leading k singular triplets of the Hankel matrices of a batch of kernels.

    Dense batched SVD when m <= exact_max_rows (exact), else a randomized SVD with FFT
    Hankel products (deterministic given seed). Channels are processed in memory-bounded chunks.

    Args:
        h: (C, L) real.
        k: number of singular values (clamped to min(m, n); sigma is zero-padded to k).
        rows: Hankel rows m (default ceil(L/2)).
        sketch: randomized SVD only: range-finder width (>= k; default k + oversampling). A
            caller that needs the leading k1 < k vectors exactly as a rank-k1 call would give
            them passes that call's width and asks for k.
    Returns:
        U (C, m, k') or None, sigma (C, k), exact, all_sigma (C, min(m, n)) (exact only, else
        None); k' = min(k, m, n).
    """
    h = h.to(torch.float64)
    c, length = h.shape
    m, n = hankel_shape(length, rows)
    kk = min(k, m, n)
    exact = m <= exact_max_rows
    us: list[Tensor] = []
    sig: list[Tensor] = []
    alls: list[Tensor] = []
    if exact:
        step = max(1, _BUDGET // (m * n))
    else:
        q = min(sketch_width(kk, sketch), m, n)
        step = max(1, _BUDGET // ((fft_size(length) // 2 + 1) * 2 * q + n * q))
    for start in range(0, c, step):
        hc = h[start : start + step]  # (Cc, L)
        if exact:
            u, s = _dense_svd(hc, want_vectors, rows)  # (Cc, m, p) | None, (Cc, p)
            alls.append(s)
            if u is not None:
                us.append(u[..., :kk])
            sig.append(s[..., :kk])
        else:
            u, s = _randomized_svd(hc, kk, seed, rows, power_iters, sketch)  # (Cc, m, kk), (Cc, kk)
            if want_vectors:
                us.append(u)
            sig.append(s)
    sigma = torch.cat(sig) if sig else h.new_zeros(0, kk)  # (C, kk)
    if k > kk:
        sigma = torch.cat([sigma, sigma.new_zeros(c, k - kk)], dim=-1)  # (C, k)
    u_all = torch.cat(us) if us else None
    all_sigma = (torch.cat(alls) if alls else h.new_zeros(0, min(m, n))) if exact else None
    return u_all, sigma, exact, all_sigma


def hankel_singular_values(
    h: Tensor, k: int, *, exact_max_rows: int = 1024, seed: int = 0, rows: int | None = None
) -> HankelSpectrum:
    """Leading k Hankel singular values per channel, plus the exact Frobenius norm.

    Args:
        h: (C, L) float64 kernels.
        k: how many singular values (2 * max order for floors).
        exact_max_rows: dense SVD (exact) when m <= this, else randomized.
        seed: seed of the randomized SVD's test matrix.
        rows: Hankel rows m (default ceil(L/2), the square-ish matrix).
    Returns:
        HankelSpectrum with sigma (C, k) descending, frob2 (C,), rows min(m, n), exact flag.
    """
    if h.ndim != 2:
        raise ValueError(f"expected (C, L) kernels, got shape {tuple(h.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    h = h.to(torch.float64)
    m, n = hankel_shape(h.shape[-1], rows)
    _, sigma, exact, all_sigma = hankel_svd(
        h, k, exact_max_rows=exact_max_rows, seed=seed, want_vectors=False, rows=m
    )
    tail2 = None
    if all_sigma is not None:
        s2 = all_sigma * all_sigma  # (C, p)
        rev = torch.flip(torch.cumsum(torch.flip(s2, (-1,)), -1), (-1,))  # (C, p)
        tail2 = torch.cat([rev, rev.new_zeros(rev.shape[0], 1)], dim=-1)  # (C, p + 1)
    return HankelSpectrum(
        sigma=sigma, frob2=hankel_frob2(h, m), rows=min(m, n), exact=exact, tail2=tail2
    )


def eckart_young_floor(
    spec: HankelSpectrum, h_norm2: Tensor, orders: Sequence[int]
) -> EckartYoungFloor:
    """Lower bound on ||h - h_N||_2 / ||h||_2 for N-mode modal fits (real rank r = 2N).

    floor = sqrt(tail_r / m) / ||h||, tail_r = frob2 - sum_{k < r} sigma_k^2 (clamped >= 0).
    Rigorous only when `spec.exact`; with a randomized spectrum the result is an estimate
    (flagged by `rigorous=False`) that may be above the true bound. Channels with ||h|| = 0
    get 0.

    Args:
        spec: from hankel_singular_values, with k >= 2 * max(orders) unless exact.
        h_norm2: (C,) squared l2 norms of the kernels.
        orders: the orders N to evaluate.
    Returns:
        EckartYoungFloor with values (C, len(orders)).
    """
    cols: list[Tensor] = []
    k = spec.sigma.shape[-1]
    cum = torch.cumsum(spec.sigma * spec.sigma, dim=-1)  # (C, k)
    for order in orders:
        r = 2 * int(order)
        if order < 1:
            raise ValueError(f"orders must be >= 1, got {order}")
        if spec.tail2 is not None:
            tail = spec.tail2[:, min(r, spec.tail2.shape[-1] - 1)]  # (C,)
        elif r >= spec.rows:
            tail = torch.zeros_like(spec.frob2)  # rank-r approximation can be exact
        elif r > k:
            raise ValueError(
                f"order {order} needs {r} singular values, the spectrum has {k}: "
                "compute it with k >= 2 * max order"
            )
        else:
            tail = spec.frob2 - cum[:, r - 1]  # (C,)
        tail = tail.clamp_min(0.0)
        cols.append(torch.sqrt(tail / spec.rows))
    num = torch.stack(cols, dim=-1) if cols else spec.frob2.new_zeros(len(spec.frob2), 0)
    den = torch.sqrt(h_norm2.to(num.dtype))[:, None]  # (C, 1)
    values = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    return EckartYoungFloor(
        values=values, orders=tuple(int(o) for o in orders), rigorous=spec.exact
    )


def autocorrelation(h: Tensor, lags: int) -> Tensor:
    """R[c, d] = sum_{k < L - d} h[c, k] h[c, k + d] for d < lags (C, lags): one FFT pair of
    size >= 2L - 1 (no wrap-around), shared by every Gram shape of `hankel_gram`."""
    length = h.shape[-1]
    nfft = fft_size(2 * length - 1)
    hf = torch.fft.rfft(h, n=nfft)  # (C, F)
    return torch.fft.irfft(hf.real**2 + hf.imag**2, n=nfft)[:, :lags]  # (C, lags)


def hankel_gram(h: Tensor, rows: int, autocorr: Tensor | None = None) -> Tensor:
    """G = H H^T, exactly, for the short-and-wide rows x (L - rows + 1) Hankel matrix of h,
    in O(L log L + rows^2) per channel without forming H.

    Lag sums first: G[0, d] = sum_{k < n} h[k] h[k + d], d < m, the full autocorrelation R[d]
    (`autocorrelation`, one FFT pair for every shape; computed here when not given) less the
    products past column n, sum_{j < m - 1 - d} h[n + j] h[n + j + d] (an autocorrelation of
    the last m - 1 samples, O(m^2)). Then down each diagonal, G[i + 1, i + 1 + d] = G[i, i + d]
    + h[n + i] h[n + i + d] - h[i] h[i + d]: a running sum of m differences, so rounding grows
    with m, not with L.

    Args:
        h: (C, L) float64; rows: m, 1 <= m <= L; autocorr: (C, >= m) R of h, or None.
    Returns:
        (C, m, m) float64, symmetric positive semi-definite (up to rounding).
    """
    c, length = h.shape
    m, n = hankel_shape(length, rows)
    full = autocorrelation(h, m) if autocorr is None else autocorr[:, :m]  # (C, m)
    tail = h[:, n:]  # (C, m - 1): the samples past column n
    if m > 1:
        past = autocorrelation(tail, m - 1)  # (C, m - 1)
        base = full - torch.nn.functional.pad(past, (0, 1))  # (C, m): G[0, d]
    else:
        base = full  # n = L: nothing past column n
    pad = torch.nn.functional.pad(h, (0, m))  # (C, L + m): zeros past the end
    s = torch.arange(m - 1, device=h.device)[:, None]  # (m-1, 1) step along a diagonal
    d = torch.arange(m, device=h.device)[None, :]  # (1, m) lag
    head = pad[:, s] * pad[:, s + d]  # (C, m-1, m): h[s] h[s + d]
    tail = pad[:, n + s] * pad[:, n + s + d]  # (C, m-1, m): h[n + s] h[n + s + d]
    run = torch.cat([base[:, None, :], base[:, None, :] + torch.cumsum(tail - head, 1)], 1)
    # run[:, i, d] = G[i, i + d] (C, m, m), meaningful for i + d < m
    i = torch.arange(m, device=h.device)
    lag = (i[None, :] - i[:, None]).clamp_min(0)  # (m, m): j - i above the diagonal
    upper = torch.gather(run, 2, lag.expand(c, m, m))  # (C, m, m): G[i, j] for j >= i
    return torch.triu(upper) + torch.triu(upper, 1).transpose(1, 2)


def gram_spectrum(h: Tensor, rows: int, autocorr: Tensor | None = None) -> HankelSpectrum:
    """The Hankel spectrum of a short-and-wide shape from its Gram matrix (eigenvalues
    = sigma^2), for shapes too large for a dense SVD of H itself (long kernels). ``autocorr``:
    the kernels' `autocorrelation` (shared by several shapes), or None.

    Tails come from the smallest eigenvalues, not from frob2 - captured energy, and are lower
    bounds: each eigenvalue is within delta = _GRAM_ROUNDING m eps (lambda_max + log2(nfft)
    ||h||^2) of sigma_j^2, so ``tail2[:, r]`` is the sum past r less (m - r) delta, at least 0.
    A floor below that resolution (about sqrt((m - r) delta / m) / ||h||: 1e-5 at m = 528 for
    a kernel with lambda_max = 300 ||h||^2) therefore comes out 0, never as rounding noise
    above the error a fit can reach."""
    h = h.to(torch.float64)
    length = h.shape[-1]
    m, n = hankel_shape(length, rows)
    lam = torch.linalg.eigvalsh(hankel_gram(h, rows, autocorr)).clamp_min(0.0)  # (C, m) ascending
    s2 = torch.flip(lam, (-1,))  # (C, m) descending sigma^2
    rev = torch.flip(torch.cumsum(lam, -1), (-1,))  # (C, m): sum_{j >= r} sigma_j^2
    eps = torch.finfo(torch.float64).eps
    norm2 = (h * h).sum(-1, keepdim=True)  # (C, 1)
    lognfft = math.log2(fft_size(2 * length - 1))
    delta = _GRAM_ROUNDING * m * eps * (s2[:, :1] + lognfft * norm2)  # (C, 1) per eigenvalue
    count = torch.arange(m, 0, -1, dtype=h.dtype, device=h.device)  # (m,): m - r values past r
    low = (rev - count * delta).clamp_min(0.0)  # (C, m) lower bounds on the tails
    tail2 = torch.cat([low, low.new_zeros(low.shape[0], 1)], dim=-1)  # (C, m + 1)
    return HankelSpectrum(sigma=torch.sqrt(s2), frob2=hankel_frob2(h, m),
                          rows=min(m, n), exact=True, tail2=tail2)


def floor_shapes(length: int, orders: Sequence[int], exact_max_rows: int = 1024,
                 dense_cost: int = DENSE_COST, prefix_cost: int = PREFIX_COST
                 ) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """The shapes `hankel_floor` takes exactly: (dense rows m, Gram-route rows m, prefix shapes
    (m, w)). Row counts are the grid 2 Nmin + 1, doubling, up to ceil(L/2), those with
    m <= exact_max_rows; a dense SVD where m^2 n <= dense_cost, else the Gram route. Each
    Gram-route m also gets the prefix h[:w] with m^2 (w - m + 1) <= prefix_cost, where that is
    a short-and-wide shape (w >= 2m - 1) shorter than L. For even L the square shape is the
    symmetric prefix (ceil(L/2), L - 1), dense where m^3 <= dense_cost."""
    m_full, _ = hankel_shape(length)
    grid: list[int] = []
    m = min(2 * min(orders) + 1, m_full)  # the shortest shape that bounds the lowest order
    while m < m_full:
        grid.append(m)
        m *= 2
    grid.append(m_full)
    shapes = [m for m in grid if m <= exact_max_rows]
    # An even length's square shape, m x (m + 1), is taken as the prefix h[:L - 1]'s m x m
    # Hankel matrix (its first m columns), symmetric, whose eigenvalues are cheaper than the
    # SVD (`_dense_svd`); its bound misses one column's share of the tail (about 1/m of it).
    square = length % 2 == 0 and m_full in shapes and m_full**3 <= dense_cost
    shapes = [m for m in shapes if not (square and m == m_full)]
    dense = [m for m in shapes if m * m * (length - m + 1) <= dense_cost]
    gram = [m for m in shapes if m not in dense]
    prefix = [(m, prefix_cost // (m * m) + m - 1) for m in gram]
    prefix = [(m, w) for m, w in prefix if 2 * m - 1 <= w < length]
    return dense, gram, prefix + ([(m_full, length - 1)] if square else [])


def floor_work(length: int, orders: Sequence[int]) -> int:
    """Rough floating-point work of one channel's `hankel_floor`: m^2 n per dense or prefix
    shape (its QR or SVD), m^3 per Gram shape (the eigenproblem) and, with any, the
    autocorrelation's FFTs (10 nfft log2 nfft). About 6e9 a second on one core here (64
    channels: 1.0e11 and 17 s at L = 2000, 3.8e10 and ~10 s at L = 1M)."""
    dense, gram, prefix = floor_shapes(length, orders)
    work = sum(m * m * (length - m + 1) for m in dense) + sum(m**3 for m in gram)
    work += sum(m * m * (w - m + 1) for m, w in prefix)
    if gram:
        nfft = fft_size(2 * length - 1)
        work += 10 * nfft * math.ceil(math.log2(nfft))
    return work


def hankel_floor(
    h: Tensor,
    orders: Sequence[int],
    *,
    exact_max_rows: int = 1024,
    seed: int = 0,
    dense_cost: int = DENSE_COST,
    prefix_cost: int = PREFIX_COST,
) -> EckartYoungFloor:
    """Tightest Eckart-Young floor over several Hankel shapes (the max of valid bounds).

    Every m gives a valid bound sqrt(tail_r(H_m) / min(m, n)) / ||h||. The square matrix
    (m = ceil(L/2)) weights h[t] by mult(t) = min(t + 1, m, L - t), far below m for the
    early samples where decaying kernels keep their energy, so its bound is loose there; a
    short-and-wide Hankel (m a few times 2N) has mult(t) = m for most t and is often much
    tighter. Row counts 2 Nmin + 1, doubling, up to ceil(L/2) are tried (Nmin the lowest
    order asked: its floor is the one a call for it alone gets), each with an exact
    spectrum where m <= exact_max_rows: a dense SVD where its cost m^2 n is at most
    ``dense_cost`` (exact to rounding), else the m x m Gram matrix (:func:`gram_spectrum`,
    O(L log L + m^3) per channel, any L), whose tails are lowered by their rounding bound
    (floors below that resolution are 0). Each Gram-route m also gets the dense SVD of a
    prefix, the m-row Hankel matrix of h[:w] (cost m^2 (w - m + 1) <= ``prefix_cost``;
    `floor_shapes`): h_N[:w] is modal too, so its Hankel matrix has rank <= 2N and
    ||h - h_N|| >= ||(h - h_N)[:w]|| >= sqrt(tail_r(H_m(h[:w])) / min(m, w - m + 1)), divided
    by the whole ||h||. That bound sees only the prefix's energy, but exactly, where the Gram
    route's resolution hides the floors of long kernels; an even length's square shape is the
    symmetric prefix h[:L - 1] (eigenvalues instead of an SVD). All three are rigorous. Only if no
    shape has m <= exact_max_rows (2 Nmin + 1 > exact_max_rows) is the square matrix's
    randomized estimate returned (rigorous=False).

    Args:
        h: (C, L) kernels; orders: the orders N.
    Returns:
        EckartYoungFloor with values (C, len(orders)).
    """
    h = h.to(torch.float64)
    length = h.shape[-1]
    k = 2 * max(orders)
    norm2 = (h * h).sum(-1)  # (C,)
    dense, gram, prefix = floor_shapes(length, orders, exact_max_rows, dense_cost, prefix_cost)
    best: Tensor | None = None
    for m, w in [(m, length) for m in dense] + prefix:
        spec = hankel_singular_values(h[:, :w], k, exact_max_rows=exact_max_rows, seed=seed,
                                      rows=m)
        vals = eckart_young_floor(spec, norm2, orders).values  # (C, len(orders))
        best = vals if best is None else torch.maximum(best, vals)
    if gram:  # the larger shapes of long kernels: exact spectra from their Gram matrices
        parts = []
        for i, part in _channel_blocks(h, max(gram)):
            acf = autocorrelation(part, max(gram))  # (Cb, m_max): one FFT pair for all shapes
            vals = [eckart_young_floor(gram_spectrum(part, m, acf), norm2[i:i + len(part)],
                                       orders).values for m in gram]  # (Cb, len(orders)) each
            parts.append(torch.stack(vals).amax(0))
        vals = torch.cat(parts)  # (C, len(orders))
        best = vals if best is None else torch.maximum(best, vals)
    if best is not None:
        return EckartYoungFloor(values=best, orders=tuple(int(o) for o in orders), rigorous=True)
    spec = hankel_singular_values(h, k, exact_max_rows=exact_max_rows, seed=seed)
    return eckart_young_floor(spec, norm2, orders)


def _channel_blocks(h: Tensor, rows: int) -> list[tuple[int, Tensor]]:
    """(first channel, block) of h, each block's Gram work (FFTs of 2L, (m, m) products)
    within _BUDGET words."""
    per = 4 * fft_size(2 * h.shape[-1]) + 4 * rows * rows  # words per channel
    step = max(1, _BUDGET // per)
    return [(i, h[i:i + step]) for i in range(0, h.shape[0], step)]


def order_for_tolerance(floors: Tensor | EckartYoungFloor, tol: float) -> int | None:
    """Smallest N whose floor is <= tol, for floors over orders N = 1 .. Nmax.

    Args:
        floors: (Nmax,) or (C, Nmax) (the max over channels is used), or an EckartYoungFloor
            computed for orders 1 .. Nmax.
        tol: relative l2 tolerance.
    Returns:
        N (1-based), or None when no order up to Nmax reaches tol.
    """
    values = floors.values if isinstance(floors, EckartYoungFloor) else floors
    if values.ndim == 2:
        values = values.max(dim=0).values if values.shape[0] else values.new_zeros(values.shape[1])
    ok = torch.nonzero(values <= tol)
    return int(ok[0, 0]) + 1 if ok.numel() else None


__all__ = [
    "EckartYoungFloor",
    "HankelSpectrum",
    "eckart_young_floor",
    "fft_size",
    "floor_shapes",
    "floor_work",
    "gram_spectrum",
    "hankel_floor",
    "hankel_frob2",
    "hankel_gram",
    "hankel_shape",
    "hankel_singular_values",
    "hankel_svd",
    "order_for_tolerance",
    "sketch_width",
]
