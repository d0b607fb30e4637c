"""What an output layout is: how fitted modal parameters become tensors of the new checkpoint.

Layer 4 (kinds and layouts): imports numerics, io, families and errors only.

Beyond the tensors, a layout may refuse planned layers it cannot store (:meth:`check_plan`),
patch the model's own config (:meth:`config_patch`), and read its parts back for `lcd
verify` (:meth:`read_part`; the default reads lcd's (C, N, 2) pairs, :func:`read_ssm`).

A layer kind fits a layer into named *parts*: ``"ssm"`` for a causal layer, ``"ssm"`` and
``"ssm_rev"`` for a two-sided one; a jointly fitted kind (the STU basis) fits *shared* parts
placed once under a prefix of their own. Each part is a pair of float32 [real, imag] tensors,
poles and residues, (C, N, 2) per layer or (N, 2) / (K, N, 2) shared. The layout decides
under which keys, in which shapes and with which metadata they are written, and how the model's
own config changes (for model folders); it never fits, and it never tests a family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.view import Layer
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.numerics.ssm import DiagonalSSM

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
    # The pole class the layout can store ("real": poles on (0, 1) and real residues), which
    # `lcd distill` then fits; None: any.
    poles: ClassVar[str | None] = None
    # The model-folder config files this layout patches (:meth:`config_patch`), those present
    # of them; JSON or YAML by suffix.
    config_files: ClassVar[tuple[str, ...]] = ("config.json",)

    def part_keys(self, prefix: str, part: str) -> tuple[str, str]:
        """Full keys of a layer part's poles and residues."""
        raise NotImplementedError

    def check_plan(self, ckpt: Checkpoint, layers: Sequence[tuple[Layer, Sequence[str]]]) -> None:
        """Raise LcdError, from headers only, for a planned layer this layout cannot store.

        ``layers``: each planned layer with the parts its kind fits (``kind.parts(layer)``).
        Every layer by default."""

    def layer_tensors(self, result: LayerResult, results: Sequence[LayerResult] = ()
                      ) -> list[tuple[str, Tensor]]:
        """The tensors that replace one layer's generator, in writing order.

        ``results``: every layer of the run, for layouts that store all layers alike (e.g.
        padded to one state size); unused by default."""
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

    def config_patch(self, config: dict[str, Any], results: Sequence[LayerResult]
                     ) -> dict[str, Any]:
        """The model's config (e.g. config.json of a model folder) as the distilled model
        needs it; unchanged by default. Returns a new dict."""
        return dict(config)

    def read_part(self, distilled: Checkpoint, prefix: str, part: str, D: Tensor | None,
                  channels: int, hint: str | None = None) -> DiagonalSSM:
        """A written layer part as a float64 DiagonalSSM (for `lcd verify`): by default the
        (C, N, 2) pairs under :meth:`part_keys`."""
        return read_ssm(distilled, self.part_keys(prefix, part), D, channels, hint)


def read_ssm(distilled: Checkpoint, keys: tuple[str, str], D: Tensor | None,
             channels: int, hint: str | None = None) -> DiagonalSSM:
    """A distilled layer part (poles, residues keys) as a float64 DiagonalSSM, shapes checked
    against the reference's channel count. NaN/Inf are left for the check to judge."""
    for key in keys:
        if key not in distilled:
            raise LcdError("the distilled layer is missing", file=distilled.source, key=key,
                           hint=hint)
        shape = distilled.info(key).shape
        if len(shape) != 3 or shape[0] != channels or shape[2] != 2:
            raise LcdError(f"expected shape ({channels}, N, 2), got {list(shape)}",
                           file=distilled.source, key=key)
    if distilled.info(keys[0]).shape != distilled.info(keys[1]).shape:
        raise LcdError("poles and residues have different shapes", file=distilled.source,
                       key=keys[1])
    poles = distilled.get(keys[0], torch.float64, finite=False)  # (C, N, 2)
    residues = distilled.get(keys[1], torch.float64, finite=False)  # (C, N, 2)
    return DiagonalSSM.from_pairs(poles, residues, D, dtype=torch.float64)
