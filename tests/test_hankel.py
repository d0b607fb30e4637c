"""Hankel spectra and Eckart-Young floors against naive dense references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lcd_cli.numerics import hankel as hankel_mod
from lcd_cli.numerics.fit import fit_modal
from lcd_cli.numerics.hankel import (
    eckart_young_floor,
    gram_spectrum,
    hankel_floor,
    hankel_gram,
    hankel_shape,
    hankel_singular_values,
    order_for_tolerance,
)
from lcd_cli.numerics.modal import modal_kernel


def _naive_hankel(h: np.ndarray, rows: int | None = None) -> np.ndarray:
    """Explicit H[i, j] = h[i + j], m = ceil(L/2) rows unless given."""
    length = len(h)
    m = (length + 1) // 2 if rows is None else rows
    n = length - m + 1
    return np.array([[h[i + j] for j in range(n)] for i in range(m)])


def _modal(channels: int, modes: int, length: int, seed: int, noise: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    radius = 0.6 + 0.39 * torch.rand(channels, modes, generator=gen, dtype=torch.float64)
    angle = math.pi * torch.rand(channels, modes, generator=gen, dtype=torch.float64)
    res = torch.randn(channels, modes, 2, generator=gen, dtype=torch.float64)
    h = modal_kernel(torch.polar(radius, angle), torch.view_as_complex(res), length)
    return h + noise * torch.randn(channels, length, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
def test_dense_spectrum_matches_numpy(length: int) -> None:
    h = _modal(3, 5, length, seed=1, noise=1e-2)
    spec = hankel_singular_values(h, 12)
    assert spec.exact and spec.rows == (length + 1) // 2
    for c in range(3):
        hm = _naive_hankel(h[c].numpy())
        ref = np.linalg.svd(hm, compute_uv=False)
        np.testing.assert_allclose(spec.sigma[c].numpy(), ref[:12], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(spec.frob2[c]), (hm**2).sum(), rtol=1e-12)


@pytest.mark.parametrize("rows", [1, 7, 40], ids=lambda m: f"rows{m}")
def test_frobenius_closed_form_other_shapes(rows: int) -> None:
    h = _modal(2, 3, 63, seed=2, noise=0.1)
    spec = hankel_singular_values(h, 3, rows=rows)
    for c in range(2):
        hm = _naive_hankel(h[c].numpy(), rows)
        np.testing.assert_allclose(float(spec.frob2[c]), (hm**2).sum(), rtol=1e-12)
        assert spec.rows == min(hm.shape)


def test_randomized_matches_dense() -> None:
    radius = torch.linspace(0.95, 0.99, 8, dtype=torch.float64).expand(4, 8)
    angle = torch.linspace(0.2, 2.9, 8, dtype=torch.float64).expand(4, 8)
    res = torch.randn(4, 8, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = modal_kernel(torch.polar(radius, angle), torch.view_as_complex(res), 1000)
    h = h + 1e-6 * torch.randn(4, 1000, generator=torch.Generator().manual_seed(4)).double()
    dense = hankel_singular_values(h, 24)
    rand = hankel_singular_values(h, 24, exact_max_rows=10, seed=5)
    assert dense.exact and not rand.exact
    # Signal part (16 = real rank of 8 modes, all well above the noise): essentially exact.
    assert bool((dense.sigma[:, 15] > 1e3 * dense.sigma[:, 16]).all())
    torch.testing.assert_close(rand.sigma[:, :16], dense.sigma[:, :16], rtol=1e-8, atol=0.0)
    # Noise part: a sketch never over-estimates and stays close.
    assert bool((rand.sigma <= dense.sigma * (1 + 1e-10)).all())
    torch.testing.assert_close(rand.sigma, dense.sigma, rtol=0.1, atol=0.0)
    torch.testing.assert_close(rand.frob2, dense.frob2, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("block", [1, 37, 1 << 20], ids=["block1", "block37", "one_block"])
def test_hankel_products_match_the_explicit_matrix(monkeypatch, length: int, block: int) -> None:
    """The FFT Hankel products, in cache-sized blocks of channels and vectors (down to one
    FFT per block), equal H X and H^T X formed explicitly, for one shared X and one per
    channel."""
    monkeypatch.setattr(hankel_mod, "_FFT_BLOCK", block)
    h = _modal(3, 4, length, seed=11, noise=1e-2)
    m, n = hankel_shape(length)
    nfft = hankel_mod.fft_size(length)
    hf = torch.fft.rfft(h, n=nfft, dim=-1)  # (C, F)
    gen = torch.Generator().manual_seed(12)
    for xt, rows, cols in [(torch.randn(1, 5, n, generator=gen, dtype=torch.float64), m, n),
                           (torch.randn(3, 5, m, generator=gen, dtype=torch.float64), n, m)]:
        out = hankel_mod._hankel_apply(hf, xt, rows, cols, nfft)  # (C, 5, rows)
        for c in range(3):
            hm = _naive_hankel(h[c].numpy())  # (m, n)
            hm = hm if rows == m else hm.T
            ref = hm @ xt[min(c, xt.shape[0] - 1)].numpy().T  # (rows, 5)
            np.testing.assert_allclose(out[c].numpy().T, ref, rtol=1e-10, atol=1e-10)


def test_randomized_vectors_span_the_dense_ones() -> None:
    """The randomized left singular vectors span the dense SVD's
    leading subspace of a numerically low-rank Hankel matrix, and their values match."""
    h = _modal(3, 6, 1000, seed=13, noise=1e-9)
    u_r, s_r, exact, _ = hankel_mod.hankel_svd(h, 12, exact_max_rows=10, seed=2)
    u_d, s_d, exact_d, _ = hankel_mod.hankel_svd(h, 12)
    assert not exact and exact_d and u_r is not None and u_d is not None
    torch.testing.assert_close(s_r, s_d, rtol=1e-8, atol=0.0)
    # Orthonormal, and the same subspace: ||U_d^T U_r|| singular values all ~1.
    eye = torch.eye(12, dtype=torch.float64).expand(3, 12, 12)
    torch.testing.assert_close(u_r.transpose(1, 2) @ u_r, eye, rtol=0.0, atol=1e-10)
    cos = torch.linalg.svdvals(u_d.transpose(1, 2) @ u_r)  # (C, 12)
    assert float((1.0 - cos).abs().max()) < 1e-8


def test_randomized_is_deterministic() -> None:
    h = _modal(2, 4, 700, seed=4, noise=1e-3)
    a = hankel_singular_values(h, 10, exact_max_rows=10, seed=9)
    b = hankel_singular_values(h, 10, exact_max_rows=10, seed=9)
    assert torch.equal(a.sigma, b.sigma)


def test_floor_formula_against_naive() -> None:
    h = _modal(2, 6, 200, seed=6, noise=1e-2)
    norm2 = (h * h).sum(-1)
    floor = eckart_young_floor(hankel_singular_values(h, 20), norm2, [1, 3, 6])
    assert floor.rigorous and floor.label == "floor"
    for c in range(2):
        s = np.linalg.svd(_naive_hankel(h[c].numpy()), compute_uv=False)
        for j, order in enumerate([1, 3, 6]):
            ref = math.sqrt((s[2 * order :] ** 2).sum() / 100) / math.sqrt(float(norm2[c]))
            assert float(floor.values[c, j]) == pytest.approx(ref, rel=1e-8)


def test_floor_of_exact_modal_kernel_vanishes() -> None:
    h = _modal(2, 4, 300, seed=7)
    floor = eckart_young_floor(hankel_singular_values(h, 12), (h * h).sum(-1), [2, 4, 6])
    assert bool((floor.values[:, 0] > 1e-3).all())
    assert float(floor.values[:, 1:].max()) < 1e-10


def test_randomized_floor_is_flagged_estimate() -> None:
    h = _modal(2, 4, 500, seed=8, noise=1e-3)
    spec = hankel_singular_values(h, 8, exact_max_rows=10)
    floor = eckart_young_floor(spec, (h * h).sum(-1), [2, 4])
    assert not floor.rigorous and floor.label == "estimate"
    with pytest.raises(ValueError, match="singular values"):
        eckart_young_floor(spec, (h * h).sum(-1), [8])


def test_hankel_floor_is_tighter_and_rigorous() -> None:
    h = _modal(3, 10, 600, seed=9, noise=1e-3)
    norm2 = (h * h).sum(-1)
    square = eckart_young_floor(hankel_singular_values(h, 16), norm2, [2, 4, 8])
    best = hankel_floor(h, [2, 4, 8])
    assert best.rigorous
    assert bool((best.values >= square.values * (1 - 1e-12)).all())


@pytest.mark.parametrize(("length", "rows"), [(63, 1), (63, 9), (1000, 33), (1000, 257)],
                         ids=lambda v: str(v))
def test_gram_matches_the_explicit_hankel(length: int, rows: int) -> None:
    h = _modal(2, 6, length, seed=11, noise=1e-2)
    H = torch.from_numpy(np.stack([_naive_hankel(c.numpy(), rows) for c in h]))  # (C, m, n)
    G = H @ H.transpose(1, 2)  # (C, m, m)
    assert torch.allclose(hankel_gram(h, rows), G, rtol=0, atol=1e-13 * float(G.abs().max()))
    shared = hankel_mod.autocorrelation(h, 300)  # one autocorrelation serves every shape
    assert torch.allclose(hankel_gram(h, rows, shared), G, rtol=0,
                          atol=1e-13 * float(G.abs().max()))
    ref = torch.stack([torch.stack([(c[: length - d] * c[d:]).sum() for d in range(rows)])
                       for c in h])  # (C, m) naive lag sums
    torch.testing.assert_close(shared[:, :rows], ref, rtol=0.0, atol=1e-13 * float(ref.abs().max()))
    sigma = torch.linalg.svdvals(H)  # (C, m)
    got = gram_spectrum(h, rows)
    assert got.exact and got.rows == rows
    assert torch.allclose(got.sigma, sigma, rtol=0, atol=1e-7 * float(sigma.max()))


def test_long_kernel_floor_is_rigorous_from_the_gram_route() -> None:
    """With no shape cheap enough for a dense SVD (dense_cost=0), the same shapes get their
    spectra from the Gram matrix: the same floors as dense SVDs of those shapes, still
    rigorous, and below the error of an actual fit."""
    h = _modal(3, 10, 1000, seed=12, noise=1e-3)
    orders = [2, 4, 8]
    dense = hankel_floor(h, orders, exact_max_rows=300, dense_cost=1 << 40)  # m = 17 .. 272
    gram = hankel_floor(h, orders, exact_max_rows=300, dense_cost=0, prefix_cost=0)
    assert dense.rigorous and gram.rigorous
    assert torch.allclose(gram.values, dense.values, rtol=1e-6, atol=1e-9)
    fit = fit_modal(h, 4)
    assert bool((fit.rel_l2 >= gram.values[:, 1] * (1 - 1e-9)).all())


def _floor_battery(length: int) -> dict[str, torch.Tensor]:
    """Kernels whose Hankel tails range from rounding level to full rank, 3 channels each."""
    gen = torch.Generator().manual_seed(21)
    t = torch.arange(length, dtype=torch.float64)
    spike = 1e-6 * torch.randn(3, length, generator=gen, dtype=torch.float64) * torch.exp(-t / 50)
    spike[:, 0] = 1.0
    return {
        "exact rank 8": _modal(3, 4, length, seed=22),
        "noisy modal": _modal(3, 6, length, seed=23, noise=1e-4),
        "decaying noise": torch.randn(3, length, generator=gen, dtype=torch.float64)
        * torch.exp(-t / (length / 3)),
        "constant": 1.0 + 1e-9 * torch.randn(3, length, generator=gen, dtype=torch.float64),
        "spike": spike,
    }


@pytest.mark.parametrize("length", [1000, 20000], ids=lambda n: f"L{n}")
def test_gram_floor_never_exceeds_the_dense_one(length: int) -> None:
    """The Gram route squares the singular values, so its tails carry rounding of about
    m eps sigma_1^2: unlowered, the floor of an exact rank-8 kernel came out near 1e-8 at
    order 4, far above what a fit reaches (1e-14). Lowered by the rounding bound, every Gram
    floor is at most the dense SVD's of the same shapes, and equal to it where it is resolved."""
    orders = [2, 4, 8]
    for name, h in _floor_battery(length).items():
        dense = hankel_floor(h, orders, exact_max_rows=66, dense_cost=1 << 40).values
        gram = hankel_floor(h, orders, exact_max_rows=66, dense_cost=0, prefix_cost=0).values
        assert bool((gram <= dense * (1 + 1e-9)).all()), name
        resolved = dense > 1e-3
        assert torch.allclose(gram[resolved], dense[resolved], rtol=1e-3, atol=0), name
    exact = _floor_battery(length)["exact rank 8"]
    assert float(hankel_floor(exact, [4], dense_cost=0, prefix_cost=0).values.max()) <= 1e-14


