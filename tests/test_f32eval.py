"""Float32-faithful scoring (numerics.metrics.rel_l2_f32eval): the stored float32 parameters as
a complex64 engine evaluates them, against naive float64 references and on a fragile fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lcd_cli.numerics.metrics import f32_kernels, kernel_errors, rel_l2_f32eval
from lcd_cli.numerics.modal import from_pairs, to_pairs
from tests.conftest import naive_modal

BENIGN_POLE = 0.9 * complex(math.cos(0.3), math.sin(0.3))
# Issue 14's fragile mode: a near-real pole carrying a huge imaginary residue.
FRAGILE_POLE, FRAGILE_RESIDUE = complex(-0.2472, 2.3e-7), complex(1.3, -8543.0)


def stored(poles: list[list[complex]], residues: list[list[complex]]) -> tuple[torch.Tensor, ...]:
    """float32 [real, imag] pairs (C, N, 2), as a checkpoint stores them."""
    return (to_pairs(torch.tensor(poles, dtype=torch.complex128)),
            to_pairs(torch.tensor(residues, dtype=torch.complex128)))


@pytest.mark.parametrize("length", [63, 1000], ids=["L63", "L1000"])
def test_f32_kernels_match_the_naive_float64_kernel(length: int) -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.polar(0.3 + 0.69 * torch.rand(5, 4, generator=g, dtype=torch.float64),
                    math.pi * torch.rand(5, 4, generator=g, dtype=torch.float64))
    r = torch.randn(5, 4, generator=g, dtype=torch.complex128)
    pp, rp = to_pairs(p), to_pairs(r)
    ref = naive_modal(from_pairs(pp).numpy(), from_pairs(rp).numpy(), length)  # float64
    h_exp, h_rec = f32_kernels(pp, rp, length)
    scale = np.abs(ref).max()
    assert np.abs(h_exp.numpy() - ref).max() <= 1e-5 * scale
    assert np.abs(h_rec.numpy() - ref).max() <= 1e-5 * scale
    # The engine's (C, N, 1, 2) layout gives the same kernels.
    assert torch.equal(f32_kernels(pp[:, :, None], rp[:, :, None], length)[0], h_exp)


@pytest.mark.parametrize("length", [63, 1000], ids=["L63", "L1000"])
def test_float64_scoring_hides_a_fragile_fit_that_f32_evaluation_catches(length: int) -> None:
    """Channel 0 carries the fragile mode, channel 1 only benign ones. In float64 both fits are
    exact (the target is their own float64 kernel); in complex64 the fragile one is ~1e-4 off."""
    pp, rp = stored([[FRAGILE_POLE, BENIGN_POLE], [0.5, BENIGN_POLE]],
                    [[FRAGILE_RESIDUE, 0.5 + 0.2j], [0.3, 0.5 + 0.2j]])
    h = torch.tensor(naive_modal(from_pairs(pp).numpy(), from_pairs(rp).numpy(), length))
    f64 = kernel_errors(h, from_pairs(pp), from_pairs(rp), order=2)
    assert f64["rel_l2"]["max"] <= 1e-10  # what the float64 report shows (1e-13: cancellation)
    f32 = rel_l2_f32eval(h, pp, rp)  # (C,)
    assert f32.shape == (2,)
    assert f32[0] >= 1e-5  # the engine's kernel is visibly off
    assert f32[1] <= 1e-6  # benign modes: float32 rounding only
    assert f32[0] >= 100 * f32[1]


def test_report_rows_carry_the_complex64_score(write_ckpt, tmp_path) -> None:
    """Each causal layer of the report holds rel_l2_f32eval (median, max, window) beside the
    float64 rel_l2; at the source's own order both sit at the float32 storage floor."""
    import yaml

    from tests.conftest import lcd

    src = write_ckpt("stripedhyena")
    rep = tmp_path / "r.yaml"
    res = lcd("distill", src, "--order", "4", "-L", "96", "-o", tmp_path / "o.safetensors",
              "--report", rep)
    assert res.exit_code == 0, res.output
    for row in yaml.safe_load(rep.read_text())["layers"]:
        f32 = row["rel_l2_f32eval"]
        assert f32["window"] == 96 and 0 <= f32["median"] <= f32["max"] < 1e-4


