"""Evo 2 / StripedHyena 2: Hyena-LI (real modal), Hyena-MR and Hyena-SE (grouped taps) against
naive references of the upstream formulas and operators; detection by shape; bad input; the
mixed, sharded example end to end through the CLI with byte-identical pass-through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example, write_example
from lcd_cli.families.config import parse_config
from lcd_cli.families.layers import layer_summary, materialize, select_configs
from lcd_cli.families.spec import shape_matches
from lcd_cli.io.checkpoint import open_checkpoint
from tests.conftest import lcd, rel

F64_FLOOR = 1e-12  # relative error allowed between float64 implementations
# Small Evo 2: C = 12 channels in G = 4 groups (3 channels per row), 7 blocks SE MR LI ATT SE MR LI.
SIZES = {"d_model": 12, "groups": 4, "heads": 2}
KINDS = {"evo2-se": ["blocks.0.filter", "blocks.4.filter"],
         "evo2-mr": ["blocks.1.filter", "blocks.5.filter"],
         "evo2-li": ["blocks.2.filter", "blocks.6.filter"]}






def layers_by_prefix(path: Path, length: int | None = None) -> tuple[object, dict]:
    ckpt = open_checkpoint(path)
    found = select_configs(ckpt, options={"length": length} if length else None)
    return ckpt, {la.prefix: la for _, ls in found for la in ls}


def naive_real_modal(log_poles: np.ndarray, residues: np.ndarray, channels: int, length: int
                     ) -> np.ndarray:
    """Impulse response of vortex's step_iir recurrence, step by step: s_t = exp(lp) s_{t-1} +
    u_t, y_t = sum_n R s_t, u = delta; channel c uses row c // (C / G)."""
    rows = log_poles.shape[0]
    p = np.exp(log_poles.reshape(rows, -1))  # (G, N)
    r = residues.reshape(rows, -1)  # (G, N)
    out = np.zeros((channels, length))
    for c in range(channels):
        g = c // (channels // rows)
        state = np.zeros(p.shape[1])
        for t in range(length):
            state = p[g] * state + (1.0 if t == 0 else 0.0)
            out[c, t] = float(np.dot(r[g], state))
    return out


