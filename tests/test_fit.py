"""lcd's modal fitter against independent references (plain loops, dense SVDs, baselines)."""

from __future__ import annotations

import math

import pytest
import torch

from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example, write_example
from lcd_cli.families.layers import materialize, select_configs
from lcd_cli.io.checkpoint import open_checkpoint
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
    """An element that LU finds exactly singular falls back to the minimum-norm least-squares
    solution. Its rank-one matrix is built of powers of two, so that elimination cancels
    exactly on every CPU: from random entries, MKL leaves a pivot of ~eps instead of 0 on Intel
    CPUs (a finite solution of ~1e16, which is not a failed factorization)."""
    from lcd_cli.numerics.fit import _solve

    g = torch.Generator().manual_seed(3)
    m = torch.randn(5, 5, generator=g, dtype=torch.float64)
    good = m @ m.T + 5 * torch.eye(5, dtype=torch.float64)  # (5, 5) well conditioned
    v = 2.0 ** torch.tensor([[1.0], [-2.0], [3.0], [0.0], [-1.0]], dtype=torch.float64)  # (5, 1)
    singular = v @ v.T  # (5, 5) rank one, exactly: LU meets a zero pivot
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


def _f32_source(channels: int, modes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Poles (radius 0.6-0.999, one real per channel) and residues (C, M) holding complex64
    values, as a float32 checkpoint stores them: complex128."""
    g = torch.Generator().manual_seed(seed)
    radius = 0.6 + 0.399 * torch.rand(channels, modes, generator=g, dtype=torch.float64)
    angle = math.pi * torch.rand(channels, modes, generator=g, dtype=torch.float64)
    angle[:, 0] = 0.0
    poles = torch.polar(radius, angle).to(torch.complex64).to(torch.complex128)  # (C, M)
    residues = torch.randn(channels, modes, generator=g, dtype=torch.complex128)  # (C, M)
    return poles, residues.to(torch.complex64).to(torch.complex128)


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L={n}")
@pytest.mark.parametrize("float32", [True, False], ids=["float32", "float64"])
def test_source_realization_is_the_fit_at_or_above_its_order(length: int, float32: bool) -> None:
    """A layer that already is an M-mode diagonal SSM (float32 parameters, as Evo 1 stores
    them), fitted at N >= M with its poles and residues: the fit is the realization itself,
    bit for bit, padded with zero-residue modes, and its error, checked against the naive
    loop, is float64 rounding, below the poles-only fit's."""
    poles, residues = _f32_source(5, 4, seed=11)
    h = _loop_kernel(poles, residues, length)  # (C, L)
    for order in (4, 7):
        fit = fit_modal(h, order, source=poles, source_residues=residues, float32=float32)
        assert torch.equal(fit.poles[:, :4], poles)
        assert torch.equal(fit.residues[:, :4], residues)
        assert bool((fit.residues[:, 4:] == 0).all())
        assert bool((fit.poles.abs() < 1).all())
        # Both errors are float64 rounding: the reported one (two-level tables) and the naive
        # loop's of the returned parameters (0 here: the loop that built h).
        direct = _rel(h, _loop_kernel(fit.poles, fit.residues, length))  # (C,)
        assert float(direct.max()) < 1e-14
        assert float(fit.rel_l2.max()) < 1e-14
        assert fit.method == "source realization"
        poles_only = fit_modal(h, order, source=poles, float32=float32)
        assert bool((fit.rel_l2 <= poles_only.rel_l2 * (1 + 1e-9) + 1e-15).all())


def test_source_realization_below_its_order_or_inexact_is_only_a_candidate() -> None:
    """Below the source's order the residues change nothing (the same fit bit for bit as with
    its poles alone). A realization that is not exact on every channel of a chunk (here one
    unstable pole, which the fit must move inside the disk) does not replace the fit: the chunk
    is fitted as with the poles alone, the realization kept only where it scores better, so no
    channel is worse than that fit and the stable channels stay exact."""
    poles, residues = _f32_source(4, 4, seed=12)
    h = _loop_kernel(poles, residues, 300)  # (C, L)
    low = fit_modal(h, 3, source=poles, source_residues=residues)
    ref = fit_modal(h, 3, source=poles)
    assert torch.equal(low.poles, ref.poles) and torch.equal(low.residues, ref.residues)
    assert low.method == "era+vp-lm"
    grown = poles.clone()
    grown[0, 1] = grown[0, 1] / grown[0, 1].abs() * 1.002  # (1,) a slowly growing mode
    h = _loop_kernel(grown, residues, 300)
    fit = fit_modal(h, 6, source=grown, source_residues=residues)
    alone = fit_modal(h, 6, source=grown)
    assert bool((fit.poles.abs() < 1).all())
    assert float(fit.rel_l2[0]) > 1e-7  # not exact: the growing mode was moved inside
    assert bool((fit.rel_l2 <= alone.rel_l2 * (1 + 1e-9)).all())
    assert float(fit.rel_l2[1:].max()) < 1e-14


def test_source_residues_must_match_the_poles() -> None:
    poles, residues = _f32_source(3, 4, seed=13)
    h = _loop_kernel(poles, residues, 100)
    with pytest.raises(LcdError, match="source residues must be"):
        fit_modal(h, 4, source=poles, source_residues=residues[:, :3])
    with pytest.raises(LcdError, match="given with the source poles"):
        fit_modal(h, 4, source_residues=residues)


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


# ----------------------------------------------------------------------------- fast paths
# The fitter's inner sums against plain float64 loops over t (independent references).


def _random_log_poles(channels: int, modes: int, seed: int) -> torch.Tensor:
    """Stable log-poles: radius 0.3 .. 0.999, one real (angle 0) and one on the radius cap."""
    gen = torch.Generator().manual_seed(seed)
    radius = 0.3 + 0.699 * torch.rand(channels, modes, generator=gen, dtype=torch.float64)
    angle = math.pi * torch.rand(channels, modes, generator=gen, dtype=torch.float64)
    angle[:, 0] = 0.0
    radius[:, -1] = 1.0 - 1e-6
    return torch.log(torch.polar(radius, angle))


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
def test_two_level_moments_match_loop(length: int) -> None:
    import lcd_cli.numerics.fit as fit_mod

    h = _damped_oscillatory(3, length + 5, seed=12)  # longer than L: only t < L counts
    s = _random_log_poles(3, 5, seed=13)  # (C, N)
    z_ref = torch.zeros(3, 5, dtype=torch.complex128)
    d_ref = torch.zeros_like(z_ref)
    power = torch.ones_like(z_ref)
    p = torch.exp(s)
    for t in range(length):
        z_ref += h[:, t, None] * power
        d_ref += t * h[:, t, None] * power
        power = power * p
    z, d = fit_mod._moments(fit_mod._blocks(h, length, True), s, length, True)
    assert d is not None
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12 * float(z_ref.abs().max()))
    torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12 * float(d_ref.abs().max()))
    z_full = fit_mod._moments_full(h, s, length)
    torch.testing.assert_close(z_full, z_ref, rtol=1e-12, atol=1e-12 * float(z_ref.abs().max()))


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
def test_direct_error_matches_loop(length: int) -> None:
    import lcd_cli.numerics.fit as fit_mod

    h = _damped_oscillatory(4, length, seed=14)
    poles = torch.exp(_random_log_poles(4, 6, seed=15))
    g = torch.Generator().manual_seed(16)
    residues = torch.view_as_complex(torch.randn(4, 6, 2, generator=g, dtype=torch.float64))
    residues[1] = 0.0  # a zero model: the error is ||h||
    ref = (h - _loop_kernel(poles, residues, length)).norm(dim=-1)
    err = fit_mod._abs_error(h, poles, residues)
    torch.testing.assert_close(err, ref, rtol=1e-10, atol=0)
    assert float(err[1]) == pytest.approx(float(h[1].norm()), rel=1e-14)


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
def test_geometric_sums_match_loop(length: int) -> None:
    import lcd_cli.numerics.fit as fit_mod

    # |sigma L| below and above 1 (series and closed form), a pure phase, sigma = 0.
    sigma = torch.tensor([0.0, -0.1 / length, complex(-0.5 / length, 0.3 / length),
                          complex(0.0, 2.0), -0.01, complex(-0.2, 1.3)], dtype=torch.complex128)
    t = torch.arange(length, dtype=torch.float64)
    sums = fit_mod._geom_sums(sigma, length, 2)
    for k in range(3):
        ref = ((t**k)[None, :] * torch.exp(sigma[:, None] * t[None, :])).sum(-1)  # (S,)
        torch.testing.assert_close(sums[k], ref, rtol=1e-11, atol=1e-11 * float(ref.abs().max()))


