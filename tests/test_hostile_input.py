"""Hostile or unusual checkpoints: special files, duplicate JSON keys, an index that disagrees
with its shards, and every dtype of the safetensors spec (sub-byte ones included) carried byte
for byte. Files are written by hand here (``raw_file``), not by lcd's writer."""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lcd_cli.errors import LcdError
from lcd_cli.io.checkpoint import OutEntry, open_checkpoint, write_safetensors
from tests.conftest import lcd

Raw = dict[str, tuple[str, list[int], bytes]]


def raw_file(path: Path, tensors: Raw, meta: dict[str, str] | None = None,
             header_text: str | None = None) -> Path:
    """A safetensors file from (dtype, shape, bytes) per tensor, or from a verbatim header."""
    header: dict[str, object] = {"__metadata__": meta} if meta else {}
    offset, data = 0, b""
    for name, (dtype, shape, blob) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset, data = offset + len(blob), data + blob
    raw = (header_text if header_text is not None else json.dumps(header)).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def entry(dtype: str, shape: list[int], begin: int, end: int) -> str:
    return json.dumps({"dtype": dtype, "shape": shape, "data_offsets": [begin, end]})


def returns_promptly(call: Callable[[], object], seconds: float = 20.0) -> BaseException | None:
    """Run call() in a thread; fail if it is still blocked after ``seconds``. Its exception."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:
            caught.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked (opened a FIFO?)"
    return caught[0] if caught else None


# ----------------------------------------------------------------------------- special files


@pytest.mark.parametrize("where", ["file", "in-folder", "index", "shard"])
def test_fifo_is_refused_without_blocking(tmp_path: Path, where: str) -> None:
    fifo = tmp_path / {"index": "model.safetensors.index.json", "shard": "s.safetensors"}.get(
        where, "model.safetensors")
    os.mkfifo(fifo)
    arg = {"file": fifo, "in-folder": tmp_path, "index": fifo}.get(where)
    if where == "shard":
        arg = tmp_path / "model.safetensors.index.json"
        arg.write_text(json.dumps({"weight_map": {"x": "s.safetensors"}}))
    try:
        err = returns_promptly(lambda: open_checkpoint(arg))
    finally:  # unblock a regressed reader: opening the write end releases a blocked open
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    assert isinstance(err, LcdError), err
    assert "FIFO" in err.message and str(fifo) in err.message


def test_device_is_refused() -> None:
    with pytest.raises(LcdError, match="a character device, not a regular file"):
        open_checkpoint("/dev/null")


def test_folder_named_like_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").mkdir()
    with pytest.raises(LcdError, match="is a folder, not a regular file"):
        open_checkpoint(tmp_path)


# ----------------------------------------------------------------------------- duplicate keys

X = entry("F32", [1], 0, 4)


@pytest.mark.parametrize(("header", "key"), [
    ('{"w": ' + X + ', "w": ' + X + '}', "w"),
    ('{"w": {"dtype": "F32", "dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}', "dtype"),
    ('{"__metadata__": {"format": "pt", "format": "np"}, "w": ' + X + '}', "format"),
], ids=["tensor-twice", "field-twice", "metadata-twice"])
def test_duplicate_header_key_is_refused(tmp_path: Path, header: str, key: str) -> None:
    path = raw_file(tmp_path / "d.safetensors", {"w": ("F32", [1], b"\0" * 4)}, header_text=header)
    with pytest.raises(LcdError, match="gives the key twice") as e:
        open_checkpoint(path)
    assert f"key '{key}'" in e.value.message and str(path) in e.value.message


def sharded(tmp_path: Path, weight_map_text: str) -> Path:
    raw_file(tmp_path / "a.safetensors", {"x": ("F32", [1], b"\0" * 4), "y": ("F32", [1], b"\0" * 4)})
    raw_file(tmp_path / "b.safetensors", {"z": ("F32", [1], b"\0" * 4)})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"metadata": {}, "weight_map": ' + weight_map_text + "}")
    return index


def test_duplicate_weight_map_key_is_refused(tmp_path: Path) -> None:
    index = sharded(tmp_path, '{"x": "a.safetensors", "y": "a.safetensors", "x": "b.safetensors", '
                              '"z": "b.safetensors"}')
    with pytest.raises(LcdError, match="gives the key twice") as e:
        open_checkpoint(index)
    assert "key 'x'" in e.value.message


# ----------------------------------------------------------------------------- index vs shards


def test_consistent_index_opens(tmp_path: Path) -> None:
    index = sharded(tmp_path, '{"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}')
    assert sorted(open_checkpoint(index).keys()) == ["x", "y", "z"]


def test_tensor_missing_from_weight_map_is_refused(tmp_path: Path) -> None:
    index = sharded(tmp_path, '{"x": "a.safetensors", "z": "b.safetensors"}')
    with pytest.raises(LcdError, match="missing from the weight_map") as e:
        open_checkpoint(index)
    assert "'y' in 'a.safetensors'" in e.value.message and str(index) in e.value.message


def test_weight_map_naming_the_wrong_shard(tmp_path: Path) -> None:
    index = sharded(tmp_path, '{"x": "a.safetensors", "y": "b.safetensors", "z": "b.safetensors"}')
    with pytest.raises(LcdError, match="not in the shard it names") as e:
        open_checkpoint(index)
    assert "'y' (it is in 'a.safetensors')" in e.value.message


@pytest.mark.parametrize("name", ["../a.safetensors", "/etc/passwd", "sub/a.safetensors", ""])
def test_shard_outside_the_index_folder(tmp_path: Path, name: str) -> None:
    index = sharded(tmp_path, json.dumps({"x": name, "y": "a.safetensors", "z": "b.safetensors"}))
    with pytest.raises(LcdError, match="outside its folder"):
        open_checkpoint(index)


# ----------------------------------------------------------------------------- dtypes

# (dtype, shape, bytes, torch can load it as numbers)
ACCEPTED = [
    ("F8_E8M0", [4], bytes([0, 1, 127, 254]), True),
    ("F4", [2, 4], bytes([0x12, 0x34, 0x56, 0x78]), False),  # 8 x 4 bits
    ("F4", [0], b"", False),
    ("F6_E2M3", [4], bytes([1, 2, 3]), False),  # 4 x 6 bits = 3 bytes
    ("F6_E3M2", [2, 4], bytes(range(6)), False),
    ("F8_E4M3FNUZ", [3], bytes([8, 16, 24]), True),
    ("F8_E5M2FNUZ", [1], bytes([60]), True),
    ("Q7", [2], bytes([5, 6]), False),  # unknown to the spec: opaque, 8 bits per element
    ("Q7", [2, 2], bytes(range(2)), False),  # 4 bits per element
]
REFUSED = [
    ("F4", [3], b"\0\0", "12 bits, not a whole number of bytes"),
    ("F6_E2M3", [5], b"\0" * 4, "30 bits, not a whole number of bytes"),
    ("F4", [2, 4], b"\0" * 3, "do not match F4 [2, 4] (4 bytes)"),
    ("F8_E8M0", [4], b"\0" * 5, "do not match F8_E8M0 [4] (4 bytes)"),
    ("Q7", [3], b"\0", "cannot hold [3] elements of the unknown dtype Q7"),
    ("Q7", [0], b"\0", "cannot hold [0] elements"),
    ("q 7", [1], b"\0", "malformed dtype"),
]


def ids(rows: list[tuple]) -> list[str]:
    return [f"{r[0]}-{'x'.join(map(str, r[1])) or 'scalar'}-{len(r[2])}B" for r in rows]


@pytest.mark.parametrize(("dtype", "shape", "blob", "numeric"), ACCEPTED, ids=ids(ACCEPTED))
def test_every_dtype_is_carried_byte_for_byte(tmp_path: Path, dtype: str, shape: list[int],
                                              blob: bytes, numeric: bool) -> None:
    src = raw_file(tmp_path / "in.safetensors", {"before": ("F32", [1], b"\0\0\x80\x3f"),
                                                  "odd": (dtype, shape, blob),
                                                  "after": ("I8", [3], b"\1\2\3")})
    ckpt = open_checkpoint(src)
    info = ckpt.info("odd")
    assert (info.dtype, info.shape, info.nbytes, info.loadable) == (dtype, tuple(shape), len(blob), numeric)
    out = tmp_path / "out.safetensors"
    write_safetensors(out, [OutEntry.copy(i) for i in ckpt.tensors.values()], {})
    copy = open_checkpoint(out).info("odd")
    data = out.read_bytes()
    assert (copy.dtype, copy.shape) == (dtype, tuple(shape)) and data[copy.begin:copy.end] == blob
    assert open_checkpoint(out).get("after").tolist() == [1, 2, 3]  # later offsets still right
    if not numeric:
        with pytest.raises(LcdError, match=f"dtype {dtype} cannot be loaded as numbers") as e:
            ckpt.get("odd")
        assert "key 'odd'" in e.value.message


@pytest.mark.parametrize(("dtype", "shape", "blob", "needle"), REFUSED, ids=ids(REFUSED))
def test_inconsistent_dtype_sizes_are_refused(tmp_path: Path, dtype: str, shape: list[int],
                                              blob: bytes, needle: str) -> None:
    path = raw_file(tmp_path / "bad.safetensors", {"odd": (dtype, shape, blob)})
    with pytest.raises(LcdError, match="inconsistent with the data") as e:
        open_checkpoint(path)
    assert needle in e.value.message and "'odd'" in e.value.message


def test_f8_e8m0_values(tmp_path: Path) -> None:
    # E8M0 is a bare biased exponent: 2 ** (byte - 127); 0xFF is NaN.
    codes = [0, 1, 126, 127, 128, 254]
    path = raw_file(tmp_path / "s.safetensors", {"scale": ("F8_E8M0", [2, 3], bytes(codes))})
    got = open_checkpoint(path).get("scale", torch.float64)
    want = torch.tensor([2.0 ** (c - 127) for c in codes], dtype=torch.float64).reshape(2, 3)
    assert torch.equal(got, want)
    nan = raw_file(tmp_path / "n.safetensors", {"scale": ("F8_E8M0", [2], bytes([127, 255]))})
    with pytest.raises(LcdError, match="1 of 2 values are NaN or Inf"):
        open_checkpoint(nan).get("scale")


def test_reference_reader_agrees_on_our_copy(tmp_path: Path) -> None:
    blob4, blob8 = bytes([0x21, 0x43]), bytes([120, 127, 130])
    src = raw_file(tmp_path / "in.safetensors", {"w4": ("F4", [4], blob4), "s": ("F8_E8M0", [3], blob8)})
    out = tmp_path / "out.safetensors"
    write_safetensors(out, [OutEntry.copy(i) for i in open_checkpoint(src).tensors.values()], {})
    with safe_open(str(out), "pt") as f:  # safetensors' own reader (F4 packs two per element)
        assert f.get_tensor("w4").view(torch.uint8).flatten().tolist() == list(blob4)
        assert f.get_tensor("s").view(torch.uint8).tolist() == list(blob8)


def test_distill_carries_quantization_tensors(write_ckpt, tmp_path: Path) -> None:
    """A checkpoint with MX-style F4 blocks and F8_E8M0 scales next to its long convolutions
    distils, with those tensors copied byte for byte."""
    base = open_checkpoint(write_ckpt("hyenadna"))
    data = base.tensors
    src_bytes = (tmp_path / "model.safetensors").read_bytes()
    tensors: Raw = {k: (i.dtype, list(i.shape), src_bytes[i.begin:i.end]) for k, i in data.items()}
    extra: Raw = {"quant.blocks": ("F4", [4, 8], bytes(range(16))),
                  "quant.scales": ("F8_E8M0", [4], bytes([120, 125, 127, 130]))}
    src = raw_file(tmp_path / "mx.safetensors", tensors | extra, meta={"format": "pt"})
    out, rep = tmp_path / "mx.lcd.safetensors", tmp_path / "mx.report.yaml"
    result = lcd("distill", src, "--order", "4", "-o", out, "--report", rep, "--device", "cpu")
    assert result.exit_code == 0, result.output
    written = open_checkpoint(out)
    blob = out.read_bytes()
    for key, (dtype, shape, raw) in extra.items():
        info = written.info(key)
        assert (info.dtype, list(info.shape), blob[info.begin:info.end]) == (dtype, shape, raw), key