def test_prefix_floor_resolves_what_the_gram_route_cannot() -> None:
    """An order-4 modal kernel plus noise 1e-7 of its norm: a floor below the Gram route's
    resolution, which gives 0 for it. The prefix shapes' dense SVDs resolve it: a positive
    floor, at most the dense floor of the same rows over the whole kernel (a prefix's Hankel
    matrix is a column block of the whole one), and at most the error of the known order-4
    approximant (the modal part)."""
    length = 20000
    clean = _modal(3, 4, length, seed=31)  # (C, L), real rank 8
    gen = torch.Generator().manual_seed(32)
    noise = torch.randn(3, length, generator=gen, dtype=torch.float64)  # (C, L)
    noise *= 1e-7 * torch.linalg.vector_norm(clean, dim=-1, keepdim=True) / math.sqrt(length)
    h = clean + noise
    known = (torch.linalg.vector_norm(noise, dim=-1) / torch.linalg.vector_norm(h, dim=-1))
    shapes = {"exact_max_rows": 66, "dense_cost": 0}  # rows 9, 18, 36: the Gram route only
    cost = 81 * 4000  # prefixes of 4008, 1017 and 285 samples
    assert hankel_mod.floor_shapes(length, [4], **shapes, prefix_cost=cost)[2] == [
        (9, 4008), (18, 1017), (36, 285)]
    gram = hankel_floor(h, [4], **shapes, prefix_cost=0).values[:, 0]  # (C,)
    prefix = hankel_floor(h, [4], **shapes, prefix_cost=cost)
    whole = hankel_floor(h, [4], exact_max_rows=66, dense_cost=1 << 40).values[:, 0]  # (C,)
    assert prefix.rigorous
    assert float(gram.max()) == 0.0
    assert bool((prefix.values[:, 0] > 0.1 * whole).all())
    assert bool((prefix.values[:, 0] <= whole * (1 + 1e-9)).all())
    assert bool((whole <= known).all())


