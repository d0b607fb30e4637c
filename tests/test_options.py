"""Kernel options come from the command line, the model's own config, tensor evidence or the
upstream default, each recorded; ambiguous options stop the run; layer structure is checked.

The seven layouts of the issue, each written in exactly that layout: lcd either gives the
upstream kernel (checked against a naive float64 reference written from the upstream formula
with the right option) or stops with a message naming the option and the flag.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example, write_example
from lcd_cli.families.config import parse_config
from lcd_cli.families.layers import (
    layer_summary,
    materialize,
    materialize_two_sided,
    select_configs,
)
from lcd_cli.families.model_config import parse_sets
from lcd_cli.io.checkpoint import open_checkpoint
from tests.conftest import lcd, rel

F64_FLOOR = 1e-12  # relative error allowed between float64 implementations
WRONG = 1e-2  # a wrong option moves the kernel by far more than this (the test can fail)
LENGTHS = [63, 1000]


def save(folder: Path, tensors: dict[str, torch.Tensor], name: str = "model.safetensors",
         config_json: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config_json is not None:
        (folder / "config.json").write_text(json.dumps(config_json))
    return write_example(tensors, folder / name)[0]


def layers_of(path: Path, **kw: object) -> tuple[object, list]:
    ckpt = open_checkpoint(path)
    return ckpt, [la for _, ls in select_configs(ckpt, **kw) for la in ls]


def rename(tensors: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    """Keys starting with ``old`` re-prefixed with ``new``; the others dropped."""
    return {new + k[len(old):]: v for k, v in tensors.items() if k.startswith(old)}


# ------------------------------------------------------------------ Hyena reference


def naive_hyena(t: dict[str, torch.Tensor], f: str, length: int, *, shift: float,
                modulate: bool) -> np.ndarray:
    """Upstream HyenaFilter.filter(L) by loops over positions: z = stored pos_emb.z, MLP
    Linear -> sin(freq x) ... -> Linear (no bias), then h[t] *= exp(-t_norm |delta|) + shift."""
    def g(k: str) -> np.ndarray:
        return t[f"{f}.{k}"].double().numpy()

    z, t_norm, deltas = g("pos_emb.z")[0], g("pos_emb.t")[0, :, 0], g("modulation.deltas")[0, 0]
    freq = g("implicit_filter.1.freq")[0]
    out = np.zeros((deltas.size, length))
    for step in range(length):
        a = z[step]
        for j in (0, 2, 4):
            a = np.sin(freq * (g(f"implicit_filter.{j}.weight") @ a + g(f"implicit_filter.{j}.bias")))
        h = g("implicit_filter.6.weight") @ a
        if modulate:
            h = h * np.array([math.exp(-t_norm[step] * abs(d)) + shift for d in deltas])
        out[:, step] = h
    return out


def hyena_layout(l_max: int) -> dict[str, torch.Tensor]:
    """The HyenaDNA -hf example re-keyed: ``backbone.layers.{i}.mixer.filter_fn.*`` (the
    standalone HyenaDNAModel.state_dict(), and the safari LM's keys)."""
    t = make_example("hyenadna", seed=4, dtype="fp64", d_model=6, n_layers=2, l_max=l_max)
    return rename(t, "hyena.backbone.", "backbone.")


F0, F1 = (f"backbone.layers.{i}.mixer.filter_fn" for i in (0, 1))


# ------------------------------------------------------------------ case 1: HyenaDNA standalone


def test_hyenadna_standalone_layout_without_config_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path, hyena_layout(203))
    with pytest.raises(LcdError) as e:
        layers_of(path)
    msg = e.value.message
    assert "hyena-safari and hyenadna-standalone" in msg and "--family" in msg
    assert "config.json" in msg
    res = lcd("distill", path, "--order", "4")
    assert res.exit_code == 2 and "--family" in res.output
    assert not (tmp_path / "model.lcd.safetensors").exists()


