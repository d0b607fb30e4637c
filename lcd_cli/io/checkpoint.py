"""Reading and writing safetensors checkpoints, lazily and safely.

Reading: a single ``.safetensors`` file, a sharded checkpoint's ``*.safetensors.index.json``,
or the folder holding either. Headers are parsed and validated here (so a truncated or lying
file gets a precise message); tensors are loaded one key at a time through ``safe_open``.

Writing: :func:`write_safetensors` streams one file tensor by tensor (raw bytes of untouched
tensors are copied from the input, so they stay bit-identical), into a temporary name that
is renamed at the end, so memory stays bounded by the largest tensor and no partial file is
ever left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from lcd_cli.errors import LcdError

# safetensors dtype -> (bytes per element, torch dtype)
DTYPES: dict[str, tuple[int, torch.dtype | None]] = {
    "F64": (8, torch.float64),
    "F32": (4, torch.float32),
    "F16": (2, torch.float16),
    "BF16": (2, torch.bfloat16),
    "I64": (8, torch.int64),
    "I32": (4, torch.int32),
    "I16": (2, torch.int16),
    "I8": (1, torch.int8),
    "U8": (1, torch.uint8),
    "BOOL": (1, torch.bool),
    "C64": (8, torch.complex64),
    "F8_E4M3": (1, getattr(torch, "float8_e4m3fn", None)),
    "F8_E5M2": (1, getattr(torch, "float8_e5m2", None)),
    "U16": (2, None),
    "U32": (4, None),
    "U64": (8, None),
}
TORCH_TO_ST = {v[1]: k for k, v in DTYPES.items() if v[1] is not None}
MAX_HEADER = 100_000_000
_COPY_BLOCK = 64 << 20


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its shard, dtype, shape and byte range in the shard."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: Path
    begin: int  # absolute byte offset in the shard file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without loading any tensor data."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LcdError(
                    f"not a safetensors file: only {size} bytes, too short for the 8-byte header "
                    "length", file=path, hint="check that the download or copy completed",
                )
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise LcdError(
                    f"not a safetensors file or truncated: the header claims {n} bytes but the "
                    f"file has {size}", file=path,
                    hint="re-download or re-export the checkpoint",
                )
            raw = f.read(n)
    except OSError as e:
        raise LcdError(f"cannot read the file ({e.strerror})", file=path) from e
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LcdError(f"the header is not valid JSON ({e})", file=path,
                       hint="the file is corrupt or not a safetensors file") from e
    if not isinstance(header, dict):
        raise LcdError("the header is not a JSON object", file=path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise LcdError("__metadata__ must map strings to strings", file=path)
    data_start, data_size = 8 + n, size - 8 - n
    infos: dict[str, TensorInfo] = {}
    problems: list[str] = []
    for name, entry in header.items():
        try:
            dtype, shape, (b, e) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            problems.append(f"'{name}': malformed entry {entry!r}")
            continue
        if dtype not in DTYPES:
            problems.append(f"'{name}': unknown dtype {dtype}")
            continue
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            problems.append(f"'{name}': bad shape {list(shape)}")
            continue
        want = math.prod(shape) * DTYPES[dtype][0]
        if not (isinstance(b, int) and isinstance(e, int)) or e - b != want or b < 0:
            problems.append(f"'{name}': data_offsets [{b}, {e}] do not match {dtype} {list(shape)} "
                            f"({want} bytes)")
            continue
        if e > data_size:
            problems.append(f"'{name}': data ends at byte {e} but the file holds {data_size} "
                            "bytes of data (truncated?)")
            continue
        infos[name] = TensorInfo(name, dtype, shape, path, data_start + b, data_start + e)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10
                                            else "")
        raise LcdError(f"the header is inconsistent with the data: {shown}", file=path,
                       hint="the file is truncated or corrupt; re-download or re-export it")
    return infos, meta


class Checkpoint:
    """A lazily read checkpoint: one file or several shards behind an index.

    Use as a context manager (``with open_checkpoint(path) as ckpt:``) so open shard
    handles are released; reading works without it too.
    """

    def __init__(self, source: Path, shards: list[Path], index: Path | None) -> None:
        self.source = source
        self.index = index
        self.shards = shards
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        for shard in shards:
            infos, meta = read_header(shard)
            for name in infos:
                if name in self.tensors:
                    raise LcdError(f"tensor stored twice: in '{self.tensors[name].shard.name}' and "
                                   f"'{shard.name}'", file=index or shard, key=name)
            self.tensors.update(infos)
            self.metadata.update(meta)
        self._handles: dict[Path, object] = {}

    @property
    def sharded(self) -> bool:
        return self.index is not None

    @property
    def files(self) -> list[Path]:
        """Every file making up the checkpoint (index first, then shards)."""
        return ([self.index] if self.index else []) + self.shards

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def info(self, key: str) -> TensorInfo:
        try:
            return self.tensors[key]
        except KeyError:
            raise LcdError("no such tensor in the checkpoint", file=self.source, key=key) from None

    def get(self, key: str, dtype: torch.dtype | None = None, *, finite: bool = True) -> torch.Tensor:
        """Load one tensor (a private copy, never a view of the mapped file).

        Args:
            dtype: convert to this dtype (e.g. float64 for kernel math).
            finite: raise LcdError when a floating tensor holds NaN or Inf.
        """
        info = self.info(key)
        handle = self._handles.get(info.shard)
        if handle is None:
            try:
                handle = safe_open(str(info.shard), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise LcdError(f"safetensors cannot open the file ({e})", file=info.shard) from e
            self._handles[info.shard] = handle
        tensor = handle.get_tensor(key)  # type: ignore[attr-defined]
        tensor = tensor.to(dtype) if dtype is not None else tensor.clone()
        if finite and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise LcdError(f"{bad} of {tensor.numel()} values are NaN or Inf", file=info.shard,
                           key=key, hint="the checkpoint is damaged or diverged in training")
        return tensor

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a ``.safetensors`` file, a ``*.safetensors.index.json``, or a folder holding one."""
    path = Path(path)
    if not path.exists():
        raise LcdError("no such file or folder", file=path)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        singles = sorted(path.glob("*.safetensors"))
        if len(indexes) == 1:
            path = indexes[0]
        elif len(indexes) > 1:
            raise LcdError(f"the folder holds several indexes ({', '.join(p.name for p in indexes)})",
                           file=path, hint="pass the index file you mean")
        elif len(singles) == 1:
            path = singles[0]
        else:
            raise LcdError(f"the folder holds {len(singles)} .safetensors files and no index",
                           file=path, hint="pass one .safetensors file or a *.safetensors.index.json")
    if path.name.endswith(".json"):
        return Checkpoint(path, _index_shards(path), path)
    return Checkpoint(path, [path], None)


