"""`lcd inspect`: the long-conv layers of a checkpoint and how compressible each kernel is.

Compressibility comes from the singular values of each kernel's Hankel matrix (see
``lcd_cli.numerics.hankel``): the Eckart-Young floor at order N is a lower bound on the relative l2
error of any N-mode diagonal SSM fitted on the window. To stay fast on long kernels and wide
layers, a few channels are sampled and long Hankel matrices use a randomized SVD; the output
says which, and labels floors from a randomized SVD as estimates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lcd_cli.families.layers import generator_info, layer_summary, materialize, select_configs
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.numerics.metrics import DENSE_HANKEL_BUDGET, sample_channels

FLOOR_ORDERS = (8, 16, 32, 64)
TOLERANCES = (1e-2, 1e-3)


def compressibility(h: Any, *, channels: int = 16, max_order: int = 128) -> dict[str, Any]:
    """Floors at FLOOR_ORDERS (median over sampled channels) and the order needed for each
    tolerance (the smallest N whose floor is below it for every sampled channel)."""
    from lcd_cli.numerics.hankel import hankel_floor, hankel_shape

    idx = sample_channels(h.shape[0], channels)
    sub = h[idx]  # (S, L)
    rows, cols = hankel_shape(sub.shape[1])
    top = max(1, min(max_order, (min(rows, cols) - 1) // 2))
    orders = list(range(1, top + 1))
    bound = hankel_floor(sub, orders, max_dense=DENSE_HANKEL_BUDGET)
    floors = bound.values  # (S, top)
    worst = floors.amax(0)  # (top,)
    order_for = {}
    for tol in TOLERANCES:
        hit = (worst <= tol).nonzero()
        order_for[f"{tol:g}"] = int(orders[int(hit[0])]) if hit.numel() else None
    return {
        "channels_sampled": int(idx.numel()),
        "svd": "exact" if bound.rigorous else "randomized (floors are estimates)",
        "floor_median": {str(n): float(floors[:, n - 1].median()) if n <= top else None
                         for n in FLOOR_ORDERS},
        "order_for": order_for,
        "max_order_searched": top,
    }


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
            if analyse and layer.config.distill and not layer.config.causal:
                from lcd_cli.families.layers import materialize_two_sided
                from lcd_cli.kinds.two_sided import two_sided_compressibility

                k_fwd, k_rev, _ = materialize_two_sided(ckpt, layer)  # (C, L) each
                row["compressibility"] = two_sided_compressibility(k_fwd, k_rev,
                                                                   channels=channels)
            elif analyse and layer.config.distill:
                h, _ = materialize(ckpt, layer)
                row["compressibility"] = compressibility(h, channels=channels)
            layers.append(row)
    return {
        "checkpoint": str(ckpt.source),
        "files": [str(p) for p in ckpt.files],
        "tensors": len(ckpt.tensors),
        "families": [cfg.name for cfg, _ in found],
        "layers": layers,
    }
