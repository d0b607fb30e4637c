"""A drop-in filter module for model code: one distilled layer in place of Hyena's filter.

Layer 5. Dimensions: B batch, C channels, N modes, L kernel / input length.

HyenaDNA's and safari's ``HyenaOperator`` hold their long filter as ``mixer.filter_fn``, a
``HyenaFilter`` (hyena-dna ``standalone_hyenadna.py``) that the operator uses as
  k = filter_fn.filter(L)[0]            # (L, C): filter(L) returns (1, L, C)
  bias = filter_fn.bias                  # (C,): the skip term D
  y = filter_fn(v, L, k=k_o, bias=b_o)   # fftconv(v, k_o (C, L), b_o): causal conv + D v
:class:`DistilledFilter` has the same three (so the operator's code runs unchanged), computing
k from the distilled modes, k[t] = Re sum_n R_n p_n^t, and adds the recurrent interface of
:class:`lcd_cli.numerics.ssm.DiagonalSSM` for token-by-token decoding: ``prefill(v)`` over a
prompt, then ``step(v_t, state)`` per token, with y_t = conv(v, k)_t + D v_t in both.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.config import recorded_configs
from lcd_cli.io.checkpoint import Checkpoint, open_checkpoint
from lcd_cli.layouts import get_layout
from lcd_cli.numerics.ssm import DiagonalSSM, fft_conv

PART = "ssm"  # a causal layer's one part


class DistilledFilter(nn.Module):
    """Hyena's filter interface (``filter(L)``, ``bias``, ``forward(x, L, k, bias)``) over a
    diagonal SSM, plus ``init_state`` / ``prefill`` / ``step`` for recurrent decoding.

    Args:
        ssm: the layer (C channels, N modes); its precision (complex64 / complex128) is kept.
        bias: (C,) skip term D (HyenaFilter's ``bias``); zeros when None.
    """

    def __init__(self, ssm: DiagonalSSM, bias: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("poles", ssm.poles.clone())  # (C, N) complex
        self.register_buffer("residues", ssm.residues.clone())  # (C, N) complex
        D = ssm.D if bias is None else bias
        D = torch.zeros(ssm.channels, dtype=ssm.dtype) if D is None else D
        if tuple(D.shape) != (ssm.channels,):
            raise LcdError(f"bias must have shape ({ssm.channels},), got {tuple(D.shape)}",
                           key="bias")
        self.bias = nn.Parameter(D.to(device=ssm.device, dtype=ssm.dtype).clone())  # (C,)

    @classmethod
    def from_checkpoint(cls, path: str | Path, layer_prefix: str, *, skip_key: str | None = None,
                        dtype: torch.dtype = torch.float32) -> DistilledFilter:
        """One layer of a checkpoint written by `lcd distill` (any layout, read through the
        layout named in its metadata). The skip term comes from ``skip_key``, else from the
        family config recorded in the metadata (e.g. ``<prefix>.bias`` for HyenaDNA)."""
        with open_checkpoint(path) as ckpt:
            layout = get_layout(ckpt.metadata.get("lcd_layout", "lcd"))
            poles_key = layout.part_keys(layer_prefix, PART)[0]
            if poles_key not in ckpt:
                raise LcdError("no distilled layer under this prefix", file=ckpt.source,
                               key=poles_key, hint="pass a layer prefix of the distill report "
                                                   "(its 'layers[].name')")
            channels = ckpt.info(poles_key).shape[0]
            key = skip_key or _recorded_skip_key(ckpt, layer_prefix)
            D = None
            if key is not None:
                if key not in ckpt:
                    raise LcdError("the skip term is missing", file=ckpt.source, key=key)
                D = ckpt.get(key, torch.float64).reshape(-1)  # (C,)
            ssm = layout.read_part(ckpt, layer_prefix, PART, D, channels)
        return cls(ssm.to(dtype=dtype))

    # ---- the HyenaFilter interface ---------------------------------------------------------

    @property
    def d_model(self) -> int:
        return self.poles.shape[0]

    def ssm(self) -> DiagonalSSM:
        """The layer as a DiagonalSSM with the current bias as D."""
        return DiagonalSSM(self.poles, self.residues, self.bias.detach())

    def filter(self, L: int, *args: object, **kwargs: object) -> Tensor:
        """The kernel as HyenaFilter.filter returns it: (1, L, C), in the layer's real dtype."""
        return self.ssm().kernel(L).T[None]  # (1, L, C)

    def forward(self, x: Tensor, L: int, k: Tensor | None = None, bias: Tensor | None = None,
                *args: object, **kwargs: object) -> Tensor:
        """HyenaFilter.forward: fftconv(x (B, C, L), k (C, L), bias (C,)) -> (B, C, L)."""
        k = self.filter(L)[0].T if k is None else k  # (C, L)
        bias = self.bias if bias is None else bias  # (C,)
        return fft_conv(x, k[..., :L], bias).to(x.dtype)  # (B, C, L)

    # ---- recurrent decoding ----------------------------------------------------------------

    def init_state(self, batch: int) -> Tensor:
        """Zero state (B, C, N), complex."""
        return self.ssm().init_state(batch)

    def prefill(self, u: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """A prompt at once: u (B, C, T) -> (conv(u, k) + D u (B, C, T), state (B, C, N))."""
        return self.ssm().prefill(u, state)

    def step(self, u_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One token: u_t (B, C) -> (y_t (B, C), new state (B, C, N)), O(N) per channel."""
        return self.ssm().step(u_t, state)


def _recorded_skip_key(ckpt: Checkpoint, prefix: str) -> str | None:
    """The skip term's key from the family config recorded in metadata ``lcd_config``."""
    for cfg in recorded_configs(ckpt):
        match = cfg.layer.fullmatch(prefix)
        if match and cfg.skip:
            key = cfg.skip.format(prefix=prefix, **match.groupdict())
            return key if key in ckpt else None
    return None
