"""lcd's own layout: ``<layer>.<part>.poles`` / ``<layer>.<part>.residues``.

Each layer part (``ssm``, and ``ssm_rev`` for a two-sided layer's anti-causal half) is stored
as two float32 tensors of shape (C, N, 2), [real, imag], with h[c, t] = Re sum_n R[c, n]
p[c, n]^t; the skip term D stays where it was. Shared parts (the STU basis) go under their own
prefix as the kind names them. :func:`read_ssm` is the inverse, used by `lcd verify`.
"""

from __future__ import annotations

from typing import ClassVar

from lcd_cli.families.view import join_key
from lcd_cli.layouts.base import Layout, read_ssm

__all__ = ["LcdLayout", "read_ssm"]  # read_ssm lives in layouts.base (the default reader)


class LcdLayout(Layout):
    name: ClassVar[str] = "lcd"

    def part_keys(self, prefix: str, part: str) -> tuple[str, str]:
        return join_key(prefix, f"{part}.poles"), join_key(prefix, f"{part}.residues")
