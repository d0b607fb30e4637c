"""Fitting across processes and machines with torchrun (``torch.distributed``).

Layer 5 (pipeline). ``torchrun --nproc-per-node K -m lcd_cli distill ...`` starts K copies of
the same command. Each rank fits its share of the layers of every one-layer-at-a-time kind
(layer i goes to rank i mod K, on ``cuda:LOCAL_RANK`` when the device is CUDA); the results
are gathered on every rank (``all_gather_object``) and rank 0 alone writes the one output,
through the same write step and with the same bytes as a single-process run (each layer's fit
does not depend on which rank runs it). Kinds that fit their layers jointly run on rank 0.
Backend: NCCL on CUDA, gloo otherwise. Without torchrun's environment (``WORLD_SIZE`` unset or
1) nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lcd_cli.errors import LcdError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes the outputs."""
        return self.rank == 0

    def mine(self, index: int) -> bool:
        return index % self.world == self.rank

    def device(self, device: str | None) -> str | None:
        if self.distributed and device is not None and device.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return device

    def gather(self, fitted: dict[str, Any]) -> dict[str, Any]:
        """Every rank's ``fitted`` merged, on every rank."""
        if not self.distributed:
            return fitted
        parts: list[dict[str, Any] | None] = [None] * self.world
        dist.all_gather_object(parts, fitted)
        merged: dict[str, Any] = {}
        for part in parts:
            merged |= part or {}
        return merged

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def ranks(device: str | None = None) -> Ranks:
    """This process's place in a torchrun job (initialising the process group once)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    try:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as e:
        raise LcdError(f"WORLD_SIZE={world} is set but RANK is missing or not a number",
                       hint="start distributed runs with torchrun") from e
    if not dist.is_initialized():
        cuda = device is not None and device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Ranks(rank, world, local)


def shutdown(r: Ranks) -> None:
    if r.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