def naive_taps(w: np.ndarray, channels: int, flip: bool) -> np.ndarray:
    """h[c, tau] = w[c // (C/G), tau] (convolution) or w[c // (C/G), K-1-tau] (conv1d)."""
    rows, taps = w.shape[0], w.shape[-1]
    out = np.zeros((channels, taps))
    for c in range(channels):
        for tau in range(taps):
            out[c, tau] = w[c // (channels // rows), 0, taps - 1 - tau if flip else tau]
    return out


def causal_conv_loop(h: np.ndarray, u: np.ndarray) -> np.ndarray:
    """y[c, t] = sum_{tau <= t} h[c, tau] u[c, t - tau], per-tap loop."""
    y = np.zeros_like(u)
    for tau in range(min(h.shape[1], u.shape[1])):
        y[:, tau:] += h[:, tau : tau + 1] * u[:, : u.shape[1] - tau]
    return y


@pytest.mark.parametrize("length", [63, 1000])
def test_li_matches_recurrence(write_ckpt, length: int) -> None:
    tensors = make_example("evo2", seed=2, dtype="fp64", **SIZES)
    ckpt, layers = layers_by_prefix(write_ckpt(tensors), length)
    for prefix in KINDS["evo2-li"]:
        h, D = materialize(ckpt, layers[prefix])
        want = naive_real_modal(tensors[f"{prefix}.log_poles"].numpy(),
                                tensors[f"{prefix}.residues"].numpy(), 12, length)
        assert h.shape == want.shape == (12, length)
        assert rel(h, want) < F64_FLOOR
        assert torch.equal(D, tensors[f"{prefix}.D"])


def test_li_grouped_rows_and_odd_order(write_ckpt) -> None:
    """G = 3 rows of N = 5 modes shared by C = 6 channels (row c // 2)."""
    g = torch.Generator().manual_seed(4)
    f = "blocks.0.filter"
    tensors = {f"{f}.log_poles": -torch.rand(3, 5, 1, generator=g, dtype=torch.float64) * 0.2,
               f"{f}.residues": torch.randn(3, 5, generator=g, dtype=torch.float64),
               f"{f}.D": torch.randn(6, generator=g, dtype=torch.float64)}
    ckpt, layers = layers_by_prefix(write_ckpt(tensors), 157)
    h, _ = materialize(ckpt, layers[f])
    want = naive_real_modal(tensors[f"{f}.log_poles"].numpy(), tensors[f"{f}.residues"].numpy(),
                            6, 157)
    assert rel(h, want) < F64_FLOOR
    assert torch.equal(h[0], h[1]) and not torch.equal(h[1], h[2])


@pytest.mark.parametrize("length", [63, 1000])
def test_mr_is_a_convolution_as_vortex_applies_it(write_ckpt, length: int) -> None:
    """MR taps h (G, 1, 128) against vortex's fftconv_func path (FFT convolution, no flip)."""
    tensors = make_example("evo2", seed=5, dtype="fp64", **SIZES)
    ckpt, layers = layers_by_prefix(write_ckpt(tensors))
    u = np.random.default_rng(0).standard_normal((12, length))
    for prefix in KINDS["evo2-mr"]:
        h, D = materialize(ckpt, layers[prefix])
        w = tensors[f"{prefix}.h"].numpy()  # (G, 1, K)
        assert rel(h, naive_taps(w, 12, flip=False)) < F64_FLOOR
        weight = np.repeat(w[:, 0, :length], 3, axis=0)  # (C, min(K, T)), as repeat_interleave
        n = 2 * length
        upstream = np.fft.irfft(np.fft.rfft(u, n) * np.fft.rfft(weight, n), n)[:, :length]
        assert rel(causal_conv_loop(h.numpy(), u), upstream) < F64_FLOOR
        assert torch.equal(D, tensors[f"{prefix}.D"])


@pytest.mark.parametrize("length", [63, 1000])
def test_se_is_a_cross_correlation_as_vortex_applies_it(write_ckpt, length: int) -> None:
    """SE taps h (G, 1, 7) against F.conv1d(padding=6, groups=C) and its definition by loops:
    y[t] = sum_k w[k] u[t + k - 6], so the impulse response is w[6 - tau]."""
    tensors = make_example("evo2", seed=6, dtype="fp64", **SIZES)
    ckpt, layers = layers_by_prefix(write_ckpt(tensors))
    u = np.random.default_rng(1).standard_normal((12, length))
    for prefix in KINDS["evo2-se"]:
        h, D = materialize(ckpt, layers[prefix])
        assert D is None and h.shape == (12, 7)
        w = tensors[f"{prefix}.h"].numpy()  # (G, 1, 7)
        assert rel(h, naive_taps(w, 12, flip=True)) < F64_FLOOR
        by_definition = np.zeros_like(u)
        for c in range(12):
            for t in range(length):
                for k in range(7):
                    if 0 <= t + k - 6 < length:
                        by_definition[c, t] += w[c // 3, 0, k] * u[c, t + k - 6]
        weight = torch.from_numpy(w).repeat_interleave(3, dim=0)  # (C, 1, 7)
        upstream = F.conv1d(torch.from_numpy(u)[None], weight, padding=6, groups=12)[0, :, :length]
        assert rel(upstream.numpy(), by_definition) < F64_FLOOR
        assert rel(causal_conv_loop(h.numpy(), u), by_definition) < F64_FLOOR


def test_se_channels_from_featurizer_conv(write_ckpt) -> None:
    """Hyena-SE has no D: C comes from short_filter_weight (3C, 1, 3); without it, C = G."""
    f = "blocks.0.filter"
    tensors = {f"{f}.h": torch.randn(2, 1, 7, dtype=torch.float64),
               f"{f}.short_filter_weight": torch.randn(18, 1, 3, dtype=torch.float64)}
    ckpt, layers = layers_by_prefix(write_ckpt(tensors))
    h, _ = materialize(ckpt, layers[f])
    assert rel(h, naive_taps(tensors[f"{f}.h"].numpy(), 6, flip=True)) < F64_FLOOR
    del tensors[f"{f}.short_filter_weight"]
    ckpt, layers = layers_by_prefix(write_ckpt(tensors, name="no-featurizer.safetensors"))
    assert layer_summary(ckpt, layers[f])["channels"] == 2
    tensors[f"{f}.short_filter_weight"] = torch.randn(15, 1, 3, dtype=torch.float64)  # C = 5
    ckpt, layers = layers_by_prefix(write_ckpt(tensors, name="odd.safetensors"))
    with pytest.raises(LcdError, match="2 filter rows do not divide the 5 channels") as e:
        layer_summary(ckpt, layers[f])
    assert e.value.key == f"{f}.h" and f"{f}.short_filter_weight" in e.value.message


def test_mr_length_truncates_and_clamps(write_ckpt) -> None:
    """--length below 128 takes the first taps; above it keeps all 128 (the FIR is zero after)."""
    tensors = make_example("evo2", seed=1, dtype="fp64", **SIZES)
    path = write_ckpt(tensors)
    prefix = KINDS["evo2-mr"][0]
    for length, want in ((50, 50), (128, 128), (4096, 128)):
        ckpt, layers = layers_by_prefix(path, length)
        h, _ = materialize(ckpt, layers[prefix])
        assert h.shape == (12, want)
        assert rel(h, naive_taps(tensors[f"{prefix}.h"].numpy(), 12, False)[:, :want]) < F64_FLOOR


def test_detection_by_shape_and_no_clash(write_ckpt) -> None:
    ckpt = open_checkpoint(write_ckpt(make_example("evo2", **SIZES)))
    found = {cfg.name: [la.prefix for la in ls] for cfg, ls in select_configs(ckpt)}
    assert found == KINDS  # attention (blocks.3) is no layer; stripedhyena claims nothing
    ckpt = open_checkpoint(write_ckpt("stripedhyena", name="sh.safetensors"))
    assert [cfg.name for cfg, _ in select_configs(ckpt)] == ["stripedhyena"]


@pytest.mark.parametrize(("taps", "config"), [(127, "evo2-se"), (128, "evo2-mr"), (7, "evo2-se"),
                                              (300, "evo2-mr")])
def test_mr_se_boundary_follows_vortex(write_ckpt, taps: int, config: str) -> None:
    """vortex: K >= 128 is Hyena-MR (FFT convolution + D), K < 128 Hyena-SE (conv1d)."""
    f = "blocks.3.filter"
    tensors = {f"{f}.h": torch.randn(2, 1, taps, dtype=torch.float64)}
    if taps >= 128:  # vortex: D = None below 128 taps, so an SE filter stores none
        tensors[f"{f}.D"] = torch.randn(4, dtype=torch.float64)
    found = select_configs(open_checkpoint(write_ckpt(tensors)))
    assert [(cfg.name, [la.prefix for la in ls]) for cfg, ls in found] == [(config, [f])]


def test_shape_matches_and_config_validation() -> None:
    spec = (None, 1, (128, None))
    assert shape_matches((4, 1, 128), spec) and shape_matches((4, 1, 9000), spec)
    assert not shape_matches((4, 1, 127), spec) and not shape_matches((4, 2, 128), spec)
    assert not shape_matches((4, 128), spec) and not shape_matches((4, 1, 128, 1), spec)
    assert shape_matches((3,), ((1, 3),)) and not shape_matches((4,), ((1, 3),))
    base = ("name: x\nfamily: explicit\nlayer: 'blocks\\.(?P<layer>\\d+)\\.filter'\n"
            "required: [h]\ngenerator: [h]\nmaterializer: grouped-taps\n")
    cfg = parse_config(base + "match_shapes: {h: [null, 1, [128, null]]}\n", "ok.yaml")
    assert cfg.match_shapes == {"h": spec}
    with pytest.raises(LcdError) as e:
        parse_config(base + "match_shapes: {h: [x, [5, 2], -1], D: []}\n"
                     "options: {orientation: sideways}\n", "bad.yaml")
    for needle in ("bad.yaml", "match_shapes['h'][0]", "match_shapes['h'][1]",
                   "match_shapes['h'][2]", "match_shapes['D'] must be a non-empty list",
                   "'orientation' must be one of convolution, cross-correlation"):
        assert needle in e.value.message, needle
    with pytest.raises(LcdError, match="field 'match_shapes' must be dict"):
        parse_config(base + "match_shapes: [1]\n", "list.yaml")


def _bad(write_ckpt, key: str, value: torch.Tensor, config: str, prefix: str,
         **also: torch.Tensor) -> LcdError:
    tensors = make_example("evo2", dtype="fp64", **SIZES)
    tensors |= {f"{prefix}.{key}": value} | {f"{prefix}.{k}": v for k, v in also.items()}
    ckpt = open_checkpoint(write_ckpt(tensors, name=f"bad-{key}-{len(value.shape)}.safetensors"))
    layer, = [la for cfg, ls in select_configs(ckpt, family=config, options={"length": 64})
              for la in ls if la.prefix == prefix]
    with pytest.raises(LcdError) as e:
        layer_summary(ckpt, layer)
    with pytest.raises(LcdError):
        materialize(ckpt, layer)
    assert e.value.key == f"{prefix}.{key}"
    assert str(ckpt.source) in e.value.message
    return e.value


@pytest.mark.parametrize(("key", "shape", "reason"), [
    ("log_poles", (12, 16, 2), "expected real log_poles of shape (G, N, 1)"),
    ("log_poles", (12,), "expected real log_poles of shape (G, N, 1)"),
    ("residues", (12, 15), "residues [12, 15] do not match log_poles [12, 16, 1]"),
    ("residues", (12, 16, 2), "do not match log_poles"),
    ("log_poles", (5, 16, 1), "5 filter rows do not divide the 12 channels"),
])
def test_li_bad_input_names_the_key(write_ckpt, key: str, shape: tuple, reason: str) -> None:
    prefix = KINDS["evo2-li"][0]
    also = {"residues": torch.randn(shape[:2], dtype=torch.float64)} if shape[0] == 5 else {}
    err = _bad(write_ckpt, key, -torch.rand(*shape, dtype=torch.float64), "evo2-li", prefix,
               **also)
    assert reason in err.message
    if "divide" in reason:
        assert f"{prefix}.D" in err.message


@pytest.mark.parametrize(("shape", "reason"), [
    ((4, 2, 128), "expected grouped taps of shape (G, 1, K) or (G, K), got [4, 2, 128]"),
    ((5, 1, 128), "5 filter rows do not divide the 12 channels"),
])
def test_mr_bad_input_names_the_key(write_ckpt, shape: tuple, reason: str) -> None:
    prefix = KINDS["evo2-mr"][0]
    err = _bad(write_ckpt, "h", torch.randn(*shape, dtype=torch.float64), "evo2-mr", prefix)
    assert reason in err.message


def test_li_missing_residues_is_not_a_layer(write_ckpt) -> None:
    tensors = make_example("evo2", **SIZES)
    del tensors["blocks.2.filter.residues"], tensors["blocks.6.filter.residues"]
    ckpt = open_checkpoint(write_ckpt(tensors))
    assert "evo2-li" not in [cfg.name for cfg, _ in select_configs(ckpt)]
    with pytest.raises(LcdError, match="no long-conv layer found"):
        select_configs(ckpt, family="evo2-li")


def test_example_layout_is_deterministic_and_looks_trained() -> None:
    a, b = make_example("evo2", seed=3, **SIZES), make_example("evo2", seed=3, **SIZES)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.1.filter.h"], make_example("evo2", seed=4, **SIZES)[
        "blocks.1.filter.h"])
    for key in ("embedding_layer.weight", "unembed.weight", "norm.scale",
                "blocks.3.inner_mha_cls.Wqkv.weight", "blocks.3.inner_mha_cls.out_proj.bias",
                "blocks.0.projections.weight", "blocks.0.filter.short_filter_weight",
                "blocks.6.mlp.l3.weight", "blocks.5.out_filter_dense.weight"):
        assert key in a, key
    assert "blocks.0.filter.D" not in a  # Hyena-SE has no skip term upstream
    assert a["blocks.2.filter.log_poles"].shape == (12, 16, 1)
    assert a["blocks.2.filter.residues"].shape == (12, 16)
    assert (a["blocks.2.filter.log_poles"] < 0).all()  # -exp(p) exp(gamma)
    assert a["blocks.2.filter.log_poles"].dtype == torch.float32
    mr = a["blocks.1.filter.h"].double()[:, 0]  # (G, 128), decayed by exp(-r t')
    assert mr.shape == (4, 128) and (mr[:, -16:].abs().mean(1) < mr[:, :16].abs().mean(1)).all()


