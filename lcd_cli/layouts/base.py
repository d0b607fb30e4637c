"""What an output layout is: how fitted modal parameters become tensors of the new checkpoint.

Layer 4 (kinds and layouts): imports numerics, io, families and errors only.

A layer kind fits a layer into named *parts*: ``"ssm"`` for a causal layer, ``"ssm"`` and
``"ssm_rev"`` for a two-sided one; a jointly fitted kind (the STU basis) fits *shared* parts
placed once under a prefix of their own. Each part is a pair of float32 [real, imag] tensors,
poles and residues, (C, N, 2) per layer or (N, 2) / (K, N, 2) shared. The layout decides
under which keys, in which shapes and with which metadata they are written, and how the model's
own config changes (for model folders); it never fits, and it never tests a family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

Pair = tuple[Tensor, Tensor]  # (poles, residues), float32 [real, imag] pairs


@dataclass
class LayerResult:
    """One fitted layer: its parts (name -> (poles, residues) (C, N, 2)) and report row."""

    name: str  # the layer's key prefix
    parts: dict[str, Pair]
    stats: dict[str, Any]


@dataclass
class SharedResult:
    """Parts fitted once for several layers (e.g. the STU basis), stored under ``prefix``."""

    prefix: str
    parts: dict[str, Tensor]  # key relative to prefix -> tensor
    metadata: dict[str, str] = field(default_factory=dict)  # extra checkpoint metadata
    report: dict[str, Any] = field(default_factory=dict)  # extra report sections
    ssm_params: int | None = None  # state numbers of the whole model (default: per layer)


class Layout:
    """Maps fitted results to output tensors. Subclasses set ``name``."""

    name: ClassVar[str]

    def part_keys(self, prefix: str, part: str) -> tuple[str, str]:
        """Full keys of a layer part's poles and residues."""
        raise NotImplementedError

    def layer_tensors(self, result: LayerResult) -> list[tuple[str, Tensor]]:
        """The tensors that replace one layer's generator, in writing order."""
        out = []
        for part, (poles, residues) in result.parts.items():
            kp, kr = self.part_keys(result.name, part)
            out += [(kp, poles), (kr, residues)]
        return out

    def shared_tensors(self, shared: SharedResult) -> list[tuple[str, Tensor]]:
        return [(f"{shared.prefix}.{rel}", value) for rel, value in shared.parts.items()]

    def metadata(self, results: list[LayerResult]) -> dict[str, str]:
        """Checkpoint metadata the layout adds (e.g. its name); none by default."""
        return {}
