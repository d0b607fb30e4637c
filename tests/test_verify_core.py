"""verify_layer: tiny errors for an exact SSM, large ones for a broken one, honest flags."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from lcd_cli.errors import LcdError
from lcd_cli.numerics.checks import INPUT_KINDS, PATHS, LayerCheck, even_channels, verify_layer
from lcd_cli.numerics.ssm import DiagonalSSM

C, N, L = 5, 4, 200


def make_ssm(dtype: torch.dtype = torch.float64, seed: int = 0) -> DiagonalSSM:
    g = torch.Generator().manual_seed(seed)
    mag = 0.5 + 0.45 * torch.rand(C, N, generator=g, dtype=torch.float64)  # (C, N)
    poles = torch.polar(mag, math.pi * torch.rand(C, N, generator=g, dtype=torch.float64))
    res = torch.randn(C, N, generator=g, dtype=torch.complex128)  # (C, N)
    D = torch.randn(C, generator=g, dtype=torch.float64)  # (C,)
    return DiagonalSSM(poles, res, D).to(dtype=dtype)


def exact_pair(
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, DiagonalSSM]:
    """Original kernel h = the SSM's own modal kernel, so the SSM is exact on t < L."""
    ssm = make_ssm(dtype)
    ref = ssm.to(dtype=torch.float64)
    return ref.kernel(L), ref.D, ssm


def test_exact_ssm_float64_tiny_errors() -> None:
    h, D, ssm = exact_pair()
    check = verify_layer(h, D, ssm, length=L, seed=0)
    assert set(check.errors) == {f"{k}/{p}" for k in INPUT_KINDS for p in PATHS}
    assert check.finite and check.worst < 1e-10
    assert check.beyond_length is None and check.window == L
    assert check.step_tokens == L and check.prefill_tokens + check.prefill_step_tokens == L
    assert 0.5 < check.max_pole_abs < 0.96
    assert check.dtype == "float64"


def test_exact_ssm_float32_small_errors() -> None:
    h, D, ssm = exact_pair(torch.float32)
    check = verify_layer(h, D, ssm, length=L, seed=1)
    assert check.finite and check.worst < 1e-4  # float32 runtime floor
    assert check.dtype == "float32"


def test_tampered_residue_large_error() -> None:
    h, D, ssm = exact_pair()
    res = ssm.residues.clone()
    res[2, 1] += 1.0
    check = verify_layer(h, D, DiagonalSSM(ssm.poles, res, ssm.D), length=L, seed=0)
    assert check.finite and check.worst > 1e-2
    # every path sees the fault, on every input kind
    assert min(check.errors.values()) > 1e-3


def test_nan_gives_finite_false_without_raising() -> None:
    h, D, ssm = exact_pair()
    res = ssm.residues.clone()
    res[0, 0] = complex(math.nan, 0)
    check = verify_layer(h, D, DiagonalSSM(ssm.poles, res, ssm.D), length=L, seed=0)
    assert not check.finite and math.isinf(check.worst)


def test_unstable_pole_reported_and_unbounded_beyond_length() -> None:
    h, D, ssm = exact_pair()
    poles = ssm.poles.clone()
    poles[3, 0] = 1.05
    check = verify_layer(h, D, DiagonalSSM(poles, ssm.residues, ssm.D), length=4 * L, seed=0)
    assert check.max_pole_abs >= 1.0
    assert check.beyond_length is not None and not check.beyond_length["bounded"]


def test_beyond_length_report() -> None:
    h, D, ssm = exact_pair()
    check = verify_layer(h, D, ssm, length=3 * L + 7, seed=0)
    beyond = check.beyond_length
    assert beyond is not None and beyond["start"] == L and beyond["stop"] == 3 * L + 7
    assert set(beyond["errors"]) == set(INPUT_KINDS) and beyond["bounded"]
    # the SSM keeps its (decaying) tail while the original kernel is cut at L
    assert beyond["kernel_tail_rel"] > 0 and beyond["deviation"] > 0
    assert check.worst < 1e-10  # window errors stay those of t < L
    assert check.window == L and check.step_tokens == L


def test_truncated_kernel_beyond_length_is_zero_for_fir_ssm() -> None:
    """All poles zero: the kernel is a single tap at t = 0, so nothing differs beyond L."""
    ssm = DiagonalSSM(torch.zeros(C, N, dtype=torch.complex128), torch.ones(C, N) * 0.25)
    h = ssm.kernel(L)
    check = verify_layer(h, None, ssm, length=2 * L, seed=3)
    assert check.worst < 1e-12 and check.beyond_length["deviation"] < 1e-12


def test_max_channels_and_step_cap() -> None:
    h, D, ssm = exact_pair()
    check = verify_layer(h, D, ssm, length=L, seed=0, max_channels=3, step_cap=16)
    assert check.checked_channels == [0, 2, 4]
    assert check.step_tokens == 16 and check.prefill_step_tokens == 16
    assert check.prefill_tokens == L - 16
    assert check.worst < 1e-10
    assert even_channels(4096, 5).tolist() == [0, 1024, 2048, 3071, 4095]


def test_deterministic_and_serialisable() -> None:
    h, D, ssm = exact_pair(torch.float32)
    a = verify_layer(h, D, ssm, length=2 * L, seed=7, batch=1)
    b = verify_layer(h, D, ssm, length=2 * L, seed=7, batch=1)
    assert a.errors == b.errors
    d = a.to_dict()
    assert isinstance(a, LayerCheck) and d["errors"] == a.errors
    assert json.loads(json.dumps(d))["beyond_length"]["start"] == L
    assert yaml.safe_load(yaml.safe_dump(d))["worst"] == pytest.approx(a.worst)


def test_mismatched_channels_raise() -> None:
    h, D, ssm = exact_pair()
    with pytest.raises(LcdError):
        verify_layer(h[:-1], D[:-1], ssm, length=L, seed=0)
    with pytest.raises(LcdError):
        verify_layer(h, D, ssm, length=0, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    h, D, ssm = exact_pair(dtype)
    cpu = verify_layer(h, D, ssm, length=2 * L, seed=0)
    gpu = verify_layer(h, D, ssm.to("cuda"), length=2 * L, seed=0)
    floor = 1e-10 if dtype == torch.float64 else 1e-4
    assert gpu.finite and gpu.worst < floor
    assert gpu.beyond_length["deviation"] == pytest.approx(cpu.beyond_length["deviation"], rel=1e-3)
