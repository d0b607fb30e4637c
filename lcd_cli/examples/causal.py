"""Example checkpoints of the causal conv families: HyenaDNA, StripedHyena / Evo 1, safari
long conv, and Evo 2 (Hyena-SE / -MR / -LI mixed with attention)."""

from __future__ import annotations

import math

import torch

from lcd_cli.errors import LcdError
from lcd_cli.examples.weights import Tensors
from lcd_cli.examples.weights import uniform as _uniform
from lcd_cli.families.kernels.hyena import positional_features


def hyenadna(g: torch.Generator, d_model: int = 64, n_layers: int = 2, l_max: int = 1026,
             emb_dim: int = 5, width: int = 64, sin_freq: float = 5.0) -> Tensors:
    """HyenaDNA "-hf" layout (hyena.backbone.layers.{i}.mixer.filter_fn.*)."""
    z, t = positional_features(l_max, emb_dim)
    # HyenaDNA ExponentialModulation init: fast 0.3, slow 1.5, target 1e-2.
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, d_model, dtype=torch.float64)
    out: Tensors = {"hyena.backbone.embeddings.word_embeddings.weight": torch.randn(
        16, d_model, generator=g, dtype=torch.float64)}
    for i in range(n_layers):
        b = f"hyena.backbone.layers.{i}"
        f = f"{b}.mixer.filter_fn"
        out |= {
            f"{b}.norm1.weight": torch.ones(d_model, dtype=torch.float64),
            f"{b}.norm1.bias": torch.zeros(d_model, dtype=torch.float64),
            f"{b}.mixer.in_proj.weight": _uniform(g, 3 * d_model, d_model, fan_in=d_model),
            f"{b}.mixer.in_proj.bias": _uniform(g, 3 * d_model, fan_in=d_model),
            f"{b}.mixer.short_filter.weight": _uniform(g, 3 * d_model, 1, 3, fan_in=3),
            f"{b}.mixer.short_filter.bias": _uniform(g, 3 * d_model, fan_in=3),
            f"{b}.mixer.out_proj.weight": _uniform(g, d_model, d_model, fan_in=d_model),
            f"{b}.mixer.out_proj.bias": _uniform(g, d_model, fan_in=d_model),
            f"{f}.bias": torch.randn(d_model, generator=g, dtype=torch.float64),
            f"{f}.pos_emb.z": z[None].clone(),
            f"{f}.pos_emb.t": t[None].clone(),
            f"{f}.implicit_filter.0.weight": _uniform(g, width, emb_dim, fan_in=emb_dim),
            f"{f}.implicit_filter.0.bias": _uniform(g, width, fan_in=emb_dim),
            f"{f}.implicit_filter.1.freq": torch.full((1, width), sin_freq, dtype=torch.float64),
            f"{f}.implicit_filter.2.weight": _uniform(g, width, width, fan_in=width),
            f"{f}.implicit_filter.2.bias": _uniform(g, width, fan_in=width),
            f"{f}.implicit_filter.4.weight": _uniform(g, width, width, fan_in=width),
            f"{f}.implicit_filter.4.bias": _uniform(g, width, fan_in=width),
            f"{f}.implicit_filter.6.weight": _uniform(g, d_model, width, fan_in=width),
            f"{f}.modulation.deltas": deltas[None, None].clone(),
            f"{b}.norm2.weight": torch.ones(d_model, dtype=torch.float64),
            f"{b}.norm2.bias": torch.zeros(d_model, dtype=torch.float64),
            f"{b}.mlp.fc1.weight": _uniform(g, 4 * d_model, d_model, fan_in=d_model),
            f"{b}.mlp.fc2.weight": _uniform(g, d_model, 4 * d_model, fan_in=4 * d_model),
        }
    out["hyena.backbone.ln_f.weight"] = torch.ones(d_model, dtype=torch.float64)
    return out