@pytest.mark.parametrize("length", [63, 600, 1001], ids=lambda n: f"L{n}")
def test_square_shape_by_eigenvalues(length: int) -> None:
    """A square Hankel matrix is symmetric, so its singular values come from its eigenvalues:
    the explicit matrix's SVD to rounding. An even length's square shape m x (m + 1) is taken
    as the symmetric m x m matrix of h[:L - 1], its first m columns: its bound is within that
    column's share of the full square's, the floor is at least it and below a fit's error."""
    h = _modal(3, 10, length, seed=51, noise=1e-3)
    m = (length + 1) // 2
    sym = torch.from_numpy(np.stack([_naive_hankel(c.numpy()[: 2 * m - 1]) for c in h]))
    spec = hankel_singular_values(h[:, : 2 * m - 1], m)  # (C, m) by eigvalsh
    ref = torch.linalg.svdvals(sym)  # (C, m)
    torch.testing.assert_close(spec.sigma, ref, rtol=0.0, atol=1e-13 * float(ref.max()))
    orders = [2, 4, 8]
    norm = torch.linalg.vector_norm(h, dim=-1, keepdim=True)  # (C, 1)

    def bound(sigma: torch.Tensor) -> torch.Tensor:  # (C, 3) sqrt(tail_2N / m) / ||h||
        return torch.stack([torch.sqrt((sigma[:, 2 * n :] ** 2).sum(-1) / m) for n in orders],
                           -1) / norm

    full = torch.from_numpy(np.stack([_naive_hankel(c.numpy()) for c in h]))  # (C, m, n)
    square, prefix = bound(torch.linalg.svdvals(full)), bound(ref)  # (C, 3) each
    assert bool((prefix >= 0.99 * square).all())
    floor = hankel_floor(h, orders).values  # (C, 3)
    assert bool((floor >= (prefix if length % 2 == 0 else square) * (1 - 1e-12)).all())
    assert bool((fit_modal(h, 4).rel_l2 >= floor[:, 1] * (1 - 1e-9)).all())
    if length % 2 == 0:
        assert (m, length - 1) in hankel_mod.floor_shapes(length, orders)[2]


