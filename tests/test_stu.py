"""STU / Flash-STU: filters, layer convolutions, shared-pole fit, recurrent layer, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example, write_example
from lcd_cli.families.layers import materialize, select_configs
from lcd_cli.io.checkpoint import open_checkpoint
from lcd_cli.numerics.fit_shared import fit_shared, shared_kernel
from lcd_cli.numerics.stu_filters import spectral_filters
from lcd_cli.numerics.stu_layer import approx_forward, exact_forward
from lcd_cli.numerics.stu_runtime import STURecurrent
from tests.conftest import lcd, rel

F64_FLOOR = 1e-12  # float64 implementations of the same formula
F32_FLOOR = 2e-5  # float32 recurrence on a well-conditioned basis
EIG_FLOOR = 1e-9  # eigenvectors from two LAPACK calls (well-separated eigenvalues)
SMALL_STU = {"d_model": 4, "n_layers": 3, "seq_len": 150, "k": 6}




def naive_phi(length: int, k: int, hankel_l: bool = False) -> np.ndarray:
    """Z by loops over 1-based i, j; numpy eigh; top K scaled by sigma^(1/4)."""
    z = np.zeros((length, length))
    for i in range(1, length + 1):
        for j in range(1, length + 1):
            s = i + j
            if hankel_l:
                z[i - 1, j - 1] = ((-1.0) ** (s - 2) + 1.0) * 8.0 / ((s + 3) * (s - 1) * (s + 1))
            else:
                z[i - 1, j - 1] = 2.0 / (s**3 - s)
    sigma, v = np.linalg.eigh(z)
    return v[:, -k:] * sigma[-k:] ** 0.25


def align(phi: torch.Tensor, ref: np.ndarray) -> torch.Tensor:
    """Flip each column of phi to the sign of ref (eigenvector signs are arbitrary)."""
    sign = np.sign((phi.numpy() * ref).sum(0))
    return phi * torch.as_tensor(sign)


def naive_exact(u: np.ndarray, phi: np.ndarray, mp: np.ndarray, mm: np.ndarray) -> np.ndarray:
    """y[b,t,o] = sum_{s<=t} sum_{k,i} phi[s,k] (M+[k,i,o] + (-1)^s M-[k,i,o]) u[b,t-s,i]."""
    b, t_len, _ = u.shape
    y = np.zeros((b, t_len, mp.shape[2]))
    for t in range(t_len):
        for s in range(t + 1):
            h = np.einsum("k,kio->io", phi[s], mp + (-1.0) ** s * mm)
            y[:, t] += u[:, t - s] @ h
    return y


def naive_approx(u: np.ndarray, phi: np.ndarray, mi: np.ndarray, mf: np.ndarray) -> np.ndarray:
    """x = u M_inputs; y[t,c] = sum_{s<=t} (1 + (-1)^s) (phi M_filters)[s,c] x[t-s,c]."""
    x = u @ mi
    ph = phi @ mf
    y = np.zeros_like(x)
    for t in range(x.shape[1]):
        for s in range(t + 1):
            y[:, t] += (1.0 + (-1.0) ** s) * ph[s] * x[:, t - s]
    return y


def naive_recurrence(u: np.ndarray, poles: np.ndarray, res: np.ndarray, mp: np.ndarray,
                     mm: np.ndarray) -> np.ndarray:
    """Step by step: x+ = p x+ + u, x- = -p x- + u; y = Re sum_{n,k,i} R[k,n] (x+ M+ + x- M-)."""
    b, t_len, d_in = u.shape
    xp = np.zeros((b, len(poles), d_in), complex)
    xm = np.zeros_like(xp)
    y = np.zeros((b, t_len, mp.shape[2]))
    for t in range(t_len):
        xp = poles[None, :, None] * xp + u[:, t][:, None, :]
        xm = -poles[None, :, None] * xm + u[:, t][:, None, :]
        y[:, t] = (np.einsum("bni,kn,kio->bo", xp, res, mp)
                   + np.einsum("bni,kn,kio->bo", xm, res, mm)).real
    return y


def synthetic_basis(length: int, k: int, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K filters exactly in the span of 4 shared modes (2 real poles, 2 complex): (L, K)."""
    g = torch.Generator().manual_seed(seed)
    poles = torch.tensor([0.97, -0.6, 0.9 * complex(math.cos(0.3), math.sin(0.3)),
                          0.8 * complex(math.cos(1.9), math.sin(1.9))], dtype=torch.complex128)
    res = torch.complex(torch.randn(k, 4, generator=g, dtype=torch.float64),
                        torch.randn(k, 4, generator=g, dtype=torch.float64))
    res[:, :2] = res[:, :2].real.to(torch.complex128)  # real poles take real residues
    return shared_kernel(poles, res, length).T.contiguous(), poles, res


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize("hankel_l", [False, True])
def test_filters_match_naive_construction(hankel_l: bool) -> None:
    length, k = 63, 6
    ref = naive_phi(length, k, hankel_l)
    phi = spectral_filters(length, k, hankel_l)
    assert phi.shape == (length, k)
    assert rel(phi.abs(), np.abs(ref)) < EIG_FLOOR
    assert rel(align(phi, ref), ref) < EIG_FLOOR