def stripedhyena(g: torch.Generator, d_model: int = 64, n_blocks: int = 3, modes: int = 8
                 ) -> Tensors:
    """StripedHyena / Evo-1 layout: hyena blocks 0, 2, ... and attention blocks between."""
    out: Tensors = {"backbone.embedding_layer.weight": torch.randn(
        32, d_model, generator=g, dtype=torch.float64)}
    for i in range(n_blocks):
        b = f"backbone.blocks.{i}"
        out[f"{b}.pre_norm.scale"] = torch.ones(d_model, dtype=torch.float64)
        if i % 2:
            out[f"{b}.inner_mha_cls.Wqkv.weight"] = _uniform(g, 3 * d_model, d_model, fan_in=d_model)
            out[f"{b}.inner_mha_cls.out_proj.weight"] = _uniform(g, d_model, d_model,
                                                                 fan_in=d_model)
            continue
        radius = 1 - torch.exp(torch.empty(d_model, modes, dtype=torch.float64).uniform_(
            math.log(1e-3), math.log(0.3), generator=g))  # |p| in (0.7, 0.999)
        angle = torch.empty(d_model, modes, dtype=torch.float64).uniform_(0, math.pi, generator=g)
        poles = torch.polar(radius, angle)  # (C, N)
        residues = torch.complex(torch.randn(d_model, modes, generator=g, dtype=torch.float64),
                                 torch.randn(d_model, modes, generator=g, dtype=torch.float64))
        residues = residues * (1 - radius)  # keep the kernel's gain moderate
        out |= {
            f"{b}.projections.weight": _uniform(g, 3 * d_model, d_model, fan_in=d_model),
            f"{b}.filter.short_filter_weight": _uniform(g, 3 * d_model, 1, 3, fan_in=3),
            f"{b}.filter.poles": torch.view_as_real(poles)[:, :, None].clone(),
            f"{b}.filter.residues": torch.view_as_real(residues)[:, :, None].clone(),
            f"{b}.filter.D": torch.randn(d_model, generator=g, dtype=torch.float64),
            f"{b}.out_filter_dense.weight": _uniform(g, d_model, d_model, fan_in=d_model),
            f"{b}.mlp.l1.weight": _uniform(g, 2 * d_model, d_model, fan_in=d_model),
        }
    out["backbone.norm.scale"] = torch.ones(d_model, dtype=torch.float64)
    return out


def long_conv(g: torch.Generator, d_model: int = 64, n_layers: int = 2, length: int = 1024,
              channels: int = 1) -> Tensors:
    """safari long_conv layout (backbone.layers.{i}.mixer.kernel.kernel (channels, H, L))."""
    t = torch.arange(length, dtype=torch.float64)
    out: Tensors = {"encoder.weight": _uniform(g, d_model, 1, fan_in=1)}
    for i in range(n_layers):
        m = f"backbone.layers.{i}.mixer"
        decay = torch.exp(torch.empty(channels, d_model, 1, dtype=torch.float64).uniform_(
            math.log(2.0), math.log(length / 2), generator=g))
        freq = torch.empty(channels, d_model, 3, 1, dtype=torch.float64).uniform_(
            0, 0.2, generator=g)
        amp = torch.randn(channels, d_model, 3, 1, generator=g, dtype=torch.float64)
        smooth = (amp * torch.cos(freq * t)).sum(2) * torch.exp(-t / decay)  # (channels, H, L)
        noise = 2e-4 * torch.randn(channels, d_model, length, generator=g, dtype=torch.float64)
        out |= {
            f"{m}.kernel.kernel": 0.05 * smooth + noise,
            f"{m}.D": torch.randn(channels, d_model, generator=g, dtype=torch.float64),
            f"{m}.output_linear.0.weight": _uniform(g, 2 * d_model, channels * d_model,
                                                    fan_in=channels * d_model),
            f"backbone.norms.{i}.weight": torch.ones(d_model, dtype=torch.float64),
        }
    out["decoder.weight"] = _uniform(g, 10, d_model, fan_in=d_model)
    return out


# Evo 2 7B block pattern (vortex config: hcs 0,4,7,.. hcm 1,5,8,.. hcl 2,6,9,.. attn 3,10,..).
EVO2_PATTERN = ("se", "mr", "li", "attn", "se", "mr", "li", "se", "mr", "li", "attn")


