"""Reading torch ``.pt`` checkpoints safely (layer 2, io): plain tensors only, never code.

:func:`load_state_dict` calls ``torch.load(path, weights_only=True, mmap=True,
map_location="cpu")``: the restricted unpickler of ``weights_only`` builds tensors and
containers and refuses every other class, so no code from the file runs; ``mmap`` maps the
tensors' bytes from the file instead of reading them, so loading costs (almost) no memory
and a tensor's pages are read when its bytes are copied. A pickle in torch's pre-1.6 format
(not a zip) cannot be mapped: it is read into memory (said in the result's ``notes``).

Besides tensors, two harmless things are let through, because the Evo 2 checkpoints
hold them in Transformer Engine ``_extra_state`` entries (fp8 scaling state), as vortex's
``load_checkpoint`` allows too: ``io.BytesIO`` (a buffer of bytes), and inert stand-ins for
Transformer Engine's recipe classes (:data:`TE_RECIPE_CLASSES`; an object of them records
its arguments and does nothing), so such a file loads without Transformer Engine installed.
Every ``_extra_state`` entry is then dropped (lcd has no use for fp8 scaling state, and it is
not a tensor of the model); :class:`StateDict` lists them.

Structure: the file must hold a dict of name -> tensor. A wrapper dict that holds it under
one of :data:`WRAPPER_KEYS` (``{"model": {...}, "epoch": 3}``, ``{"state_dict": {...}}``) is
unwrapped when exactly one such key holds a dict and no value beside it is a tensor (the
result says so); anything else (two candidate wrappers, nested dicts inside the state dict,
values that are neither tensors nor ``_extra_state``) is refused with an LcdError naming every
offending key.

Tied tensors: names whose tensors share storage (a tied unembedding) are grouped by
:func:`shared_storage`, so a writer can store each name as its own tensor and record the tie.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lcd_cli.errors import LcdError
from lcd_cli.io.checkpoint import TORCH_TO_ST

EXTRA_STATE = "_extra_state"
# Keys under which training code commonly nests the state dict (one of them, unambiguously).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "weights")
# Transformer Engine classes pickled inside _extra_state (vortex allowlists the same three).
TE_RECIPE_CLASSES = ("transformer_engine.common.recipe.DelayedScaling",
                     "transformer_engine.common.recipe.Format",
                     "transformer_engine.common.recipe._FormatHelper")
_SHOWN = 20  # offending keys named in one message
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class InertObject:
    """Stand-in for a Transformer Engine recipe object in ``_extra_state``: keeps the arguments
    it was built with and runs nothing (the entry is dropped anyway)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _allowed() -> list[Any]:
    return [io.BytesIO, *((InertObject, name) for name in TE_RECIPE_CLASSES)]


