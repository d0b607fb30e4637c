"""A layer found in a checkpoint and a lazy view of its tensors (layer 3, families: imports
only io and errors, so materializers and the layer finder can both use it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from lcd_cli.errors import LcdError
from lcd_cli.families.spec import FamilyConfig
from lcd_cli.io.checkpoint import Checkpoint


def join_key(prefix: str, rel: str) -> str:
    """The full key of ``rel`` under ``prefix`` ("" for a single-layer file: the key itself)."""
    return f"{prefix}.{rel}" if prefix else rel


@dataclass(frozen=True)
class Layer:
    """One long-conv layer found in a checkpoint.

    ``config`` is the layer's own copy of its family config: once options are resolved
    (lcd_cli.families.options) its ``options`` are this layer's, and ``sources`` says where
    each came from ("cli (--set)", "config.json: model_type hyenadna", "tensor evidence: ...",
    "default", ...); empty before resolution.
    """

    prefix: str  # "" for a single-layer file (a bare filter's state dict)
    config: FamilyConfig
    groups: dict[str, str]  # named groups of the layer regex
    keys: tuple[str, ...]  # every key under the prefix, relative to it
    generator_keys: tuple[str, ...]  # full keys of the kernel generator
    skip_key: str | None  # full key of the skip term D, if present
    sources: dict[str, str] = field(default_factory=dict)  # option -> where its value is from

    @property
    def index(self) -> int | None:
        value = self.groups.get("layer")
        return int(value) if value is not None and value.isdigit() else None


class LayerView:
    """A layer's tensors by key relative to its prefix; loads lazily, in float64 by default."""

    def __init__(self, ckpt: Checkpoint, layer: Layer) -> None:
        self.ckpt = ckpt
        self.layer = layer
        self.prefix = layer.prefix
        self._keys = set(layer.keys)

    @property
    def file(self) -> Path:
        return self.ckpt.source

    def key(self, rel: str) -> str:
        return join_key(self.prefix, rel)

    def names(self) -> list[str]:
        """Every key of the layer, relative to its prefix."""
        return sorted(self._keys)

    def has(self, rel: str) -> bool:
        return rel in self._keys

    def shape(self, rel: str) -> tuple[int, ...]:
        if rel not in self._keys:
            raise LcdError("a parameter of this layer is missing", file=self.file,
                           key=self.key(rel),
                           hint=f"config '{self.layer.config.name}' expects it; is it the right "
                           "--family?")
        return self.ckpt.info(self.key(rel)).shape

    def get(self, rel: str, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
        """A tensor of the layer, in ``dtype`` (None: the file's own dtype)."""
        self.shape(rel)  # clear error when missing
        return self.ckpt.get(self.key(rel), dtype)
