"""Reading and writing safetensors checkpoints, lazily and safely.

Reading: a single ``.safetensors`` file, a sharded checkpoint's ``*.safetensors.index.json``,
or the folder holding either. Headers are parsed and validated here (so a truncated or lying
file gets a precise message); tensors are loaded one key at a time, by reading their byte range.
Hostile input is refused with an LcdError naming the file: a path that is not a regular file
(a FIFO would block forever, a device could be anything) before it is opened; a JSON object
with a key given twice (a header entry, an index's ``weight_map``); an index whose
``weight_map`` and shards disagree either way; shard names that leave the index's folder.

Dtypes: every dtype of the safetensors spec has a size in bits (:data:`BITS`, as the spec's
``Dtype::bitsize``), so a header entry's byte range is checked against its shape: the bits
``numel * bits`` must be a whole number of bytes (for the sub-byte F4 / F6_* dtypes too) equal
to the range. A dtype name the spec does not know (a newer writer's) is *opaque*: its range is
only checked to hold a whole number of bits per element. Tensors of any dtype are copied byte
for byte; only the dtypes of :data:`TORCH_DTYPES` can be loaded as numbers (an LcdError names the
tensor otherwise).

Writing: :func:`write_safetensors` streams one file tensor by tensor (raw bytes of untouched
tensors are copied from the input, so they stay bit-identical, whatever their dtype), to a path
given by an :class:`~lcd_cli.io.transaction.OutputTransaction`, which renames it into place
at the end, so memory stays bounded by the largest tensor and no partial file is ever left.
Tensor bytes are written and read in the host's order: little-endian, as the format requires.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from lcd_cli.errors import LcdError
from lcd_cli.io.oserrors import os_error
from lcd_cli.io.transaction import atomic_output as atomic_output  # re-exported for its callers
from lcd_cli.numerics.finite import all_finite, count_nonfinite

# safetensors dtype -> bits per element (the spec's Dtype::bitsize, safetensors >= 0.6)
BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "F64": 64, "I64": 64, "U64": 64,
}
# safetensors dtype -> torch dtype, for the dtypes this torch build can load as numbers
# (not the packed sub-byte ones: their "elements" are not torch elements).
TORCH_DTYPES: dict[str, torch.dtype] = {
    name: dt for name, attr in (
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("I64", "int64"), ("I32", "int32"), ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"),
        ("BOOL", "bool"), ("C64", "complex64"), ("F8_E4M3", "float8_e4m3fn"),
        ("F8_E5M2", "float8_e5m2"), ("F8_E8M0", "float8_e8m0fnu"),
        ("F8_E4M3FNUZ", "float8_e4m3fnuz"), ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
        ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"),
    ) if (dt := getattr(torch, attr, None)) is not None
}
TORCH_TO_ST = {v: k for k, v in TORCH_DTYPES.items()}
# Whole-byte dtypes -> (bytes per element, torch dtype or None); kept for older callers, prefer
# tensor_nbytes() / OutEntry.nbytes, which also know the sub-byte dtypes.
DTYPES: dict[str, tuple[int, torch.dtype | None]] = {
    k: (b // 8, TORCH_DTYPES.get(k)) for k, b in BITS.items() if b % 8 == 0
}
_FLOATS_CHECKED_NATIVELY = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
_DTYPE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,31}")  # what a dtype name looks like, known or not
_MAX_OPAQUE_BITS = 128  # widest element an unknown dtype is believed to have (e.g. complex128)
MAX_HEADER = 100_000_000  # the spec's MAX_HEADER_SIZE
MAX_INDEX = 100_000_000  # an index is a name -> file map: far smaller in practice
_COPY_BLOCK = 64 << 20


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of a spec dtype; LcdError when the bits are not whole bytes."""
    nbits = math.prod(shape) * BITS[dtype]
    if nbits % 8:
        raise LcdError(f"a {dtype} tensor of shape {list(shape)} is {nbits} bits, not a whole "
                       "number of bytes")
    return nbits // 8