def evo2(g: torch.Generator, d_model: int = 64, n_blocks: int = 7, groups: int = 16,
         modes: int = 16, mr_length: int = 128, se_length: int = 7, heads: int = 4) -> Tensors:
    """Evo 2 / StripedHyena 2 vortex layout (blocks.{i}.*, no prefix): Hyena-SE, -MR, -LI and
    attention blocks in the 7B pattern. SE/MR taps (G, 1, K), channel c uses row c // (C/G);
    MR taps stored decayed as the savanna converter writes them; LI log_poles (C, N, 1) < 0."""
    if d_model % groups or d_model % heads:
        raise LcdError(f"d_model {d_model} must be a multiple of groups {groups} and heads {heads}")
    f64 = torch.float64
    inner = 16 * -(-8 * d_model // 3 // 16)  # ParallelGatedMLP size, multiple of 16
    emb = torch.randn(32, d_model, generator=g, dtype=f64)
    out: Tensors = {"embedding_layer.weight": emb}
    for i in range(n_blocks):
        b = f"blocks.{i}"
        kind = EVO2_PATTERN[i % len(EVO2_PATTERN)]
        out[f"{b}.pre_norm.scale"] = torch.ones(d_model, dtype=f64)
        if kind == "attn":
            out |= {
                f"{b}.inner_mha_cls.Wqkv.weight": _uniform(g, 3 * d_model, d_model, fan_in=d_model),
                f"{b}.inner_mha_cls.out_proj.weight": _uniform(g, d_model, d_model, fan_in=d_model),
                f"{b}.inner_mha_cls.out_proj.bias": _uniform(g, d_model, fan_in=d_model),
                f"{b}.inner_mha_cls.rotary_emb.inv_freq": 1.0 / 10000 ** (
                    torch.arange(0, d_model // heads, 2, dtype=f64) / (d_model // heads)),
            }
        else:
            f = f"{b}.filter"
            out |= {
                f"{b}.projections.weight": _uniform(g, 3 * d_model, d_model, fan_in=d_model),
                f"{f}.short_filter_weight": _uniform(g, 3 * d_model, 1, 3, fan_in=3),
                f"{b}.out_filter_dense.weight": _uniform(g, d_model, d_model, fan_in=d_model),
                f"{b}.out_filter_dense.bias": _uniform(g, d_model, fan_in=d_model),
            }
        if kind == "se":
            out[f"{b}.filter.h"] = _uniform(g, groups, 1, se_length, fan_in=se_length)
        elif kind == "mr":
            # savanna ExplicitSingleDecayFilter ("strong"): h * exp(-r_g t'), r_g in logspace(0, 2).
            t = torch.linspace(0, 1, mr_length, dtype=f64)
            rate = torch.logspace(0, 2, groups, dtype=f64)[:, None]  # (G, 1)
            freq = torch.empty(groups, 3, 1, dtype=f64).uniform_(0, 0.3, generator=g)
            amp = torch.randn(groups, 3, 1, generator=g, dtype=f64)
            taps = torch.arange(mr_length, dtype=f64)
            smooth = (amp * torch.cos(freq * taps)).sum(1) / math.sqrt(mr_length)  # (G, K)
            noise = 1e-4 * torch.randn(groups, mr_length, generator=g, dtype=f64)
            out[f"{b}.filter.h"] = ((smooth + noise) * torch.exp(-rate * t))[:, None]
            out[f"{b}.filter.D"] = torch.randn(d_model, generator=g, dtype=f64)
        elif kind == "li":
            # log_poles = -exp(p) exp(gamma) (savanna -> vortex): real decay rates in (1e-3, 0.5).
            rate = torch.exp(torch.empty(d_model, modes, dtype=f64).uniform_(
                math.log(1e-3), math.log(0.5), generator=g))
            residues = torch.randn(d_model, modes, generator=g, dtype=f64) * rate.sqrt()
            out[f"{b}.filter.log_poles"] = -rate[..., None]
            out[f"{b}.filter.residues"] = residues
            out[f"{b}.filter.D"] = torch.randn(d_model, generator=g, dtype=f64)
        out |= {
            f"{b}.post_norm.scale": torch.ones(d_model, dtype=f64),
            f"{b}.mlp.l1.weight": _uniform(g, inner, d_model, fan_in=d_model),
            f"{b}.mlp.l2.weight": _uniform(g, inner, d_model, fan_in=d_model),
            f"{b}.mlp.l3.weight": _uniform(g, d_model, inner, fan_in=inner),
        }
    out["norm.scale"] = torch.ones(d_model, dtype=f64)
    out["unembed.weight"] = emb.clone()  # the converter writes the tied embedding twice
    return out
