"""modal_kernel (two-level power tables + matmul) against a naive per-step evaluation."""

from __future__ import annotations

import pytest
import torch

from lcd_cli.numerics.modal import from_pairs, modal_kernel, to_pairs

F64_FLOOR = 1e-12  # relative, kernels of length <= 8200 with |p| <= 1
F32_FLOOR = 1e-4


def _naive(poles: torch.Tensor, residues: torch.Tensor, length: int) -> torch.Tensor:
    """h[c, t] = Re sum_n R p^t by repeated multiplication, float64."""
    p, r = poles.to(torch.complex128), residues.to(torch.complex128)  # (C, N)
    out = torch.empty(p.shape[0], length, dtype=torch.float64)  # (C, L)
    acc = r.clone()  # (C, N) R p^t
    for t in range(length):
        out[:, t] = acc.sum(-1).real
        acc = acc * p
    return out


def _modes(c: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    radius = 0.9 + 0.0999 * torch.rand(c, n, generator=g, dtype=torch.float64)  # (C, N)
    angle = torch.pi * torch.rand(c, n, generator=g, dtype=torch.float64)  # (C, N)
    poles = torch.polar(radius, angle)  # (C, N)
    poles[0, 0] = 0.0  # a zero pole: contributes R at t = 0 only
    residues = torch.randn(c, n, generator=g, dtype=torch.complex128)  # (C, N)
    return poles, residues


@pytest.mark.parametrize("length", [1, 63, 128, 1000, 8193], ids=lambda v: f"L{v}")
def test_modal_kernel_matches_naive_float64(length: int) -> None:
    poles, residues = _modes(3, 5, seed=length)
    got = modal_kernel(poles, residues, length)  # (C, L)
    ref = _naive(poles, residues, length)  # (C, L)
    assert got.dtype == torch.float64 and got.shape == (3, length)
    err = (got - ref).norm() / ref.norm()
    assert err < F64_FLOOR, f"relative error {err:.2e}"


def test_modal_kernel_float32_pairs() -> None:
    poles, residues = _modes(2, 4, seed=7)
    p32, r32 = from_pairs(to_pairs(poles)), from_pairs(to_pairs(residues))  # rounded, complex128
    got = modal_kernel(p32.to(torch.complex64), r32.to(torch.complex64), 300)  # (C, L) float32
    ref = _naive(p32, r32, 300)
    assert got.dtype == torch.float32
    err = (got.double() - ref).norm() / ref.norm()
    assert err < F32_FLOOR, f"relative error {err:.2e}"


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("budget", [1, 1 << 25], ids=["block1", "one_block"])
@pytest.mark.parametrize("cache", [1, 3 * 1024, 1 << 30], ids=["cache1", "cache3", "one_pass"])
def test_kernel_errors_match_a_naive_reference(monkeypatch, length: int, budget: int,
                                               cache: int) -> None:
    """The report's error statistics, in channel blocks (down to one channel) and cache blocks
    inside them (one channel, a few, all), against a naive float64 evaluation: the loop kernel,
    its errors, and the DFT of the error on the same >= 2L points (numpy)."""
    import numpy as np

    from lcd_cli.numerics import metrics
    from lcd_cli.numerics.hankel import fft_size
    from tests.conftest import naive_modal

    monkeypatch.setattr(metrics, "_SCORE_BUDGET", budget)
    monkeypatch.setattr(metrics, "_CACHE_ELEMENTS", cache)  # 1 or a few channels' spectra
    gen = torch.Generator().manual_seed(3)
    c, n = 5, 4
    poles = torch.polar(0.5 + 0.49 * torch.rand(c, n, generator=gen, dtype=torch.float64),
                        3.0 * torch.rand(c, n, generator=gen, dtype=torch.float64))
    residues = torch.randn(c, n, generator=gen, dtype=torch.complex128)
    h = modal_kernel(poles, residues, length) + 1e-2 * torch.randn(c, length, generator=gen,
                                                                    dtype=torch.float64)
    h[2] = 0.0  # a zero channel: the norm floor
    got = metrics.kernel_errors(h, poles, residues, order=n)
    hh, ref_hat = h.numpy(), naive_modal(poles.numpy(), residues.numpy(), length)
    diff = hh - ref_hat
    norms = np.linalg.norm(hh, axis=-1)
    rel = np.linalg.norm(diff, axis=-1) / np.maximum(norms, 1e-12 * norms.max())
    nfft = fft_size(2 * length)
    hinf = (np.abs(np.fft.rfft(diff, n=nfft)).max(-1)
            / np.maximum(np.abs(np.fft.rfft(hh, n=nfft)).max(-1), 1e-300))
    np.testing.assert_allclose(got["rel_l2_channels"], rel, rtol=1e-9, atol=1e-12)
    assert got["max_abs"] == pytest.approx(float(np.abs(diff).max()), rel=1e-9)
    assert got["hinf_rel"] == pytest.approx(float(hinf.max()), rel=1e-9)


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
def test_kernel_error_cache_blocks_give_the_same_bits(monkeypatch, length: int) -> None:
    """Cache blocks of channels inside a scoring job change no bit of the report: every value
    depends on its own channel only."""
    from lcd_cli.numerics import metrics

    gen = torch.Generator().manual_seed(4)
    poles = torch.polar(0.5 + 0.49 * torch.rand(7, 3, generator=gen, dtype=torch.float64),
                        3.0 * torch.rand(7, 3, generator=gen, dtype=torch.float64))
    residues = torch.randn(7, 3, generator=gen, dtype=torch.complex128)
    h = modal_kernel(poles, residues, length) + 1e-2 * torch.randn(7, length, generator=gen,
                                                                    dtype=torch.float64)
    one = metrics.kernel_errors(h, poles, residues, order=3)
    for cache in (1, 2 * length):  # one channel per block; two or three (nfft ~ 2L)
        monkeypatch.setattr(metrics, "_CACHE_ELEMENTS", cache)
        assert metrics.kernel_errors(h, poles, residues, order=3) == one


def test_floor_is_zero_without_svds_where_the_fit_reproduces_the_kernel(monkeypatch) -> None:
    """Sampled channels whose fit is within _FLOOR_RESOLVED of the kernel get floor 0 and no
    Hankel SVD (their floor, computed anyway, is rounding below that threshold); the others get
    the floor they get alone, bit for bit; a NaN fit leaves its channel's floor to be computed."""
    from lcd_cli.numerics import metrics
    from lcd_cli.numerics.hankel import hankel_floor
    from lcd_cli.numerics.parallel import one_thread

    gen = torch.Generator().manual_seed(6)
    c, n, length = 12, 3, 300
    poles = torch.polar(0.5 + 0.49 * torch.rand(c, n, generator=gen, dtype=torch.float64),
                        3.0 * torch.rand(c, n, generator=gen, dtype=torch.float64))
    residues = torch.randn(c, n, generator=gen, dtype=torch.complex128)
    h = modal_kernel(poles, residues, length)  # (C, L): every fit below is exact ...
    noisy = torch.tensor([1, 4, 5, 9, 11])
    h[noisy] += 1e-3 * torch.randn(len(noisy), length, generator=gen, dtype=torch.float64)
    residues[7, 0] = complex(float("nan"), 0.0)  # ... but these: noise, and a NaN fit
    open_ = torch.tensor([1, 4, 5, 7, 9, 11])
    seen: list[int] = []
    real_floor = metrics.floors_over_shapes

    def spy(block, orders):  # type: ignore[no-untyped-def]
        seen.extend(int(i) for i in torch.nonzero((block[:, None] == h[None]).all(-1))[:, 1])
        return real_floor(block, orders)

    monkeypatch.setattr(metrics, "floors_over_shapes", spy)
    stats, floors = metrics.kernel_errors_and_floors(h, poles, residues, order=n)
    assert sorted(seen) == open_.tolist()  # SVDs for the open channels only
    assert stats["floor_resolved"] == c - len(open_) and stats["floor_channels"] == c
    assert stats["floor_exact"]
    resolved = torch.ones(c, dtype=torch.bool)
    resolved[open_] = False
    assert torch.equal(floors[resolved], torch.zeros(int(resolved.sum()), dtype=torch.float64))
    with one_thread():  # as scoring runs: MKL's threaded SVDs round otherwise
        alone = hankel_floor(h[open_], [n]).values[:, 0]  # (6,) in one group, as scored
    assert torch.equal(floors[open_], alone)
    assert stats["floor"] == float(floors.quantile(0.5))
    # What skipping loses: the resolved channels' floors, computed, are below the threshold.
    assert float(hankel_floor(h[resolved], [n]).values.max()) <= metrics._FLOOR_RESOLVED