# ----------------------------------------------------------------------------- convolutions


def test_exact_forward_matches_naive_matrix_convolution() -> None:
    g = torch.Generator().manual_seed(1)
    length, k, d_in, d_out = 63, 5, 3, 2
    phi = spectral_filters(length, k)
    mp = torch.randn(k, d_in, d_out, generator=g, dtype=torch.float64)
    mm = torch.randn(k, d_in, d_out, generator=g, dtype=torch.float64)
    u = torch.randn(2, length, d_in, generator=g, dtype=torch.float64)
    ref = naive_exact(u.numpy(), phi.numpy(), mp.numpy(), mm.numpy())
    assert rel(exact_forward(u, phi, mp, mm), ref) < F64_FLOOR
    # A shorter input sees the first T taps only (upstream slices the output to T).
    assert rel(exact_forward(u[:, :40], phi, mp, mm), ref[:, :40]) < F64_FLOOR


def test_approx_forward_matches_naive_depthwise_convolution() -> None:
    g = torch.Generator().manual_seed(2)
    length, k, d = 63, 5, 3
    phi = spectral_filters(length, k)
    mi = torch.randn(d, d, generator=g, dtype=torch.float64)
    mf = torch.randn(k, d, generator=g, dtype=torch.float64)
    u = torch.randn(2, length, d, generator=g, dtype=torch.float64)
    ref = naive_approx(u.numpy(), phi.numpy(), mi.numpy(), mf.numpy())
    assert rel(approx_forward(u, phi, mi, mf), ref) < F64_FLOOR


# ----------------------------------------------------------------------------- shared fit


@pytest.mark.parametrize("real", [True, False])
def test_shared_fit_recovers_known_poles(real: bool) -> None:
    g = torch.Generator().manual_seed(3)
    length, k = 300, 5
    if real:
        poles = torch.tensor([0.95, 0.8, 0.5, -0.4], dtype=torch.complex128)
        res = torch.randn(k, 4, generator=g, dtype=torch.float64).to(torch.complex128)
    else:
        poles = torch.polar(torch.tensor([0.96, 0.85, 0.6], dtype=torch.float64),
                            torch.tensor([0.2, 1.1, 2.5], dtype=torch.float64))
        res = torch.complex(torch.randn(k, 3, generator=g, dtype=torch.float64),
                            torch.randn(k, 3, generator=g, dtype=torch.float64))
    h = shared_kernel(poles, res, length)  # (K, L)
    fit = fit_shared(h, poles.numel(), real=real, float32=False)
    assert float(fit.rel_l2.max()) < 1e-8
    got = sorted(fit.poles.tolist(), key=lambda z: (z.real, z.imag))
    want = sorted(poles.tolist(), key=lambda z: (z.real, z.imag))
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-6
    # Stored float32 parameters are scored as stored.
    fit32 = fit_shared(h, poles.numel(), real=real, float32=True)
    assert torch.equal(fit32.poles, fit32.poles.to(torch.complex64).to(torch.complex128))
    assert float(fit32.rel_l2.max()) < 1e-5


def test_shared_fit_rejects_bad_input() -> None:
    with pytest.raises(LcdError, match="order"):
        fit_shared(torch.randn(3, 40, dtype=torch.float64), 11)
    with pytest.raises(LcdError, match="real"):
        fit_shared(torch.randn(40, dtype=torch.float64), 2)