@pytest.mark.parametrize("length", LENGTHS)
def test_hyenadna_standalone_layout_with_its_config_json(tmp_path: Path, length: int) -> None:
    """LongSafari/hyenadna-*-seqlen config.json (top-level ``layer``) beside the weights."""
    t = hyena_layout(length)
    cfg = {"d_model": 6, "n_layer": 2, "layer": {"_name_": "hyena", "emb_dim": 5,
                                                 "filter_order": 64, "l_max": length,
                                                 "modulate": True, "w": 10}}
    ckpt, layers = layers_of(save(tmp_path, t, config_json=cfg))
    assert {la.config.name for la in layers} == {"hyenadna-standalone"}
    la = layers[0]
    assert la.config.options["shift"] == 0.05 and la.sources["shift"] == "default"
    assert la.sources["modulate"] == "config.json: layer.modulate true"
    h, D = materialize(ckpt, la)
    want = naive_hyena(t, F0, length, shift=0.05, modulate=True)
    assert h.shape == (6, length) and rel(h, want) < F64_FLOOR
    assert rel(naive_hyena(t, F0, length, shift=0.0, modulate=True), want) > WRONG
    assert torch.equal(D, t[f"{F0}.bias"])


def test_hyenadna_model_type_names_the_shift_and_family_works_without_config(tmp_path: Path
                                                                             ) -> None:
    t = hyena_layout(203)
    _, layers = layers_of(save(tmp_path / "a", t, config_json={"model_type": "hyenadna"}))
    assert layers[0].config.name == "hyenadna-standalone"
    assert layers[0].sources["shift"] == "config.json: model_type hyenadna"
    _, layers = layers_of(save(tmp_path / "c", t, config_json={"architectures": ["HyenaDNAModel"]}))
    assert layers[0].config.name == "hyenadna-standalone"  # an HF base-model state dict
    ckpt, layers = layers_of(save(tmp_path / "b", t), family="hyenadna-standalone")
    assert rel(materialize(ckpt, layers[1])[0],
               naive_hyena(t, F1, 203, shift=0.05, modulate=True)) < F64_FLOOR


def test_hyenadna_lightning_layout_is_claimed_by_both_hyena_configs(tmp_path: Path) -> None:
    """hyena-dna's weights.ckpt keys (model.backbone.layers.{i}.mixer.layer.filter_fn, the
    checkpoint_mixer variant): the same keys for safari and HyenaDNA, so refused without a
    model config; the standalone config.json decides."""
    t = rename(hyena_layout(203), "backbone.", "model.backbone.")
    t = {k.replace(".mixer.", ".mixer.layer."): v for k, v in t.items()}
    with pytest.raises(LcdError, match="hyena-safari and hyenadna-standalone"):
        layers_of(save(tmp_path / "a", t))
    _, layers = layers_of(save(tmp_path / "b", t, config_json={"layer": {"_name_": "hyena"}}))
    assert layers[0].prefix == "model.backbone.layers.0.mixer.layer.filter_fn"
    assert layers[0].config.options["shift"] == 0.05


# ------------------------------------------------------------------ case 2: safari modulate


HYENA_SMALL = {"model_name": "hyena-small", "model_config": {
    "_name_": "lm", "d_model": 6, "n_layer": 2,
    "layer": {"_name_": "hyena", "emb_dim": 5, "filter_order": 64, "l_max": 203,
              "modulate": False, "w": 14}}}  # configs/evals/hyena_small_150b.yaml, shrunk


def test_safari_hyena_without_modulate_stops(tmp_path: Path) -> None:
    path = save(tmp_path, hyena_layout(203))
    with pytest.raises(LcdError) as e:
        layers_of(path, family="hyena-safari")
    msg = e.value.message
    assert "option 'modulate'" in msg and "hyena_small_150b.yaml" in msg
    assert "--set modulate=true or --set modulate=false" in msg and "--model-config" in msg
    res = lcd("inspect", path, "--family", "hyena-safari", "--no-analysis")
    assert res.exit_code == 2 and "option 'modulate'" in res.output


