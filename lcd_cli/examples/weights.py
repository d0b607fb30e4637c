"""Seeded initialisers shared by the example generators (float64; cast on writing)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

Tensors = dict[str, Tensor]


def uniform(g: torch.Generator, *shape: int, fan_in: int) -> Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the torch Linear / Conv1d default initialisation."""
    bound = 1 / math.sqrt(fan_in)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound


def linear(g: torch.Generator, prefix: str, d_out: int, d_in: int) -> Tensors:
    """``<prefix>.weight`` (d_out, d_in) and ``<prefix>.bias`` (d_out), torch Linear init
    (weight drawn first)."""
    weight = uniform(g, d_out, d_in, fan_in=d_in)
    return {f"{prefix}.weight": weight, f"{prefix}.bias": uniform(g, d_out, fan_in=d_in)}
