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