@pytest.mark.parametrize("length", LENGTHS)
def test_safari_hyena_small_eval_config_turns_the_window_off(tmp_path: Path, length: int
                                                              ) -> None:
    t = hyena_layout(length)
    path = save(tmp_path, t)
    cfg = tmp_path / "hyena_small_150b.yaml"
    cfg.write_text(yaml.safe_dump(HYENA_SMALL))
    ckpt, layers = layers_of(path, model_config=cfg)  # detection: the config names safari
    assert {la.config.name for la in layers} == {"hyena-safari"}
    la = layers[0]
    assert la.config.options["modulate"] is False
    assert la.sources["modulate"] == ("model config hyena_small_150b.yaml: "
                                      "model_config.layer.modulate false")
    want = naive_hyena(t, F0, length, shift=0.0, modulate=False)
    assert rel(materialize(ckpt, la)[0], want) < F64_FLOOR
    assert rel(naive_hyena(t, F0, length, shift=0.0, modulate=True), want) > WRONG
    _, by_flag = layers_of(path, family="hyena-safari", sets=["modulate=false"])
    assert by_flag[0].sources["modulate"] == "cli (--set)"
    assert rel(materialize(ckpt, by_flag[0])[0], want) < F64_FLOOR


# ------------------------------------------------------------------ case 3: TNN fixed decay


TNN = {"embed_dim": 8, "n_layers": 1, "heads": 2, "rpe_dim": 6, "rpe_layers": 2}
TP = "decoder.layers.0.token_mixer.toep"


def naive_rpe(t: dict[str, torch.Tensor], pos: float) -> np.ndarray:
    """tnn-pytorch Rpe(pos) by loops: pos_proj, [SimpleRMSNorm, ReLU, Linear] blocks, out."""
    def g(k: str) -> np.ndarray:
        return t[f"{TP}.rpe.{k}"].double().numpy()

    def block(x: np.ndarray, w: str) -> np.ndarray:
        rms = math.sqrt(sum(v * v for v in x) / len(x))
        return g(f"{w}.weight") @ np.maximum(x / (rms + 1e-8), 0) + g(f"{w}.bias")

    x = g("pos_proj.weight")[:, 0] * pos + g("pos_proj.bias")
    for j in range(TNN["rpe_layers"]):
        x = block(x, f"layers.{j}.2")
    return block(x, "out.2")


def naive_fixed_decay(t: dict[str, torch.Tensor], length: int, sign: int) -> np.ndarray:
    """Tno(use_decay=True): h[t] = gamma^t RPE(t); reverse half k_rev[j] = gamma^(j+1) RPE(-(j+1))."""
    gamma = t[f"{TP}.gamma"].double().numpy().reshape(-1)
    out = np.zeros((gamma.size, length))
    for j in range(length):
        lag = j if sign > 0 else j + 1
        out[:, j] = gamma ** lag * naive_rpe(t, float(sign * lag))
    return out


def tnn_fixed(gamma: float | None = 0.99) -> dict[str, torch.Tensor]:
    t = make_example("tnn", seed=5, dtype="fp64", **TNN)
    if gamma is None:
        del t[f"{TP}.gamma"]
    else:
        t[f"{TP}.gamma"] = torch.full_like(t[f"{TP}.gamma"], gamma)  # ones(h, 1, d) * gamma
    return t


@pytest.mark.parametrize("length", LENGTHS)
def test_tnn_fixed_decay_from_tensor_evidence(tmp_path: Path, length: int) -> None:
    t = tnn_fixed()
    path = save(tmp_path, t)
    for family, sign in (("tnn", 1), ("tnn-bidir", -1)):
        ckpt, (la,) = layers_of(path, family=family, options={"length": length})
        assert la.config.options["decay"] == "fixed"
        assert la.sources["decay"].startswith("tensor evidence: gamma is one constant 0.99")
        assert la.sources["gamma"] == "default"  # not used by a fixed decay: no stop
        h = materialize(ckpt, la)[0] if sign > 0 else materialize_two_sided(ckpt, la)[1]
        want = naive_fixed_decay(t, length, sign)
        assert h.shape == want.shape == (24, length) and rel(h, want) < F64_FLOOR


