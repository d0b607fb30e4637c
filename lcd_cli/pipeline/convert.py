"""`lcd convert`: torch ``.pt`` checkpoints in, a safetensors model folder out (layer 5).

Inputs (:func:`resolve_sources`): one ``.pt`` file; a checkpoint split into ``NAME.pt.part0``,
``NAME.pt.part1``, ... (named by its first part, by its stem ``NAME.pt``, or by every part in
any order: parts are taken in numeric order, and a missing or unnamed part is an error that
lists them); or several separate ``.pt`` files, each a state dict (loaded one at a time, in
the order given; a name stored in two is an error).

Split parts: upstream (ArcInstitute ``evo2/models.py``, ``Evo2.load_evo2_model``) writes a
``.pt`` file's bytes in pieces and joins them by concatenating ``part0``, ``part1``, ... in
order until a number is missing. lcd does the same, into a hidden file inside the output
transaction's temporary folder (so it is removed on success, on an error and on Ctrl-C), then
loads that. Parts that are each a complete torch file (a zip whose directory is whole) are
separate state dicts instead and are loaded one at a time.

Loading: :func:`lcd_cli.io.torch_load.load_state_dict` (``weights_only=True``, ``mmap=True``,
``map_location="cpu"``): tensors only, no code from the file; Transformer Engine
``_extra_state`` entries dropped and listed.

Output (one :class:`~lcd_cli.io.transaction.OutputTransaction`: the folder appears whole or
not at all; an existing one is replaced only with ``force``): ``model.safetensors``, or, above
``max_shard_size`` bytes, ``model-00001-of-0000N.safetensors`` ... plus
``model.safetensors.index.json``; the config file(s) (``--model-config``, else a ``config.json`` or
``NAME.yml`` / ``NAME.yaml`` beside the input); and ``lcd.convert.yaml`` (:data:`RECORD_NAME`):
the sources with their sha256, the wrapper key unwrapped, the dropped keys, the tied tensors,
the shards. Dtypes and bytes are preserved exactly (each tensor's raw bytes are copied).

Shards: tensors in the file's order, a new shard when the next tensor would take the current
one past ``max_shard_size`` (a larger tensor gets a shard of its own), as Hugging Face does.

Tied tensors (names sharing storage, e.g. an unembedding tied to the embedding): safetensors
refuses shared storage, and a loader (lcd, vortex's ``load_state_dict``) looks every name up,
so each name is written as its own tensor (identical bytes) and the tie is recorded in
``lcd.convert.yaml`` (``tied``).

Memory: tensors are memory-mapped and written one by one straight from the mapping, so the
process holds no copy of a contiguous tensor, at most one copy of the largest non-contiguous
one, and two 8 MiB blocks while joining or hashing: anonymous memory is O(largest
non-contiguous tensor), independent of the model's and the shards' size (measured: a 384 MiB
.pt of 12 tensors, +16 MiB). The pages read through the mapping count in the resident set
until the file is unmapped (up to the file's size), but they are clean file cache that the
OS reclaims under memory pressure, not memory the process needs. Exception: a pre-1.6
(non-zip) pickle cannot be mapped and is read whole, one file at a time. Disk: the output's
size, plus the joined file's for split parts.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from lcd_cli import __version__
from lcd_cli.errors import LcdError
from lcd_cli.io.checkpoint import TORCH_TO_ST, OutEntry, write_index, write_safetensors
from lcd_cli.io.oserrors import os_error
from lcd_cli.io.torch_load import StateDict, load_state_dict, shared_storage
from lcd_cli.io.transaction import OutputTransaction, Target

RECORD_NAME = "lcd.convert.yaml"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD = 5 * 10**9  # "5GB", Hugging Face's default
_JOINED = ".lcd-joined.pt"  # the joined parts, inside the output's temporary folder
_PART = re.compile(r"(?P<stem>.+)\.part(?P<n>\d+)")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_BLOCK = 8 << 20  # bytes read at a time when joining or hashing (two alive at most)
_EXAMPLES = 5  # dropped keys named in the summary


def parse_size(text: str) -> int:
    """Bytes from "5GB" (10^9), "500MiB" (2^20), "1e6"-free plain integers ("4096")."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise LcdError(f"--max-shard-size '{text}' is not a size", key="--max-shard-size",
                       hint="give bytes or a number with a unit: 5GB, 500MB, 2GiB, 4096")
    value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    if value < 1:
        raise LcdError(f"--max-shard-size '{text}' must be at least 1 byte", key="--max-shard-size")
    return value


@dataclass(frozen=True)
class Sources:
    """The files to read: ``parts`` (byte pieces of one file, to join), else each a state dict."""

    files: list[Path]
    split: bool  # the files are NAME.pt.part0 .. partN-1

    @property
    def stem(self) -> str:
        name = self.files[0].name
        m = _PART.fullmatch(name) if self.split else None
        base = m.group("stem") if m else name
        return base[:-3] if base.endswith(".pt") else Path(base).stem


