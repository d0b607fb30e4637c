"""lcd's modal fitter against independent references (plain loops, dense SVDs, baselines)."""

from __future__ import annotations

import math

import pytest
import torch

from lcd_cli.errors import LcdError
from lcd_cli.numerics.baselines import fit_dft_truncation, fit_matrix_pencil
from lcd_cli.numerics.fit import fit_modal, fit_modal_to_tolerance
from lcd_cli.numerics.hankel import eckart_young_floor, hankel_singular_values
from lcd_cli.numerics.modal import modal_kernel


def _loop_kernel(poles: torch.Tensor, residues: torch.Tensor, length: int) -> torch.Tensor:
    """Naive h[c, t] = Re sum_n R p^t by an explicit loop over t (complex128)."""
    out = torch.zeros(poles.shape[0], length, dtype=torch.float64)
    power = torch.ones_like(poles)
    for t in range(length):
        out[:, t] = (residues * power).sum(-1).real
        power = power * poles
    return out


def _rel(h: torch.Tensor, h_hat: torch.Tensor) -> torch.Tensor:
    return (h - h_hat).norm(dim=-1) / h.norm(dim=-1)


def _mixed_modal(channels: int, length: int, seed: int) -> tuple[torch.Tensor, int]:
    """Random stable modal kernels: 3 complex modes + 2 real poles (one negative) = 5 modes."""
    gen = torch.Generator().manual_seed(seed)
    radius = 0.5 + 0.45 * torch.rand(channels, 5, generator=gen, dtype=torch.float64)
    angle = 0.2 + 2.7 * torch.rand(channels, 5, generator=gen, dtype=torch.float64)
    angle[:, 3] = 0.0
    angle[:, 4] = math.pi
    res = torch.view_as_complex(torch.randn(channels, 5, 2, generator=gen, dtype=torch.float64))
    return _loop_kernel(torch.polar(radius, angle), res, length), 5


def _damped_oscillatory(channels: int, length: int, seed: int, modes: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)
    radius = 0.9 + 0.095 * torch.rand(channels, modes, 1, generator=gen, dtype=torch.float64)
    freq = math.pi * torch.rand(channels, modes, 1, generator=gen, dtype=torch.float64)
    amp = torch.randn(channels, modes, 1, generator=gen, dtype=torch.float64)
    h = (amp * radius**t * torch.cos(freq * t + 1.0)).sum(1)
    return h + 1e-3 * h.abs().amax(-1, keepdim=True) * torch.randn(
        channels, length, generator=gen, dtype=torch.float64
    )


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("extra", [0, 2], ids=lambda e: f"order+{e}")
def test_exact_recovery(length: int, extra: int) -> None:
    h, order = _mixed_modal(4, length, seed=length + extra)
    exact = fit_modal(h, order + extra, float32=False)
    # Floor: normal-equation resolution, ~1e-9 relative.
    assert float(exact.rel_l2.max()) < 1e-7
    torch.testing.assert_close(
        _loop_kernel(exact.poles, exact.residues, length), h, rtol=0, atol=1e-6 * h.abs().max()
    )
    stored = fit_modal(h, order + extra)
    # Floor: poles rounded to complex64 (relative 6e-8, amplified by t up to the decay time).
    assert float(stored.rel_l2.max()) < 1e-5
    assert bool((stored.poles.abs() < 1).all())


def test_reported_error_matches_plain_loop() -> None:
    h = _damped_oscillatory(3, 300, seed=1)
    res = fit_modal(h, 6)
    ref = _rel(h, _loop_kernel(res.poles, res.residues, 300))
    torch.testing.assert_close(res.rel_l2, ref, rtol=1e-9, atol=1e-14)
    assert res.poles.dtype == torch.complex128 and res.poles.shape == (3, 6)
    assert res.method and res.order == 6


def test_float32_storage_is_safe() -> None:
    h = _damped_oscillatory(4, 1000, seed=2)
    res = fit_modal(h, 8)
    p32 = res.poles.to(torch.complex64).to(torch.complex128)
    r32 = res.residues.to(torch.complex64).to(torch.complex128)
    err32 = _rel(h, modal_kernel(p32, r32, 1000))
    assert bool((err32 <= res.rel_l2 * 1.01 + 1e-6).all())