def _open_regular(path: Path, what: str = "file") -> IO[bytes]:
    """Open a regular file for reading, refusing FIFOs, sockets, devices and folders before
    opening them (a FIFO would block, a device may act on open); race-free via fstat."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise LcdError(f"the {what} is {_kind(st.st_mode)}, not a regular file", file=path,
                           hint="give the path of a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never blocks on a FIFO
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the stat
                raise LcdError(f"the {what} is not a regular file", file=path)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
    except OSError as e:
        raise os_error(e, path, f"cannot read the {what}") from e


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # rare: find the key given twice
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def _loads(raw: bytes | str, path: Path, what: str, invalid: str, hint: str) -> Any:
    """json.loads refusing a key given twice in any object (JSON readers differ on which wins);
    ``invalid`` starts the message for text that is not JSON."""
    try:
        return json.loads(raw, object_pairs_hook=_unique_object)
    except _DuplicateKey as e:
        raise LcdError(f"the {what} gives the key twice (readers disagree on which entry wins)",
                       file=path, key=e.key, hint="re-export the file; keys must be unique") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LcdError(f"{invalid} ({e})", file=path, hint=hint) from e


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

    @property
    def loadable(self) -> bool:
        """Whether :meth:`Checkpoint.get` can load it as numbers (else it is only copied)."""
        return self.dtype in TORCH_DTYPES


def _entry_problem(name: str, entry: object, data_size: int) -> str | tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of a valid header entry, else what is wrong with it."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        return f"'{name}': malformed entry {entry!r} (want dtype, shape, data_offsets)"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or not _DTYPE_NAME.fullmatch(dtype):
        return f"'{name}': malformed dtype {dtype!r}"
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        return f"'{name}': bad shape {shape!r}"
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets)):
        return f"'{name}': bad data_offsets {offsets!r}"
    b, e = offsets
    shape_t, numel = tuple(shape), math.prod(shape)
    if dtype in BITS:
        nbits = numel * BITS[dtype]
        if nbits % 8:
            return (f"'{name}': {dtype} {shape} is {nbits} bits, not a whole number of bytes "
                    "(the safetensors spec refuses such a tensor)")
        if e - b != nbits // 8 or b < 0:
            return (f"'{name}': data_offsets [{b}, {e}] do not match {dtype} {shape} "
                    f"({nbits // 8} bytes)")
    elif b < 0 or e < b or (numel == 0 and e != b) or (
            numel and (8 * (e - b) % numel or not 1 <= 8 * (e - b) // numel <= _MAX_OPAQUE_BITS)):
        return (f"'{name}': data_offsets [{b}, {e}] cannot hold {shape} elements of the unknown "
                f"dtype {dtype} (not a whole number of bits, 1 to {_MAX_OPAQUE_BITS}, per element)")
    if e > data_size:
        return (f"'{name}': data ends at byte {e} but the file holds {data_size} bytes of data "
                "(truncated?)")
    return dtype, shape_t, b, e


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without loading any tensor data."""
    with _open_regular(path, "checkpoint file") as f:
        try:
            size = os.fstat(f.fileno()).st_size
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
            raise os_error(e, path, "cannot read the checkpoint file") from e
    header = _loads(raw, path, "header", "the header is not valid JSON",
                    "the file is corrupt or not a safetensors file")
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
        found = _entry_problem(name, entry, data_size)
        if isinstance(found, str):
            problems.append(found)
            continue
        dtype, shape, b, e = found
        infos[name] = TensorInfo(name, dtype, shape, path, data_start + b, data_start + e)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10
                                            else "")
        raise LcdError(f"the header is inconsistent with the data: {shown}", file=path,
                       hint="the file is truncated or corrupt; re-download or re-export it")
    return infos, meta