def _parts_beside(stem_path: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for p in stem_path.parent.glob(f"{glob_escape(stem_path.name)}.part*"):
        m = _PART.fullmatch(p.name)
        if m and m.group("stem") == stem_path.name:
            found[int(m.group("n"))] = p
    return found


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def resolve_sources(args: list[Path]) -> Sources:
    """The input files from the command line (see the module docstring); LcdError listing
    missing parts, parts not named, and files that do not exist."""
    if not args:
        raise LcdError("no checkpoint given", hint="lcd convert MODEL.pt -o FOLDER")
    parts = [(_PART.fullmatch(a.name), a) for a in args]
    stems = {a.parent / m.group("stem") for m, a in parts if m}
    if len(args) == 1 and not parts[0][0] and not args[0].exists():
        if _parts_beside(args[0]):  # the stem of a split checkpoint
            stems = {args[0]}
        else:
            raise LcdError("no such file, and no split parts of it (NAME.part0, ...)",
                           file=args[0], hint="check the path")
    elif any(m is None for m, _ in parts):
        if stems:
            raise LcdError("give either the parts of one split checkpoint or whole .pt files, "
                           "not both", file=next(a for m, a in parts if m is None))
        missing = [str(a) for a in args if not a.exists()]
        if missing:
            raise LcdError(f"no such file: {', '.join(missing)}", file=missing[0])
        if len(set(args)) != len(args):
            raise LcdError("a file is named twice", file=args[0])
        return Sources(list(args), split=False)
    if len(stems) > 1:
        raise LcdError(f"the parts belong to different checkpoints: "
                       f"{', '.join(sorted(s.name for s in stems))}", file=args[0],
                       hint="convert one split checkpoint at a time")
    stem = stems.pop()
    found = _parts_beside(stem)
    named = {int(m.group("n")) for m, _ in parts if m}
    top = max([*found, *named], default=-1)
    missing = [f"{stem.name}.part{n}" for n in range(top + 1) if n not in found]
    if missing:
        raise LcdError(f"{len(missing)} part(s) of the split checkpoint are missing: "
                       f"{', '.join(missing)}", file=stem.parent / f"{stem.name}.part0",
                       hint="download every part into the same folder (upstream joins "
                       "part0, part1, ... in order)")
    if len(args) > 1:
        unnamed = [found[n].name for n in sorted(found) if n not in named]
        if unnamed:
            raise LcdError(f"part(s) beside the ones named were not named: {', '.join(unnamed)}",
                           file=found[min(found)], hint="name every part, or only the first "
                           "(or the stem NAME.pt): the others are found beside it")
    elif named and named != {0}:
        raise LcdError(f"the first part of a split checkpoint is part0, not part{named.pop()}",
                       file=args[0], hint=f"name {stem.name}.part0 (or the stem {stem.name})")
    return Sources([found[n] for n in sorted(found)], split=True)


def _check_regular(path: Path) -> int:
    try:
        if not path.is_file():
            raise LcdError("not a regular file", file=path, hint="give the path of a .pt file")
        return path.stat().st_size
    except OSError as e:
        raise os_error(e, path, "cannot read the checkpoint") from e


def _join(parts: list[Path], out: Path, digests: dict[Path, str]) -> None:
    """Concatenate the parts in order into ``out``, hashing each as it is read."""
    with out.open("wb") as dst:
        for part in parts:
            digest = hashlib.sha256()
            try:
                with part.open("rb") as src:
                    while block := src.read(_BLOCK):
                        digest.update(block)
                        dst.write(block)
            except OSError as e:
                if e.filename is None or Path(e.filename) != part:
                    raise
                raise os_error(e, part, "cannot read the part") from e
            digests[part] = digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
    except OSError as e:
        raise os_error(e, path, "cannot read the checkpoint") from e
    return digest.hexdigest()


def config_files(sources: Sources, config: Path | None) -> list[Path]:
    """``--model-config`` if given, else the configs beside the input (config.json,
    NAME.yml / NAME.yaml)."""
    if config is not None:
        _check_regular(config)
        if config.name in (RECORD_NAME, SINGLE, INDEX) or config.name.endswith(".safetensors"):
            raise LcdError(f"the config cannot be named '{config.name}' inside the folder (lcd "
                           "writes that name)", file=config, hint="rename it")
        return [config]
    folder = sources.files[0].parent
    names = ("config.json", "config.yaml", "config.yml", f"{sources.stem}.yml",
             f"{sources.stem}.yaml")
    return [folder / n for n in dict.fromkeys(names) if (folder / n).is_file()]


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Names per shard, in order: a new shard when the next tensor would pass ``max_bytes``."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards if shards[0] else []


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class _Loaded:
    """One state dict mapped at a time (files are visited in order)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.current: StateDict | None = None

    def get(self, file: Path) -> StateDict:
        if self.current is None or self.current.path != file:
            self.current = None  # release the previous mapping first
            self.current = load_state_dict(file)
        return self.current


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def convert(args: list[Path], output: Path, *, config: Path | None = None,
            max_shard_size: int = DEFAULT_MAX_SHARD, force: bool = False, command: str = "",
            on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Convert ``.pt`` checkpoint(s) into the model folder ``output`` (module docstring);
    returns what ``lcd.convert.yaml`` records, plus the output path."""
    say = on_step or (lambda msg: None)
    sources = resolve_sources(args)
    sizes = {f: _check_regular(f) for f in sources.files}
    configs = config_files(sources, config)
    if len({c.name for c in configs}) != len(configs):
        raise LcdError("two configs with the same name", file=configs[0])
    total = sum(sizes.values())
    join = sources.split and len(sources.files) > 1 and not zipfile.is_zipfile(sources.files[0])
    txn = OutputTransaction([Target(output, "dir", nbytes=total * (2 if join else 1),
                                    label="model folder")],
                            inputs=[*sources.files, *configs], force=force)
    digests: dict[Path, str] = {}
    notes: list[str] = []
    with txn:
        tmp = txn.path(output)
        if join:
            say(f"joining {len(sources.files)} parts")
            loads = [tmp / _JOINED]
            _join(sources.files, loads[0], digests)
        else:
            loads = list(sources.files)
        # Pass 1: names, dtypes, sizes (mapped, no tensor bytes read), ties, dropped keys.
        where: dict[str, Path] = {}
        heads: dict[str, tuple[str, tuple[int, ...]]] = {}  # name -> (dtype, shape)
        order: list[tuple[str, int]] = []
        dtypes: dict[str, int] = {}
        dropped: list[str] = []
        tied: list[dict[str, Any]] = []
        wrapper: dict[str, Any] | None = None
        for file in loads:
            say(f"reading {file.name if file.name != _JOINED else 'the joined parts'}")
            sd = load_state_dict(file)
            again = [n for n in sd.tensors if n in where]
            if again:
                raise LcdError(f"{len(again)} tensor name(s) are stored in two files, e.g. "
                               f"{', '.join(again[:5])} (also in '{where[again[0]].name}')",
                               file=file, key=again[0], hint="convert the files separately")
            for name, t in sd.tensors.items():
                where[name] = file
                order.append((name, _nbytes(t)))
                st = TORCH_TO_ST[t.dtype]
                heads[name] = (st, tuple(t.shape))
                dtypes[st] = dtypes.get(st, 0) + 1
            dropped += sd.dropped
            tied += [{**g, "stored": "each name as its own tensor (identical bytes)"}
                     for g in shared_storage(sd.tensors)]
            notes += sd.notes
            if sd.wrapper is not None:
                wrapper = {"key": sd.wrapper, "ignored": sd.ignored}
            del sd
        shards = plan_shards(order, max_shard_size)
        names = shard_names(len(shards))
        loaded = _Loaded(loads)
        weight_map: dict[str, str] = {}
        shard_rows = []
        for shard, file_name in zip(shards, names, strict=True):
            say(f"writing {file_name}")
            entries = [OutEntry(name, *heads[name], make=_maker(loaded, where[name], name))
                       for name in shard]
            write_safetensors(tmp / file_name, entries, {"format": "pt"})
            weight_map |= {n: file_name for n in shard}
            shard_rows.append({"file": file_name, "tensors": len(shard),
                               "bytes": sum(e.nbytes for e in entries)})
        loaded.current = None
        if join:
            (tmp / _JOINED).unlink()
        if len(shards) > 1:
            write_index(tmp / INDEX, weight_map, sum(r["bytes"] for r in shard_rows),
                        {"lcd_version": __version__})
        for c in configs:
            shutil.copyfile(c, tmp / c.name)
        for f in sources.files:
            if f not in digests:
                say(f"hashing {f.name}")
                digests[f] = _sha256(f)
        record = {
            "lcd_version": __version__,
            "command": command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sources": [{"path": str(f.absolute()), "bytes": sizes[f], "sha256": digests[f]}
                        for f in sources.files],
            "split": {"parts": len(sources.files), "joined": join} if sources.split else None,
            "wrapper": wrapper,
            "tensors": {"count": len(order), "bytes": sum(n for _, n in order),
                        "dtypes": dict(sorted(dtypes.items()))},
            "dropped": {"count": len(dropped), "reason": "Transformer Engine _extra_state "
                        "(fp8 scaling state, not a model tensor)", "keys": dropped},
            "tied": tied,
            "shards": shard_rows,
            "index": INDEX if len(shards) > 1 else None,
            "max_shard_size": max_shard_size,
            "configs": [c.name for c in configs],
            "notes": notes,
        }
        (tmp / RECORD_NAME).write_text(yaml.safe_dump(record, sort_keys=False, width=100))
        txn.commit()
    return {**record, "output": str(output), "record": str(output / RECORD_NAME),
            "dropped_examples": dropped[:_EXAMPLES]}


def _maker(loaded: _Loaded, file: Path, name: str) -> Callable[[], torch.Tensor]:
    return lambda: loaded.get(file).tensors[name]
