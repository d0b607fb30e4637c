"""The real-pole fit (lcd_cli.numerics.fit_real) against naive float64 references, and
`lcd distill --poles real` end to end.

References: a dense float64 least squares on the explicit L x N matrix E[t, n] = p_n^t
(torch.linalg.lstsq), and the same on the N source modes of largest energy (modal truncation).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from lcd_cli.errors import LcdError
from lcd_cli.numerics.fit import fit_modal
from lcd_cli.numerics.fit_real import fit_real_modal, fit_real_modal_to_tolerance
from tests.conftest import lcd


def real_kernels(channels: int, modes: int, length: int, seed: int) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """h (C, L) = sum_n r_n exp(s_n t), decay rates log-uniform in [e^-6, e^0.5]; and the
    poles (C, M) float64."""
    g = torch.Generator().manual_seed(seed)
    s = -torch.exp(torch.empty(channels, modes, dtype=torch.float64).uniform_(-6, 0.5,
                                                                               generator=g))
    r = torch.randn(channels, modes, dtype=torch.float64, generator=g)
    t = torch.arange(length, dtype=torch.float64)
    return (r[:, :, None] * torch.exp(s[:, :, None] * t)).sum(1), torch.exp(s)


def naive_error(h: torch.Tensor, poles: torch.Tensor) -> torch.Tensor:
    """min_r ||h - E r|| / ||h|| per channel, E[t, n] = p_n^t explicit (C, L, N), float64."""
    t = torch.arange(h.shape[1], dtype=torch.float64)
    e = poles.to(torch.float64)[:, None, :] ** t[None, :, None]  # (C, L, N)
    r = torch.linalg.lstsq(e, h[:, :, None], driver="gelsd").solution  # (C, N, 1)
    return torch.linalg.vector_norm(h - (e @ r)[..., 0], dim=-1) / torch.linalg.vector_norm(h,
                                                                                           dim=-1)


def direct_error(h: torch.Tensor, poles: torch.Tensor, residues: torch.Tensor) -> torch.Tensor:
    t = torch.arange(h.shape[1], dtype=torch.float64)
    h_hat = (residues.real[:, :, None] * poles.real[:, :, None] ** t).sum(1)  # (C, L)
    return torch.linalg.vector_norm(h - h_hat, dim=-1) / torch.linalg.vector_norm(h, dim=-1)


@pytest.mark.parametrize("length", [63, 1000])
def test_exact_recovery_float64(length: int) -> None:
    h, _ = real_kernels(5, 4, length, seed=1)
    fit = fit_real_modal(h, 4, float32=False)
    assert float(fit.rel_l2.max()) < 1e-7
    assert torch.equal(fit.poles.imag, torch.zeros_like(fit.poles.imag))
    assert torch.equal(fit.residues.imag, torch.zeros_like(fit.residues.imag))


def test_poles_inside_the_interval_and_scored_as_stored() -> None:
    h, _ = real_kernels(7, 9, 301, seed=2)
    fit = fit_real_modal(h, 5)
    p = fit.poles.real
    assert bool(((p > 0) & (p < 1)).all()) and bool(torch.isfinite(torch.log(p)).all())
    assert torch.equal(p, p.to(torch.float32).to(torch.float64))  # float32-exact
    assert torch.equal(fit.residues.real, fit.residues.real.to(torch.float32).to(torch.float64))
    assert torch.allclose(fit.rel_l2, direct_error(h, fit.poles, fit.residues), rtol=1e-9,
                          atol=0)


def test_residues_are_least_squares_optimal_for_their_poles() -> None:
    h, _ = real_kernels(6, 8, 517, seed=3)
    fit = fit_real_modal(h, 4, float32=False)
    best = naive_error(h, fit.poles.real)  # (C,)
    assert bool((fit.rel_l2 <= best * (1 + 1e-6) + 1e-13).all())


def test_order_reduction_beats_modal_truncation() -> None:
    h, src = real_kernels(8, 12, 777, seed=4)
    fit = fit_real_modal(h, 5, source=src.to(torch.complex128))
    # Truncation reference: the 5 source modes of largest energy, residues by least squares.
    t = torch.arange(h.shape[1], dtype=torch.float64)
    e = src[:, None, :] ** t[None, :, None]  # (C, L, M)
    r = torch.linalg.lstsq(e, h[:, :, None], driver="gelsd").solution[..., 0]  # (C, M)
    energy = r**2 / (1 - src**2)
    top = energy.topk(5, dim=1).indices
    trunc = naive_error(h, torch.gather(src, 1, top))
    assert bool((fit.rel_l2 <= trunc * (1 + 1e-3)).all())
    assert float(fit.rel_l2.median()) < 0.5 * float(trunc.median())


def test_the_constraint_costs_on_oscillating_kernels() -> None:
    t = torch.arange(200, dtype=torch.float64)
    h = torch.stack([0.97**t * torch.cos(0.3 * t), 0.9**t * torch.cos(1.1 * t + 0.4)])
    real = fit_real_modal(h, 2)
    cplx = fit_modal(h, 2)
    assert float(cplx.rel_l2.max()) < 1e-5
    assert float(real.rel_l2.min()) > 0.1  # no real-pole pair follows an oscillation


def test_deterministic_and_a_start_is_used() -> None:
    h, _ = real_kernels(5, 10, 433, seed=6)
    a, b = fit_real_modal(h, 4), fit_real_modal(h, 4)
    assert torch.equal(a.poles, b.poles) and torch.equal(a.residues, b.residues)
    # without refinement, a start at a refined fit's poles gives back (at least) that fit
    bare = fit_real_modal(h, 4, refine_iters=0)
    seeded = fit_real_modal(h, 4, start=a.poles, refine_iters=0)
    assert bool((seeded.rel_l2 <= a.rel_l2 * (1 + 1e-9)).all())
    assert float(bare.rel_l2.median()) > float(seeded.rel_l2.median())


def test_tolerance_and_bad_input() -> None:
    h, _ = real_kernels(3, 6, 129, seed=5)
    fit = fit_real_modal_to_tolerance(h, 1e-3, 8)
    assert float(fit.rel_l2.max()) <= 1e-3 and fit.order <= 8
    with pytest.raises(LcdError, match="out of range"):
        fit_real_modal(h, 129)
    with pytest.raises(LcdError, match="NaN"):
        fit_real_modal(torch.full((1, 10), math.nan), 2)


# ---------------------------------------------------------------------------- CLI


def test_distill_poles_real_lcd_layout(tmp_path: Path) -> None:
    ckpt = tmp_path / "evo2.safetensors"
    assert lcd("example", "evo2", "-o", ckpt).exit_code == 0
    out = tmp_path / "real.safetensors"
    res = lcd("distill", ckpt, "--family", "evo2-li", "--order", 3, "--length", 300,
              "--poles", "real", "-o", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    report = yaml.safe_load((tmp_path / "real.report.yaml").read_text())
    assert report["settings"]["poles"] == "real"
    for row in report["layers"]:
        assert row["poles"] == "real" and row["method"] == "real:era+vp-lm"
        assert row["floor_real"] >= row["floor"]
        assert 0 <= row["rel_l2_complex"]["median"] <= row["rel_l2_complex"]["max"] < 1
    with safe_open(str(out), framework="pt") as f:
        poles = f.get_tensor("blocks.2.filter.ssm.poles")
        residues = f.get_tensor("blocks.2.filter.ssm.residues")
    assert poles.shape[1:] == (3, 2) and bool((poles[..., 1] == 0).all())
    assert bool((residues[..., 1] == 0).all()) and bool(((poles[..., 0] > 0)
                                                         & (poles[..., 0] < 1)).all())
    res = lcd("verify", out, "-r", ckpt, "--tol", "0.5", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"]


def test_poles_option_errors(tmp_path: Path) -> None:
    ckpt = tmp_path / "evo2.safetensors"
    assert lcd("example", "evo2", "-o", ckpt).exit_code == 0
    bad = lcd("distill", ckpt, "--family", "evo2-li", "-n", 2, "--poles", "imaginary")
    assert bad.exit_code == 2 and "unknown pole class" in bad.output
    clash = lcd("distill", ckpt, "--family", "evo2-li", "-n", 2, "--layout", "vortex",
                "--poles", "complex")
    assert clash.exit_code == 2 and "stores real poles only" in clash.output
    mr = lcd("distill", ckpt, "-n", 2, "--layout", "vortex", "--dry-run")
    assert mr.exit_code == 2 and "--family evo2-li" in mr.output and "evo2-mr" in mr.output
    bidir = tmp_path / "bidir.safetensors"
    assert lcd("example", "long-conv-bidir", "-o", bidir).exit_code == 0
    two = lcd("distill", bidir, "-n", 2, "--poles", "real", "--set", "squash_lambda=0.001",
              "--dry-run")
    assert two.exit_code == 2 and "--poles real" in two.output, two.output