class Checkpoint:
    """A lazily read checkpoint: one file or several shards behind an index.

    Use as a context manager (``with open_checkpoint(path) as ckpt:``) so the shard files
    opened for reading are closed; reading works without it too.
    """

    def __init__(self, source: Path, shards: list[Path], index: Path | None,
                 weight_map: dict[str, str] | None = None) -> None:
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
        if index is not None and weight_map is not None:
            _check_weight_map(index, weight_map, self.tensors)
        self._files: dict[Path, IO[bytes]] = {}

    @property
    def sharded(self) -> bool:
        return self.index is not None

    @property
    def files(self) -> list[Path]:
        """Every file making up the checkpoint (index first, then shards)."""
        return ([self.index] if self.index else []) + self.shards

    @property
    def inputs(self) -> list[Path]:
        """What no output may overwrite or enter: the files, and a sharded checkpoint's folder."""
        return self.files + ([self.index.parent] if self.index else [])

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
        """Load one tensor (a private copy, never a view of the file).

        Args:
            dtype: convert to this dtype (e.g. float64 for kernel math).
            finite: raise LcdError when a floating tensor holds NaN or Inf.
        """
        info = self.info(key)
        if not info.loadable:
            raise LcdError(f"the tensor's dtype {info.dtype} cannot be loaded as numbers (lcd "
                           "copies such tensors byte for byte, but cannot compute with them)",
                           file=info.shard, key=key,
                           hint="this tensor cannot be a kernel generator or a skip term")
        f = self._files.get(info.shard)
        if f is None:
            f = self._files[info.shard] = _open_regular(info.shard, "checkpoint file")
        tensor = _read_range(info, f).view(TORCH_DTYPES[info.dtype]).reshape(info.shape)  # (*shape)
        if dtype is not None:
            tensor = tensor.to(dtype)
        if finite and tensor.is_floating_point():
            check = tensor if tensor.dtype in _FLOATS_CHECKED_NATIVELY else tensor.float()
            if not all_finite(check):
                bad = count_nonfinite(check)
                raise LcdError(f"{bad} of {tensor.numel()} values are NaN or Inf", file=info.shard,
                               key=key, hint="the checkpoint is damaged or diverged in training")
        return tensor

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_range(info: TensorInfo, f: IO[bytes]) -> torch.Tensor:
    """The bytes of one tensor, read from its open shard into a fresh uint8 tensor (nbytes,)."""
    buf = torch.empty(info.nbytes, dtype=torch.uint8)  # (nbytes,) not zero-filled
    view = memoryview(buf.numpy()) if info.nbytes else memoryview(b"")
    try:
        f.seek(info.begin)
        got = 0
        while got < info.nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise LcdError("the file ended while reading a tensor (truncated since it was "
                               "opened?)", file=info.shard, key=info.name)
            got += n
    except OSError as e:
        raise os_error(e, info.shard, f"cannot read the tensor '{info.name}'") from e
    return buf


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
        shards, weight_map = _read_index(path)
        return Checkpoint(path, shards, path, weight_map)
    return Checkpoint(path, [path], None)


def _read_index(index: Path) -> tuple[list[Path], dict[str, str]]:
    """The shards an index names (in order of first mention) and its weight_map."""
    hint = "an index is JSON with a 'weight_map' of tensor name -> shard file"
    with _open_regular(index, "index") as f:
        try:
            raw = f.read(MAX_INDEX + 1)
        except OSError as e:
            raise os_error(e, index, "cannot read the index") from e
    if len(raw) > MAX_INDEX:
        raise LcdError(f"the index is larger than {MAX_INDEX} bytes", file=index, hint=hint)
    doc = _loads(raw, index, "index", "not a valid safetensors index: it is not valid JSON", hint)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise LcdError("not a valid safetensors index: 'weight_map' must map tensor names to "
                       "shard file names", file=index, hint=hint)
    names = list(dict.fromkeys(weight_map.values()))
    outside = [n for n in names if not n or Path(n).name != n or n in (".", "..")]
    if outside:
        raise LcdError(f"the index names shard(s) outside its folder: {', '.join(map(repr, outside))}",
                       file=index, hint="a shard is named by its file name, next to the index")
    missing = [n for n in names if not os.path.lexists(index.parent / n)]
    if missing:
        raise LcdError(f"the index names shard(s) that do not exist: {', '.join(missing)}",
                       file=index, hint="copy every shard next to the index")
    return [index.parent / n for n in names], weight_map


