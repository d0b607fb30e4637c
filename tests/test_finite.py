"""Bounded-memory finiteness checks (numerics.finite) against torch.isfinite on whole tensors."""

from __future__ import annotations

import math

import pytest
import torch

import lcd_cli.numerics.finite as finite
from lcd_cli.numerics.finite import all_finite, count_nonfinite


@pytest.mark.parametrize("size", [1, 63, 1000], ids=["n1", "n63", "n1000"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.complex64],
                         ids=["f64", "f32", "bf16", "c64"])
@pytest.mark.parametrize("where", [None, "first", "last", "block-edge"])
def test_all_finite_and_count_match_isfinite(monkeypatch, size: int, dtype: torch.dtype,
                                             where: str | None) -> None:
    monkeypatch.setattr(finite, "_BLOCK", 16)  # several blocks, the last one partial
    g = torch.Generator().manual_seed(0)
    x = torch.randn(size, generator=g).to(dtype)
    spots = {"first": [0], "last": [size - 1], "block-edge": [min(15, size - 1), min(16, size - 1)]}
    for i, value in zip(spots.get(where, []), [math.nan, math.inf], strict=False):
        x[i] = value
    x = x.reshape(1, -1) if size % 2 else x.reshape(-1, 1)
    assert all_finite(x) == bool(torch.isfinite(x).all())
    assert count_nonfinite(x) == int((~torch.isfinite(x)).sum())


def test_non_contiguous_and_integer_tensors() -> None:
    x = torch.randn(8, 6, dtype=torch.float64)
    x[5, 1] = -math.inf
    assert not all_finite(x.T)  # a transposed (non-contiguous) view
    assert count_nonfinite(x.T[1:, 1::2]) == 1 and count_nonfinite(x.T[:, ::2]) == 0
    assert all_finite(torch.arange(10)) and count_nonfinite(torch.ones(3, dtype=torch.bool)) == 0
    assert all_finite(torch.empty(0, dtype=torch.float64))
