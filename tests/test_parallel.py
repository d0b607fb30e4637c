"""Channel-parallel fitting: worker processes give bit-identical results to in-process fitting,
whatever their number, and bad worker counts are explained."""

from __future__ import annotations

import math

import pytest
import torch

from lcd_cli.errors import LcdError
from lcd_cli.numerics.fit import fit_modal, fit_modal_to_tolerance
from lcd_cli.numerics.parallel import cpu_count, resolve_workers


def _kernels(channels: int, length: int, seed: int) -> torch.Tensor:
    """Damped cosines of random radius and frequency plus 1e-3 noise: (C, L) float64."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)
    radius = 0.9 + 0.09 * torch.rand(channels, 6, 1, generator=gen, dtype=torch.float64)
    freq = math.pi * torch.rand(channels, 6, 1, generator=gen, dtype=torch.float64)
    h = (radius**t * torch.cos(freq * t)).sum(1)  # (C, L)
    return h + 1e-3 * torch.randn(channels, length, generator=gen, dtype=torch.float64)


@pytest.fixture
def one_thread() -> object:
    """Workers run one torch thread each; the in-process reference does too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_workers_bit_identical_to_one(monkeypatch: pytest.MonkeyPatch, one_thread: object) -> None:
    import lcd_cli.numerics.fit as fit_mod

    # 7 channels in chunks of at most 2 (balanced: 2, 2, 2, 1): four jobs for two workers.
    monkeypatch.setattr(fit_mod, "_CHUNK_CHANNELS", 2)
    h = _kernels(7, 150, seed=1)
    here = fit_modal(h, 3)
    calls: list[tuple[int, int]] = []
    two = fit_modal(h, 3, workers=2, progress=lambda done, total: calls.append((done, total)))
    assert torch.equal(two.poles, here.poles)
    assert torch.equal(two.residues, here.residues)
    assert torch.equal(two.rel_l2, here.rel_l2)
    assert [total for _, total in calls] == [7] * 4
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1] == (7, 7)
    # The bisection of --tol reuses the same kept workers.
    tol_here = fit_modal_to_tolerance(h, 0.05, 4)
    tol_two = fit_modal_to_tolerance(h, 0.05, 4, workers=2)
    assert tol_two.order == tol_here.order
    assert torch.equal(tol_two.poles, tol_here.poles)


def test_workers_carry_the_source_realization(monkeypatch: pytest.MonkeyPatch,
                                               one_thread: object) -> None:
    """The source's poles and residues reach every worker's chunk: an exact 3-mode realization
    at N = 4 is the fit in each of three chunks, the same bits as in process."""
    import lcd_cli.numerics.fit as fit_mod

    monkeypatch.setattr(fit_mod, "_CHUNK_CHANNELS", 2)
    gen = torch.Generator().manual_seed(5)
    poles = torch.polar(0.5 + 0.45 * torch.rand(5, 3, generator=gen, dtype=torch.float64),
                        3.0 * torch.rand(5, 3, generator=gen, dtype=torch.float64))  # (C, M)
    residues = torch.randn(5, 3, generator=gen, dtype=torch.complex128)  # (C, M)
    poles, residues = (x.to(torch.complex64).to(torch.complex128) for x in (poles, residues))
    t = torch.arange(200, dtype=torch.float64)
    h = (residues[..., None] * poles[..., None] ** t).real.sum(1)  # (C, L)
    here = fit_modal(h, 4, source=poles, source_residues=residues)
    two = fit_modal(h, 4, source=poles, source_residues=residues, workers=2)
    assert torch.equal(two.poles, here.poles) and torch.equal(two.residues, here.residues)
    assert torch.equal(two.poles[:, :3], poles) and torch.equal(two.residues[:, :3], residues)


def test_worker_counts() -> None:
    assert resolve_workers(None) == 1
    assert resolve_workers(1) == 1
    assert resolve_workers(3) == 3
    assert resolve_workers(0) == cpu_count() >= 1


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"], ids=["negative", "float", "bool", "str"])
def test_bad_worker_count_is_explained(bad: object) -> None:
    with pytest.raises(LcdError, match="workers must be a non-negative integer") as info:
        fit_modal(_kernels(2, 40, seed=2), 2, workers=bad)  # type: ignore[arg-type]
    assert info.value.key == "workers" and info.value.hint


def test_workers_need_the_cpu() -> None:
    with pytest.raises(LcdError, match="worker processes fit on the CPU"):
        fit_modal(_kernels(2, 40, seed=3), 2, workers=2, device="cuda")