# ----------------------------------------------------------------------------- recurrent layer


@pytest.mark.parametrize("dtype, floor", [(torch.float64, F64_FLOOR), (torch.float32, F32_FLOOR)])
def test_recurrent_layer_matches_exact_convolution(dtype: torch.dtype, floor: float) -> None:
    g = torch.Generator().manual_seed(4)
    length, k, d_in, d_out = 100, 4, 3, 2
    phi, poles, res = synthetic_basis(length, k)
    mp = torch.randn(k, d_in, d_out, generator=g, dtype=torch.float64)
    mm = torch.randn(k, d_in, d_out, generator=g, dtype=torch.float64)
    u = torch.randn(2, length, d_in, generator=g, dtype=torch.float64)
    ref = exact_forward(u, phi, mp, mm)
    naive = naive_recurrence(u.numpy(), poles.numpy(), res.numpy(), mp.numpy(), mm.numpy())
    assert rel(ref, naive) < F64_FLOOR  # the recurrence is the convolution, in exact arithmetic
    layer = STURecurrent(poles, res, "exact", m_plus=mp, m_minus=mm, dtype=dtype)
    x, steps = None, []
    for t in range(length):
        y_t, x = layer.step(u[:, t], x)
        steps.append(y_t)
    assert rel(torch.stack(steps, 1), ref) < floor
    assert rel(layer.scan(u, chunk=7)[0], ref) < floor
    y_pre, state = layer.prefill(u[:, :61])  # an odd split, then the scan from that state
    y_rest, _ = layer.scan(u[:, 61:], state, chunk=16)
    assert rel(torch.cat([y_pre, y_rest], 1), ref) < floor
    scanned = layer.scan(u[:, :61])[1]  # (B, J, N, C) the same state, by the chunked scan
    assert float((state - scanned).abs().max() / scanned.abs().max()) < floor


def test_recurrent_layer_approx_mode() -> None:
    g = torch.Generator().manual_seed(5)
    length, k, d = 100, 4, 3
    phi, poles, res = synthetic_basis(length, k)
    mi = torch.randn(d, d, generator=g, dtype=torch.float64)
    mf = torch.randn(k, d, generator=g, dtype=torch.float64)
    u = torch.randn(2, length, d, generator=g, dtype=torch.float64)
    ref = approx_forward(u, phi, mi, mf)
    layer = STURecurrent(poles, res, "approx", m_inputs=mi, m_filters=mf, dtype=torch.float64)
    assert rel(layer.scan(u, chunk=9)[0], ref) < F64_FLOOR
    assert rel(layer.prefill(u)[0], ref) < F64_FLOOR


# ----------------------------------------------------------------------------- checkpoints


def write_stu(tmp_path: Path, name: str = "stu", **override: object) -> Path:
    tensors = make_example(name, seed=0, **SMALL_STU)
    tensors |= {k: v for k, v in override.items() if isinstance(v, torch.Tensor)}
    for key in [k for k, v in override.items() if v is None]:
        tensors.pop(key)
    return write_example(tensors, tmp_path / f"{name}.safetensors", force=True)[0]


def test_example_layout_and_materialized_basis(tmp_path: Path) -> None:
    path = write_stu(tmp_path)
    with open_checkpoint(path) as ckpt:
        found = select_configs(ckpt)
        assert [cfg.name for cfg, _ in found] == ["flash-stu"]
        layers = found[0][1]
        assert [la.prefix for la in layers] == ["layers.0.stu", "layers.2.stu"]
        h, D = materialize(ckpt, layers[0])
        phi = ckpt.get("phi", torch.float64)
    assert D is None and h.shape == (2 * SMALL_STU["k"], SMALL_STU["seq_len"])
    sgn = (-1.0) ** np.arange(phi.shape[0])
    assert rel(h, np.concatenate([phi.numpy().T, phi.numpy().T * sgn])) < F64_FLOOR