def _index_shards(index: Path) -> list[Path]:
    try:
        doc = json.loads(index.read_text())
        weight_map = doc["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to shard file names")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise LcdError(f"not a valid safetensors index ({type(e).__name__}: {e})", file=index,
                       hint="an index is JSON with a 'weight_map' of tensor name -> shard file") from e
    names = list(dict.fromkeys(weight_map.values()))
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise LcdError(f"the index names shard(s) that do not exist: {', '.join(missing)}",
                       file=index, hint="copy every shard next to the index")
    shards = [index.parent / n for n in names]
    ckpt_keys: dict[str, str] = {}
    for shard in shards:
        for name in read_header(shard)[0]:
            ckpt_keys[name] = shard.name
    wrong = [k for k, v in weight_map.items() if ckpt_keys.get(k) != v]
    if wrong:
        raise LcdError(f"{len(wrong)} tensor(s) of the weight_map are not in the shard it names, "
                       f"e.g. '{wrong[0]}'", file=index, hint="regenerate the index")
    return shards


def sha256_files(paths: Iterable[Path]) -> str:
    """One sha256 over the bytes of several files, in order."""
    digest = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            while block := f.read(_COPY_BLOCK):
                digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class OutEntry:
    """One tensor of an output file: raw bytes copied from an input, or a tensor made here."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: TensorInfo | None = None  # copy these bytes verbatim
    make: Callable[[], torch.Tensor] | None = None  # or produce the tensor when its turn comes

    @staticmethod
    def copy(info: TensorInfo, name: str | None = None) -> OutEntry:
        return OutEntry(name or info.name, info.dtype, info.shape, source=info)

    @staticmethod
    def tensor(name: str, value: torch.Tensor) -> OutEntry:
        return OutEntry(name, TORCH_TO_ST[value.dtype], tuple(value.shape), make=lambda: value)


def write_safetensors(path: Path, entries: list[OutEntry], metadata: dict[str, str]) -> None:
    """Stream a safetensors file: header, then each tensor in order. Not atomic by itself:
    call it on a temporary path (see :func:`atomic_output`)."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for e in entries:
        nbytes = math.prod(e.shape) * DTYPES[e.dtype][0]
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                          "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for e in entries:
            if e.source is not None:
                _copy_range(e.source, out)
            else:
                assert e.make is not None
                value = e.make().detach().to("cpu").contiguous()
                if TORCH_TO_ST[value.dtype] != e.dtype or tuple(value.shape) != e.shape:
                    raise ValueError(f"{e.name}: produced {value.dtype} {tuple(value.shape)}, "
                                     f"planned {e.dtype} {e.shape}")
                out.write(_tensor_bytes(value))
        out.flush()
        os.fsync(out.fileno())


def _tensor_bytes(value: torch.Tensor) -> bytes:
    flat = value.reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()  # native little-endian on supported hosts


def _copy_range(info: TensorInfo, out: object) -> None:
    with info.shard.open("rb") as src:
        src.seek(info.begin)
        left = info.nbytes
        while left:
            block = src.read(min(left, _COPY_BLOCK))
            if not block:
                raise LcdError("the file ended while copying a tensor", file=info.shard,
                               key=info.name)
            out.write(block)  # type: ignore[attr-defined]
            left -= len(block)


def write_index(path: Path, weight_map: dict[str, str], total_size: int,
                metadata: dict[str, str]) -> None:
    doc = {"metadata": {"total_size": total_size, **metadata}, "weight_map": weight_map}
    path.write_text(json.dumps(doc, indent=2) + "\n")


@contextlib.contextmanager
def atomic_output(target: Path, *, force: bool, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    Refuses an existing target unless ``force``. On any error the temporary is removed and
    the old target (if any) is left untouched.
    """
    target = Path(target)
    if target.exists() and not force:
        raise LcdError("the output already exists", file=target,
                       hint="pass --force to overwrite it, or choose another --output")
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
