"""DiagonalSSM runtime against the naive references.

Tolerances: float64 paths agree with the complex128 step loop to 1e-10 relative (observed
~1e-15); float32 paths to 1e-4 relative (observed ~1e-6), the looser floor covering
complex64 rounding accumulated over 1000 tokens with |p| up to 0.999.
"""

from __future__ import annotations

import math

import pytest
import torch

from lcd_cli.errors import LcdError
from lcd_cli.numerics.modal import modal_kernel, to_pairs
from lcd_cli.numerics.ssm import DiagonalSSM, direct_conv, fft_conv, naive_step_loop

F64_TOL = 1e-10
F32_TOL = 1e-4
C, N, B = 3, 6, 2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.to(b.dtype), b
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def make_ssm(seed: int = 0, dtype: torch.dtype = torch.float64, edge: bool = True) -> DiagonalSSM:
    """Stable random layer; with `edge`, one exact zero pole, |p| = 0.999 and |p| = 1e-3."""
    g = torch.Generator().manual_seed(seed)
    mag = 0.3 + 0.69 * torch.rand(C, N, generator=g, dtype=torch.float64)  # (C, N)
    ang = math.pi * torch.rand(C, N, generator=g, dtype=torch.float64)  # (C, N)
    poles = torch.polar(mag, ang)  # (C, N)
    if edge:
        poles[0, 0] = 0
        poles[1, 1] = 0.999 * torch.exp(torch.tensor(0.01j, dtype=torch.complex128))
        poles[2, 2] = 1e-3
    res = torch.randn(C, N, generator=g, dtype=torch.complex128)  # (C, N)
    D = torch.randn(C, generator=g, dtype=torch.float64)  # (C,)
    return DiagonalSSM(poles, res, D).to(dtype=dtype)


def inputs(T: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, C, T, generator=g, dtype=torch.float64)  # (B, C, T)
    x0 = torch.randn(B, C, N, generator=g, dtype=torch.complex128)  # (B, C, N)
    return u, x0


# ---- convolution references -------------------------------------------------------------------


CONV_SIZES = [(1, 1), (63, 20), (63, 100), (1000, 257), (64, 64)]


@pytest.mark.parametrize(("T", "L"), CONV_SIZES, ids=[f"T{t}-L{n}" for t, n in CONV_SIZES])
def test_fft_conv_matches_direct_conv(T: int, L: int) -> None:
    g = torch.Generator().manual_seed(T + L)
    u = torch.randn(B, C, T, generator=g, dtype=torch.float64)
    h = torch.randn(C, L, generator=g, dtype=torch.float64)
    D = torch.randn(C, generator=g, dtype=torch.float64)
    assert rel(fft_conv(u, h, D), direct_conv(u, h, D)) < 1e-12
    assert rel(fft_conv(u, h), direct_conv(u, h)) < 1e-12


def test_direct_conv_explicit_double_loop() -> None:
    u, _ = inputs(17)
    h = torch.randn(C, 5, dtype=torch.float64)
    want = torch.zeros_like(u)
    for t in range(17):
        for tau in range(min(t + 1, 5)):
            want[..., t] += h[:, tau] * u[..., t - tau]
    torch.testing.assert_close(direct_conv(u, h), want, rtol=0, atol=1e-13)


# ---- paths agree -----------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 63, 1000], ids=lambda t: f"T{t}")
def test_step_matches_loop_and_conv(T: int) -> None:
    ssm = make_ssm()
    u, _ = inputs(T)
    y_ref, x_ref = naive_step_loop(ssm, u)
    y_conv = direct_conv(u, ssm.kernel(T), ssm.D)
    assert rel(y_conv, y_ref) < F64_TOL
    assert rel(fft_conv(u, ssm.kernel(T), ssm.D), y_ref) < F64_TOL
    x = ssm.init_state(B)
    ys = []
    for t in range(T):
        y_t, x = ssm.step(u[..., t], x)
        ys.append(y_t)
    assert rel(torch.stack(ys, -1), y_ref) < F64_TOL
    assert rel(x, x_ref) < F64_TOL


