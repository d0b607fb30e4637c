"""Example checkpoints of two-sided (non-causal) and TNN layers, in their upstream key layouts.

Registered in ``lcd_cli.examples.EXAMPLES`` as ``m2``, ``long-conv-bidir``, ``tnn`` and
``tnn-bidir``. Deterministic from the generator; kernels smooth and decaying like trained ones.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lcd_cli.examples.weights import Tensors
from lcd_cli.examples.weights import uniform as _uniform
from lcd_cli.families.kernels.hyena import positional_features

_F64 = torch.float64


def _hyena_filter(g: torch.Generator, f: str, d_model: int, l_max: int, emb_dim: int,
                  width: int, sin_freq: float) -> Tensors:
    """One M2 ``HyenaFilter(bidirectional=True)``: implicit_filter and implicit_filter_rev
    (Linear, Sin, Linear, Sin, Linear, Sin, Linear; the Sin module shared, so its freq appears
    under every index of both MLPs), modulation, positional features and the bias D."""
    z, t = positional_features(l_max, emb_dim)
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, d_model, dtype=_F64)
    freq = torch.full((1, width), sin_freq, dtype=_F64)
    out: Tensors = {f"{f}.bias": torch.randn(d_model, generator=g, dtype=_F64),
                    f"{f}.pos_emb.z": z[None].clone(), f"{f}.pos_emb.t": t[None].clone(),
                    f"{f}.modulation.deltas": deltas[None, None].clone()}
    for net in ("implicit_filter", "implicit_filter_rev"):
        out |= {
            f"{f}.{net}.0.weight": _uniform(g, width, emb_dim, fan_in=emb_dim),
            f"{f}.{net}.0.bias": _uniform(g, width, fan_in=emb_dim),
            f"{f}.{net}.2.weight": _uniform(g, width, width, fan_in=width),
            f"{f}.{net}.2.bias": _uniform(g, width, fan_in=width),
            f"{f}.{net}.4.weight": _uniform(g, width, width, fan_in=width),
            f"{f}.{net}.4.bias": _uniform(g, width, fan_in=width),
            f"{f}.{net}.6.weight": _uniform(g, d_model, width, fan_in=width),
        }
        out |= {f"{f}.{net}.{j}.freq": freq.clone() for j in (1, 3, 5)}
    return out


def m2(g: torch.Generator, d_model: int = 32, n_layers: int = 2, l_max: int = 512,
       emb_dim: int = 5, width: int = 32, sin_freq: float = 5.0) -> Tensors:
    """M2-BERT layout (bert.encoder.layer.{i}.attention.filter_fn{,2}.*): bidirectional Hyena
    filters with the residual long conv, plus embeddings, projections, short conv and MLP.
    Sin frequency 5 (M2 initialises w = 10; trained filters are smoother than that init, and
    the HyenaDNA example uses 5 too)."""
    out: Tensors = {
        "bert.embeddings.word_embeddings.weight": torch.randn(64, d_model, generator=g,
                                                              dtype=_F64),
        "bert.embeddings.LayerNorm.weight": torch.ones(d_model, dtype=_F64),
        "bert.embeddings.LayerNorm.bias": torch.zeros(d_model, dtype=_F64),
    }
    for i in range(n_layers):
        b = f"bert.encoder.layer.{i}"
        a = f"{b}.attention"
        out |= {
            f"{a}.in_linear.weight": _uniform(g, 3 * d_model, d_model, fan_in=d_model),
            f"{a}.in_linear.bias": _uniform(g, 3 * d_model, fan_in=d_model),
            f"{a}.out_linear.weight": _uniform(g, d_model, d_model, fan_in=d_model),
            f"{a}.out_linear.bias": _uniform(g, d_model, fan_in=d_model),
            f"{a}.short_filter.weight": _uniform(g, 3 * d_model, 1, 3, fan_in=3),
            f"{a}.short_filter.bias": _uniform(g, 3 * d_model, fan_in=3),
        }
        for name in ("filter_fn", "filter_fn2"):
            out |= _hyena_filter(g, f"{a}.{name}", d_model, l_max, emb_dim, width, sin_freq)
        out |= {
            f"{b}.mlp.gated_layers.weight": _uniform(g, 4 * d_model, d_model, fan_in=d_model),
            f"{b}.mlp.wo.weight": _uniform(g, d_model, 2 * d_model, fan_in=2 * d_model),
            f"{b}.mlp.layernorm.weight": torch.ones(d_model, dtype=_F64),
            f"{b}.mlp.layernorm.bias": torch.zeros(d_model, dtype=_F64),
        }
    return out


def _smooth_kernels(g: torch.Generator, rows: int, d_model: int, length: int) -> Tensor:
    """(rows, H, L): a few damped cosines per channel plus a little noise."""
    t = torch.arange(length, dtype=_F64)
    decay = torch.exp(torch.empty(rows, d_model, 1, dtype=_F64).uniform_(
        math.log(2.0), math.log(length / 2), generator=g))
    freq = torch.empty(rows, d_model, 3, 1, dtype=_F64).uniform_(0, 0.2, generator=g)
    amp = torch.randn(rows, d_model, 3, 1, generator=g, dtype=_F64)
    smooth = (amp * torch.cos(freq * t)).sum(2) * torch.exp(-t / decay)  # (rows, H, L)
    return 0.05 * smooth + 2e-4 * torch.randn(rows, d_model, length, generator=g, dtype=_F64)


def long_conv_bidir(g: torch.Generator, d_model: int = 64, n_layers: int = 2,
                    length: int = 1024, channels: int = 1) -> Tensors:
    """safari LongConv(bidirectional=True): kernel (2 * channels, H, L) = [forward; backward],
    D (channels, H)."""
    out: Tensors = {"encoder.weight": _uniform(g, d_model, 1, fan_in=1)}
    for i in range(n_layers):
        m = f"backbone.layers.{i}.mixer"
        out |= {
            f"{m}.kernel.kernel": _smooth_kernels(g, 2 * channels, d_model, length),
            f"{m}.D": torch.randn(channels, d_model, generator=g, dtype=_F64),
            f"{m}.output_linear.0.weight": _uniform(g, 2 * d_model, channels * d_model,
                                                    fan_in=channels * d_model),
            f"backbone.norms.{i}.weight": torch.ones(d_model, dtype=_F64),
        }
    out["decoder.weight"] = _uniform(g, 10, d_model, fan_in=d_model)
    return out


def tnn(g: torch.Generator, embed_dim: int = 32, n_layers: int = 2, heads: int = 2,
        rpe_dim: int = 32, rpe_layers: int = 3, expand_ratio: int = 3) -> Tensors:
    """fairseq-evo / tnn-pytorch TNN LM layout (decoder.layers.{i}.token_mixer.toep.*): Gtu
    projections, Tno RPE MLP (pos_proj, layers.{j}.2, out.2; SimpleRMSNorm has no weight) and
    the learned decay gamma (heads, 1, head_dim), GLU feature mixer. Keys are the same for the
    causal and the non-causal model."""
    d1 = expand_ratio * embed_dim // heads * heads
    head_dim = d1 // heads
    out: Tensors = {"decoder.embed_tokens.weight": torch.randn(64, embed_dim, generator=g,
                                                               dtype=_F64)}
    for i in range(n_layers):
        b = f"decoder.layers.{i}"
        tm = f"{b}.token_mixer"
        r = f"{tm}.toep.rpe"
        out |= {
            f"{tm}.u_proj.weight": _uniform(g, d1, embed_dim, fan_in=embed_dim),
            f"{tm}.u_proj.bias": _uniform(g, d1, fan_in=embed_dim),
            f"{tm}.v_proj.weight": _uniform(g, d1, embed_dim, fan_in=embed_dim),
            f"{tm}.v_proj.bias": _uniform(g, d1, fan_in=embed_dim),
            f"{tm}.o.weight": _uniform(g, embed_dim, d1, fan_in=d1),
            f"{tm}.o.bias": _uniform(g, embed_dim, fan_in=d1),
            f"{r}.pos_proj.weight": _uniform(g, rpe_dim, 1, fan_in=1),
            f"{r}.pos_proj.bias": _uniform(g, rpe_dim, fan_in=1),
            f"{r}.out.2.weight": _uniform(g, d1, rpe_dim, fan_in=rpe_dim),
            f"{r}.out.2.bias": _uniform(g, d1, fan_in=rpe_dim),
            # use_multi_decay: gamma = 0.99 + 0.01 sigmoid(g), decay times ~100 .. 1000 tokens
            f"{tm}.toep.gamma": torch.randn(heads, 1, head_dim, generator=g, dtype=_F64),
            f"{b}.feature_mixer.l1.weight": _uniform(g, 2 * embed_dim, embed_dim,
                                                     fan_in=embed_dim),
            f"{b}.feature_mixer.l2.weight": _uniform(g, 2 * embed_dim, embed_dim,
                                                     fan_in=embed_dim),
            f"{b}.feature_mixer.l3.weight": _uniform(g, embed_dim, 2 * embed_dim,
                                                     fan_in=2 * embed_dim),
        }
        out |= {f"{r}.layers.{j}.2.{k}": (_uniform(g, rpe_dim, rpe_dim, fan_in=rpe_dim)
                                          if k == "weight" else
                                          _uniform(g, rpe_dim, fan_in=rpe_dim))
                for j in range(rpe_layers) for k in ("weight", "bias")}
    out["decoder.output_projection.weight"] = _uniform(g, 64, embed_dim, fan_in=embed_dim)
    return out


def tnn_bidir(g: torch.Generator, **sizes: int) -> Tensors:
    """The non-causal TNN (e.g. the bidirectional LM / LRA models): the same keys as ``tnn``."""
    return tnn(g, **sizes)
