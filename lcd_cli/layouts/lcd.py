"""lcd's own layout: ``<layer>.<part>.poles`` / ``<layer>.<part>.residues``.

Each layer part (``ssm``, and ``ssm_rev`` for a two-sided layer's anti-causal half) is stored
as two float32 tensors of shape (C, N, 2), [real, imag], with h[c, t] = Re sum_n R[c, n]
p[c, n]^t; the skip term D stays where it was. Shared parts (the STU basis) go under their own
prefix as the kind names them. :func:`read_ssm` is the inverse, used by `lcd verify`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from lcd_cli.errors import LcdError
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.layouts.base import Layout
from lcd_cli.numerics.ssm import DiagonalSSM


class LcdLayout(Layout):
    name: ClassVar[str] = "lcd"

    def part_keys(self, prefix: str, part: str) -> tuple[str, str]:
        return f"{prefix}.{part}.poles", f"{prefix}.{part}.residues"


def read_ssm(distilled: Checkpoint, keys: tuple[str, str], D: torch.Tensor | None,
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
