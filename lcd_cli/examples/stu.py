"""Example STU / Flash-STU checkpoints in the Hazan-Lab flash-stu key layout.

Layout (flash-stu ``model.py`` FlashSTU, ``layers/stu_layer.py``): ``tok_emb.weight``, the
persistent buffer ``phi`` (L, K), STU layers at even indices ``layers.{i}.stu_norm.weight``,
``layers.{i}.stu.{M_phi_plus, M_phi_minus}`` (exact) or ``layers.{i}.stu.{M_inputs,
M_filters}`` (approx), ``layers.{i}.mlp_norm.weight``, ``layers.{i}.mlp.{gate,up,down}_proj``;
attention layers at odd indices; ``norm.weight``, ``lm_head.weight``. M matrices use the
upstream xavier-normal initialisation with a decay over k (trained STUs weight the large-sigma
filters most).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lcd_cli.examples.weights import Tensors
from lcd_cli.numerics.stu_filters import spectral_filters


def _xavier(g: torch.Generator, *shape: int, fan_in: int, fan_out: int) -> Tensor:
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return torch.randn(*shape, generator=g, dtype=torch.float64) * std


def stu(g: torch.Generator, d_model: int = 32, n_layers: int = 3, seq_len: int = 1024,
        k: int = 24, vocab: int = 64, approx: bool = False) -> Tensors:
    """Flash-STU with STU layers at even indices and attention at odd ones (exact mode)."""
    phi = spectral_filters(seq_len, k)  # (L, K), columns ascending in sigma
    decay = torch.linspace(0.05, 1.0, k, dtype=torch.float64)  # (K,) larger for large sigma
    out: Tensors = {"tok_emb.weight": torch.randn(vocab, d_model, generator=g,
                                                  dtype=torch.float64) * d_model**-0.5,
                    "phi": phi}
    hidden = 2 * d_model
    for i in range(n_layers):
        b = f"layers.{i}"
        if i % 2:
            out |= {f"{b}.attn_norm.weight": torch.ones(d_model, dtype=torch.float64),
                    f"{b}.attn.c_attn.weight": _xavier(g, 3 * d_model, d_model, fan_in=d_model,
                                                       fan_out=3 * d_model),
                    f"{b}.attn.c_proj.weight": _xavier(g, d_model, d_model, fan_in=d_model,
                                                       fan_out=d_model)}
        elif approx:
            out |= {f"{b}.stu_norm.weight": torch.ones(d_model, dtype=torch.float64),
                    f"{b}.stu.M_inputs": _xavier(g, d_model, d_model, fan_in=d_model,
                                                 fan_out=d_model),
                    f"{b}.stu.M_filters": _xavier(g, k, d_model, fan_in=k, fan_out=d_model)
                    * decay[:, None]}
        else:
            fan = {"fan_in": d_model * d_model, "fan_out": k * d_model}
            out |= {f"{b}.stu_norm.weight": torch.ones(d_model, dtype=torch.float64),
                    f"{b}.stu.M_phi_plus": _xavier(g, k, d_model, d_model, **fan)
                    * decay[:, None, None],
                    f"{b}.stu.M_phi_minus": _xavier(g, k, d_model, d_model, **fan)
                    * decay[:, None, None]}
        out |= {f"{b}.mlp_norm.weight": torch.ones(d_model, dtype=torch.float64),
                f"{b}.mlp.gate_proj.weight": _xavier(g, hidden, d_model, fan_in=d_model,
                                                     fan_out=hidden),
                f"{b}.mlp.up_proj.weight": _xavier(g, hidden, d_model, fan_in=d_model,
                                                   fan_out=hidden),
                f"{b}.mlp.down_proj.weight": _xavier(g, d_model, hidden, fan_in=hidden,
                                                     fan_out=d_model)}
    out["norm.weight"] = torch.ones(d_model, dtype=torch.float64)
    out["lm_head.weight"] = out["tok_emb.weight"].clone()  # tied upstream
    return out


def stu_approx(g: torch.Generator, **sizes: int) -> Tensors:
    """Flash-STU in approx (tensordot) mode: M_inputs (d, d), M_filters (K, d)."""
    return stu(g, approx=True, **sizes)