def test_tnn_decay_evidence_learned_and_none(tmp_path: Path) -> None:
    path = save(tmp_path / "a", make_example("tnn", seed=5, dtype="fp64", **TNN))
    with pytest.raises(LcdError) as e:  # learned decay: lambda 0.99 or 0.999 upstream
        layers_of(path, family="tnn")
    assert "option 'gamma'" in e.value.message and "--set gamma=0.99 or --set gamma=0.999" in \
        e.value.message
    _, (la,) = layers_of(path, family="tnn", sets={"gamma": 0.999})
    assert la.config.options["decay"] == "learned" and "gamma varies" in la.sources["decay"]
    _, (la,) = layers_of(save(tmp_path / "b", tnn_fixed(None)), family="tnn")
    assert la.config.options["decay"] == "none" and "no gamma stored" in la.sources["decay"]
    cfg = {"causal": True, "use_decay": False, "use_multi_decay": True, "gamma": 0.999}
    _, (la,) = layers_of(save(tmp_path / "c", make_example("tnn", seed=5, **TNN),
                              config_json=cfg))  # fairseq args: causal names tnn
    assert la.config.name == "tnn" and la.sources["gamma"] == "config.json: gamma 0.999"
    assert la.sources["decay"] == "config.json: use_multi_decay true"


# ------------------------------------------------------------------ case 4: S4 softplus


def naive_s4_dplr_softplus(t: dict[str, torch.Tensor], k: str, length: int) -> np.ndarray:
    """Dense 2N-state SSMKernelDPLR, one (A, B, P) copy (n_ssm 1), dt = softplus(inv_dt),
    bilinear, C not yet converted (l_kernel 0): x_t = dA x_{t-1} + dB u_t, y = Re(c^T x_t)."""
    def pairs(x: torch.Tensor) -> np.ndarray:
        x = x.double().numpy()
        return x[..., 0] + 1j * x[..., 1]

    dt = np.log1p(np.exp(t[f"{k}.inv_dt"].double().numpy()))[:, 0]  # (H,)
    lam = -np.exp(t[f"{k}.A_real"].double().numpy()[0]) - 1j * t[f"{k}.A_imag"].double().numpy()[0]
    P, B, C = pairs(t[f"{k}.P"])[0, 0], pairs(t[f"{k}.B"])[0, 0], pairs(t[f"{k}.C"])
    n = lam.size
    p = np.concatenate([P, P.conj()])
    a = np.diag(np.concatenate([lam, lam.conj()])) - np.outer(p, p.conj())
    out = np.zeros((C.shape[1], length))
    for h in range(C.shape[1]):
        m = dt[h] * a
        inv = np.linalg.inv(np.eye(2 * n) - m / 2)
        dA, dB = inv @ (np.eye(2 * n) + m / 2), inv @ (dt[h] * np.concatenate([B, B.conj()]))
        c = np.concatenate([C[0, h], C[0, h].conj()])
        x = np.zeros(2 * n, dtype=complex)
        for step in range(length):
            x = dA @ x + (dB if step == 0 else 0)
            out[h, step] = (c @ x).real
    return out


def s4_softplus() -> dict[str, torch.Tensor]:
    """An S4 DPLR layer as the state-spaces training config makes it: mode nplr, n_ssm 1,
    dt_transform softplus (inv_dt = softplus^-1(dt)), C stored before its first forward."""
    t = make_example("s4-dplr", seed=3, dtype="fp64", d_model=3, n_layers=1, d_state=16,
                     l_max=100)
    k = "s4_layers.0.layer.kernel"
    for key in ("A_real", "A_imag"):
        t[f"{k}.{key}"] = t[f"{k}.{key}"][:1].clone()
    for key in ("B", "P"):
        t[f"{k}.{key}"] = t[f"{k}.{key}"][..., :1, :, :].clone()
    dt = torch.exp(t[f"{k}.inv_dt"])  # (H, 1)
    t[f"{k}.inv_dt"] = torch.log(torch.expm1(dt))
    t[f"{k}.l_kernel"] = torch.tensor(0)
    return t


S4_TRAIN = {"model": {"_name_": "model", "layer": {
    "_name_": "s4", "mode": "nplr", "n_ssm": 1, "dt_transform": "softplus",
    "l_max": "${oc.select:dataset.__l_max,null}"}}}  # configs/model/layer/s4.yaml


