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