def _raw(ckpt: object, key: str) -> bytes:
    info = ckpt.info(key)
    with open(info.shard, "rb") as f:
        f.seek(info.begin)
        return f.read(info.nbytes)


@pytest.mark.parametrize("shards", [1, 3], ids=["single", "sharded"])
def test_cli_end_to_end_and_pass_through(tmp_path: Path, shards: int) -> None:
    src = tmp_path / ("evo2" if shards > 1 else "evo2.safetensors")
    files = write_example(make_example("evo2", seed=7, **SIZES), src, shards=shards)
    src = files[0]
    inspect = lcd("inspect", src, "--json", "-L", "160")
    assert inspect.exit_code == 0, inspect.output
    doc = json.loads(inspect.stdout)
    assert doc["families"] == ["evo2-li", "evo2-mr", "evo2-se"]
    rows = {row["name"]: row for row in doc["layers"]}
    assert sorted(rows) == sorted(p for ps in KINDS.values() for p in ps)
    for name, row in rows.items():
        is_se = name in KINDS["evo2-se"]
        assert row["distill"] is not is_se and ("compressibility" in row) is not is_se
        length = 7 if is_se else 160 if name in KINDS["evo2-li"] else 128
        assert (row["channels"], row["length"]) == (12, length)  # SE: C from short_filter_weight
    out = tmp_path / ("evo2-out" if shards > 1 else "out.safetensors")
    rep = tmp_path / "out.report.yaml"
    result = lcd("distill", src, "--order", "6", "-L", "160", "-o", out, "--report", rep,
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = yaml.safe_load(rep.read_text())
    assert sorted(r["name"] for r in report["layers"]) == sorted(KINDS["evo2-li"]
                                                                 + KINDS["evo2-mr"])
    assert sorted(s["name"] for s in report["skipped"]) == KINDS["evo2-se"]
    before, after = open_checkpoint(src), open_checkpoint(out)
    assert after.sharded is (shards > 1)
    removed = {f"{p}.{k}" for p in KINDS["evo2-li"] for k in ("log_poles", "residues")}
    removed |= {f"{p}.h" for p in KINDS["evo2-mr"]}
    kept = [k for k in before.tensors if k not in removed]
    assert {"blocks.0.filter.h", "blocks.4.filter.h", "blocks.3.inner_mha_cls.Wqkv.weight",
            "blocks.3.inner_mha_cls.out_proj.weight", "blocks.2.filter.D"} <= set(kept)
    for key in kept:  # every untouched tensor, byte for byte (SE taps and attention included)
        assert after.info(key).dtype == before.info(key).dtype, key
        assert after.info(key).shape == before.info(key).shape, key
        assert _raw(after, key) == _raw(before, key), key
    assert not removed & set(after.keys())
    for prefix in KINDS["evo2-li"] + KINDS["evo2-mr"]:
        assert after.info(f"{prefix}.ssm.poles").shape == (12, 6, 2)
    verify = lcd("verify", out, "--reference", src, "--report", rep, "--json")
    assert verify.exit_code == 0, verify.output
    check = json.loads(verify.stdout)
    assert check["passed"] and sorted(r["name"] for r in check["layers"]) == sorted(
        KINDS["evo2-li"] + KINDS["evo2-mr"])


def test_cli_example_sharded_layout(tmp_path: Path) -> None:
    """`lcd example evo2 --shards 3`: three shards and an index, the mixed layers spread over
    them; inspect (headers only) lists the long convs and the SE layers, nothing else."""
    out = tmp_path / "evo2-sharded"
    result = lcd("example", "evo2", "-o", out, "--shards", "3")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors", "model.safetensors.index.json"]
    ckpt = open_checkpoint(out)
    assert ckpt.sharded and len({info.shard for info in ckpt.tensors.values()}) == 3
    inspect = lcd("inspect", out, "--json", "--no-analysis")
    assert inspect.exit_code == 0, inspect.output
    rows = json.loads(inspect.stdout)["layers"]
    assert {(r["name"], r["family"], r["distill"]) for r in rows} == {
        (p, cfg, cfg != "evo2-se") for cfg, ps in KINDS.items() for p in ps}
    assert {r["channels"] for r in rows} == {64}


# ---------------------------------------------------------------- MR taps precision (vortex bf16)


def bf16_round(w: torch.Tensor) -> torch.Tensor:
    """float32 -> bfloat16 -> float64 by hand: round the float32 bits to their top 16, to
    nearest, ties to even (independent of torch's own cast; finite values)."""
    bits = w.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) >> 16) << 16
    signed = torch.where(rounded >= 2**31, rounded - 2**32, rounded).to(torch.int32)
    return signed.view(torch.float32).to(torch.float64)


