"""Baseline fitters: shapes, stability, reported errors, and what each must get right."""

from __future__ import annotations

import math

import pytest
import torch

from lcd_cli.errors import LcdError
from lcd_cli.numerics.baselines import (
    fit_dft_truncation,
    fit_matrix_pencil,
    fit_modal_adam,
    fit_real_pole_bank,
)
from lcd_cli.numerics.modal import modal_kernel

METHODS = {
    "dft": fit_dft_truncation,
    "bank": fit_real_pole_bank,
    "pencil": fit_matrix_pencil,
    "adam": lambda h, n: fit_modal_adam(h, n, steps=50),
}


def _oscillatory(channels: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)
    radius = 0.9 + 0.09 * torch.rand(channels, 6, 1, generator=gen, dtype=torch.float64)
    freq = math.pi * torch.rand(channels, 6, 1, generator=gen, dtype=torch.float64)
    return (radius**t * torch.cos(freq * t)).sum(1)


def _rel(h: torch.Tensor, h_hat: torch.Tensor) -> torch.Tensor:
    return (h - h_hat).norm(dim=-1) / h.norm(dim=-1)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("length", [63, 1000], ids=lambda n: f"L{n}")
def test_contract(name: str, length: int) -> None:
    h = _oscillatory(3, length, seed=length)
    res = METHODS[name](h, 4)
    assert res.poles.shape == res.residues.shape == (3, 4)
    assert res.poles.dtype == torch.complex128 and res.poles.device.type == "cpu"
    assert bool((res.poles.abs() < 1).all())
    ref = _rel(h, modal_kernel(res.poles, res.residues, length))
    torch.testing.assert_close(res.rel_l2, ref, rtol=1e-9, atol=1e-14)
    assert res.order == 4 and res.method


@pytest.mark.parametrize("name", list(METHODS))
def test_order_range(name: str) -> None:
    with pytest.raises(LcdError, match="out of range"):
        METHODS[name](_oscillatory(1, 20, seed=1), 20)


def test_dft_truncation_is_exact_with_all_modes() -> None:
    h = _oscillatory(2, 63, seed=2)
    res = fit_dft_truncation(h, 32)  # 32 = 63 // 2 + 1 bins: the whole DFT
    assert float(res.rel_l2.max()) < 1e-9


def test_matrix_pencil_recovers_modal_kernel() -> None:
    gen = torch.Generator().manual_seed(3)
    poles = torch.polar(
        0.7 + 0.25 * torch.rand(2, 4, generator=gen, dtype=torch.float64),
        0.3 + 2.5 * torch.rand(2, 4, generator=gen, dtype=torch.float64),
    )
    res = torch.view_as_complex(torch.randn(2, 4, 2, generator=gen, dtype=torch.float64))
    h = modal_kernel(poles, res, 500)
    assert float(fit_matrix_pencil(h, 4).rel_l2.max()) < 1e-7


def test_real_pole_bank_represents_its_own_span() -> None:
    from lcd_cli.numerics.baselines import fit_real_pole_bank as bank

    probe = bank(torch.ones(1, 200, dtype=torch.float64), 5)
    poles = probe.poles.expand(2, -1)
    coef = torch.randn(2, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = modal_kernel(poles, coef.to(torch.complex128), 200)
    assert float(bank(h, 5).rel_l2.max()) < 1e-6
    assert bool((probe.poles.imag == 0).all())


def test_adam_improves_and_is_deterministic() -> None:
    h = _oscillatory(2, 200, seed=5)
    short = fit_modal_adam(h, 6, steps=5, seed=1)
    long = fit_modal_adam(h, 6, steps=300, seed=1)
    again = fit_modal_adam(h, 6, steps=300, seed=1)
    assert float(long.rel_l2.mean()) < float(short.rel_l2.mean())
    assert torch.equal(long.poles, again.poles) and torch.equal(long.residues, again.residues)