@pytest.mark.parametrize("length", LENGTHS)
def test_s4_trained_with_the_repo_config_uses_softplus(tmp_path: Path, length: int) -> None:
    t = s4_softplus()
    k = "s4_layers.0.layer.kernel"
    path = save(tmp_path, t)
    cfg = tmp_path / "config.yaml"  # .hydra/config.yaml of the run
    cfg.write_text(yaml.safe_dump(S4_TRAIN | {"dataset": {"__l_max": length}}))
    ckpt, (la,) = layers_of(path, model_config=cfg)
    assert la.sources["dt_transform"] == "model config config.yaml: model.layer.dt_transform softplus"
    assert la.sources["length"] == f"model config config.yaml: dataset.__l_max {length}"
    want = naive_s4_dplr_softplus(t, k, length)
    h = materialize(ckpt, la)[0]
    assert h.shape == (3, length) and rel(h, want) < 1e-11
    _, (exp,) = layers_of(path, sets=["dt_transform=exp"], options={"length": length})
    assert rel(materialize(ckpt, exp)[0], want) > WRONG  # the old default is another kernel


def test_s4_without_dt_transform_stops_before_fitting(tmp_path: Path) -> None:
    path = save(tmp_path, s4_softplus())
    res = lcd("distill", path, "--order", "4")
    assert res.exit_code == 2, res.output
    assert "option 'dt_transform'" in res.output and "--set dt_transform=softplus" in res.output
    assert not (tmp_path / "model.lcd.safetensors").exists()


def test_bad_model_config_value_names_the_file_and_key(tmp_path: Path) -> None:
    path = save(tmp_path, s4_softplus())
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"layer": {"dt_transform": "tanh"}}}))
    with pytest.raises(LcdError) as e:
        layers_of(path, model_config=cfg)
    assert "train.yaml" in e.value.message and "model.layer.dt_transform" in e.value.message
    assert "must be one of" in e.value.message


# ------------------------------------------------------------------ case 5: lengths not stored


@pytest.mark.parametrize(("example", "flags"), [
    ("s4d", ()), ("s4-diag", ("--set", "dt_transform=exp")),
    ("tnn", ("--family", "tnn", "--set", "gamma=0.99"))], ids=["s4d", "s4-diag", "tnn"])
def test_inspect_says_a_length_is_a_default(tmp_path: Path, example: str, flags: tuple) -> None:
    path = save(tmp_path, make_example(example, seed=0, **({"d_model": 4, "d_state": 16}
                                                            if example != "tnn" else TNN)))
    res = lcd("inspect", path, "--no-analysis", *flags)
    assert res.exit_code == 0, res.output
    default = 512 if example == "tnn" else 1024
    assert f"length={default} (default, not stored: pass --length)" in res.output
    doc = json.loads(lcd("inspect", path, "--no-analysis", "--json", "-L", "77", *flags).stdout)
    row = doc["layers"][0]
    assert row["length"] == 77 and row["options"]["length"] == 77
    assert row["option_sources"]["length"] == "cli (--length)"


def test_s4_dplr_length_is_its_l_kernel(tmp_path: Path) -> None:
    path = save(tmp_path, make_example("s4-dplr", seed=0, d_model=3, n_layers=1, d_state=16,
                                       l_max=100))
    ckpt, (la,) = layers_of(path, sets=["dt_transform=exp"])
    row = layer_summary(ckpt, la)
    assert row["length"] == 100 and row["option_sources"]["length"].startswith(
        "tensor evidence: l_kernel 100")


# ------------------------------------------------------------------ case 6: single-layer files


def naive_s4_diag(t: dict[str, torch.Tensor], k: str, length: int) -> np.ndarray:
    """SSMKernelDiag, exp transforms, ZOH: K[h, l] = 2 Re sum_n C B (e^{dt A} - 1)/A e^{dt A l}."""
    def pairs(x: torch.Tensor) -> np.ndarray:
        x = x.double().numpy()
        return x[..., 0] + 1j * x[..., 1]

    dt = np.exp(t[f"{k}.inv_dt"].double().numpy())[:, 0]
    A = -np.exp(t[f"{k}.A_real"].double().numpy()) - 1j * t[f"{k}.A_imag"].double().numpy()
    B, C = pairs(t[f"{k}.B"])[0], pairs(t[f"{k}.C"])[0]
    out = np.zeros((C.shape[0], length))
    for h in range(C.shape[0]):
        for n in range(A.shape[1]):
            a = A[h % A.shape[0], n]
            da, db = np.exp(dt[h] * a), (np.exp(dt[h] * a) - 1) / a
            x = 0j
            for step in range(length):
                x = da * x + (db * B[h % B.shape[0], n] if step == 0 else 0)
                out[h, step] += 2 * (C[h, n] * x).real
    return out


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(("strip", "prefix", "skip"), [
    ("s4_layers.0.layer.", "kernel", "D"), ("s4_layers.0.", "layer.kernel", "layer.D")],
    ids=["FFTConv", "S4Block"])
