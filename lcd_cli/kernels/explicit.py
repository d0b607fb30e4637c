"""Explicit long convolutions (safari ``long_conv``, SGConv-style stored kernels).

The stored kernel k (Ch, H, L') is used as the filter after optional transforms, in order:
  1. smoothing: average pool of width w, stride 1, zero padding w//2 (count_include_pad),
  2. squash: k <- sign(k) * max(|k| - lambda, 0).
Channels are flattened as c = ch * H + h; the kernel is truncated to ``length`` when set.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.kernels.base import Materializer, OptionSpec, resolve_length
from lcd_cli.layers import LayerView


class ExplicitKernel(Materializer):
    name = "explicit"
    options: ClassVar[OptionSpec] = {
        "key": ((str,), "kernel"),
        "smooth_window": ((int, type(None)), None),
        "squash_lambda": ((float, int), 0.0),
        "length": ((int, type(None)), None),
    }

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        shape = view.shape(options["key"])
        if len(shape) not in (2, 3):
            raise LcdError(f"expected a kernel of shape (C, L) or (channels, H, L), got {list(shape)}",
                           file=view.file, key=view.key(options["key"]))
        channels = shape[0] * (shape[1] if len(shape) == 3 else 1)
        return channels, resolve_length(view, shape[-1], options)

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        channels, length = self.shape(view, options)
        k = view.get(options["key"]).reshape(channels, -1)  # (C, L')
        w = options["smooth_window"]
        if w:
            k = F.avg_pool1d(k[:, None], kernel_size=w, stride=1, padding=w // 2)[:, 0]  # (C, L')
        lam = float(options["squash_lambda"])
        if lam > 0:
            k = torch.sign(k) * torch.clamp(k.abs() - lam, min=0)  # (C, L')
        return k[:, :length].contiguous()  # (C, L)