def test_keep_freed_memory_applies_on_glibc_and_can_be_declined(monkeypatch) -> None:
    """The allocator settings are applied where mallopt exists (glibc) and declined with
    LCD_MALLOC=system; they change where memory comes from, never a result (the golden and
    worker tests run under them)."""
    import platform

    from lcd_cli.numerics.allocator import keep_freed_memory

    monkeypatch.setenv("LCD_MALLOC", "system")
    assert keep_freed_memory() is False
    monkeypatch.delenv("LCD_MALLOC")
    if platform.libc_ver()[0] != "glibc":
        assert keep_freed_memory() is False  # elsewhere nothing is changed
        return
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent


def test_scoring_with_workers_matches_one_block(monkeypatch: pytest.MonkeyPatch,
                                                one_thread: object,
                                                scoring_worker_counts: list[int]) -> None:
    """kernel_errors split into channel blocks and floor groups, run by two workers, reports
    exactly what one in-process pass over the whole layer gives."""
    import lcd_cli.numerics.metrics as metrics
    from lcd_cli.numerics.hankel import fft_size, hankel_floor
    from lcd_cli.numerics.modal import modal_kernel

    h = _kernels(21, 300, seed=3)  # 21 channels: floor groups of 8, 8, 5
    fit = fit_modal(h, 3)
    monkeypatch.setattr(metrics, "_SCORE_BUDGET", 2 * fft_size(600) * 4)  # blocks of 4 channels
    counts = scoring_worker_counts
    small = metrics.kernel_errors(h, fit.poles, fit.residues, order=3, workers=2)
    monkeypatch.setattr(metrics, "_PARALLEL_SCORE_WORDS", 0)  # large enough for the workers
    two = metrics.kernel_errors(h, fit.poles, fit.residues, order=3, workers=2)
    monkeypatch.setattr(metrics, "_PARALLEL_SCORE_WORDS", 1 << 62)
    monkeypatch.setattr(metrics, "_PARALLEL_FLOOR_WORK", 0)  # a small layer, a costly floor
    floor_heavy = metrics.kernel_errors(h, fit.poles, fit.residues, order=3, workers=2)
    # the small layer scored in process, then by the two workers, for its size, then its floor
    # (errors, then the floors they leave open: two calls each)
    assert counts == [1, 1, 2, 2, 2, 2]
    assert two == small == floor_heavy
    # The reference: one pass over all channels, the floor of all sampled channels at once.
    diff = h - modal_kernel(fit.poles, fit.residues, 300)  # (C, L)
    rel = diff.norm(dim=-1) / h.norm(dim=-1)
    spectra = torch.fft.rfft(torch.cat([h, diff]), n=fft_size(600)).abs().amax(-1)  # (2C,)
    floor = hankel_floor(h, [3]).values[:, 0]  # (C,)
    assert two["rel_l2"]["max"] == pytest.approx(float(rel.max()), rel=1e-12)
    assert two["hinf_rel"] == pytest.approx(float((spectra[21:] / spectra[:21]).max()), rel=1e-12)
    assert two["max_abs"] == float(diff.abs().max())
    assert two["floor"] == float(floor.quantile(0.5))
    assert two["floor_channels"] == 21 and two["floor_exact"]


def test_two_sided_scoring_on_workers_matches_the_halves_floors(
        monkeypatch: pytest.MonkeyPatch, one_thread: object,
        scoring_worker_counts: list[int]) -> None:
    """The two-sided report scores each half once (its floor included) and with the workers
    where heavy: the same report as in process, and its floor is the combination of the
    halves' floors computed on their own (sampled channels: 64 of 80 here)."""
    import lcd_cli.numerics.metrics as metrics
    from lcd_cli.numerics.hankel import hankel_floor
    from lcd_cli.numerics.two_sided import two_sided_errors

    k_fwd, k_rev = _kernels(80, 200, seed=4), _kernels(80, 200, seed=5)  # (C, L) each
    fits = [fit_modal(k, 2) for k in (k_fwd, k_rev)]
    halves = [(f.poles, f.residues) for f in fits]
    here = two_sided_errors(k_fwd, k_rev, *halves, order=2, workers=2)
    monkeypatch.setattr(metrics, "_PARALLEL_SCORE_WORDS", 0)
    two = two_sided_errors(k_fwd, k_rev, *halves, order=2, workers=2)
    # one scoring per half (errors, then floors), then on the workers
    assert scoring_worker_counts == [1, 1, 1, 1, 2, 2, 2, 2]
    assert two == here
    idx = metrics.sample_channels(80, metrics.FLOOR_CHANNELS)  # (S,)
    ff, fr = (hankel_floor(k[idx], [2]).values[:, 0] for k in (k_fwd, k_rev))  # (S,) each
    nf2, nr2 = (k_fwd[idx] ** 2).sum(-1), (k_rev[idx] ** 2).sum(-1)  # (S,) each
    ref = torch.sqrt((ff**2 * nf2 + fr**2 * nr2) / (nf2 + nr2))  # (S,)
    assert two["floor"] == pytest.approx(float(ref.quantile(0.5)), rel=1e-12)
    assert two["floor_channels"] == 64 and two["floor_exact"]
