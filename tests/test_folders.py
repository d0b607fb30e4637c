"""Model folders in, model folders out: the input folder is only read, the output folder is a
complete model folder (weights named like the input's, every other file, config.json with an
``lcd`` section, the report), and Hugging Face cache snapshots are never written into."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from lcd_cli.examples import make_example, write_example
from lcd_cli.io.checkpoint import open_checkpoint
from tests.conftest import SMALL, lcd

AUX = {"config.json": '{"model_type": "hyenadna", "d_model": 8}\n',
       "tokenizer.json": '{"version": "1.0"}\n', "tokenizer_config.json": "{}\n",
       "generation_config.json": "{}\n", "modeling_hyena.py": "# model code\n",
       "README.md": "# a model\n", "sub/vocab.txt": "A\nC\nG\nT\n"}


def make_folder(root: Path, shards: int = 1) -> Path:
    folder = root / "hyena-model"
    root.mkdir(parents=True, exist_ok=True)
    tensors = make_example("hyenadna", **SMALL["hyenadna"])
    if shards == 1:
        folder.mkdir()
    write_example(tensors, folder if shards > 1 else folder / "model.safetensors", shards=shards)
    for rel, text in AUX.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_in_folder_out_twice_leaves_input_identical(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    before = digest(folder)
    for attempt in range(2):
        args = ["distill", folder, "--order", "4"] + (["--force"] if attempt else [])
        result = lcd(*args)
        assert result.exit_code == 0, result.output
        assert digest(folder) == before  # nothing written into the input folder
        assert lcd("inspect", folder, "--no-analysis").exit_code == 0  # still usable
    out = tmp_path / "hyena-model-lcd"
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert names == set(AUX) | {"model.safetensors", "lcd.report.yaml"}
    for rel, text in AUX.items():
        if rel != "config.json":
            assert (out / rel).read_text() == text
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hyenadna" and config["d_model"] == 8
    assert config["lcd"]["layout"] == "lcd"
    assert set(config["lcd"]["orders"].values()) == {4}
    with open_checkpoint(out) as ckpt:
        assert any(k.endswith(".ssm.poles") for k in ckpt.tensors)
    report = yaml.safe_load((out / "lcd.report.yaml").read_text())
    assert report["output"]["path"] == str(out)
    verify = lcd("verify", out, "--reference", folder, "--tol", "5e-1")
    assert verify.exit_code == 0, verify.output
    assert "5.0e-01" in verify.output


def test_file_inside_a_model_folder_is_distilled_as_the_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    before = digest(folder)
    result = lcd("distill", folder / "model.safetensors", "--order", "3")
    assert result.exit_code == 0, result.output
    assert digest(folder) == before
    assert (tmp_path / "hyena-model-lcd" / "model.safetensors").is_file()


def test_sharded_folder_keeps_every_file(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, shards=2)
    result = lcd("distill", folder, "--order", "3")
    assert result.exit_code == 0, result.output
    out = tmp_path / "hyena-model-lcd"
    assert {p.name for p in out.iterdir()} == {p.name for p in folder.iterdir()} | {
        "lcd.report.yaml"}
    assert "lcd" in json.loads((out / "config.json").read_text())


def test_output_inside_the_input_folder_is_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    before = digest(folder)
    result = lcd("distill", folder, "--order", "3", "-o", folder / "distilled")
    assert result.exit_code == 2
    assert "inside the input model folder" in result.output
    assert digest(folder) == before


def test_hf_cache_snapshot_is_never_written_into(tmp_path: Path, monkeypatch) -> None:
    snapshot = tmp_path / "hub" / "models--org--hyena-tiny" / "snapshots" / "abc123"
    folder = make_folder(snapshot.parent)
    folder = folder.rename(snapshot)
    before = digest(snapshot)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = lcd("distill", snapshot, "--order", "3")
    assert result.exit_code == 0, result.output
    assert digest(snapshot) == before
    assert sorted(p.name for p in snapshot.parent.iterdir()) == ["abc123"]
    assert (work / "hyena-tiny-lcd" / "model.safetensors").is_file()
    refused = lcd("distill", snapshot, "--order", "3", "-o", snapshot.parent / "x", "--force")
    assert refused.exit_code == 2 and "cache" in refused.output


def test_single_file_report_follows_the_output(tmp_path: Path) -> None:
    src = write_example(make_example("hyenadna", **SMALL["hyenadna"]),
                        tmp_path / "hy.safetensors")[0]
    result = lcd("distill", src, "--order", "3", "-o", tmp_path / "other.safetensors")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "other.report.yaml").is_file()
    assert not (tmp_path / "hy.lcd.report.yaml").exists()
    verify = lcd("verify", tmp_path / "other.safetensors", "--reference", src, "--tol", "0.9")
    assert verify.exit_code == 0, verify.output
