"""The model's own configuration and the command line's ``--set`` values: two of the sources of
a materializer option (layer 3, families; the order of sources: lcd_cli.families.options).

A model config is the ``config.json`` of a Hugging Face model folder (found beside the
checkpoint: the folder holding the .safetensors file or the index) or the file given with
``--model-config`` (a training config in YAML or JSON: the hyena-dna / safari / state-spaces
Hydra configs, tnn-pytorch or fairseq args). Family configs say which key paths of it set
which option (``model_config`` in docs/config-schema.md); nothing else of it is read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lcd_cli.errors import LcdError
from lcd_cli.families.safe_yaml import parse_yaml, read_text

CONFIG_JSON = "config.json"
_MISSING = object()


def show(value: Any) -> str:
    """A config value as YAML writes it (true, null, 0.05, softplus)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def describe(options: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """Options with their sources on one line: ``shift=0.05 (config.json: model_type
    hyenadna), modulate=true (default), length=null (stored in the checkpoint)``."""
    return ", ".join(f"{name}={show(options.get(name))} ({sources[name]})" for name in sources)


@dataclass(frozen=True)
class ModelConfig:
    """A parsed model config and how option sources name it.

    Attributes:
        doc: the parsed mapping.
        path: the file it was read from.
        label: how an option's source names it: ``config.json`` (found beside the checkpoint)
            or ``model config <file name>`` (``--model-config``).
    """

    doc: dict[str, Any]
    path: Path
    label: str

    def lookup(self, dotted: str) -> Any:
        """The value at a dotted key path, or :data:`MISSING` when any part is absent.

        A key that itself holds dots (``dataset.__l_max`` is two keys) is matched part by part;
        unresolved Hydra interpolations (``${...}``) count as absent: they say nothing.
        """
        node: Any = self.doc
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return _MISSING
            node = node[part]
        if isinstance(node, str) and node.strip().startswith("${"):
            return _MISSING
        return node


MISSING = _MISSING


def _parse(text: str, path: Path, json_only: bool) -> dict[str, Any]:
    if json_only:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise LcdError(f"the model config is not valid JSON ({e})", file=path,
                           hint="fix it, or move it away from the checkpoint") from e
    else:
        doc = parse_yaml(text, path, "model config")
    if not isinstance(doc, dict):
        raise LcdError(f"the model config must be a mapping, got {type(doc).__name__}", file=path,
                       hint="pass the model's config.json or its training config (YAML/JSON)")
    return doc


def load_model_config(checkpoint: Path, explicit: str | Path | None = None) -> ModelConfig | None:
    """The model config: ``explicit`` (``--model-config``), else the ``config.json`` beside
    ``checkpoint`` (the file or index lcd opened), else None."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise LcdError("no such model config file", file=path,
                           hint="--model-config takes the model's config.json or its training "
                           "config (YAML or JSON)")
        doc = _parse(read_text(path, "model config"), path, path.suffix.lower() == ".json")
        return ModelConfig(doc, path, f"model config {path.name}")
    path = Path(checkpoint).parent / CONFIG_JSON
    if not path.is_file():
        return None
    return ModelConfig(_parse(read_text(path, "model config"), path, True), path, CONFIG_JSON)


def parse_sets(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--set NAME=VALUE`` items as {name: value}, VALUE read as a YAML scalar
    (``true``, ``0.05``, ``softplus``, ``null``). A mapping is taken as already parsed."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise LcdError(f"--set {item!r} is not NAME=VALUE",
                           hint="write e.g. --set decay=fixed or --set shift=0.05")
        value = parse_yaml(text, f"--set {name}", "--set value") if text.strip() else None
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise LcdError(f"--set {item!r}: the value must be a scalar (a number, true/false, a "
                           f"word or null), got a {type(value).__name__}",
                           hint="write e.g. --set decay=fixed")
        if name in out and out[name] != value:
            raise LcdError(f"--set {name} is given twice ({show(out[name])} and {show(value)})",
                           hint="give each option once")
        out[name] = value
    return out
