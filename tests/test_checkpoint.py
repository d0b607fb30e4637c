"""Checkpoint reading and writing: lazy headers, shards, streaming writes, atomicity."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lcd_cli.errors import LcdError
from lcd_cli.io.checkpoint import OutEntry, atomic_output, open_checkpoint, write_safetensors


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 4, generator=g),
        "b.half": torch.randn(5, generator=g).half(),
        "c.bf16": torch.randn(2, 2, generator=g).bfloat16(),
        "d.f64": torch.randn(7, generator=g, dtype=torch.float64),
        "e.int": torch.arange(6).reshape(2, 3),
        "f.empty": torch.zeros(0, 3),
    }


def test_stream_writer_roundtrip_matches_safetensors(tmp_path: Path) -> None:
    src = tensors()
    path = tmp_path / "x.safetensors"
    write_safetensors(path, [OutEntry.tensor(k, v) for k, v in src.items()], {"format": "pt"})
    back = load_file(str(path))  # the reference reader
    assert set(back) == set(src)
    for k, v in src.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_copy_is_bit_identical_and_lazy(write_ckpt, tmp_path: Path) -> None:
    path = write_ckpt(tensors())
    ckpt = open_checkpoint(path)
    assert ckpt.info("c.bf16").dtype == "BF16" and ckpt.info("a.weight").shape == (3, 4)
    out = tmp_path / "copy.safetensors"
    write_safetensors(out, [OutEntry.copy(i) for i in ckpt.tensors.values()], {})
    a, b = load_file(str(path)), load_file(str(out))
    for k in a:
        assert torch.equal(a[k].view(torch.uint8) if a[k].numel() else a[k],
                           b[k].view(torch.uint8) if b[k].numel() else b[k]), k


def test_sharded_index_and_folder(write_ckpt) -> None:
    index = write_ckpt(tensors(), name="sharded", shards=3)
    for source in (index, index.parent):
        ckpt = open_checkpoint(source)
        assert ckpt.sharded and len(ckpt.shards) == 3
        assert set(ckpt.keys()) == set(tensors())
        assert torch.equal(ckpt.get("d.f64"), tensors()["d.f64"])


def _bad(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _header(entries: dict, data: bytes) -> bytes:
    raw = json.dumps(entries).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    ("name", "make", "needle"),
    [
        ("empty", lambda p: _bad(p, "e.safetensors", b""), "too short"),
        ("not-safetensors", lambda p: _bad(p, "t.safetensors", b"hello world, not a model"),
         "header claims"),
        ("bad-json", lambda p: _bad(p, "j.safetensors", struct.pack("<Q", 4) + b"{{{{"),
         "not valid JSON"),
        ("lying-sizes", lambda p: _bad(p, "l.safetensors", _header(
            {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16)),
         "do not match"),
        ("truncated-data", lambda p: _bad(p, "d.safetensors", _header(
            {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)),
         "truncated"),
        ("unknown-dtype-misfit", lambda p: _bad(p, "u.safetensors", _header(
            {"x": {"dtype": "Q7", "shape": [3], "data_offsets": [0, 1]}}, b"\0")),
         "unknown dtype Q7"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, name: str, make, needle: str) -> None:
    path = make(tmp_path)
    with pytest.raises(LcdError) as e:
        open_checkpoint(path)
    assert needle in e.value.message and str(path) in e.value.message


def test_truncated_real_file(write_ckpt) -> None:
    path = write_ckpt(tensors())
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(LcdError, match="truncated"):
        open_checkpoint(path)


def test_index_with_missing_shard(write_ckpt) -> None:
    index = write_ckpt(tensors(), name="sharded", shards=2)
    shard = sorted(index.parent.glob("*-of-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(LcdError, match="do not exist") as e:
        open_checkpoint(index)
    assert shard.name in e.value.message


def test_index_not_json(tmp_path: Path) -> None:
    p = tmp_path / "model.safetensors.index.json"
    p.write_text("{nope")
    with pytest.raises(LcdError, match="not a valid safetensors index"):
        open_checkpoint(p)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(LcdError, match="no such file"):
        open_checkpoint(tmp_path / "nope.safetensors")


def test_nan_tensor_is_refused(write_ckpt) -> None:
    t = tensors()
    t["a.weight"][1, 2] = float("nan")
    ckpt = open_checkpoint(write_ckpt(t))
    with pytest.raises(LcdError, match="NaN or Inf") as e:
        ckpt.get("a.weight")
    assert "a.weight" in e.value.message


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError), atomic_output(target, force=False) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_refuses_existing_without_force(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(LcdError, match="--force"), atomic_output(target, force=False):
        pass
    assert target.read_bytes() == b"keep me"
    with atomic_output(target, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
                                   torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", [(), (63,), (0, 3), (7, 1000)], ids=["scalar", "63", "0x3", "7x1000"])
def test_get_matches_the_reference_reader(tmp_path: Path, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(3)
    values = (torch.randn(shape, generator=g, dtype=torch.float64) * 4).to(dtype)
    path = tmp_path / "x.safetensors"
    write_safetensors(path, [OutEntry.tensor("pad", torch.ones(3, dtype=torch.int8)),  # odd offset
                             OutEntry.tensor("x", values)], {})
    ref = load_file(str(path))["x"]
    got = open_checkpoint(path).get("x", finite=False)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert got.reshape(-1).view(torch.uint8).tolist() == ref.reshape(-1).view(torch.uint8).tolist()