def mr_layers(path: Path, sets: dict[str, object] | None = None) -> tuple[object, dict]:
    ckpt = open_checkpoint(path)
    found = select_configs(ckpt, family="evo2-mr", sets=sets)
    return ckpt, {la.prefix: la for _, ls in found for la in ls}


def test_taps_dtype_bfloat16_rounds_the_taps_as_the_engine_does(write_ckpt) -> None:
    tensors = make_example("evo2", seed=3, **SIZES)  # float32 taps
    path = write_ckpt(tensors)
    ckpt, exact = mr_layers(path)
    _, f32 = mr_layers(path, {"taps_dtype": "float32"})
    _, engine = mr_layers(path, {"taps_dtype": "bfloat16"})
    for prefix in KINDS["evo2-mr"]:
        layer = engine[prefix]
        assert layer.config.options["taps_dtype"] == "bfloat16"
        assert layer.sources["taps_dtype"] == "cli (--set)"
        w = tensors[f"{prefix}.h"]  # (G, 1, K) float32
        h32, _ = materialize(ckpt, exact[prefix])
        assert torch.equal(materialize(ckpt, f32[prefix])[0], h32)  # float32 taps: unchanged
        h16, _ = materialize(ckpt, layer)
        assert torch.equal(h32, torch.from_numpy(naive_taps(w.double().numpy(), 12, flip=False)))
        want = torch.from_numpy(naive_taps(bf16_round(w).numpy(), 12, flip=False))
        assert torch.equal(h16, want)  # exactly the bf16 rounding, nothing else
        assert not torch.equal(h16, h32)
        normal = h32.abs() >= 2.0**-126  # (subnormals have no relative bound)
        assert ((h16 - h32).abs() <= 2.0**-8 * h32.abs())[normal].all()  # bf16: u = 2^-8