@pytest.mark.parametrize("block", [1, 7, 1 << 30], ids=["states1", "states7", "one-block"])
def test_f32_recurrence_blocks_equal_the_step_loop(monkeypatch, block: int) -> None:
    """The complex64 recurrence keeps a block of states and reads them out per block; any block
    size gives, bit for bit, the one-step-at-a-time loop (x_t = p x_{t-1}, y_t = Re sum R x_t)."""
    import lcd_cli.numerics.metrics as metrics_mod

    g = torch.Generator().manual_seed(1)
    p = torch.polar(0.5 + 0.499 * torch.rand(3, 5, generator=g, dtype=torch.float64),
                    math.pi * torch.rand(3, 5, generator=g, dtype=torch.float64))
    r = torch.randn(3, 5, generator=g, dtype=torch.complex128)
    pp, rp = to_pairs(p), to_pairs(r)
    length = 50
    monkeypatch.setattr(metrics_mod, "_REC_BUDGET", block * 15)  # `block` states of 3 x 5 modes
    _, h_rec = f32_kernels(pp, rp, length)
    pc, rc = from_pairs(pp).to(torch.complex64), from_pairs(rp).to(torch.complex64)  # (C, N)
    want = torch.empty(3, length, dtype=torch.float32)
    x = torch.ones_like(pc)
    for t in range(length):
        want[:, t] = (rc * x).real.sum(-1)
        x = pc * x
    assert torch.equal(h_rec, want.double())


def test_f32_evaluation_on_workers_is_the_one_pass(monkeypatch: pytest.MonkeyPatch,
                                                    scoring_worker_counts: list[int]) -> None:
    """Blocks of channels, here or on two workers, give the one-pass definition: the worse of
    the two complex64 paths' relative errors, the norm floored over the whole layer."""
    import lcd_cli.numerics.metrics as metrics

    g = torch.Generator().manual_seed(5)
    p = torch.polar(0.5 + 0.49 * torch.rand(9, 3, generator=g, dtype=torch.float64),
                    math.pi * torch.rand(9, 3, generator=g, dtype=torch.float64))
    r = torch.randn(9, 3, generator=g, dtype=torch.complex128)
    pp, rp = to_pairs(p), to_pairs(r)
    h = torch.tensor(naive_modal(from_pairs(pp).numpy(), from_pairs(rp).numpy(), 300))
    h = h + 1e-4 * torch.randn(9, 300, generator=g, dtype=torch.float64)
    h[4] *= 1e-14  # a near-zero channel: its norm is floored by the layer's largest
    h_exp, h_rec = f32_kernels(pp, rp, 300)
    ref = torch.maximum(metrics.relative_l2(h, h_exp), metrics.relative_l2(h, h_rec))  # (C,)
    counts = scoring_worker_counts
    monkeypatch.setattr(metrics, "_F32_BLOCK", 4)  # blocks of 4, 4 and 1 channels
    here = rel_l2_f32eval(h, pp, rp, workers=2)  # small: in process
    monkeypatch.setattr(metrics, "_PARALLEL_F32_TERMS", 0)
    two = rel_l2_f32eval(h, pp, rp, workers=2)
    assert counts == [1, 2]
    assert torch.equal(two, here)  # fixed blocks: the same bits for any worker count
    # the recurrence path's batched complex64 arithmetic rounds by an element's place in the
    # batch (seen: the 4-channel block's h_rec differs from the 9-channel pass's in its last
    # float32 bits), so the errors may differ that little, no more
    torch.testing.assert_close(here, ref, rtol=1e-5, atol=0)


