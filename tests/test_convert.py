"""`lcd convert`: torch .pt checkpoints (whole, split into .partN byte pieces, wrapped) into a
safetensors model folder that `lcd inspect` reads, tensors byte-identical, safely (no code
from the file runs) and atomically (nothing left behind on an error)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example
from lcd_cli.io.checkpoint import open_checkpoint
from lcd_cli.pipeline import convert as convert_mod
from lcd_cli.pipeline.convert import convert, parse_size, plan_shards, resolve_sources
from tests.conftest import lcd

EVO2 = {"d_model": 12, "groups": 4, "heads": 2}
EXTRA = "blocks.3.inner_mha_cls.Wqkv._extra_state"


def evo2_state() -> dict[str, object]:
    """The evo2 example as upstream ships it: MLPs in bf16, the rest fp32, a tied unembedding
    (the embedding's own tensor under a second name) and a Transformer Engine BytesIO."""
    sd: dict[str, object] = {k: v.to(torch.bfloat16) if ".mlp." in k else v
                             for k, v in make_example("evo2", **EVO2).items()}
    sd["unembed.weight"] = sd["embedding_layer.weight"]
    sd[EXTRA] = io.BytesIO(b"fp8 scaling state")
    return sd


def tensors_of(sd: dict[str, object]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_tensors(folder: Path, expected: dict[str, torch.Tensor]) -> None:
    with open_checkpoint(folder) as ckpt:
        assert set(ckpt.keys()) == set(expected)
        for name, t in expected.items():
            info = ckpt.info(name)
            assert info.shape == tuple(t.shape), name
            got = ckpt.get(name, finite=False)
            assert got.dtype == t.dtype, name
            assert raw(got) == raw(t), name


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if "lcd-tmp" in p.name or "lcd-old" in p.name
                  or p.name.endswith("joined.pt"))


@pytest.fixture
def pt(tmp_path: Path) -> Path:
    path = tmp_path / "evo2.pt"
    torch.save(evo2_state(), path)
    return path


def split(path: Path, pieces: int) -> list[Path]:
    data = path.read_bytes()
    step = -(-len(data) // pieces)
    parts = []
    for i in range(pieces):
        part = path.with_name(f"{path.name}.part{i}")
        part.write_bytes(data[i * step:(i + 1) * step])
        parts.append(part)
    path.unlink()
    return parts


def test_convert_pt_to_a_folder_lcd_reads(pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "evo2"
    result = lcd("convert", pt, "-o", out)
    assert result.exit_code == 0, result.output
    assert "dropped 1 _extra_state" in result.output and EXTRA in result.output
    assert "embedding_layer.weight, unembed.weight" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["lcd.convert.yaml", "model.safetensors"]
    expected = tensors_of(evo2_state())
    assert {t.dtype for t in expected.values()} == {torch.float32, torch.bfloat16}
    assert_same_tensors(out, expected)  # dtypes and bytes preserved, _extra_state gone
    record = yaml.safe_load((out / "lcd.convert.yaml").read_text())
    assert record["sources"] == [{"path": str(pt), "bytes": pt.stat().st_size,
                                  "sha256": hashlib.sha256(pt.read_bytes()).hexdigest()}]
    assert record["dropped"]["keys"] == [EXTRA] and record["dropped"]["count"] == 1
    assert record["tied"][0]["names"] == ["embedding_layer.weight", "unembed.weight"]
    assert record["tied"][0]["same_view"] is True
    assert record["tensors"]["dtypes"] == {"BF16": 21, "F32": len(expected) - 21}
    assert record["shards"] == [{"file": "model.safetensors", "tensors": len(expected),
                                 "bytes": sum(t.numel() * t.element_size()
                                              for t in expected.values())}]
    inspected = lcd("inspect", out, "--no-analysis", "--json")
    assert inspected.exit_code == 0, inspected.output
    families = {row["family"] for row in json.loads(inspected.stdout)["layers"]}
    assert families == {"evo2-li", "evo2-mr", "evo2-se"}


@pytest.mark.parametrize(("naming", "pieces"), [("first", 3), ("stem", 3), ("all-shuffled", 3),
                                               ("stem", 12)])  # part10 after part9
def test_byte_split_parts_are_joined_in_order(pt: Path, tmp_path: Path, naming: str,
                                              pieces: int) -> None:
    parts = split(pt, pieces)
    args = {"first": [parts[0]], "stem": [pt],
            "all-shuffled": random.Random(1).sample(parts, pieces)}[naming]
    out = tmp_path / "joined"
    result = lcd("convert", *args, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"{pieces} part(s) joined in order" in result.output
    assert_same_tensors(out, tensors_of(evo2_state()))
    record = yaml.safe_load((out / "lcd.convert.yaml").read_text())
    assert [s["path"] for s in record["sources"]] == [str(p) for p in parts]
    assert [s["sha256"] for s in record["sources"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in parts]
    assert record["split"] == {"parts": pieces, "joined": True}
    assert leftovers(tmp_path) == []  # the joined temporary is gone


def test_missing_parts_are_listed(pt: Path, tmp_path: Path) -> None:
    parts = split(pt, 4)
    parts[1].unlink()
    parts[2].unlink()
    out = tmp_path / "out"
    result = lcd("convert", parts[0], "-o", out)
    assert result.exit_code == 2
    assert "evo2.pt.part1, evo2.pt.part2" in result.output and "missing" in result.output
    assert not out.exists() and leftovers(tmp_path) == []
    named = lcd("convert", parts[3], "-o", out)  # not the first part
    assert named.exit_code == 2 and "evo2.pt.part0" in named.output


def test_a_missing_last_part_is_a_damaged_checkpoint(pt: Path, tmp_path: Path) -> None:
    parts = split(pt, 3)
    parts[2].unlink()  # nothing says a part3 should exist: the joined file is cut short
    result = lcd("convert", parts[0], "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "not a readable torch checkpoint" in result.output and "the last one" in result.output
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    st = tmp_path / "m.safetensors"
    st.write_bytes(b"x")
    assert "already" in lcd("convert", st, "-o", tmp_path / "o2").output


def test_unnamed_parts_and_a_later_first_part_are_refused(pt: Path, tmp_path: Path) -> None:
    parts = split(pt, 3)
    result = lcd("convert", parts[0], parts[1], "-o", tmp_path / "out")
    assert result.exit_code == 2 and "evo2.pt.part2" in result.output
    later = lcd("convert", parts[1], "-o", tmp_path / "out")
    assert later.exit_code == 2 and "part0" in later.output


class Custom:
    """A class a pickle would have to import and build: weights_only refuses it."""

    def __init__(self) -> None:
        self.x = 1


def test_a_pickled_custom_class_is_refused_without_output(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(3), "hook": Custom()}, bad)
    out = tmp_path / "out"
    result = lcd("convert", bad, "-o", out)
    assert result.exit_code == 2
    assert "Custom" in result.output and "weights_only=True" in result.output
    assert "never runs code" in result.output and "Traceback" not in result.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_non_tensor_values_are_all_listed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(3), "step": 7, "lr": 0.1, "sub": {"a": torch.zeros(1)}}, bad)
    result = lcd("convert", bad, "-o", tmp_path / "out")
    assert result.exit_code == 2
    for offender in ("'step': a int", "'lr': a float", "'sub': a nested dict"):
        assert offender in result.output
    assert "3 entries" in result.output and not (tmp_path / "out").exists()


def test_an_unambiguous_wrapper_is_unwrapped_and_said(tmp_path: Path) -> None:
    src = tmp_path / "wrapped.pt"
    sd = evo2_state()
    torch.save({"model": sd, "epoch": 3, "optimizer": {"lr": 0.1}}, src)
    result = lcd("convert", src, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "nested under 'model'" in result.output and "epoch, optimizer" in result.output
    assert_same_tensors(tmp_path / "out", tensors_of(sd))
    both = tmp_path / "both.pt"
    torch.save({"model": {"a": torch.zeros(1)}, "state_dict": {"a": torch.ones(1)}}, both)
    ambiguous = lcd("convert", both, "-o", tmp_path / "out2")
    assert ambiguous.exit_code == 2 and "'state_dict', 'model'" in ambiguous.output


def test_existing_output_needs_force(pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = lcd("convert", pt, "-o", out)
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    forced = lcd("convert", pt, "-o", out, "--force")
    assert forced.exit_code == 0, forced.output
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_small_max_shard_size_gives_shards_and_an_index(pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    result = lcd("convert", pt, "-o", out, "--max-shard-size", "3kB")
    assert result.exit_code == 0, result.output
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    for shard in shards:  # each within the limit unless it holds one larger tensor
        with open_checkpoint(out / shard) as ckpt:
            assert len(ckpt.keys()) == 1 or sum(i.nbytes for i in ckpt.tensors.values()) <= 3000
    assert_same_tensors(out, tensors_of(evo2_state()))
    inspected = lcd("inspect", out, "--no-analysis")
    assert inspected.exit_code == 0, inspected.output


def test_configs_are_copied(pt: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "evo2"}\n')
    (tmp_path / "evo2.yml").write_text("hidden_size: 12\n")
    out = tmp_path / "out"
    assert lcd("convert", pt, "-o", out).exit_code == 0
    assert (out / "config.json").read_text() == '{"model_type": "evo2"}\n'
    assert (out / "evo2.yml").read_text() == "hidden_size: 12\n"
    engine = tmp_path / "cfg" / "evo2-7b-8k.yml"
    engine.parent.mkdir()
    engine.write_text("hcm_filter_groups: 4\n")
    out2 = tmp_path / "out2"
    result = lcd("convert", pt, "-o", out2, "--model-config", engine)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out2.iterdir()) == ["evo2-7b-8k.yml", "lcd.convert.yaml",
                                                      "model.safetensors"]
    alias = lcd("convert", pt, "-o", tmp_path / "out3", "--config", engine)
    assert alias.exit_code == 0 and (tmp_path / "out3" / "evo2-7b-8k.yml").is_file()


def test_separate_state_dicts_load_one_by_one(tmp_path: Path) -> None:
    sd = tensors_of(evo2_state())
    names = list(sd)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({k: sd[k] for k in names[:30]}, a)
    torch.save({k: sd[k] for k in names[30:]}, b)
    assert lcd("convert", a, b, "-o", tmp_path / "out").exit_code == 0
    assert_same_tensors(tmp_path / "out", sd)
    torch.save({names[0]: sd[names[0]]}, b)
    clash = lcd("convert", a, b, "-o", tmp_path / "out2")
    assert clash.exit_code == 2 and names[0] in clash.output


def test_interrupted_write_leaves_nothing(pt: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    parts = split(pt, 2)
    real = convert_mod.write_safetensors
    calls = []

    def stop_after_one(path: Path, entries: list, metadata: dict) -> None:
        calls.append(path)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real(path, entries, metadata)

    monkeypatch.setattr(convert_mod, "write_safetensors", stop_after_one)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert([parts[0]], out, max_shard_size=40_000)
    assert len(calls) == 2 and not out.exists() and leftovers(tmp_path) == []


def test_transformer_engine_recipe_objects_load_without_it(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """vortex allowlists TE's recipe classes for _extra_state; lcd loads them as inert
    stand-ins (no TE installed, nothing of the pickle run) and drops the entry."""
    recipe = types.ModuleType("transformer_engine.common.recipe")

    class DelayedScaling:
        def __init__(self, margin: int = 0) -> None:
            self.margin = margin

    DelayedScaling.__module__ = recipe.__name__
    DelayedScaling.__qualname__ = "DelayedScaling"
    recipe.DelayedScaling = DelayedScaling  # type: ignore[attr-defined]
    for name in ("transformer_engine", "transformer_engine.common", recipe.__name__):
        monkeypatch.setitem(sys.modules, name, recipe if name == recipe.__name__
                            else types.ModuleType(name))
    src = tmp_path / "te.pt"
    torch.save({"w": torch.arange(4.0), "l._extra_state": {"recipe": DelayedScaling(2)}}, src)
    for name in ("transformer_engine", "transformer_engine.common", recipe.__name__):
        monkeypatch.delitem(sys.modules, name)
    result = lcd("convert", src, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "l._extra_state" in result.output
    assert_same_tensors(tmp_path / "out", {"w": torch.arange(4.0)})


def test_sizes_and_shard_plans() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("4096") == 4096 and parse_size("1.5 kB") == 1500
    for bad in ("five", "0", "-3MB", "5 parsecs"):
        with pytest.raises(LcdError):
            parse_size(bad)
    assert plan_shards([("a", 5), ("b", 5), ("c", 20), ("d", 1)], 10) == [["a", "b"], ["c"],
                                                                          ["d"]]
    assert plan_shards([("a", 5)], 1) == [["a"]]


def test_a_stem_without_parts_is_no_such_file(tmp_path: Path) -> None:
    with pytest.raises(LcdError, match="no split parts"):
        resolve_sources([tmp_path / "nothing.pt"])


def test_a_converted_folder_distills_and_keeps_its_record(pt: Path, tmp_path: Path) -> None:
    folder = tmp_path / "evo2"
    assert lcd("convert", pt, "-o", folder, "--max-shard-size", "20kB").exit_code == 0
    out = tmp_path / "evo2-lcd"
    result = lcd("distill", folder, "--family", "evo2-mr", "--order", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (out / "lcd.convert.yaml").read_text() == (folder / "lcd.convert.yaml").read_text()
    with open_checkpoint(out) as ckpt:
        assert "blocks.1.filter.ssm.poles" in ckpt and "blocks.1.filter.h" not in ckpt
        assert raw(ckpt.get("unembed.weight")) == raw(ckpt.get("embedding_layer.weight"))