def test_bare_s4_module_state_dict(tmp_path: Path, strip: str, prefix: str, skip: str,
                                   length: int) -> None:
    t = make_example("s4-diag", seed=2, dtype="fp64", d_model=4, n_layers=1, d_state=16)
    bare = rename(t, strip, "")
    ckpt, (la,) = layers_of(save(tmp_path, bare), family="s4", sets=["dt_transform=exp"],
                            options={"length": length})
    assert (la.prefix, la.skip_key) == (prefix, skip)
    h, D = materialize(ckpt, la)
    assert rel(h, naive_s4_diag(bare, prefix, length)) < F64_FLOOR
    assert torch.equal(D, bare[skip].reshape(-1))
    _, detected = layers_of(ckpt.source, sets=["dt_transform=exp"])  # found without --family
    assert [la.prefix for la in detected] == [prefix]


def test_bare_s4d_module_and_hyena_filter_distill_and_verify(tmp_path: Path) -> None:
    s4d = rename(make_example("s4d", seed=1, d_model=4, n_layers=1, d_state=16),
                 "s4_layers.0.", "")
    _, (la,) = layers_of(save(tmp_path / "s4d", s4d))
    assert (la.prefix, la.skip_key, la.config.name) == ("kernel", "D", "s4d")
    t = make_example("hyenadna", seed=1, d_model=6, n_layers=1, l_max=203)
    bare = rename(t, "hyena.backbone.layers.0.mixer.filter_fn.", "")  # HyenaFilter.state_dict()
    path = save(tmp_path / "hyena", bare)
    _, (la,) = layers_of(path, family="hyenadna-standalone")
    assert (la.prefix, la.skip_key) == ("", "bias")
    res = lcd("distill", path, "--order", "4", "--family", "hyenadna-standalone")
    assert res.exit_code == 0, res.output
    out = open_checkpoint(path.with_name("model.lcd.safetensors"))
    assert "ssm.poles" in out and "ssm.residues" in out and "bias" in out
    assert "implicit_filter.0.weight" not in out
    check = lcd("verify", out.source, "--reference", path, "--tol", "0.5", "--json")
    assert check.exit_code == 0, check.output  # order 4 on this filter: ~0.15 output error
    assert [row["name"] for row in json.loads(check.stdout)["layers"]] == [""]


# ------------------------------------------------------------------ case 7: structure


def test_missing_middle_mlp_layer_is_an_error(tmp_path: Path) -> None:
    t = make_example("hyenadna", seed=0, d_model=6, n_layers=2, l_max=203)
    f = "hyena.backbone.layers.1.mixer.filter_fn"
    del t[f"{f}.implicit_filter.2.weight"]
    path = save(tmp_path, t)
    with pytest.raises(LcdError) as e:
        layers_of(path)
    msg = e.value.message
    assert f"{f}.implicit_filter.2.weight missing" in msg
    assert f"{f}.implicit_filter.2.bias" in msg and "belong(s) to no layer" in msg
    res = lcd("distill", path, "--order", "4")
    assert res.exit_code == 2 and "implicit_filter.2.bias" in res.output
    assert not (tmp_path / "model.lcd.safetensors").exists()


@pytest.mark.parametrize(("key", "words"), [
    ("hyena.backbone.layers.0.mixer.filter_fn.extra", "is under the layer but not part"),
    ("hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.7.freq", "belong(s) to no layer"),
    ("hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.alpha", "not a Linear weight"),
], ids=["orphan-key", "freq-after-the-last-linear", "unknown-mlp-key"])
def test_orphan_keys_are_named(tmp_path: Path, key: str, words: str) -> None:
    t = make_example("hyenadna", seed=0, d_model=6, n_layers=1, l_max=203) | {
        key: torch.zeros(1, 64)}
    with pytest.raises(LcdError) as e:
        layers_of(save(tmp_path, t))
    assert key in e.value.message and words in e.value.message