SCAN_SIZES = [
    (1, 256),
    (63, 7),
    (63, 64),
    (63, 256),
    (1000, 1),
    (1000, 37),
    (1000, 256),
    (1000, 1000),
]


@pytest.mark.parametrize("nonzero_state", [False, True], ids=["x0=0", "x0=rand"])
@pytest.mark.parametrize(("T", "chunk"), SCAN_SIZES, ids=[f"T{t}-chunk{k}" for t, k in SCAN_SIZES])
def test_scan_matches_loop(T: int, chunk: int, nonzero_state: bool) -> None:
    ssm = make_ssm()
    u, x0 = inputs(T)
    x0 = x0 if nonzero_state else None
    y_ref, x_ref = naive_step_loop(ssm, u, x0)
    y, x = ssm.scan(u, x0, chunk=chunk)
    assert y.shape == (B, C, T) and x.shape == (B, C, N)
    assert rel(y, y_ref) < F64_TOL
    assert rel(x, x_ref) < F64_TOL


@pytest.mark.parametrize("nonzero_state", [False, True], ids=["x0=0", "x0=rand"])
@pytest.mark.parametrize("T", [1, 2, 63, 1000, 1001], ids=lambda t: f"T{t}")
def test_prefill_matches_loop(T: int, nonzero_state: bool) -> None:
    ssm = make_ssm()
    u, x0 = inputs(T)
    x0 = x0 if nonzero_state else None
    y_ref, x_ref = naive_step_loop(ssm, u, x0)
    y, x = ssm.prefill(u, x0)
    assert rel(y, y_ref) < F64_TOL
    assert rel(x, x_ref) < F64_TOL  # closed-form state == loop state


def test_prefill_then_step_and_scan_continue() -> None:
    ssm = make_ssm()
    u, _ = inputs(300)
    y_ref, _ = naive_step_loop(ssm, u)
    y1, x = ssm.prefill(u[..., :123])
    y2, x = ssm.scan(u[..., 123:200], x, chunk=16)
    ys = [y1, y2]
    for t in range(200, 300):
        y_t, x = ssm.step(u[..., t], x)
        ys.append(y_t[..., None])
    assert rel(torch.cat(ys, -1), y_ref) < F64_TOL