@pytest.mark.parametrize("order", [2, 4, 8], ids=lambda n: f"N{n}")
def test_floor_below_achieved_error(order: int) -> None:
    h = _damped_oscillatory(4, 400, seed=3)
    spec = hankel_singular_values(h, 2 * order)
    assert spec.exact
    floor = eckart_young_floor(spec, (h * h).sum(-1), [order]).values[:, 0]
    res = fit_modal(h, order)
    assert bool((floor <= res.rel_l2 * (1 + 1e-9)).all())


@pytest.mark.parametrize("order", [4, 8], ids=lambda n: f"N{n}")
def test_beats_matrix_pencil_and_dft(order: int) -> None:
    h = _damped_oscillatory(6, 1000, seed=4)
    lcd = fit_modal(h, order).rel_l2
    mp = fit_matrix_pencil(h, order).rel_l2
    dft = fit_dft_truncation(h, order).rel_l2
    assert float(lcd.median()) <= float(mp.median())
    assert bool((lcd <= mp * 1.05).all())
    assert bool((lcd <= dft).all())


@pytest.mark.parametrize("order", [0, -1, 63, 100], ids=lambda n: f"order{n}")
def test_order_out_of_range(order: int) -> None:
    h = _damped_oscillatory(1, 63, seed=5)
    with pytest.raises(LcdError, match=rf"order {order} .*1 to 62"):
        fit_modal(h, order)


def test_bad_inputs() -> None:
    with pytest.raises(LcdError, match="integer"):
        fit_modal(torch.zeros(1, 10, dtype=torch.float64), 2.5)  # type: ignore[arg-type]
    with pytest.raises(LcdError, match="channels, length"):
        fit_modal(torch.zeros(10, dtype=torch.float64), 2)
    bad = torch.zeros(1, 10, dtype=torch.float64)
    bad[0, 3] = float("nan")
    with pytest.raises(LcdError, match="NaN"):
        fit_modal(bad, 2)


def test_deterministic() -> None:
    h = _damped_oscillatory(3, 600, seed=6)
    a = fit_modal(h, 6, seed=3)
    b = fit_modal(h, 6, seed=3)
    assert torch.equal(a.poles, b.poles)
    assert torch.equal(a.residues, b.residues)
    assert torch.equal(a.rel_l2, b.rel_l2)


def test_zero_channel() -> None:
    h = _damped_oscillatory(2, 200, seed=7)
    h[0] = 0.0
    res = fit_modal(h, 3)
    assert float(res.rel_l2[0]) == 0.0
    assert float(res.residues[0].abs().max()) == 0.0


def test_channel_chunks_and_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    import lcd_cli.numerics.fit as fit_mod

    h = _damped_oscillatory(5, 200, seed=8)
    whole = fit_modal(h, 3)
    monkeypatch.setattr(fit_mod, "_CHANNEL_BUDGET", 1)  # one channel per chunk
    calls: list[tuple[int, int]] = []
    chunked = fit_modal(h, 3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]
    torch.testing.assert_close(chunked.rel_l2, whole.rel_l2, rtol=1e-6, atol=1e-9)


def test_to_tolerance_finds_smallest_order() -> None:
    h, order = _mixed_modal(3, 200, seed=9)
    res = fit_modal_to_tolerance(h, 1e-5, 10)
    assert res.order == order
    assert float(res.rel_l2.max()) <= 1e-5
    fail = fit_modal_to_tolerance(_damped_oscillatory(2, 200, seed=10), 1e-9, 3)
    assert fail.order == 3 and float(fail.rel_l2.max()) > 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    h = _damped_oscillatory(8, 2000, seed=11)
    cpu = fit_modal(h, 8)
    gpu = fit_modal(h, 8, device="cuda")
    assert gpu.poles.device.type == "cpu"
    # Same method, different kernels/reductions: errors agree closely, not bitwise.
    torch.testing.assert_close(gpu.rel_l2, cpu.rel_l2, rtol=2e-2, atol=1e-6)


