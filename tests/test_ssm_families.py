"""S4D, S4 (diagonal and DPLR) and H3: materializers against naive recurrences, bad input,
detection, model order reduction and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example, write_example
from lcd_cli.families.config import parse_config
from lcd_cli.families.kernels import MATERIALIZERS
from lcd_cli.families.layers import LayerView, generator_info, materialize, select_configs
from lcd_cli.io.checkpoint import open_checkpoint
from lcd_cli.numerics.fit import fit_modal
from lcd_cli.numerics.modal import modal_kernel
from tests.conftest import lcd, rel

F64_FLOOR = 1e-12  # relative error allowed between float64 implementations
# Sizes small enough for fast tests (N_src = d_state, N_src / 2 stored modes).
SMALL = {
    "s4d": {"d_model": 4, "n_layers": 2, "d_state": 16},
    "s4-diag": {"d_model": 4, "n_layers": 2, "d_state": 16, "l_max": 100},
    "s4-dplr": {"d_model": 3, "n_layers": 2, "d_state": 16, "l_max": 100},
    "h3": {"d_model": 4, "n_layers": 3, "d_state": 16},
}
FAMILIES = {"s4d": ["s4d"], "s4-diag": ["s4"], "s4-dplr": ["s4"], "h3": ["h3", "h3-shift"]}






def pairs(t: torch.Tensor) -> np.ndarray:
    x = t.double().numpy()
    return x[..., 0] + 1j * x[..., 1]


def softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


# The examples store inv_dt under the exp transform; an S4 checkpoint must say which transform
# it was trained with (upstream's code default and its training config differ: docs/families/s4.md).
EXP = {"dt_transform": "exp"}
EXP_ARGS = {"s4-diag": ["--set", "dt_transform=exp"], "s4-dplr": ["--set", "dt_transform=exp"]}


def layers_of(path: Path, **kw: object) -> tuple[object, list]:
    ckpt = open_checkpoint(path)
    return ckpt, [la for _, ls in select_configs(ckpt, **kw) for la in ls]


def naive_diagonal(dt: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray, disc: str,
                   length: int) -> np.ndarray:
    """Impulse response of x_t = dA x_{t-1} + dB B u_t, y_t = 2 Re(C x_t), step by step.

    dt (H, N), A (H, N), B (H, N), C (Ch, H, N) -> (Ch * H, L), channels c * H + h.
    """
    ch, heads, modes = C.shape
    out = np.zeros((ch, heads, length))
    for h in range(heads):
        for n in range(modes):
            a, d = A[h, n], dt[h, n]
            if disc == "zoh":
                da, db = np.exp(d * a), (np.exp(d * a) - 1) / a
            else:
                da, db = (1 + d * a / 2) / (1 - d * a / 2), d / (1 - d * a / 2)
            x = 0j
            for t in range(length):
                x = da * x + (db * B[h, n] if t == 0 else 0)
                out[:, h, t] += 2 * (C[:, h, n] * x).real
    return out.reshape(ch * heads, length)


def naive_dplr(t: dict, k: str, length: int) -> np.ndarray:
    """Dense 2N-state S4: A = diag(Lambda) - p p^*, bilinear, C = (I - dA^l_kernel)^-T C~,
    then the recurrence x_t = dA x_{t-1} + dB u_t, y_t = Re(C^T x_t). Tied dt, exp transforms."""
    dt_all = np.exp(t[f"{k}.inv_dt"].double().numpy())  # (H, 1)
    lam = -np.exp(t[f"{k}.A_real"].double().numpy()) - 1j * t[f"{k}.A_imag"].double().numpy()
    P, B, Ct = pairs(t[f"{k}.P"]), pairs(t[f"{k}.B"])[0], pairs(t[f"{k}.C"])
    stored = int(t[f"{k}.l_kernel"]) if f"{k}.l_kernel" in t else 0
    heads, copies, modes = Ct.shape[1], lam.shape[0], lam.shape[1]
    eye = np.eye(2 * modes)
    out = np.zeros((Ct.shape[0], heads, length))
    for h in range(heads):
        s = h % copies
        full = np.concatenate([lam[s], lam[s].conj()])
        a = np.diag(full).astype(complex)
        for r in range(P.shape[0]):
            p = np.concatenate([P[r, s], P[r, s].conj()])
            a -= np.outer(p, p.conj())
        m = dt_all[h, 0] * a
        dA = np.linalg.inv(eye - m / 2) @ (eye + m / 2)
        dB = np.linalg.inv(eye - m / 2) @ (dt_all[h, 0] * np.concatenate([B[s], B[s].conj()]))
        for c in range(Ct.shape[0]):
            cf = np.concatenate([Ct[c, h], Ct[c, h].conj()])
            if stored:
                cf = np.linalg.solve(eye - np.linalg.matrix_power(dA, stored).T, cf)
            x = np.zeros(2 * modes, dtype=complex)
            for step in range(length):
                x = dA @ x + (dB if step == 0 else 0)
                out[c, h, step] = (cf @ x).real
    return out.reshape(-1, length)


def write(write_ckpt, tensors: dict, name: str = "model.safetensors") -> Path:
    return write_ckpt(tensors, name=name)


# ------------------------------------------------------------------ materializers vs naive


@pytest.mark.parametrize("length", [63, 1000])
def test_s4d_matches_naive(write_ckpt, length: int) -> None:
    t = make_example("s4d", seed=2, dtype="fp64", **SMALL["s4d"])
    k = "s4_layers.1.kernel"
    ckpt, layers = layers_of(write(write_ckpt, t), options={"length": length})
    assert [la.prefix for la in layers] == ["s4_layers.0.kernel", k]
    h, D = materialize(ckpt, layers[1])
    dt = np.exp(t[f"{k}.log_dt"].numpy())[:, None] * np.ones((1, 8))
    A = -np.exp(t[f"{k}.log_A_real"].numpy()) + 1j * t[f"{k}.A_imag"].numpy()
    want = naive_diagonal(dt, A, np.ones_like(A), pairs(t[f"{k}.C"])[None], "zoh", length)
    assert h.shape == (4, length) and rel(h, want) < F64_FLOOR
    assert torch.equal(D, t["s4_layers.1.D"])


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("length", [63, 1000])
def test_s4_diag_matches_naive(write_ckpt, tmp_path: Path, disc: str, length: int) -> None:
    """Awkward layout: 2 output channels, 2 (A, B) copies for 4 heads, untied dt, softplus dt
    and real part, exp imaginary part."""
    g = torch.Generator().manual_seed(5)
    ch, heads, copies, modes = 2, 4, 2, 6
    k = "model.layers.3.layer.layer.kernel"
    t = {f"{k}.inv_dt": torch.empty(heads, modes, dtype=torch.float64).uniform_(-6, -2, generator=g),
         f"{k}.A_real": torch.randn(copies, modes, generator=g, dtype=torch.float64) - 1,
         f"{k}.A_imag": torch.randn(copies, modes, generator=g, dtype=torch.float64),
         f"{k}.B": torch.randn(1, copies, modes, 2, generator=g, dtype=torch.float64),
         f"{k}.C": torch.randn(ch, heads, modes, 2, generator=g, dtype=torch.float64),
         "model.layers.3.layer.layer.D": torch.randn(ch, heads, generator=g, dtype=torch.float64),
         "model.encoder.weight": torch.ones(3, 3, dtype=torch.float64)}
    sets = {"disc": disc, "dt_transform": "softplus", "real_transform": "softplus",
            "imag_transform": "exp"}
    ckpt, (layer,) = layers_of(write(write_ckpt, t), family="s4", sets=sets,
                               options={"length": length})
    h, D = materialize(ckpt, layer)
    dt = softplus(t[f"{k}.inv_dt"].numpy())  # (H, N)
    A = -softplus(t[f"{k}.A_real"].numpy()) - 1j * np.exp(t[f"{k}.A_imag"].numpy())  # (S, N)
    idx = [h_ % copies for h_ in range(heads)]
    want = naive_diagonal(dt, A[idx], pairs(t[f"{k}.B"])[0][idx], pairs(t[f"{k}.C"]), disc, length)
    assert h.shape == (ch * heads, length) and rel(h, want) < F64_FLOOR
    assert torch.equal(D, t["model.layers.3.layer.layer.D"].reshape(-1))


@pytest.mark.parametrize("disc", ["bilinear", "zoh"])
@pytest.mark.parametrize("length", [63, 1000])
def test_h3_matches_naive(write_ckpt, tmp_path: Path, disc: str, length: int) -> None:
    t = make_example("h3", seed=4, dtype="fp64", **SMALL["h3"])
    k = "backbone.layers.2.mixer.kernel.kernel"
    cfg = tmp_path / "h3.yaml"
    doc = yaml.safe_load(Path("configs/h3.yaml").read_text())
    doc["options"] |= {"disc": disc, "length": length}
    cfg.write_text(yaml.safe_dump(doc))
    ckpt, layers = layers_of(write(write_ckpt, t), config_path=cfg)
    assert [la.prefix for la in layers] == [k.replace(".2.", ".0."), k]  # layer 1 is attention
    h, D = materialize(ckpt, layers[1])
    dt = np.exp(t[f"{k}.log_dt"].numpy())[:, None] * np.ones((1, 8))
    A = -np.exp(t[f"{k}.inv_A_real"].numpy()) + 1j * t[f"{k}.A_imag"].numpy()
    want = naive_diagonal(dt, A, pairs(t[f"{k}.B"]), pairs(t[f"{k}.C"]), disc, length)
    assert rel(h, want) < F64_FLOOR
    assert torch.equal(D, t["backbone.layers.2.mixer.D"])


def test_h3_default_is_bilinear_and_sign_of_imag_matters(write_ckpt) -> None:
    """Upstream H3 defaults: bilinear, A = -exp(inv_A_real) + i A_imag (plus sign)."""
    t = make_example("h3", seed=4, dtype="fp64", **SMALL["h3"])
    k = "backbone.layers.0.mixer.kernel.kernel"
    ckpt, layers = layers_of(write(write_ckpt, t), family="h3", options={"length": 63})
    h, _ = materialize(ckpt, layers[0])
    dt = np.exp(t[f"{k}.log_dt"].numpy())[:, None] * np.ones((1, 8))
    A = -np.exp(t[f"{k}.inv_A_real"].numpy()) + 1j * t[f"{k}.A_imag"].numpy()
    B, C = pairs(t[f"{k}.B"]), pairs(t[f"{k}.C"])
    assert rel(h, naive_diagonal(dt, A, B, C, "bilinear", 63)) < F64_FLOOR
    assert rel(h, naive_diagonal(dt, A.conj(), B, C, "bilinear", 63)) > 1e-2


def test_h3_shift_is_recognised_and_skipped(write_ckpt, tmp_path: Path) -> None:
    t = make_example("h3", seed=1, dtype="fp64", **SMALL["h3"])
    path = write(write_ckpt, t)
    ckpt, layers = layers_of(path, options={"length": 100})
    shift = [la for la in layers if la.config.name == "h3-shift"]
    assert [la.prefix for la in shift] == [f"backbone.layers.{i}.mixer.ssm_k_kernel.kernel"
                                           for i in (0, 2)]
    h, D = materialize(ckpt, shift[1])
    B = t["backbone.layers.2.mixer.ssm_k_kernel.kernel.B"].numpy()  # (H, N)
    C = t["backbone.layers.2.mixer.ssm_k_kernel.kernel.C"].numpy()[0]  # (H, N)
    want = np.zeros((4, 100))
    for t_ in range(16):  # k[t] = sum_{n + t < N} B[n] C[n + t]
        want[:, t_] = sum(B[:, n] * C[:, n + t_] for n in range(16 - t_))
    assert rel(h, want) < F64_FLOOR and not h[:, 16:].any()
    assert torch.equal(D, t["backbone.layers.2.mixer.ssm_k_D"])
    result = lcd("distill", path, "--order", "4", "-L", "200", "-o", tmp_path / "o.safetensors",
                 "--report",
                 tmp_path / "r.yaml")
    assert result.exit_code == 0, result.output
    report = yaml.safe_load((tmp_path / "r.yaml").read_text())
    assert [s["name"] for s in report["skipped"]] == [la.prefix for la in shift]
    assert [row["family"] for row in report["layers"]] == ["h3", "h3"]
    out = open_checkpoint(tmp_path / "o.safetensors")
    assert "backbone.layers.0.mixer.ssm_k_kernel.kernel.C" in out  # left alone


@pytest.mark.parametrize(("stored", "length"), [(100, 63), (100, 100), (100, 250), (1000, 1000),
                                                (0, 77)],
                         ids=["shorter", "attuned", "doubled", "long", "not-attuned"])
def test_s4_dplr_matches_dense_recurrence(write_ckpt, stored: int, length: int) -> None:
    """Cauchy + Woodbury on roots of unity (materializer) vs dense matrices (reference)."""
    t = make_example("s4-dplr", seed=3, dtype="fp64",
                     **(SMALL["s4-dplr"] | {"l_max": max(stored, 1)}))
    k = "s4_layers.1.layer.kernel"
    if stored == 0:  # C not converted to C~ yet: upstream attunes it to the first length
        t[f"{k}.l_kernel"] = torch.tensor(0)
    ckpt, layers = layers_of(write(write_ckpt, t), options={"length": length}, sets=EXP)
    h, D = materialize(ckpt, layers[1])
    want = naive_dplr(t, k, length)
    assert h.shape == (3, length) and rel(h, want) < 1e-12
    assert torch.equal(D, t["s4_layers.1.layer.D"].reshape(-1))


@pytest.mark.parametrize("stored", [100, 0], ids=["attuned", "not-attuned"])
def test_s4_dplr_rank_two_and_shared_copy(write_ckpt, stored: int) -> None:
    """Woodbury with a 2 x 2 capacitance matrix; one (A, B, P) copy shared by all heads."""
    t = make_example("s4-dplr", seed=6, dtype="fp64", **SMALL["s4-dplr"])
    k = "s4_layers.0.layer.kernel"
    g = torch.Generator().manual_seed(7)
    for key in ("A_real", "A_imag", "B", "P"):
        t[f"{k}.{key}"] = t[f"{k}.{key}"][..., :1, :, :] if key in ("B", "P") else t[f"{k}.{key}"][:1]
    t[f"{k}.P"] = torch.cat([t[f"{k}.P"], 0.3 * torch.randn(1, 1, 8, 2, generator=g,
                                                             dtype=torch.float64)])
    t[f"{k}.l_kernel"] = torch.tensor(stored)
    ckpt, layers = layers_of(write(write_ckpt, t), options={"length": 130}, sets=EXP)
    h, _ = materialize(ckpt, layers[0])
    assert rel(h, naive_dplr(t, k, 130)) < 1e-12


def test_s4_dplr_defaults_to_stored_length_and_reports_conditioning(write_ckpt) -> None:
    t = make_example("s4-dplr", seed=3, dtype="fp64", **SMALL["s4-dplr"])
    doc = yaml.safe_load(Path("configs/s4.yaml").read_text())
    doc["options"]["length"] = None
    ckpt = open_checkpoint(write(write_ckpt, t))
    cfg = parse_config(yaml.safe_dump(doc), "s4.yaml")
    from lcd_cli.families.layers import find_layers, layer_summary

    layer = find_layers(ckpt, cfg)[0]
    assert layer_summary(ckpt, layer)["length"] == 100  # l_kernel
    info = generator_info(ckpt, layer)
    assert info["source_state"] == "DPLR" and info["d_state"] == 16 and info["l_kernel"] == 100
    # Independent: numpy eig of each head's dt A; cond of unit-column eigenvectors.
    k = "s4_layers.0.layer.kernel"
    lam = -np.exp(t[f"{k}.A_real"].numpy()) - 1j * t[f"{k}.A_imag"].numpy()
    P = pairs(t[f"{k}.P"])[0]
    conds, orders = [], []
    for h in range(3):
        p = np.concatenate([P[h], P[h].conj()])
        a = np.diag(np.concatenate([lam[h], lam[h].conj()])) - np.outer(p, p.conj())
        w, v = np.linalg.eig(np.exp(t[f"{k}.inv_dt"][h, 0].item()) * a)
        conds.append(np.linalg.cond(v / np.linalg.norm(v, axis=0)))
        orders.append(int((np.abs(w.imag) <= 1e-9 * np.abs(w)).sum() + (w.imag > 1e-9 * np.abs(w)).sum()))
    assert info["eigvec_cond_max"] == pytest.approx(max(conds), rel=1e-6)
    assert info["eigvec_cond_median"] == pytest.approx(float(np.median(conds)), rel=1e-6)
    assert info["exact_order"] == max(orders) and 8 <= max(orders) <= 16


# ------------------------------------------------------------------ bad input


def _s4d(**change: torch.Tensor | None) -> dict:
    t = make_example("s4d", seed=0, dtype="fp64", **SMALL["s4d"])
    for key, value in change.items():
        full = f"s4_layers.0.kernel.{key}"
        if value is None:
            del t[full]
        else:
            t[full] = value
    return t


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"C": torch.zeros(4, 8)}, "C", "expected shape (H, N, 2)"),
    ({"C": torch.zeros(4, 7, 2)}, "log_A_real", "expected shape (H, N)"),
    ({"A_imag": None}, "A_imag", "missing"),
    ({"C": None}, "C", "missing"),
    ({"log_dt": torch.zeros(4, 1)}, "log_dt", "expected shape (H)"),
], ids=["C-without-pairs", "C-modes-differ", "missing-A_imag", "missing-C", "log_dt-2d"])
def test_s4d_bad_parameters(write_ckpt, change: dict, key: str, words: str) -> None:
    ckpt, layers = layers_of(write(write_ckpt, _s4d(**change)), family="s4d")
    with pytest.raises(LcdError) as e:
        materialize(ckpt, layers[0])
    assert e.value.key == f"s4_layers.0.kernel.{key}" and words in e.value.message
    assert e.value.file is not None


def _s4(variant: str, **change: torch.Tensor | None) -> dict:
    t = make_example(variant, seed=0, dtype="fp64", **SMALL[variant])
    for key, value in change.items():
        full = f"s4_layers.0.layer.kernel.{key}" if key != "D" else "s4_layers.0.layer.D"
        if value is None:
            del t[full]
        else:
            t[full] = value
    return t


@pytest.mark.parametrize(("variant", "change", "key", "words"), [
    ("s4-diag", {"C": torch.zeros(1, 4, 8)}, "C", "expected shape (C, H, N, 2)"),
    ("s4-diag", {"A_imag": None}, "A_imag", "missing"),
    ("s4-diag", {"B": torch.zeros(4, 8, 2)}, "B", "expected shape (1, S, N, 2)"),
    ("s4-diag", {"inv_dt": torch.zeros(4, 3)}, "inv_dt", "(H, 1) or (H, N)"),
    ("s4-diag", {"A_real": torch.zeros(3, 8), "A_imag": torch.zeros(3, 8),
                 "B": torch.zeros(1, 3, 8, 2)}, "A_real", "do not divide the 4 heads"),
    ("s4-diag", {"C": torch.zeros(2, 4, 8, 2)}, "C", "bidirectional"),
    ("s4-dplr", {"P": torch.zeros(1, 3, 7, 2)}, "P", "expected shape (R, S, N, 2)"),
    ("s4-dplr", {"l_kernel": torch.tensor(-4)}, "l_kernel", "non-negative integer"),
], ids=["C-without-pairs", "missing-A_imag", "B-without-leading-1", "inv_dt-shape",
        "copies-do-not-divide", "bidirectional", "P-shape", "l_kernel-negative"])
def test_s4_bad_parameters(write_ckpt, variant: str, change: dict, key: str, words: str) -> None:
    with pytest.raises(LcdError) as e:  # l_kernel is read while resolving the length
        ckpt, layers = layers_of(write(write_ckpt, _s4(variant, **change)), family="s4", sets=EXP)
        materialize(ckpt, layers[0])
    assert e.value.key == f"s4_layers.0.layer.kernel.{key}" and words in e.value.message


@pytest.mark.parametrize(("key", "value", "words"), [
    ("A_imag", None, "missing"),
    ("B", torch.zeros(4, 8), "expected shape (S, N, 2)"),
    ("C", torch.zeros(1, 3, 8, 2), "expected shape (C, H, N, 2)"),
], ids=["missing-A_imag", "B-without-pairs", "C-heads"])
def test_h3_bad_parameters(write_ckpt, key: str, value: torch.Tensor | None, words: str) -> None:
    t = make_example("h3", seed=0, dtype="fp64", **SMALL["h3"])
    full = f"backbone.layers.0.mixer.kernel.kernel.{key}"
    if value is None:
        del t[full]
    else:
        t[full] = value
    ckpt, layers = layers_of(write(write_ckpt, t), family="h3")
    with pytest.raises(LcdError) as e:
        materialize(ckpt, layers[0])
    assert e.value.key == full and words in e.value.message


@pytest.mark.parametrize(("name", "options", "words"), [
    ("s4", {"disc": "dss"}, "option 'disc' must be one of zoh, bilinear"),
    ("s4", {"dt_transform": "tanh"}, "option 'dt_transform' must be one of"),
    ("h3", {"real_type": "square"}, "option 'real_type' must be one of"),
    ("s4d", {"disc": "zoh"}, "has no option 'disc'"),
])
def test_bad_options(name: str, options: dict, words: str) -> None:
    doc = yaml.safe_load(Path(f"configs/{name}.yaml").read_text())
    doc["options"] = {**(doc.get("options") or {}), **options}
    with pytest.raises(LcdError) as e:
        parse_config(yaml.safe_dump(doc), f"{name}.yaml")
    assert words in e.value.message


def test_length_is_required_when_not_configured(write_ckpt) -> None:
    doc = yaml.safe_load(Path("configs/s4d.yaml").read_text())
    doc["options"]["length"] = None
    cfg = parse_config(yaml.safe_dump(doc), "s4d.yaml")
    ckpt = open_checkpoint(write(write_ckpt, _s4d()))
    from lcd_cli.families.layers import find_layers

    with pytest.raises(LcdError, match="length is not stored"):
        materialize(ckpt, find_layers(ckpt, cfg)[0])


# ------------------------------------------------------------------ detection and MOR


@pytest.mark.parametrize("name", list(SMALL))
def test_detected_by_exactly_its_configs(write_ckpt, name: str) -> None:
    ckpt = open_checkpoint(write_ckpt(make_example(name, seed=0, **SMALL[name])))
    assert [cfg.name for cfg, _ in select_configs(ckpt, sets=EXP)] == FAMILIES[name]


@pytest.mark.parametrize("name", list(SMALL))
def test_model_order_reduction_is_exact_at_source_order(write_ckpt, name: str) -> None:
    """N_src / 2 conjugate pairs are N_src / 2 modes of Re(sum R p^t) (residue 2 C dB); a DPLR
    matrix may have real eigenvalues, one mode each: exact_order counts them. Float64 fit."""
    ckpt, layers = layers_of(write_ckpt(make_example(name, seed=0, **SMALL[name])),
                             options={"length": 1000}, sets=EXP)
    layer = next(la for la in layers if la.config.distill)
    h, _ = materialize(ckpt, layer)
    order = generator_info(ckpt, layer)["exact_order"]
    assert order == 8 if name != "s4-dplr" else 8 <= order <= 16
    fit = fit_modal(h, order, float32=False)
    assert float(fit.rel_l2.max()) < 1e-9
    fewer = fit_modal(h, order - 1, float32=False, refine_iters=5)
    assert float(fewer.rel_l2.max()) > 1e-4  # one mode fewer is not exact


# ------------------------------------------------------------------ CLI end to end


@pytest.mark.parametrize("name", list(SMALL))
def test_cli_example_writes_the_upstream_layout(tmp_path: Path, name: str) -> None:
    made = lcd("example", name, "-o", tmp_path / "a.safetensors")
    assert made.exit_code == 0, made.output
    ckpt = open_checkpoint(tmp_path / "a.safetensors")
    found = select_configs(ckpt, sets=EXP)
    assert [cfg.name for cfg, _ in found] == FAMILIES[name]
    layer = found[0][1][0]
    assert layer.skip_key is not None and ckpt.info(layer.skip_key).shape[-1] == 32
    if name == "s4-dplr":
        assert ckpt.info(f"{layer.prefix}.l_kernel").dtype == "I64"
        assert ckpt.info(f"{layer.prefix}.P").shape == (1, 32, 32, 2)


@pytest.mark.parametrize("name", list(SMALL))
def test_cli_example_inspect_distill_verify(write_ckpt, tmp_path: Path, name: str) -> None:
    src = write_ckpt(make_example(name, seed=0, **SMALL[name]), name=f"{name}.safetensors")
    seen = lcd("inspect", src, "--json", "-L", "300", *EXP_ARGS.get(name, []))
    assert seen.exit_code == 0, seen.output
    doc = json.loads(seen.stdout)
    assert doc["families"] == FAMILIES[name]
    rows = [r for r in doc["layers"] if r["distill"]]
    assert len(rows) == 2 and all(r["length"] == 300 and r["generator_info"]["d_state"] == 16
                                  for r in rows)
    rep = tmp_path / "r.yaml"
    done = lcd("distill", src, "--order", "8", "-L", "300", "--report", rep,
               *EXP_ARGS.get(name, []))
    assert done.exit_code == 0, done.output
    report = yaml.safe_load(rep.read_text())
    for row in report["layers"]:
        assert row["order"] == 8 and row["floor"] <= row["rel_l2"]["median"] * (1 + 1e-9) + 1e-12
        assert row["generator_info"]["d_state"] == 16
        if name != "s4-dplr":  # 8 modes are the whole source system: float32 storage is the floor
            assert row["rel_l2"]["max"] < 1e-5
    out = src.with_name(f"{name}.lcd.safetensors")
    check = lcd("verify", out, "--reference", src, "--json")
    assert check.exit_code == 0, check.output
    verdict = json.loads(check.stdout)
    assert verdict["passed"] and len(verdict["layers"]) == 2


@pytest.mark.parametrize(("example", "family", "sizes"), [
    ("s4d", "s4d", SMALL["s4d"]),
    ("s4-diag", "s4", SMALL["s4-diag"]),
    ("h3", "h3", SMALL["h3"]),
    ("stripedhyena", "stripedhyena", {"d_model": 5, "n_blocks": 1, "modes": 3}),
    ("evo2", "evo2-li", {"d_model": 8, "groups": 4, "modes": 6, "heads": 2}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_source_modes_reproduce_the_kernel(tmp_path, example: str, family: str,
                                           sizes: dict) -> None:
    """Materializer.modes (the fitter's extra start for diagonal sources) is an exact modal
    realization of the materialized kernel (itself tested against naive references)."""
    path = tmp_path / "m.safetensors"
    write_example(make_example(example, seed=1, dtype="fp64", **sizes), path)
    ckpt = open_checkpoint(path)
    layers = [la for _, ls in select_configs(ckpt, family=family, options={"length": 301},
                                             sets=EXP if family == "s4" else None) for la in ls]
    assert layers
    for layer in layers:
        h, _ = materialize(ckpt, layer)  # (C, L)
        modes = MATERIALIZERS[layer.config.materializer].modes(LayerView(ckpt, layer),
                                                               layer.config.options)
        assert modes is not None
        k = modal_kernel(*modes, h.shape[1])  # (C, L)
        assert float((k - h).norm() / h.norm()) < F64_FLOOR


def test_dplr_and_explicit_sources_have_no_modes(tmp_path) -> None:
    """Non-diagonal generators return None (the fitter then uses its own starts only)."""
    path = tmp_path / "m.safetensors"
    write_example(make_example("s4-dplr", seed=1, dtype="fp64", **SMALL["s4-dplr"]), path)
    ckpt = open_checkpoint(path)
    layer = select_configs(ckpt, family="s4", sets=EXP)[0][1][0]
    assert MATERIALIZERS["s4"].modes(LayerView(ckpt, layer), layer.config.options) is None