def test_float32_taps_warn_with_the_gap_the_engine_cast_makes(tmp_path: Path) -> None:
    tensors = make_example("evo2", seed=3, **SIZES)
    src = write_example(tensors, tmp_path / "evo2.safetensors")[0]
    result = lcd("distill", src, "--family", "evo2-mr", "--order", "2", "-o",
                 tmp_path / "out.safetensors", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = yaml.safe_load((tmp_path / "out.report.yaml").read_text())
    rows = {r["name"]: r for r in report["layers"]}
    for prefix in KINDS["evo2-mr"]:
        w = tensors[f"{prefix}.h"].double()
        gap = float((w - bf16_round(w)).norm() / w.norm())
        assert 1e-4 < gap < 4e-3  # bf16 keeps 8 significant bits
        line = f"warning: {prefix}: the engine casts these taps to bfloat16"
        assert line in " ".join(result.output.split())
        assert f"{gap:.2e} away" in rows[prefix]["warnings"][0]
        assert rows[prefix]["generator_info"]["engine_taps_rel_diff"] == pytest.approx(gap)
        assert any(w.startswith(f"{prefix}: ") and f"{gap:.2e}" in w for w in report["warnings"])
        assert report["layer_options"][prefix]["options"]["taps_dtype"] == "stored"
        assert "from the stored F32 taps fitted here" in rows[prefix]["warnings"][0]
    quiet = lcd("distill", src, "--family", "evo2-mr", "--order", "2", "-o",
                tmp_path / "bf.safetensors", "--device", "cpu", "--set", "taps_dtype=bfloat16")
    assert quiet.exit_code == 0, quiet.output
    assert "warning" not in quiet.output
    bf_report = yaml.safe_load((tmp_path / "bf.report.yaml").read_text())
    assert bf_report["warnings"] == []
    assert bf_report["layer_options"]["blocks.1.filter"]["options"]["taps_dtype"] == "bfloat16"
    verify = lcd("verify", tmp_path / "bf.safetensors", "-r", src, "--tol", "0.3")
    assert verify.exit_code == 0, verify.output


def test_no_warning_where_the_engine_keeps_the_taps(write_ckpt) -> None:
    from lcd_cli.families.kernels import MATERIALIZERS
    from lcd_cli.families.view import LayerView

    stored_bf16 = write_ckpt(make_example("evo2", seed=3, dtype="bf16", **SIZES), name="b.st")
    ckpt, layers = mr_layers(stored_bf16)  # bf16 taps: the engine's cast changes nothing
    taps = MATERIALIZERS["grouped-taps"]
    for layer in layers.values():
        view = LayerView(ckpt, layer)
        assert taps.warnings(view, layer.config.options) == []
        assert taps.info(view, layer.config.options)["engine_taps_rel_diff"] == 0.0
    ckpt, layers = mr_layers(write_ckpt(make_example("evo2", seed=3, **SIZES)))
    layer = layers["blocks.1.filter"]
    view = LayerView(ckpt, layer)
    assert taps.warnings(view, layer.config.options)  # float32 (4, 1, 128): cast
    kept = {**layer.config.options, "engine_keeps_shapes": [[4, 1, 128]]}  # as (4096, 1, 128)
    assert taps.warnings(view, kept) == [] and taps.info(view, kept) == {}
    assert taps.warnings(view, {**layer.config.options, "engine_taps_dtype": None}) == []
    assert taps.check_options({"taps_dtype": "float8"}) and taps.check_options(
        {"engine_keeps_shapes": [4096, 1, 128]})
