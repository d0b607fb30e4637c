"""Model folders in, model folders out.

Layer 5 (pipeline). A checkpoint is distilled *as a model folder* when it is sharded, when the
user named its folder, or when its folder holds a ``config.json`` (the Hugging Face layout):
then the output is a new folder — by default ``<folder>-lcd`` beside the input, never inside
it, and never inside a Hugging Face cache snapshot (there the default is ``./<name>-lcd`` in
the working directory) — holding the weights named like the input's (single file or shards and
index), every non-weight file of the input folder copied (config.json, tokenizer files,
generation_config.json, *.py, README...), the report, and config.json with an ``lcd`` section
(layout, orders per layer, lcd version). The input folder is only read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lcd_cli.errors import LcdError

CONFIG_JSON = "config.json"
YAML_SUFFIXES = (".yml", ".yaml")
REPORT_NAME = "lcd.report.yaml"
# Files that hold weights of some format: never copied into the distilled folder (the distilled
# weights are written there; a stale copy of the original weights would be loaded instead).
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt",
                   ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


def hf_cache_snapshot(path: Path) -> tuple[Path, str] | None:
    """(snapshot folder, repository name) when ``path`` lies in a Hugging Face cache snapshot
    (``.../models--ORG--NAME/snapshots/REVISION/...``), else None."""
    parts = path.resolve().parts
    for i in range(len(parts) - 2):
        if parts[i].startswith(("models--", "datasets--")) and parts[i + 1] == "snapshots":
            return Path(*parts[: i + 3]), parts[i].split("--")[-1]
    return None


def is_model_folder(argument: Path, checkpoint_folder: Path, sharded: bool) -> bool:
    return sharded or argument.is_dir() or (checkpoint_folder / CONFIG_JSON).is_file()


def default_folder_output(folder: Path) -> Path:
    snapshot = hf_cache_snapshot(folder)
    if snapshot is not None:
        return Path.cwd() / f"{snapshot[1]}-lcd"
    return folder.with_name(folder.name + "-lcd")


def check_output_folder(output: Path, inputs: list[Path]) -> None:
    """The output folder must lie outside every input folder and outside any cache snapshot."""
    out = output.resolve()
    for folder in {p.resolve().parent for p in inputs}:
        if out == folder or folder in out.parents:
            raise LcdError("the output folder would be inside the input model folder",
                           file=output, hint="choose an --output outside it (the default is "
                           "<folder>-lcd beside it)")
    if hf_cache_snapshot(out) is not None:
        raise LcdError("the output would be written into a Hugging Face cache snapshot",
                       file=output, hint="cache files must never be modified; choose an "
                       "--output outside the cache")


def auxiliary_files(folder: Path, checkpoint_files: list[Path]) -> list[Path]:
    """Every non-weight file under ``folder`` (relative paths), hidden files excepted."""
    own = {p.resolve() for p in checkpoint_files}
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.resolve() in own or path.name.endswith(WEIGHT_SUFFIXES):
            continue
        if path.name == REPORT_NAME:  # a report of an earlier lcd run in this folder
            continue
        found.append(rel)
    return found


def patched_config(text: str, lcd_section: dict[str, Any], origin: Path,
                   patch: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> str:
    """A model config with the layout's changes (``patch``, e.g. an engine's state size) and
    the ``lcd`` section added: JSON (config.json), or YAML when ``origin`` ends in .yml /
    .yaml (an engine's own config, e.g. vortex's; rewritten without its comments). A mapping
    is required."""
    is_yaml = origin.suffix in YAML_SUFFIXES
    try:
        doc = yaml.safe_load(text) if is_yaml else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise LcdError(f"{origin.name} is not valid {'YAML' if is_yaml else 'JSON'} ({e})",
                       file=origin) from e
    if not isinstance(doc, dict):
        raise LcdError(f"{origin.name} is not a mapping", file=origin)
    if patch is not None:
        doc = patch(doc)
    doc["lcd"] = lcd_section
    if is_yaml:
        return yaml.safe_dump(doc, sort_keys=False)
    return json.dumps(doc, indent=2) + "\n"
