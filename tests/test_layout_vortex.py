"""The vortex layout without the engine: engine tensors from real-pole fits, one state size with
inert padding, the read-back for `lcd verify`, refusals, and the YAML config patch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from lcd_cli.errors import LcdError
from lcd_cli.io.checkpoint import OutEntry, open_checkpoint, write_safetensors
from lcd_cli.layouts import LayerResult, get_layout
from lcd_cli.layouts.vortex import INERT_LOG_POLE, engine_tensors
from lcd_cli.pipeline.folders import patched_config
from tests.conftest import lcd


def real_result(name: str, channels: int, order: int, seed: int) -> LayerResult:
    g = torch.Generator().manual_seed(seed)
    poles = torch.zeros(channels, order, 2)
    poles[..., 0] = torch.empty(channels, order).uniform_(0.05, 0.999, generator=g)
    residues = torch.zeros(channels, order, 2)
    residues[..., 0] = torch.randn(channels, order, generator=g)
    return LayerResult(name, {"ssm": (poles, residues)}, {"order": order})


def test_engine_tensors_pad_with_inert_modes() -> None:
    res = real_result("blocks.2.filter", 5, 3, seed=0)
    poles, residues = res.parts["ssm"]
    log_p, r = engine_tensors(poles, residues, 7)
    assert log_p.shape == (5, 7, 1) and r.shape == (5, 7)
    assert log_p.dtype == r.dtype == torch.float32
    assert torch.equal(log_p[:, 3:, 0], torch.full((5, 4), INERT_LOG_POLE, dtype=torch.float32))
    assert bool((r[:, 3:] == 0).all())
    # exp(log_poles) is the stored float32 pole to float32 accuracy
    assert torch.allclose(torch.exp(log_p[:, :3, 0].double()), poles[..., 0].double(),
                          rtol=2e-7, atol=0)
    assert torch.equal(r[:, :3], residues[..., 0])


def test_engine_tensors_refuse_complex_fits() -> None:
    res = real_result("x", 2, 2, seed=1)
    poles, residues = res.parts["ssm"]
    bad = poles.clone()
    bad[0, 0, 1] = 1e-3
    with pytest.raises(LcdError, match="real poles"):
        engine_tensors(bad, residues, 2)
    neg = poles.clone()
    neg[1, 1, 0] = -0.5
    with pytest.raises(LcdError, match="real poles"):
        engine_tensors(neg, residues, 2)


def test_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    layout = get_layout("vortex")
    results = [real_result("blocks.2.filter", 6, 2, seed=2),
               real_result("blocks.6.filter", 6, 5, seed=3)]
    entries = [OutEntry.tensor(k, v) for r in results for k, v in layout.layer_tensors(r, results)]
    meta = {"lcd_layout": "vortex", "lcd_order": json.dumps({r.name: r.stats["order"]
                                                             for r in results}),
            **layout.metadata(results)}
    path = tmp_path / "v.safetensors"
    write_safetensors(path, entries, meta)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("blocks.2.filter.log_poles").shape == (6, 5, 1)
        assert f.metadata()["lcd_state_size"] == "5"
    with open_checkpoint(path) as ckpt:
        for r in results:
            ssm = layout.read_part(ckpt, r.name, "ssm", None, 6)
            assert ssm.order == r.stats["order"]  # the inert padding is dropped
            poles = r.parts["ssm"][0][..., 0].double()
            assert torch.allclose(ssm.poles.real, poles, rtol=2e-7, atol=0)
            assert bool((ssm.poles.imag == 0).all())
        with pytest.raises(LcdError, match="log_poles shape"):
            layout.read_part(ckpt, "blocks.2.filter", "ssm", None, 7)


def test_config_patch_json_and_yaml(tmp_path: Path) -> None:
    layout = get_layout("vortex")
    results = [real_result("a", 2, 3, seed=4), real_result("b", 2, 4, seed=5)]
    text = "# vortex config\nstate_size: 16\nhidden_size: 2\nmlp_init_method: torch.nn.init.zeros_\n"
    out = patched_config(text, {"layout": "vortex"}, tmp_path / "config.yml",
                         lambda d: layout.config_patch(d, results))
    doc = yaml.safe_load(out)
    assert doc == {"state_size": 4, "hidden_size": 2, "mlp_init_method": "torch.nn.init.zeros_",
                   "lcd": {"layout": "vortex"}}
    js = patched_config('{"state_size": 16}', {"layout": "vortex"}, tmp_path / "config.json",
                        lambda d: layout.config_patch(d, results))
    assert json.loads(js)["state_size"] == 4
    with pytest.raises(LcdError, match="not valid YAML"):
        patched_config("a: [", {}, tmp_path / "config.yaml")
    assert layout.config_files == ("config.json", "config.yml", "config.yaml")
    assert math.isfinite(INERT_LOG_POLE) and INERT_LOG_POLE < 0


def test_plan_refuses_what_the_engine_cannot_hold(tmp_path: Path) -> None:
    """MR layers (explicit taps) name the option that leaves them untouched; a whole-model run
    restricted to evo2-li plans only the LI layers and removes nothing else."""
    ckpt = tmp_path / "evo2.safetensors"
    assert lcd("example", "evo2", "-o", ckpt).exit_code == 0
    mr = lcd("distill", ckpt, "-n", 4, "--layout", "vortex", "--dry-run")
    assert mr.exit_code == 2
    assert "blocks.1.filter" in mr.output and "--family evo2-li" in mr.output
    ok = lcd("distill", ckpt, "-n", 4, "--layout", "vortex", "--family", "evo2-li",
             "--dry-run", "--json")
    assert ok.exit_code == 0, ok.output
    plan = json.loads(ok.stdout)
    assert plan["poles"] == "real" and plan["layout"] == "vortex"
    for row in plan["layers"]:
        assert row["family"] == "evo2-li"
        assert sorted(row["add"]) == sorted(row["remove"])  # replaced under the same names
        assert row["add"] == [f"{row['name']}.log_poles", f"{row['name']}.residues"]


def test_tolerance_run_pads_to_one_state_size_and_verifies(tmp_path: Path) -> None:
    """--tol gives each LI layer its own order; the file holds one K (inert padding) and `lcd
    verify` reads the layers back at their own orders and passes. The tolerance lies about 2x
    from both layers' max errors at order 5 (7e-4 and 2.9e-3; order 4: 2e-2 and 1.2e-2), so
    that they need orders 5 and 6 on any CPU (3e-3 was within 3 % of the second layer's
    error: order 5 on Intel, 6 on AMD)."""
    ckpt = tmp_path / "evo2.safetensors"
    assert lcd("example", "evo2", "-o", ckpt).exit_code == 0
    out = tmp_path / "v.safetensors"
    res = lcd("distill", ckpt, "--layout", "vortex", "--family", "evo2-li", "--tol", "1.5e-3",
              "--max-order", 6, "--length", 151, "-o", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    report = yaml.safe_load((tmp_path / "v.report.yaml").read_text())
    orders = {row["name"]: row["order"] for row in report["layers"]}
    assert all(row["poles"] == "real" and "rel_l2_complex" not in row
               for row in report["layers"])
    k = max(orders.values())
    assert min(orders.values()) < k  # the layers' orders differ: one is padded
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["lcd_state_size"] == str(k)
        for name, n in orders.items():
            lp = f.get_tensor(f"{name}.log_poles")
            assert lp.shape[1:] == (k, 1)
            assert bool((lp[:, n:] == torch.tensor(INERT_LOG_POLE, dtype=torch.float32)).all())
    verdict = lcd("verify", out, "-r", ckpt, "--json")
    assert verdict.exit_code == 0, verdict.output
    rows = json.loads(verdict.stdout)["layers"]
    assert [r["passed"] for r in rows] == [True] * len(orders)