def test_two_sided_f32_evaluation_on_workers_is_the_one_pass(
        monkeypatch: pytest.MonkeyPatch, scoring_worker_counts: list[int]) -> None:
    """The two-sided report's complex64 evaluation, here or on two workers, gives the one-pass
    definition: per half the worse path's relative error, and for the whole kernel the worse
    path's error over both halves' lags."""
    import lcd_cli.numerics.metrics as metrics
    from lcd_cli.numerics.two_sided import two_sided_f32eval

    g = torch.Generator().manual_seed(6)
    halves = []
    for _ in range(2):
        p = torch.polar(0.5 + 0.49 * torch.rand(7, 3, generator=g, dtype=torch.float64),
                        math.pi * torch.rand(7, 3, generator=g, dtype=torch.float64))
        r = torch.randn(7, 3, generator=g, dtype=torch.complex128)
        pp, rp = to_pairs(p), to_pairs(r)
        h = torch.tensor(naive_modal(from_pairs(pp).numpy(), from_pairs(rp).numpy(), 200))
        halves.append((h + 1e-4 * torch.randn(7, 200, generator=g, dtype=torch.float64), pp, rp))
    (kf, ppf, rpf), (kr, ppr, rpr) = halves
    monkeypatch.setattr(metrics, "_F32_BLOCK", 3)  # blocks of 3, 3 and 1 channels
    here = two_sided_f32eval(kf, kr, (ppf, rpf), (ppr, rpr), 150, workers=2)
    monkeypatch.setattr(metrics, "_PARALLEL_F32_TERMS", 0)
    two = two_sided_f32eval(kf, kr, (ppf, rpf), (ppr, rpr), 150, workers=2)
    assert scoring_worker_counts == [1, 1, 2, 2]
    assert two == here and two["window"] == 150
    # the one-pass reference over all channels (rounding by batch place: see the causal test)
    ef, er = f32_kernels(ppf, rpf, 150), f32_kernels(ppr, rpr, 150)  # (C, W) exp, rec each
    ref_f, ref_r = kf[:, :150], kr[:, :150]
    whole = torch.cat([ref_f, ref_r], dim=1)  # (C, 2W)
    top = torch.maximum(*(metrics.relative_l2(whole, torch.cat([ef[i], er[i]], dim=1))
                          for i in range(2)))  # (C,)
    assert two["max"] == pytest.approx(float(top.max()), rel=1e-5)
    assert two["median"] == pytest.approx(float(top.quantile(0.5)), rel=1e-5)
    for name, ref, ev in (("fwd", ref_f, ef), ("rev", ref_r, er)):
        rel = torch.maximum(metrics.relative_l2(ref, ev[0]), metrics.relative_l2(ref, ev[1]))
        assert two["halves"][name]["max"] == pytest.approx(float(rel.max()), rel=1e-5)
        assert two["halves"][name]["median"] == pytest.approx(float(rel.quantile(0.5)), rel=1e-5)


@pytest.mark.parametrize("length", [63, 1000], ids=["L63", "L1000"])
@pytest.mark.parametrize("chunk", [50, 4096], ids=["chunk50", "chunk4096"])
def test_exp_kernel_channel_blocks_equal_one_pass(monkeypatch: pytest.MonkeyPatch,
                                                  length: int, chunk: int) -> None:
    """exp_kernel_c64 in cache blocks of one channel or a few gives, bit for bit, one block of
    all channels at the same time chunks (every value depends on its own channel; the chunks
    themselves do move the vector loops' scalar remainders, so they stay fixed here)."""
    import lcd_cli.numerics.metrics as metrics
    from lcd_cli.numerics.metrics import exp_kernel_c64

    g = torch.Generator().manual_seed(7)
    p = torch.polar(0.5 + 0.499 * torch.rand(7, 3, generator=g),
                    math.pi * torch.rand(7, 3, generator=g)).to(torch.complex64)
    p[2, 1] = 0  # the two-sided kind's padding pole: 0^0 = 1
    r = torch.randn(7, 3, generator=g, dtype=torch.complex64)
    monkeypatch.setattr(metrics, "_F32_CHUNK", chunk)
    monkeypatch.setattr(metrics, "_CACHE_ELEMENTS", 1 << 40)
    one = exp_kernel_c64(p, r, length)  # (C, L): one block of channels
    for cache in (1, 3 * 3 * chunk):  # blocks of 1 channel; of 3, 3 and 1
        monkeypatch.setattr(metrics, "_CACHE_ELEMENTS", cache)
        assert torch.equal(exp_kernel_c64(p, r, length), one)