def test_tnn_rpe_blocks_must_be_contiguous(tmp_path: Path) -> None:
    t = make_example("tnn", seed=0, **(TNN | {"rpe_layers": 3}))
    del t[f"{TP}.rpe.layers.1.2.weight"]
    with pytest.raises(LcdError) as e:
        layers_of(save(tmp_path, t), family="tnn", sets={"gamma": 0.99})
    assert "[1] are missing" in e.value.message and f"{TP}.rpe.layers.1.2.bias" in e.value.message


# ------------------------------------------------------------------ flags and configs


@pytest.mark.parametrize(("items", "words"), [
    (["decay"], "is not NAME=VALUE"),
    (["decay=[1, 2]"], "must be a scalar"),
    (["decay=fixed", "decay=none"], "given twice"),
], ids=["no-value", "not-scalar", "twice"])
def test_set_items_are_checked(items: list[str], words: str) -> None:
    with pytest.raises(LcdError, match=words.replace("[", r"\[")):
        parse_sets(items)


def test_set_values_are_yaml_scalars_and_checked_against_the_configs(tmp_path: Path) -> None:
    assert parse_sets(["modulate=false", "shift=0.05", "length=null", "disc=zoh"]) == {
        "modulate": False, "shift": 0.05, "length": None, "disc": "zoh"}
    path = save(tmp_path, make_example("tnn", seed=0, **TNN))
    with pytest.raises(LcdError, match="--set decayy: no family config in use has this option"):
        layers_of(path, family="tnn", sets=["decayy=fixed"])
    with pytest.raises(LcdError, match="option 'decay' must be one of"):
        layers_of(path, family="tnn", sets=["decay=sometimes"])
    res = lcd("inspect", path, "--family", "tnn", "--set", "gamma=high", "--no-analysis")
    assert res.exit_code == 2 and "option 'gamma' must be float/int" in res.output


def test_dry_run_and_report_show_every_option_with_its_source(tmp_path: Path) -> None:
    path = save(tmp_path, tnn_fixed())
    plan = lcd("distill", path, "--order", "4", "--family", "tnn", "-L", "90", "--dry-run")
    assert plan.exit_code == 0, plan.output
    assert "options: par_type=1 (default), decay=fixed (tensor evidence: gamma is one constant" \
        in plan.output and "length=90 (cli (--length))" in plan.output
    rep = tmp_path / "r.yaml"
    done = lcd("distill", path, "--order", "4", "--family", "tnn", "-L", "90", "--report", rep)
    assert done.exit_code == 0, done.output
    report = yaml.safe_load(rep.read_text())
    opts = report["layer_options"][TP]
    assert opts["options"]["decay"] == "fixed" and opts["option_sources"]["length"] == \
        "cli (--length)"
    check = lcd("verify", path.with_name("model.lcd.safetensors"), "--reference", path)
    assert check.exit_code == 0, check.output  # the resolved options travel with the output


BOMB = """name: bomb
family: explicit
layer: 'layers\\.(?P<layer>\\d+)\\.kernel'
required: [kernel]
generator: [kernel]
materializer: explicit
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
options:
  squash_lambda: *c
"""


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LcdError) as e:
        parse_config(BOMB, "bomb.yaml")
    assert "bomb.yaml" in e.value.message and "alias '*a' refused" in e.value.message
    path = save(tmp_path, s4_softplus())
    cfg = tmp_path / "train.yaml"
    cfg.write_text("x: &x {dt_transform: softplus}\nmodel: {layer: *x}\n")
    with pytest.raises(LcdError, match=r"train\.yaml.*alias"):
        layers_of(path, model_config=cfg)


def test_oversized_and_broken_model_configs(tmp_path: Path) -> None:
    path = save(tmp_path, s4_softplus())
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "y" * (5 * 1024 * 1024) + "\n")
    with pytest.raises(LcdError, match=r"big\.yaml.*over the 4 MB limit"):
        layers_of(path, model_config=big)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LcdError, match=r"config\.json.*not valid JSON"):
        layers_of(path)
    with pytest.raises(LcdError, match="no such model config"):
        layers_of(path, model_config=tmp_path / "missing.yaml")