def test_channel_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny temporary budget forces one channel per block: same results."""
    ssm = make_ssm()
    u, x0 = inputs(200)
    want = [ssm.prefill(u, x0), ssm.scan(u, x0, chunk=33)]
    k_want = ssm.kernel(200)
    monkeypatch.setattr("lcd_cli.numerics.ssm._BUDGET", 1)
    got = [ssm.prefill(u, x0), ssm.scan(u, x0, chunk=33)]
    torch.testing.assert_close(ssm.kernel(200), k_want, rtol=0, atol=0)
    for (y_w, x_w), (y_g, x_g) in zip(want, got, strict=True):
        torch.testing.assert_close(y_g, y_w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x_g, x_w, rtol=1e-12, atol=1e-12)


def test_empty_input() -> None:
    ssm = make_ssm()
    u = torch.zeros(B, C, 0, dtype=torch.float64)
    for y, x in (ssm.prefill(u), ssm.scan(u)):
        assert y.shape == (B, C, 0) and x.shape == (B, C, N) and not x.abs().any()


# ---- pole edge cases --------------------------------------------------------------------------

EDGE_POLES = {
    "near_one": 0.999 * complex(math.cos(0.3), math.sin(0.3)),
    "real_near_one": 0.999,
    "near_zero": 1e-3,
    "tiny": 1e-200,
    "zero": 0.0,
    "negative": -0.9,
}


@pytest.mark.parametrize("pole", list(EDGE_POLES.values()), ids=list(EDGE_POLES))
def test_edge_pole(pole: complex) -> None:
    poles = torch.full((C, N), pole, dtype=torch.complex128)
    poles[:, 1:] = 0.5  # one edge mode plus ordinary ones
    res = torch.randn(C, N, dtype=torch.complex128, generator=torch.Generator().manual_seed(3))
    ssm = DiagonalSSM(poles, res)
    u, x0 = inputs(1000)
    y_ref, x_ref = naive_step_loop(ssm, u, x0)
    for y, x in (ssm.prefill(u, x0), ssm.scan(u, x0, chunk=100)):
        assert torch.isfinite(y).all() and torch.isfinite(torch.view_as_real(x)).all()
        assert rel(y, y_ref) < F64_TOL
        assert rel(x, x_ref) < F64_TOL


def test_zero_pole_kernel_is_residue_at_t0() -> None:
    ssm = DiagonalSSM(torch.zeros(1, 1, dtype=torch.complex128), torch.full((1, 1), 2 + 1j))
    k = ssm.kernel(5)
    assert k.tolist() == [[2.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("T", [100_000, 1_000_003], ids=lambda t: f"T{t}")
def test_prefill_long_sequence_closed_form(T: int) -> None:
    """Constant input u = 1 has an exact answer, so long T needs no loop as reference:
    x_t = (1 - p^(t+1)) / (1 - p) + p^(t+1) x0,  y_t = Re sum_n R_n x_t[n]."""
    rot = complex(math.cos(1e-3), math.sin(1e-3))
    poles = torch.tensor([[0.9999 * rot, 0.99999, 1e-3, 0.0, -0.5]], dtype=torch.complex128)
    res = torch.tensor([[1.0 - 0.5j, 0.3, 2.0, 1.0j, -1.0]], dtype=torch.complex128)
    ssm = DiagonalSSM(poles, res)
    x0 = torch.tensor([[[1.0 + 2.0j, -3.0, 3.0, -1.0, 0.5j]]], dtype=torch.complex128)
    y, x = ssm.prefill(torch.ones(1, 1, T, dtype=torch.float64), x0)
    p = poles[..., None]  # (1, 5, 1)
    p_t = p ** torch.arange(1, T + 1, dtype=torch.float64)  # (1, 5, T): p^(t+1)
    states = (1 - p_t) / (1 - p) + p_t * x0[0, :, :, None]  # (1, 5, T)
    y_want = (res[..., None] * states).sum(1).real  # (1, T)
    assert torch.allclose(x[0], states[..., -1], rtol=1e-10, atol=0)
    assert rel(y[0], y_want) < 1e-10


def test_unstable_pole_consistent_for_moderate_T() -> None:
    poles = torch.tensor([[1.01, 0.5j]], dtype=torch.complex128)
    ssm = DiagonalSSM(poles, torch.ones(1, 2, dtype=torch.complex128))
    u = torch.randn(1, 1, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y_ref, x_ref = naive_step_loop(ssm, u)
    for y, x in (ssm.prefill(u), ssm.scan(u, chunk=32)):
        assert rel(y, y_ref) < 1e-9 and rel(x, x_ref) < 1e-9


# ---- float32 -------------------------------------------------------------------------------


def test_float32_paths() -> None:
    ssm64 = make_ssm()
    ssm = ssm64.to(dtype=torch.float32)
    assert ssm.dtype == torch.float32 and ssm.poles.dtype == torch.complex64
    u, x0 = inputs(1000)
    y_ref, x_ref = naive_step_loop(ssm, u, x0)  # float64 loop on the float32 parameters
    y, x = ssm.prefill(u, x0)
    assert y.dtype == torch.float32 and x.dtype == torch.complex64
    assert rel(y, y_ref) < F32_TOL and rel(x, x_ref) < F32_TOL
    y, x = ssm.scan(u, x0, chunk=100)
    assert rel(y, y_ref) < F32_TOL and rel(x, x_ref) < F32_TOL
    x = x0.to(torch.complex64)
    ys = []
    for t in range(1000):
        y_t, x = ssm.step(u[..., t], x)
        ys.append(y_t)
    assert rel(torch.stack(ys, -1), y_ref) < F32_TOL and rel(x, x_ref) < F32_TOL


# ---- construction -----------------------------------------------------------------------------


def test_from_pairs_roundtrip_and_striped_hyena_layout() -> None:
    ssm = make_ssm()
    pp, rp = to_pairs(ssm.poles), to_pairs(ssm.residues)  # (C, N, 2) float32
    a = DiagonalSSM.from_pairs(pp, rp, ssm.D)
    assert a.dtype == torch.float32 and a.poles.shape == (C, N)
    b = DiagonalSSM.from_pairs(pp[:, :, None], rp[:, :, None], dtype=torch.float64)
    assert b.poles.dtype == torch.complex128 and b.D is None
    torch.testing.assert_close(b.poles, ssm.poles, rtol=0, atol=1e-7)
    out_p, out_r = b.to_pairs()
    assert torch.equal(out_p, pp) and torch.equal(out_r, rp)
    torch.testing.assert_close(a.kernel(50).double(), ssm.kernel(50), rtol=0, atol=1e-5)


def test_kernel_matches_modal_kernel_and_impulse_response() -> None:
    ssm = make_ssm()
    k = ssm.kernel(70)
    torch.testing.assert_close(k, modal_kernel(ssm.poles, ssm.residues, 70))
    impulse = torch.zeros(1, C, 70, dtype=torch.float64)
    impulse[..., 0] = 1
    y, _ = ssm.scan(impulse, chunk=16)
    assert rel(y - ssm.D[:, None] * impulse, k[None]) < F64_TOL


@pytest.mark.parametrize(
    "bad",
    [
        lambda: DiagonalSSM(torch.ones(2, 3), torch.ones(2, 3)),  # real poles
        lambda: DiagonalSSM(torch.ones(2, 3, dtype=torch.cfloat), torch.ones(2, 4)),
        lambda: DiagonalSSM(torch.ones(2, 3, dtype=torch.cfloat), torch.ones(2, 3), torch.ones(3)),
        lambda: DiagonalSSM.from_pairs(torch.ones(2, 3), torch.ones(2, 3)),
        lambda: DiagonalSSM.from_pairs(torch.ones(2, 3, 2), torch.ones(2, 3, 2), dtype=torch.int32),
    ],
    ids=["real_poles", "shape_mismatch", "bad_D", "pairs_no_axis", "bad_dtype"],
)
def test_bad_parameters_raise_lcd_error(bad) -> None:
    with pytest.raises(LcdError):
        bad()


def test_bad_inputs_raise() -> None:
    ssm = make_ssm()
    with pytest.raises(ValueError):
        ssm.scan(torch.zeros(B, C + 1, 5))
    with pytest.raises(ValueError):
        ssm.step(torch.zeros(B, C), torch.zeros(B, C, N + 1, dtype=torch.complex128))
    with pytest.raises(ValueError):
        ssm.scan(torch.zeros(B, C, 5), chunk=0)


# ---- CUDA --------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    ssm = make_ssm(dtype=dtype)
    gpu = ssm.to("cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    u, x0 = inputs(777)
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    for name in ("prefill", "scan"):
        y_c, x_c = getattr(ssm, name)(u, x0)
        y_g, x_g = getattr(gpu, name)(u.cuda(), x0.cuda())
        assert y_g.is_cuda and x_g.is_cuda
        assert rel(y_g.cpu(), y_c) < tol and rel(x_g.cpu(), x_c) < tol
    y_c, x_c = ssm.step(u[..., 0], x0)
    y_g, x_g = gpu.step(u[..., 0].cuda(), x0.cuda())
    assert rel(y_g.cpu(), y_c) < tol and rel(x_g.cpu(), x_c) < tol
    h = ssm.kernel(300).double()
    assert rel(fft_conv(u.cuda(), h.cuda()).cpu(), direct_conv(u, h)) < 1e-10