def _svd_tikhonov(h: torch.Tensor, poles: torch.Tensor, lam: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference: argmin ||h - A x||^2 + lam^2 ||S x||^2 by the SVD of the explicit basis
    A = [Re p^t, -Im p^t] built with one exp per entry. Returns x (C, 2N), A, column norms."""
    t = torch.arange(h.shape[1], dtype=torch.float64)
    v = torch.exp(torch.log(poles)[..., None] * t)  # (C, N, L)
    a = torch.cat([v.real, -v.imag], dim=1).transpose(1, 2)  # (C, L, 2N)
    norm = a.norm(dim=1)  # (C, 2N)
    live = norm > 1e-12 * norm.amax(-1, keepdim=True)
    scale = torch.where(live, norm, 1.0)
    a_s = torch.where(live[:, None, :], a / scale[:, None, :], 0.0)
    u, sv, vh = torch.linalg.svd(a_s, full_matrices=False)
    coef = (u.transpose(1, 2) @ h[:, :, None])[..., 0] * sv / (sv * sv + lam * lam)
    return (vh.transpose(1, 2) @ coef[..., None])[..., 0] / scale, a, norm


@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
def test_gram_residues_minimize_the_tikhonov_objective(length: int) -> None:
    """The Gram-matrix (eigen-decomposition) Tikhonov solve of the float32 path reaches the
    objective ||h - A x||^2 + lam^2 ||S x||^2 of the SVD filter-factor solution."""
    import lcd_cli.numerics.fit as fit_mod

    h = _damped_oscillatory(3, length, seed=17)
    poles = torch.exp(_random_log_poles(3, 6, seed=18))  # (C, N) one real pole each
    lam = fit_mod._F32_LAMBDA
    x_ref, a, norm = _svd_tikhonov(h, poles, lam)

    def objective(x: torch.Tensor) -> torch.Tensor:
        fit_err = (h - (a @ x[:, :, None])[..., 0]).norm(dim=-1) ** 2
        return fit_err + lam**2 * ((x * norm) ** 2).sum(-1)

    res = fit_mod._final_residues(h, poles, lam, gram=True)  # (C, N)
    x = torch.cat([res.real, res.imag], dim=1)
    torch.testing.assert_close(objective(x), objective(x_ref), rtol=1e-9, atol=0)


def test_float32_finish_near_collinear_poles_no_worse_than_svd() -> None:
    """A kernel made of its own modes with a near-collinear pole pair (huge cancelling
    residues): the float32 finish scores as well as rounding the SVD reference solution, up to
    one unit roundoff of float32 storage (the errors themselves are rounding-sized), because
    channels fitted below _GRAM_REL_MIN are re-solved by SVD."""
    import lcd_cli.numerics.fit as fit_mod

    s = _random_log_poles(3, 6, seed=22)  # (C, N)
    s[:, 2] = s[:, 1] + 1e-7
    poles = torch.exp(s).to(torch.complex64).to(torch.complex128)  # exactly storable poles
    g = torch.Generator().manual_seed(23)
    res = torch.view_as_complex(torch.randn(3, 6, 2, generator=g, dtype=torch.float64))
    h = _loop_kernel(poles, res, 1000)
    _, _, err = fit_mod._finish(h, torch.log(poles), True)
    x_ref, _, _ = _svd_tikhonov(h, poles, fit_mod._F32_LAMBDA)
    r_ref = torch.complex(x_ref[:, :6], x_ref[:, 6:]).to(torch.complex64).to(torch.complex128)
    err_ref = (h - _loop_kernel(poles, r_ref, 1000)).norm(dim=-1)
    assert bool((err <= err_ref + 2.0**-24 * h.norm(dim=-1)).all())
    assert float((err / h.norm(dim=-1)).max()) < 1e-5


def test_compacted_refinement_is_bit_identical() -> None:
    """Stopped channels leave the LM batch: the result is bit for bit that of carrying every
    channel to the end, and that of refining each channel alone (no batch effect)."""
    import lcd_cli.numerics.fit as fit_mod

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        h = _damped_oscillatory(6, 1000, seed=19)
        h[2] = _mixed_modal(1, 1000, seed=20)[0][0]  # exact: freezes early
        s0 = fit_mod._era_poles(h, 6, 0)
        compact = fit_mod._refine(h, s0, 1000, 60, compact=True)
        carried = fit_mod._refine(h, s0, 1000, 60, compact=False)
        alone = torch.cat([fit_mod._refine(h[i : i + 1], s0[i : i + 1], 1000, 60)
                           for i in range(6)])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(compact, carried)
    assert torch.equal(compact, alone)
    assert not torch.equal(compact, s0)


def test_restart_starts_share_one_hankel_svd() -> None:
    """The restarts' higher-rank ERA bases are leading columns of one SVD: its first 2N
    columns are exactly those of a rank-2N call."""
    from lcd_cli.numerics.hankel import hankel_svd, sketch_width

    h = _damped_oscillatory(3, 1000, seed=21)
    u_small, _, exact, _ = hankel_svd(h, 8, exact_max_rows=64, seed=5, power_iters=2)
    u_big, _, _, _ = hankel_svd(h, 12, exact_max_rows=64, seed=5, power_iters=2,
                                sketch=sketch_width(8))
    assert not exact and u_small is not None and u_big is not None
    assert u_big.shape[-1] == 12
    assert torch.equal(u_big[..., :8], u_small)


@pytest.mark.parametrize("first", [1, 2, 5], ids=["first1", "first2", "first5"])
@pytest.mark.parametrize("near", [1.0, 0.9, 0.5], ids=["no-near", "near0.9", "near0.5"])
def test_batched_restarts_equal_the_one_at_a_time_loop(tmp_path, monkeypatch, near: float,
                                                      first: int) -> None:
    """The outliers' restarts run in shared LM batches, and the result is bit for bit that of
    the naive loop: one restart at a time, each on the channels still outliers, kept where it
    scores better. The other channels are untouched. This holds whichever near-outliers join
    the first batch (`_RESTART_NEAR`: none, the default, many) and however many restarts the
    first batch runs (`_RESTART_FIRST`: one, the default, two, all five), and the case has
    channels that become outliers only after the first restarts (so the later batches, the
    second stage and the near-outlier rows are all exercised)."""
    import lcd_cli.numerics.fit as fit_mod

    monkeypatch.setattr(fit_mod, "_RESTART_NEAR", near)
    monkeypatch.setattr(fit_mod, "_RESTART_FIRST", first)
    first_batch = first  # `first` is the first fit below
    path = tmp_path / "m.safetensors"
    write_example(make_example("hyenadna", d_model=64, n_layers=1, l_max=1000), path)
    with open_checkpoint(path) as ckpt:
        h, _ = materialize(ckpt, select_configs(ckpt)[0][1][0])  # (64, 1000)
    order, iters = 12, 30  # 10 first outliers, 4 later ones at 1.8-2.0x the first median
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s0 = fit_mod._era_poles(h, order, 0)
        first = fit_mod._finish(h, fit_mod._refine(h, s0, 1000, iters), True)
        bad0 = fit_mod._outliers(first[2], h)
        assert int(bad0.sum()) >= 2  # the case needs outliers
        poles, res, err = (x.clone() for x in first)
        late = torch.zeros_like(bad0)  # (C,) outliers first seen after the first restart
        for (a, b), reflect, tail in fit_mod._RESTARTS:  # the naive loop
            bad = fit_mod._outliers(err, h)
            if not bool(bad.any()):
                break
            late |= bad & ~bad0
            idx = bad.nonzero()[:, 0]
            s_r = fit_mod._era_poles(h[idx], order, 0, a * order + b, reflect, tail)
            alone = fit_mod._finish(h[idx], fit_mod._refine(h[idx], s_r, 1000, iters), True)
            poles[idx], res[idx], err[idx] = fit_mod._keep_better((poles[idx], res[idx], err[idx]),
                                                                  alone)
        batches: list[tuple[list[int], list[int]]] = []  # (channels, restarts) of each batch
        run_fits = fit_mod._restart_fits

        def record(h_: torch.Tensor, idx: torch.Tensor, restarts: list[int],
                   *args: object) -> list:
            batches.append((idx.tolist(), list(restarts)))
            return run_fits(h_, idx, restarts, *args)

        monkeypatch.setattr(fit_mod, "_restart_fits", record)
        got = fit_mod._restart_outliers(h, order, 0, iters, True, None,
                                        tuple(x.clone() for x in first))
    finally:
        torch.set_num_threads(threads)
    if first_batch == 1:
        # An outlier of step k uses restarts k and on, so a first batch of one restart holds
        # the first outliers only: a near-outlier's restart 0 would never be used.
        assert batches[0] == (bad0.nonzero()[:, 0].tolist(), [0])
    assert bool(late.any())  # the case has channels that turn outliers later
    assert torch.equal(got[0], poles) and torch.equal(got[1], res) and torch.equal(got[2], err)
    assert bool((got[2] < first[2]).any())  # the restarts helped somewhere
    rest = (~(bad0 | late)).nonzero()[:, 0]
    assert torch.equal(got[0][rest], first[0][rest])


@pytest.mark.parametrize(("length", "worst"), [(20_001, 0.12), (200_003, 0.15)],
                         ids=["L20001", "L200003"])
def test_kernel_longer_than_the_era_window_is_fitted_over_its_tail(tmp_path, length: int,
                                                                   worst: float) -> None:
    """A HyenaDNA kernel longer than the ERA window (8192; at 200,003 also three refinement
    windows) keeps energy in its slowly varying tail (the 0.05 window shift). The
    decimated-kernel start sees the tail: N = 8 fits every channel within `worst` (starts from
    the first 8192 samples alone left the worst channel at 0.23 and 0.74), and the reported
    error is the direct float64 error of the returned parameters."""
    path = tmp_path / "m.safetensors"
    write_example(make_example("hyenadna", d_model=4, n_layers=1, l_max=length), path)
    with open_checkpoint(path) as ckpt:
        h, _ = materialize(ckpt, select_configs(ckpt)[0][1][0])  # (4, L)
    fit = fit_modal(h, 8)
    direct = torch.linalg.vector_norm(h - modal_kernel(fit.poles, fit.residues, h.shape[1]), dim=-1)
    assert torch.allclose(fit.rel_l2, direct / torch.linalg.vector_norm(h, dim=-1), rtol=1e-6)
    assert float(fit.rel_l2.max()) <= worst, fit.rel_l2