def _check_weight_map(index: Path, weight_map: dict[str, str], tensors: dict[str, TensorInfo]) -> None:
    """The index and the shards must agree on every tensor, both ways."""
    wrong = [k for k, v in weight_map.items() if k not in tensors or tensors[k].shard.name != v]
    if wrong:
        k = wrong[0]
        where = f"it is in '{tensors[k].shard.name}'" if k in tensors else "no shard holds it"
        raise LcdError(f"{len(wrong)} tensor(s) of the weight_map are not in the shard it names, "
                       f"e.g. '{k}' ({where})", file=index, key=k, hint="regenerate the index")
    stray = [k for k in tensors if k not in weight_map]
    if stray:
        raise LcdError(f"{len(stray)} tensor(s) stored in the shards are missing from the "
                       f"weight_map, e.g. '{stray[0]}' in '{tensors[stray[0]].shard.name}' "
                       "(loaders that follow the index would not see them)", file=index,
                       key=stray[0], hint="regenerate the index, or remove the stray tensors")


def sha256_files(paths: Iterable[Path]) -> str:
    """One sha256 over the bytes of several files, in order."""
    digest = hashlib.sha256()
    for p in paths:
        with _open_regular(p) as f:
            try:
                while block := f.read(_COPY_BLOCK):
                    digest.update(block)
            except OSError as e:
                raise os_error(e, p, "cannot read the file") from e
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

    @property
    def nbytes(self) -> int:
        """Bytes this tensor takes in the file (any dtype, the sub-byte ones included)."""
        return self.source.nbytes if self.source is not None else tensor_nbytes(self.dtype, self.shape)


def _header_bytes(entries: list[OutEntry], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for e in entries:
        if e.name in header:
            raise LcdError("two tensors of the output would have the same name", key=e.name,
                           hint="a tensor lcd adds already exists in the input; was it distilled "
                           "already?")
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # data starts 8-byte aligned


def safetensors_size(entries: list[OutEntry], metadata: dict[str, str]) -> int:
    """The exact size in bytes of the file :func:`write_safetensors` would write (for
    ``Target.nbytes``, the free-space check)."""
    return 8 + len(_header_bytes(entries, metadata)) + sum(e.nbytes for e in entries)


def write_safetensors(path: Path, entries: list[OutEntry], metadata: dict[str, str]) -> None:
    """Stream a safetensors file: header, then each tensor in order. Not atomic by itself:
    write to an :class:`~lcd_cli.io.transaction.OutputTransaction` temporary."""
    raw = _header_bytes(entries, metadata)
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


def _tensor_bytes(value: torch.Tensor) -> memoryview:
    """A contiguous tensor's bytes without a copy (a view of its memory, which may be a file
    mapped by ``torch.load(mmap=True)``): writing it costs no memory beyond the tensor."""
    flat = value.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())  # native little-endian on supported hosts


def _copy_range(info: TensorInfo, out: IO[bytes]) -> None:
    with _open_regular(info.shard, "checkpoint file") as src:
        src.seek(info.begin)
        left = info.nbytes
        while left:
            block = src.read(min(left, _COPY_BLOCK))
            if not block:
                raise LcdError("the file ended while copying a tensor", file=info.shard,
                               key=info.name)
            out.write(block)
            left -= len(block)


def write_index(path: Path, weight_map: dict[str, str], total_size: int,
                metadata: dict[str, str]) -> None:
    doc = {"metadata": {"total_size": total_size, **metadata}, "weight_map": weight_map}
    path.write_text(json.dumps(doc, indent=2) + "\n")
