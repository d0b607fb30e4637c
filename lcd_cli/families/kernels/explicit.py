"""Explicit long convolutions (safari ``long_conv``, SGConv-style stored kernels).

The stored kernel k (Ch, H, L') is used as the filter after optional transforms, in order:
  1. smoothing: average pool of width w, stride 1, zero padding w//2 (count_include_pad),
  2. squash: k <- sign(k) * max(|k| - lambda, 0).
Channels are flattened as c = ch * H + h; the kernel is truncated to ``length`` when set.

Bidirectional (safari ``LongConv(bidirectional=True)``, src/models/sequence/long_conv.py): the
stored kernel holds 2 * channels rows, split as '(s c) h l -> s c h l' into k_fwd = k[:ch] and
k_rev = k[ch:]; the layer convolves (FFT size L_kernel + L) with
``pad(k_fwd, (0, L)) + pad(k_rev.flip(-1), (L, 0))``, so h[-(j+1)] = k_rev[j]. The transforms
act on the whole stored kernel, before the split; D stays (channels, H).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels.base import Materializer, OptionSpec, resolve_length
from lcd_cli.families.view import LayerView


class ExplicitKernel(Materializer):
    name = "explicit"
    options: ClassVar[OptionSpec] = {
        "key": ((str,), "kernel"),
        "smooth_window": ((int, type(None)), None),
        "squash_lambda": ((float, int), 0.0),
        "length": ((int, type(None)), None),
        "bidirectional": ((bool,), False),
    }

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        shape = view.shape(options["key"])
        if len(shape) not in (2, 3):
            raise LcdError(f"expected a kernel of shape (C, L) or (channels, H, L), got {list(shape)}",
                           file=view.file, key=view.key(options["key"]))
        if options.get("bidirectional") and shape[0] % 2:
            raise LcdError(f"a bidirectional kernel stacks forward and reverse halves on its first "
                           f"axis, which must be even; got {list(shape)}", file=view.file,
                           key=view.key(options["key"]))
        channels = shape[0] * (shape[1] if len(shape) == 3 else 1)
        halves = 2 if options.get("bidirectional") else 1
        return channels // halves, resolve_length(view, shape[-1], options)

    def accepts(self, view: LayerView, options: dict[str, Any]) -> bool:
        """With D stored, a two-sided kernel has twice D's rows, a causal one as many: the
        shapes tell the two layouts apart (without D the keys cannot, and --family decides)."""
        skip = view.layer.skip_key
        shape = view.shape(options["key"])
        if skip is None or len(shape) not in (2, 3):
            return True
        rows = shape[0] * (shape[1] if len(shape) == 3 else 1)
        d_rows = view.ckpt.info(skip).numel
        if options.get("bidirectional"):
            return rows == 2 * d_rows
        return not (rows == 2 * d_rows and shape[0] % 2 == 0)

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        return self._half(view, options, 0)

    def kernel_rev(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        if not options.get("bidirectional"):
            return super().kernel_rev(view, options)
        return self._half(view, options, 1)

    def _half(self, view: LayerView, options: dict[str, Any], half: int) -> Tensor:
        """The transformed kernel rows of one half (0: all of a causal kernel / k_fwd, 1: k_rev)."""
        channels, length = self.shape(view, options)
        halves = 2 if options.get("bidirectional") else 1
        k = view.get(options["key"]).reshape(halves * channels, -1)  # (S C, L')
        w = options["smooth_window"]
        if w:
            k = F.avg_pool1d(k[:, None], kernel_size=w, stride=1, padding=w // 2)[:, 0]  # (C, L')
        lam = float(options["squash_lambda"])
        if lam > 0:
            k = torch.sign(k) * torch.clamp(k.abs() - lam, min=0)  # (C, L')
        return k[half * channels:(half + 1) * channels, :length].contiguous()  # (C, L)