def test_batched_solve_survives_a_singular_element() -> None:
    from lcd_cli.numerics.fit import _solve

    g = torch.Generator().manual_seed(3)
    m = torch.randn(5, 5, generator=g, dtype=torch.float64)
    good = m @ m.T + 5 * torch.eye(5, dtype=torch.float64)  # (5, 5) well conditioned
    v = torch.randn(5, 1, generator=g, dtype=torch.float64)
    singular = v @ v.T  # (5, 5) rank one: LU fails or is meaningless
    a = torch.stack([good, singular])  # (2, 5, 5)
    b = torch.randn(2, 5, 1, generator=g, dtype=torch.float64)  # (2, 5, 1)
    x = _solve(a, b)
    torch.testing.assert_close(x[0], torch.linalg.solve(good, b[0]), rtol=1e-10, atol=0)
    assert bool(torch.isfinite(x[1]).all())
    # The fallback is the minimum-norm least-squares solution.
    torch.testing.assert_close(x[1], torch.linalg.pinv(singular) @ b[1], rtol=1e-8, atol=1e-10)


def test_source_modes_start_recovers_clustered_poles() -> None:
    """S4D-Lin modes with a small step (dt ~ 1e-3: 8 poles clustered within 0.03 of z = 1), the
    hard case of order reduction: with the source's own poles as a start, the fit at the
    source's order is exact to float64 resolution, and at half the order no channel is worse
    than without the start (each start is kept only where it scores better)."""
    g = torch.Generator().manual_seed(3)
    c, m, length = 6, 8, 1000
    A = torch.complex(torch.full((m,), -0.5, dtype=torch.float64),
                      math.pi * torch.arange(m, dtype=torch.float64))  # (M,) S4D-Lin
    dt = 1e-3 * torch.exp(torch.rand(c, 1, generator=g, dtype=torch.float64))  # (C, 1)
    poles = torch.exp(dt * A)  # (C, M) zoh
    residues = torch.complex(torch.randn(c, m, generator=g, dtype=torch.float64),
                             torch.randn(c, m, generator=g, dtype=torch.float64))  # (C, M)
    t = torch.arange(length, dtype=torch.float64)
    h = (residues[..., None] * poles[..., None] ** t).real.sum(1)  # (C, L) naive sum of modes
    exact = fit_modal(h, m, source=poles, float32=False)
    assert float(exact.rel_l2.max()) < 1e-9
    with_src = fit_modal(h, m // 2, source=poles)
    without = fit_modal(h, m // 2)
    assert bool((with_src.rel_l2 <= without.rel_l2 * (1 + 1e-12)).all())


def test_identical_channels_are_fitted_once() -> None:
    """Grouped filters (row c // (C/G)): duplicated channels get identical parameters, the same
    as fitting the distinct rows alone, and a channel equal in projection but not in value is
    not merged."""
    g = torch.Generator().manual_seed(4)
    t = torch.arange(300, dtype=torch.float64)
    rows = torch.randn(3, 1, generator=g, dtype=torch.float64) * torch.exp(-t / 40) * torch.cos(
        torch.rand(3, 1, generator=g, dtype=torch.float64) * t)  # (G, L)
    h = rows.repeat_interleave(4, dim=0)  # (C, L), C = 12
    full = fit_modal(h, 4)
    alone = fit_modal(rows, 4)
    assert torch.equal(full.poles, alone.poles.repeat_interleave(4, dim=0))
    assert torch.equal(full.residues, alone.residues.repeat_interleave(4, dim=0))
    assert torch.equal(full.rel_l2, alone.rel_l2.repeat_interleave(4))
    assert distinct_count(h) == 3
    h2 = h.clone()
    h2[5, 0] += 1e-3  # now 4 distinct rows
    assert distinct_count(h2) == 4


def distinct_count(h: torch.Tensor) -> int:
    from lcd_cli.numerics.fit import _distinct_rows

    rows = _distinct_rows(h)
    return h.shape[0] if rows is None else int(rows[0].numel())