def test_lowest_order_floor_is_the_one_it_gets_alone() -> None:
    """Floors for many orders at once (`lcd inspect` asks for 1-128) start the shape grid at
    the lowest order's 2N + 1 rows, so that order's floor is as tight as asked alone (from the
    highest order's 2 Nmax + 1 rows, the 3-row shape that bounds N = 1 is left out)."""
    h = _modal(3, 6, 2000, seed=41, noise=1e-3)
    many = hankel_floor(h, list(range(1, 17))).values  # (C, 16)
    assert torch.equal(many[:, 0], hankel_floor(h, [1]).values[:, 0])


@pytest.mark.parametrize(("rows", "cols"), [(10001, 7), (8192, 33), (4096, 5), (9000, 300)],
                         ids=lambda v: str(v))
def test_blocked_qr_factor_is_a_triangular_factor(rows: int, cols: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocked (TSQR) R of a tall matrix: upper triangular, R^T R = A^T A, and the
    singular values of A (numpy's SVD of the explicit matrix) to rounding. Covers a remainder
    block, an exact multiple of the block, a single block and a wide one."""
    gen = torch.Generator().manual_seed(rows + cols)
    scale = torch.logspace(0, -12, cols, dtype=torch.float64)  # (p,) a graded spectrum
    a = torch.randn(2, rows, cols, generator=gen, dtype=torch.float64) * scale  # (C, M, p)
    monkeypatch.setattr(hankel_mod, "_TSQR_WORDS", 0)  # blocked whatever the size
    r = hankel_mod._tall_r(a)  # (C, p, p)
    assert r.shape == (2, cols, cols)
    assert torch.equal(r, torch.triu(r))
    gram = a.transpose(1, 2) @ a  # (C, p, p)
    torch.testing.assert_close(r.transpose(1, 2) @ r, gram, rtol=0,
                               atol=1e-12 * float(gram.abs().max()))
    ref = torch.from_numpy(np.linalg.svd(a.numpy(), compute_uv=False))  # (C, p)
    got = torch.linalg.svdvals(r)  # (C, p)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13 * float(ref.max()))


def test_zero_channel_floor_is_zero() -> None:
    h = torch.zeros(2, 50, dtype=torch.float64)
    h[1] = _modal(1, 2, 50, seed=10)[0]
    floor = eckart_young_floor(hankel_singular_values(h, 4), (h * h).sum(-1), [1])
    assert float(floor.values[0, 0]) == 0.0


def test_order_for_tolerance() -> None:
    floors = torch.tensor([[0.5, 0.2, 0.05, 0.01], [0.4, 0.3, 0.02, 0.001]])
    assert order_for_tolerance(floors, 0.1) == 3
    assert order_for_tolerance(floors[1], 0.35) == 2
    assert order_for_tolerance(floors, 1e-4) is None


def test_shape() -> None:
    assert hankel_shape(63) == (32, 32)
    assert hankel_shape(1000) == (500, 501)
    with pytest.raises(ValueError):
        hankel_shape(10, rows=11)