@pytest.mark.parametrize("override, key, match", [
    ({"layers.0.stu.M_phi_plus": torch.zeros(6, 4)}, "layers.0.stu.M_phi_plus", "K, d_in, d_out"),
    ({"layers.0.stu.M_phi_minus": torch.zeros(6, 4, 3)}, "layers.0.stu.M_phi_minus",
     "does not match"),
    ({"phi": torch.zeros(150, 5)}, "phi", "K=6"),
    ({"phi": None}, "phi", "length"),
])
def test_bad_parameters_name_file_and_key(tmp_path: Path, override: dict, key: str,
                                          match: str) -> None:
    path = write_stu(tmp_path, **override)
    with open_checkpoint(path) as ckpt:
        layers = select_configs(ckpt, family="flash-stu")[0][1]
        with pytest.raises(LcdError, match=match) as err:
            materialize(ckpt, layers[0])
    assert err.value.key == key and err.value.file == str(path)


def test_bad_approx_filters_shape(tmp_path: Path) -> None:
    path = write_stu(tmp_path, "stu-approx", **{"layers.0.stu.M_filters": torch.zeros(6, 3)})
    with open_checkpoint(path) as ckpt:
        layers = select_configs(ckpt, family="flash-stu-approx")[0][1]
        with pytest.raises(LcdError, match="M_filters") as err:
            materialize(ckpt, layers[0])
    assert err.value.key == "layers.0.stu.M_filters"




@pytest.mark.parametrize("name", ["stu", "stu-approx"])
def test_cli_end_to_end_and_tampered_pole(tmp_path: Path, name: str) -> None:
    path = write_stu(tmp_path, name)
    assert lcd("inspect", path, "--json").exit_code == 0
    out = tmp_path / "out.safetensors"
    res = lcd("distill", path, "--order", 8, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    tensors = load_file(out)
    src = load_file(path)
    assert "phi" not in tensors and tensors["stu_basis.poles"].shape == (8, 2)
    assert tensors["stu_basis.residues"].shape == (SMALL_STU["k"], 8, 2)
    kept = [k for k in src if k != "phi"]
    assert all(torch.equal(tensors[k], src[k]) for k in kept)  # M and the rest byte for byte
    with open_checkpoint(out) as ckpt:
        assert ckpt.metadata["lcd_layout"] == "lcd"
        assert ckpt.metadata["lcd_basis_layout"] == "stu-shared-basis-v1"
        assert ckpt.metadata["lcd_stu_phi"] == "stored"
    res = lcd("verify", out, "--reference", path, "--json")
    assert res.exit_code == 0, res.output
    for row in json.loads(res.stdout)["layers"]:  # the float32 runtime, judged as well
        assert set(row["errors_f32"]) == {"scan", "recurrence"}
        assert row["worst_f32"] == max(row["errors_f32"].values()) <= 2 * row["worst"] + 1e-5
        assert row["float32_scan"] == row["errors_f32"]["scan"]
    tensors["stu_basis.poles"] *= 0.97  # tampered poles (every mode decays faster)
    with open_checkpoint(out) as ckpt:
        meta = dict(ckpt.metadata)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, bad, metadata=meta)
    res = lcd("verify", bad, "--reference", path)
    assert res.exit_code == 1, res.output


def test_verify_rejects_misshaped_basis(tmp_path: Path) -> None:
    path = write_stu(tmp_path)
    out = tmp_path / "out.safetensors"
    assert lcd("distill", path, "--order", 8, "-o", out).exit_code == 0
    tensors = load_file(out)
    tensors["stu_basis.residues"] = tensors["stu_basis.residues"][:5]  # K mismatch
    with open_checkpoint(out) as ckpt:
        meta = dict(ckpt.metadata)
    bad = tmp_path / "bad.safetensors"  # re-saved elsewhere: out's report no longer applies
    save_file(tensors, bad, metadata=meta)
    res = lcd("verify", bad, "--reference", path)
    assert res.exit_code == 2 and "stu_basis.residues" in res.output


def test_dry_run_shows_the_shared_basis_and_sharded_input_fails_early(tmp_path: Path) -> None:
    import json

    path = write_stu(tmp_path)
    res = lcd("distill", path, "--order", 8, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["shared"] == {"remove": ["phi"],
                              "add": ["stu_basis.poles", "stu_basis.residues"]}
    assert all(la["add"] == [] and la["remove"] == [] for la in plan["layers"])
    sharded = tmp_path / "sharded"
    write_example(make_example("stu", seed=0, **SMALL_STU), sharded, shards=2)
    res = lcd("distill", sharded, "--order", 8)
    assert res.exit_code == 2 and "sharded STU" in res.output
    assert not (tmp_path / "sharded-lcd").exists()
