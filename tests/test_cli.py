"""End to end through the CLI: example -> inspect -> distill -> verify, and bad input."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lcd_cli.families.layers import materialize, select_configs
from lcd_cli.io.checkpoint import open_checkpoint
from tests.conftest import lcd, naive_modal

FAMILY = {"hyenadna": "hyenadna-hf", "stripedhyena": "stripedhyena", "long-conv": "safari-long-conv"}
# (channels, length) of the tests' small examples (tests/conftest.py SMALL), stripedhyena at -L 96.
SHAPE = {"hyenadna": (8, 203), "stripedhyena": (6, 96), "long-conv": (10, 157)}
SETS = {"long-conv": ["squash_lambda=0.001"]}  # not stored, and safari's configs differ on it
LENGTH_ARGS = {"stripedhyena": ["--length", "96"], "long-conv": ["--set", *SETS["long-conv"]]}




def sha(path: Path) -> str:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files if f.is_file())).hexdigest()




@pytest.mark.parametrize("name", ["hyenadna", "stripedhyena", "long-conv"])
@pytest.mark.parametrize("shards", [1, 2], ids=["single", "sharded"])
def test_inspect_lists_layers(write_ckpt, name: str, shards: int) -> None:
    path = write_ckpt(name, name=f"{name}-{shards}", shards=shards)
    result = lcd("inspect", path, "--json", *LENGTH_ARGS.get(name, []))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["families"] == [FAMILY[name]]
    assert len(doc["layers"]) == 2
    for row in doc["layers"]:
        assert (row["channels"], row["length"]) == SHAPE[name]
        comp = row["compressibility"]
        floors = [comp["floor_median"][k] for k in ("8", "16", "32", "64") if comp["floor_median"][k]]
        assert floors == sorted(floors, reverse=True)  # the bound can only fall with the order


def test_inspect_table_and_headers_only(write_ckpt) -> None:
    path = write_ckpt("hyenadna")
    result = lcd("inspect", path, "--no-analysis", "--keys")
    assert result.exit_code == 0
    assert "hyena.backbone.layers.1.mixer.filter_fn" in result.output
    assert "N@1e-2" not in result.output


@pytest.mark.parametrize("name", ["hyenadna", "stripedhyena", "long-conv"])
def test_distill_writes_what_it_reports(write_ckpt, tmp_path: Path, name: str) -> None:
    src = write_ckpt(name)
    before = sha(src)
    out, rep = tmp_path / "out.safetensors", tmp_path / "out.report.yaml"
    result = lcd("distill", src, "--order", "6", "-o", out, "--report", rep, "--device", "cpu",
                 *LENGTH_ARGS.get(name, []))
    assert result.exit_code == 0, result.output
    assert sha(src) == before  # the input is never modified
    report = yaml.safe_load(rep.read_text())
    original, written = load_file(str(src)), load_file(str(out))
    ckpt = open_checkpoint(src)
    (_, layers), = select_configs(ckpt, options={"length": SHAPE[name][1]}, sets=SETS.get(name))
    removed = {k for la in layers for k in la.generator_keys}
    for key, value in original.items():  # everything else is bit-identical
        if key not in removed:
            assert torch.equal(written[key].view(torch.uint8), value.view(torch.uint8)), key
    assert not removed & set(written)
    for layer, row in zip(layers, report["layers"], strict=True):
        poles = written[f"{layer.prefix}.ssm.poles"]
        residues = written[f"{layer.prefix}.ssm.residues"]
        assert poles.dtype == torch.float32 and poles.shape == (SHAPE[name][0], 6, 2)
        h, _ = materialize(ckpt, layer)
        pairs = poles.double().numpy(), residues.double().numpy()  # (C, N, 2) each
        h_hat = naive_modal(*(x[..., 0] + 1j * x[..., 1] for x in pairs), h.shape[1])
        rel = np.linalg.norm(h.numpy() - h_hat, axis=1) / np.linalg.norm(h.numpy(), axis=1)
        assert row["rel_l2"]["max"] == pytest.approx(rel.max(), rel=1e-6, abs=1e-12)
        assert row["rel_l2"]["median"] == pytest.approx(np.median(rel), rel=1e-6, abs=1e-12)
        assert row["floor"] <= row["rel_l2"]["median"] * (1 + 1e-9) + 1e-12
        assert row["max_pole_abs"] < 1
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["lcd_family"] == FAMILY[name]
    assert report["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert report["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_modal_recovered_at_own_order(write_ckpt, tmp_path: Path) -> None:
    src = write_ckpt("stripedhyena")  # 4 modes per channel
    rep = tmp_path / "r.yaml"
    result = lcd("distill", src, "--order", "4", "-L", "96", "--report", rep, "-o",
                 tmp_path / "o.safetensors")
    assert result.exit_code == 0, result.output
    for row in yaml.safe_load(rep.read_text())["layers"]:
        assert row["rel_l2"]["max"] < 1e-5  # float32 storage of the parameters is the floor


def test_sharded_in_sharded_out(write_ckpt) -> None:
    index = write_ckpt("stripedhyena", name="sharded", shards=3)
    result = lcd("distill", index, "--order", "4", "-L", "96")
    assert result.exit_code == 0, result.output
    out = index.parent.with_name("sharded-lcd")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in index.parent.iterdir())
    ckpt = open_checkpoint(out)
    assert ckpt.sharded and "backbone.blocks.2.filter.ssm.poles" in ckpt
    assert "backbone.blocks.2.filter.poles" not in ckpt
    doc = json.loads((out / "model.safetensors.index.json").read_text())
    assert doc["metadata"]["total_size"] == sum(i.nbytes for i in ckpt.tensors.values())
    assert set(doc["weight_map"]) == set(ckpt.keys())
    verify = lcd("verify", out, "--reference", index, "--tol", "1e-4")
    assert verify.exit_code == 0, verify.output


def test_tol_mode_and_verify(write_ckpt) -> None:
    src = write_ckpt("hyenadna")
    result = lcd("distill", src, "--tol", "5e-2", "--max-order", "32")
    assert result.exit_code == 0, result.output
    report = yaml.safe_load(src.with_name("model.lcd.report.yaml").read_text())
    assert report["tolerance"] == 5e-2
    orders = [row["order"] for row in report["layers"]]
    for row in report["layers"]:
        assert row["rel_l2"]["max"] <= 5e-2 and row["tol_met"] is True
    assert "warning" not in result.output
    assert min(orders) < 32  # the search stopped below the cap
    verify = lcd("verify", src.with_name("model.lcd.safetensors"), "--reference", src, "--json")
    assert verify.exit_code == 0, verify.output
    doc = json.loads(verify.stdout)
    assert doc["passed"] and doc["tol"] == 5e-2 and len(doc["layers"]) == 2


def test_tol_mode_warns_when_max_order_is_too_small(write_ckpt) -> None:
    src = write_ckpt("hyenadna")
    result = lcd("distill", src, "--tol", "1e-9", "--max-order", "2")
    assert result.exit_code == 0, result.output
    report = yaml.safe_load(src.with_name("model.lcd.report.yaml").read_text())
    assert all(row["tol_met"] is False and row["order"] == 2 for row in report["layers"])
    assert "misses --tol 1e-09 at --max-order 2" in " ".join(result.output.split())


def test_verify_fails_on_tampered_pole(write_ckpt, tmp_path: Path) -> None:
    src = write_ckpt("hyenadna")
    out = tmp_path / "d.safetensors"
    assert lcd("distill", src, "--order", "8", "-o", out, "--report", tmp_path / "d.yaml"
               ).exit_code == 0
    tensors = load_file(str(out))
    key = "hyena.backbone.layers.1.mixer.filter_fn.ssm.poles"
    tensors[key][3, 0] = torch.tensor([1.001, 0.0])
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    result = lcd("verify", bad, "--reference", src, "--report", tmp_path / "d.yaml")
    assert result.exit_code == 1, result.output
    assert "layers.1.mixer.filter_fn" in result.output and "unstable pole" in result.output
    residues = "hyena.backbone.layers.0.mixer.filter_fn.ssm.residues"
    tensors = load_file(str(out))
    tensors[residues][2, 1] += 5.0
    save_file(tensors, str(bad), metadata=meta)
    result = lcd("verify", bad, "--reference", src, "--report", tmp_path / "d.yaml")
    assert result.exit_code == 1 and "layers.0.mixer.filter_fn" in result.output


def test_refuses_overwrite_and_leaves_nothing_on_error(write_ckpt) -> None:
    src = write_ckpt("hyenadna")
    assert lcd("distill", src, "--order", "4").exit_code == 0
    out = src.with_name("model.lcd.safetensors")
    stamp = sha(out)
    again = lcd("distill", src, "--order", "5")
    assert again.exit_code == 2 and "--force" in again.output and sha(out) == stamp
    assert lcd("distill", src, "--order", "5", "--force").exit_code == 0 and sha(out) != stamp
    files = sorted(p.name for p in src.parent.iterdir())
    bad = lcd("distill", src, "--order", "500", "-o", src.with_name("x.safetensors"))
    assert bad.exit_code == 2 and "out of range" in bad.output and "orders 1..202" in bad.output
    assert sorted(p.name for p in src.parent.iterdir()) == files


def test_dry_run_reads_headers_only(write_ckpt) -> None:
    src = write_ckpt("long-conv")
    result = lcd("distill", src, "--order", "8", "--dry-run", "--json", *LENGTH_ARGS["long-conv"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [la["name"] for la in plan["layers"]] == ["backbone.layers.0.mixer.kernel",
                                                     "backbone.layers.1.mixer.kernel"]
    assert plan["layers"][0]["remove"] == ["backbone.layers.0.mixer.kernel.kernel"]
    assert sorted(p.name for p in src.parent.iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["inspect", "{missing}"], 2, "no such file"),
        (["inspect", "{src}", "--family", "nope"], 2, "unknown family 'nope'"),
        (["inspect", "{src}", "--config", "{missing}"], 2, "cannot read the config"),
        (["distill", "{src}"], 2, "exactly one of --order"),
        (["distill", "{src}", "--order", "0"], 2, "out of range"),
        (["distill", "{src}", "--tol", "2"], 2, "out of range"),
        (["verify", "{src}", "--reference", "{src}"], 2, "not written by `lcd distill`"),
        (["distill", "{src}", "--order", "4", "--device", "tpu"], 2, "unknown device"),
    ],
    ids=["missing-file", "unknown-family", "missing-config", "no-order", "order-zero",
         "tol-range", "verify-undistilled", "bad-device"],
)
def test_bad_input_messages(write_ckpt, tmp_path: Path, args: list[str], code: int,
                            needle: str) -> None:
    src = write_ckpt("hyenadna")
    fill = {"src": str(src), "missing": str(tmp_path / "missing.yaml")}
    result = lcd(*[a.format(**fill) for a in args])
    assert result.exit_code == code, result.output
    assert needle in result.output.replace("\n", " ")


def test_corrupt_checkpoint_via_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    result = lcd("distill", bad, "--order", "4")
    assert result.exit_code == 2 and "not valid JSON" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_example_help_names_every_example() -> None:
    from lcd_cli.examples import EXAMPLES

    result = lcd("example", "--help")
    words = set(re.split(r"[\s,.():│]+", result.output))  # rich wraps and boxes the help
    missing = [name for name in EXAMPLES if name not in words]
    assert not missing, f"`lcd example --help` does not name {missing}"
