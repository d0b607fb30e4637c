"""`lcd inspect`: the long-conv layers of a checkpoint and how compressible each kernel is.

Layer 5 (pipeline). Layers come from the family configs (headers only); each layer's kind
measures compressibility (Eckart-Young floors of the Hankel matrix, lcd_cli.numerics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lcd_cli.families.layers import generator_info, layer_summary, select_configs
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.kinds import kind_for


def inspect_checkpoint(
    ckpt: Checkpoint,
    *,
    family: str | None = None,
    config: Path | None = None,
    length: int | None = None,
    channels: int = 16,
    analyse: bool = True,
    sets: list[str] | None = None,
    model_config: Path | None = None,
) -> dict[str, Any]:
    options = {"length": length} if length is not None else None
    found = select_configs(ckpt, family, config, options, sets=sets, model_config=model_config)
    layers = []
    for _, cfg_layers in found:
        for layer in cfg_layers:
            row = layer_summary(ckpt, layer)
            row["skip_key"] = layer.skip_key
            if analyse and (facts := generator_info(ckpt, layer)):
                row["generator_info"] = facts  # e.g. an SSM's state size, eigvec condition
            if analyse and layer.config.distill:
                kind = kind_for(layer.config)
                row["compressibility"] = kind.compressibility(ckpt, layer, channels)
            layers.append(row)
    return {
        "checkpoint": str(ckpt.source),
        "files": [str(p) for p in ckpt.files],
        "tensors": len(ckpt.tensors),
        "families": [cfg.name for cfg, _ in found],
        "layers": layers,
    }