@dataclass
class StateDict:
    """The tensors of one ``.pt`` file (mapped, not read), and what was left out."""

    path: Path
    tensors: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)  # _extra_state keys
    wrapper: str | None = None  # the key the state dict was nested under
    ignored: list[str] = field(default_factory=list)  # the wrapper's other (non-tensor) keys
    notes: list[str] = field(default_factory=list)


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _type_name(value: object) -> str:
    if isinstance(value, InertObject):
        return "Transformer Engine recipe object"
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _torch_load(path: Path) -> object:
    if path.name.endswith((".safetensors", ".safetensors.index.json")):
        raise LcdError("this is a safetensors checkpoint already, which lcd reads as it is",
                       file=path, hint="pass it to lcd inspect / lcd distill directly")
    mapped = zipfile.is_zipfile(path)  # torch >= 1.6 files are zips; only those can be mapped
    try:
        with torch.serialization.safe_globals(_allowed()):
            return torch.load(path, weights_only=True, mmap=mapped, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if not found:
            raise LcdError(
                f"not a readable torch checkpoint ({_first_line(e)})", file=path, hint=_DAMAGED,
            ) from None
        raise LcdError(
            f"the checkpoint holds an object of type '{found.group(1)}', which lcd does not "
            "load: it reads .pt files with "
            "torch.load(weights_only=True), which builds tensors and plain containers only and "
            "never runs code from the file", file=path,
            hint="if you trust the file and its code, load it yourself and save the plain "
            "state dict, e.g. torch.save(model.state_dict(), 'plain.pt'), then convert that",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise LcdError(f"not a readable torch checkpoint ({_first_line(e)})", file=path,
                       hint=_DAMAGED) from None


_DAMAGED = ("the file may be truncated or not a torch.save file; for a checkpoint split into "
            ".partN files, check that every part is present and complete (the last one too)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unwrap(obj: object, path: Path) -> tuple[dict[Any, Any], str | None, list[str]]:
    """The state dict itself, the wrapper key it was under (or None), the wrapper's other keys."""
    if not isinstance(obj, dict):
        raise LcdError(f"the checkpoint holds a {_type_name(obj)}, not a dict of tensors",
                       file=path, hint="save a state dict: torch.save(model.state_dict(), PATH)")
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None, []
    candidates = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)]
    if len(candidates) == 1:
        key = candidates[0]
        return obj[key], key, [str(k) for k in obj if k != key]
    nested = [str(k) for k, v in obj.items() if isinstance(v, dict)]
    if len(candidates) > 1:
        reason = (f"the checkpoint nests several dicts that could be the state dict: "
                  f"{', '.join(repr(k) for k in candidates)}")
    else:
        reason = ("the checkpoint holds no tensor at its top level" + (
            f", only nested dicts ({_listing(nested)}) under none of the usual names "
            f"({', '.join(WRAPPER_KEYS)})" if nested else ""))
    raise LcdError(reason, file=path, hint="save the state dict itself, e.g. "
                   "torch.save(ckpt['model'], 'plain.pt'), then convert that")


def load_state_dict(path: Path) -> StateDict:
    """Map one ``.pt`` file's tensors (see the module docstring); LcdError for anything else."""
    obj = _torch_load(path)
    raw, wrapper, ignored = _unwrap(obj, path)
    tensors: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    problems: list[str] = []
    for key, value in raw.items():
        name = str(key)
        if not isinstance(key, str):
            problems.append(f"{key!r}: the key is a {type(key).__name__}, not a string")
        elif name.endswith(EXTRA_STATE):
            dropped.append(name)
        elif not isinstance(value, torch.Tensor):
            kind = "a nested dict" if isinstance(value, dict) else f"a {_type_name(value)}"
            problems.append(f"'{name}': {kind}, not a tensor")
        elif value.layout != torch.strided:
            problems.append(f"'{name}': a {value.layout} tensor (safetensors stores dense ones)")
        elif value.is_quantized or value.dtype not in TORCH_TO_ST:
            problems.append(f"'{name}': dtype {value.dtype} has no safetensors equivalent")
        else:
            tensors[name] = value.detach()
    if problems:
        raise LcdError(f"{_plural(len(problems), 'entry')} of the state dict cannot be written as "
                       f"safetensors: {_listing(problems)}", file=path,
                       key=wrapper, hint="only tensors (and Transformer Engine _extra_state "
                       "entries, which are dropped) can be converted; save a plain state dict")
    notes = [] if zipfile.is_zipfile(path) else [
        "the file is in torch's pre-1.6 (non-zip) format, so it was read into memory rather "
        "than mapped"]
    if not tensors:
        raise LcdError("the state dict holds no tensor" + (
            f" (only {_plural(len(dropped), '_extra_state entry')})" if dropped else ""),
            file=path, key=wrapper)
    return StateDict(path, tensors, dropped, wrapper, ignored, notes)


def shared_storage(tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Groups of names whose tensors share storage: ``{"names": [...], "same_view": bool}``
    (same_view: the same bytes, shape and strides, i.e. one tensor under several names)."""
    by_storage: dict[int, list[str]] = {}
    for name, t in tensors.items():
        storage = t.untyped_storage()
        if storage.nbytes() == 0:
            continue
        by_storage.setdefault(storage.data_ptr(), []).append(name)
    groups = []
    for names in by_storage.values():
        if len(names) < 2:
            continue
        first = tensors[names[0]]
        same = all(tensors[n].data_ptr() == first.data_ptr() and tensors[n].shape == first.shape
                   and tensors[n].stride() == first.stride() and tensors[n].dtype == first.dtype
                   for n in names[1:])
        groups.append({"names": names, "same_view": same})
    return groups
