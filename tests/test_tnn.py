"""TNN kernels (causal and non-causal) against the formula, the ETSC baseline, bad input, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example, write_example
from lcd_cli.families.config import load_builtin, parse_config
from lcd_cli.families.kernels import MATERIALIZERS
from lcd_cli.families.layers import LayerView, find_layers
from lcd_cli.io.checkpoint import open_checkpoint
from lcd_cli.numerics.baselines import etsc_modes, fit_etsc
from lcd_cli.numerics.two_sided import two_sided_conv
from tests.conftest import lcd, rel

F64_FLOOR = 1e-12  # relative error allowed between float64 implementations
SMALL = {"embed_dim": 8, "n_layers": 1, "heads": 2, "rpe_dim": 6, "rpe_layers": 2}
PREFIX = "decoder.layers.0.token_mixer.toep"






def naive_rpe(t: dict[str, torch.Tensor], pos: float, act: str = "relu") -> np.ndarray:
    """RPE(pos) by loops: pos_proj, blocks (SimpleRMSNorm -> act -> Linear), out block."""
    def g(k: str) -> np.ndarray:
        return t[f"{PREFIX}.rpe.{k}"].double().numpy()

    def norm(x: np.ndarray) -> np.ndarray:
        ss = sum(v * v for v in x)
        return x / (math.sqrt(ss) / math.sqrt(len(x)) + 1e-8)

    def f(x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0) if act == "relu" else x / (1 + np.exp(-x))

    x = g("pos_proj.weight")[:, 0] * pos + g("pos_proj.bias")
    j = 0
    while f"{PREFIX}.rpe.layers.{j}.2.weight" in t:
        x = g(f"layers.{j}.2.weight") @ f(norm(x)) + g(f"layers.{j}.2.bias")
        j += 1
    return g("out.2.weight") @ f(norm(x)) + g("out.2.bias")


def naive_tnn(t: dict[str, torch.Tensor], L: int, par_type: int, decay: str, lam: float,
              sign: int) -> np.ndarray:
    """sign +1: h[t] = gamma^t RPE(p(t)), t < L; sign -1: k_rev[j] = gamma^(j+1) RPE(-p(j+1))."""
    raw = t[f"{PREFIX}.gamma"].double().numpy().reshape(-1)
    gamma = {"learned": lam + (1 - lam) / (1 + np.exp(-raw)), "fixed": raw,
             "none": np.ones_like(raw)}[decay]
    out = np.zeros((gamma.size, L))
    for j in range(L):
        lag = j if sign > 0 else j + 1
        p = {1: float(lag), 2: lag / (L - 1), 3: math.exp(lag / (L - 1))}[par_type]
        out[:, j] = gamma ** lag * naive_rpe(t, sign * p if par_type != 3 else p)
    return out


def _view(tmp_path: Path, tensors: dict[str, torch.Tensor], family: str = "tnn"
          ) -> tuple[object, LayerView]:
    path = write_example(tensors, tmp_path / "tnn.safetensors")[0]
    ckpt = open_checkpoint(path)
    layer = find_layers(ckpt, load_builtin(family))[0]
    return ckpt, LayerView(ckpt, layer)


@pytest.mark.parametrize("L", [63, 1000])
@pytest.mark.parametrize(("par_type", "decay"), [(1, "learned"), (2, "fixed"), (1, "none")])
def test_tnn_halves_match_formula(tmp_path: Path, L: int, par_type: int, decay: str) -> None:
    tensors = make_example("tnn", dtype="fp64", **SMALL)
    if decay == "fixed":  # use_decay stores the fixed gamma itself
        tensors[f"{PREFIX}.gamma"] = torch.full_like(tensors[f"{PREFIX}.gamma"], 0.98)
    ckpt, view = _view(tmp_path, tensors)
    opts = {**load_builtin("tnn").options, "par_type": par_type, "decay": decay, "length": L}
    mat = MATERIALIZERS["tnn"]
    assert rel(mat.kernel(view, opts), naive_tnn(tensors, L, par_type, decay, 0.99, 1)) < F64_FLOOR
    assert rel(mat.kernel_rev(view, opts),
               naive_tnn(tensors, L, par_type, decay, 0.99, -1)) < F64_FLOOR
    ckpt.close()


def test_tnn_exp_positions_causal_only(tmp_path: Path) -> None:
    tensors = make_example("tnn", dtype="fp64", **SMALL)
    ckpt, view = _view(tmp_path, tensors)
    opts = {**load_builtin("tnn").options, "par_type": 3, "length": 63}
    mat = MATERIALIZERS["tnn"]
    assert rel(mat.kernel(view, opts), naive_tnn(tensors, 63, 3, "learned", 0.99, 1)) < F64_FLOOR
    with pytest.raises(LcdError, match="par_type 3"):
        mat.kernel_rev(view, opts)
    ckpt.close()


def test_tnn_matches_upstream_toeplitz_layout(tmp_path: Path) -> None:
    """tno.forward_non_causal: a = [h0, h[1..n-1], h0, h[-(n-1)..-1]], FFT size 2n, first n."""
    n = 63
    tensors = make_example("tnn", dtype="fp64", **SMALL)
    ckpt, view = _view(tmp_path, tensors)
    opts = {**load_builtin("tnn-bidir").options, "length": n}
    k_fwd = MATERIALIZERS["tnn"].kernel(view, opts)  # (C, n)
    k_rev = MATERIALIZERS["tnn"].kernel_rev(view, opts)  # (C, n)
    a = torch.cat([k_fwd, k_fwd[:, :1], k_rev[:, : n - 1].flip(-1)], dim=-1)  # (C, 2n)
    u = torch.randn(2, k_fwd.shape[0], n, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    upstream = torch.fft.irfft(torch.fft.rfft(u, 2 * n) * torch.fft.rfft(a, 2 * n),
                               2 * n)[..., :n]
    assert rel(two_sided_conv(u, k_fwd, k_rev), upstream) < F64_FLOOR
    ckpt.close()


# ---- ETSC baseline ----------------------------------------------------------------------------


@pytest.mark.parametrize("L", [63, 1000])
def test_etsc_exact_with_all_modes(L: int) -> None:
    g = torch.Generator().manual_seed(L)
    h = torch.randn(3, L, generator=g, dtype=torch.float64)
    # Decay over the window by e^-3 .. e^-0.1: the residues scale like gamma^-t, so a smaller
    # gamma (or a longer L) amplifies roundoff (the construction's own conditioning).
    gamma = torch.exp(-torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64) / L)
    poles, residues = etsc_modes(h, gamma)
    assert poles.shape == (3, (L + 1) // 2)
    p, r = poles.numpy(), residues.numpy()
    naive = np.zeros((3, L))
    power = np.ones_like(p)
    for t in range(L):
        naive[:, t] = (r * power).sum(-1).real
        power = power * p
    assert rel(naive, h) < 1e-11
    np.testing.assert_allclose(np.abs(p), gamma[:, None].expand(3, p.shape[1]).numpy())
    full = fit_etsc(h, p.shape[1], gamma)
    assert full.order == p.shape[1] and float(full.rel_l2.max()) < 1e-10
    assert fit_etsc(h, 4, gamma).order == 4


# ---- bad input --------------------------------------------------------------------------------


def test_tnn_misshaped_gamma(tmp_path: Path) -> None:
    tensors = make_example("tnn", **SMALL)
    tensors[f"{PREFIX}.gamma"] = tensors[f"{PREFIX}.gamma"][:, :, :-1].clone()
    path = write_example(tensors, tmp_path / "bad.safetensors")[0]
    result = lcd("inspect", path, "--family", "tnn", "--set", "gamma=0.99")
    assert result.exit_code == 2
    assert f"{PREFIX}.gamma" in result.output and "heads * head_dim" in result.output


def test_tnn_missing_learned_gamma(tmp_path: Path) -> None:
    tensors = {k: v for k, v in make_example("tnn", **SMALL).items() if not k.endswith("gamma")}
    path = write_example(tensors, tmp_path / "bad.safetensors")[0]
    result = lcd("inspect", path, "--family", "tnn-bidir", "--set", "decay=learned", "--set",
                 "gamma=0.99")
    assert result.exit_code == 2  # without the flag no gamma is evidence of no decay
    assert "needs the stored gamma" in result.output


def test_tnn_misshaped_rpe(tmp_path: Path) -> None:
    tensors = make_example("tnn", **SMALL)
    key = f"{PREFIX}.rpe.layers.1.2.weight"
    tensors[key] = tensors[key][:, :-1].clone()
    path = write_example(tensors, tmp_path / "bad.safetensors")[0]
    result = lcd("distill", path, "--family", "tnn", "--order", "4", "--set", "gamma=0.99")
    assert result.exit_code == 2
    assert key in result.output


def test_tnn_bad_option() -> None:
    text = (Path(__file__).parents[1] / "configs" / "tnn.yaml").read_text()
    with pytest.raises(LcdError, match="option 'par_type' must be one of"):
        parse_config(text.replace("par_type: 1", "par_type: 4"), "tnn.yaml")


# ---- CLI --------------------------------------------------------------------------------------


def test_tnn_autodetect_reports_ambiguity(tmp_path: Path) -> None:
    path = write_example(make_example("tnn", **SMALL), tmp_path / "tnn.safetensors")[0]
    result = lcd("inspect", path)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "(tnn and tnn-bidir)" in text and "cannot tell the causal variant" in text


@pytest.mark.parametrize("family", ["tnn", "tnn-bidir"])
def test_cli_end_to_end(tmp_path: Path, family: str) -> None:
    src = write_example(make_example(family, **SMALL), tmp_path / "tnn.safetensors")[0]
    common = ["--family", family, "--length", "101", "--set", "gamma=0.99"]  # learned lambda
    result = lcd("inspect", src, "--json", *common)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["layers"][0]
    assert (row["channels"], row["length"]) == (24, 101)  # expand_ratio 3 * embed_dim 8
    assert ("halves" in row["compressibility"]) == (family == "tnn-bidir")
    out, rep = tmp_path / "out.safetensors", tmp_path / "out.report.yaml"
    result = lcd("distill", src, "--order", "16", "-o", out, "--report", rep, *common)
    assert result.exit_code == 0, result.output
    result = lcd("verify", out, "--reference", src, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] and doc["layers"][0]["length"] == 101
    assert ("halves" in doc["layers"][0]) == (family == "tnn-bidir")

