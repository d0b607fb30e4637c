"""Grouped explicit taps (Evo 2 / StripedHyena 2 Hyena-MR and Hyena-SE filters).

Dimensions:
    G  filter rows (groups); channel c uses row c // (C / G)
    C  channels: the size of the layer's skip term D when one is stored; else, with the option
       ``channels_key``, that tensor's leading size / ``channels_divisor`` (Hyena-SE has no D:
       its featurizer conv ``short_filter_weight`` (3C, 1, 3) gives C); else G
    K  taps per row (128 for Hyena-MR, 7 for Hyena-SE in Evo 2)
    L  kernel length min(K, ``length``), tau = 0 .. L-1: the taps are a finite impulse
       response, exactly zero beyond K, so a ``length`` above K (e.g. the LI layers' --length in
       a mixed Evo 2 checkpoint) keeps all K taps instead of failing

The stored weight w is (G, 1, K) (vortex ``HyenaCascade.h``, expanded to C rows by
``repeat_interleave(C // G)``). Its impulse response depends on how upstream applies it:
  - ``convolution`` (vortex ``fftconv_func``, used when K >= 128, i.e. Hyena-MR):
    y = irfft(rfft(u, 2T) rfft(w, 2T))[:T], so h[c, tau] = w[c // (C/G), tau];
  - ``cross-correlation`` (``F.conv1d(..., padding=K-1)[..., :T]``, used when K < 128, i.e.
    Hyena-SE): y[t] = sum_k w[k] u[t + k - (K-1)], so h[c, tau] = w[c // (C/G), K-1-tau].
Hyena-MR weights are stored already decayed: savanna's ExplicitSingleDecayFilter computes
h * exp(-r_c t') (t' = linspace(0, 1, K)) and the converter to vortex bakes that product into h.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels.base import Materializer, OptionSpec, resolve_length
from lcd_cli.families.view import LayerView

ORIENTATIONS = ("convolution", "cross-correlation")


def group_channels(view: LayerView, rows: int, rel: str, width_key: str | None = None,
                   divisor: int = 1) -> int:
    """C for a layer whose generator has ``rows`` rows: the skip term's size, else the leading
    size of ``width_key`` (relative) / ``divisor`` when the layer has it, else ``rows``.
    ``rel`` names the generator key; C must be a multiple of ``rows``."""
    skip = view.layer.skip_key
    if skip is not None:
        channels, source = view.ckpt.info(skip).numel, f"the skip term '{skip}'"
    elif width_key is not None and view.has(width_key):
        channels, source = view.shape(width_key)[0] // divisor, f"'{view.key(width_key)}'"
    else:
        return rows
    if rows < 1 or channels < 1 or channels % rows:
        raise LcdError(f"{rows} filter rows do not divide the {channels} channels of {source} "
                       f"(channel c uses row c // (C / G))", file=view.file,
                       key=view.key(rel), hint="the filter groups G must divide the width C")
    return channels


class GroupedTapsKernel(Materializer):
    name = "grouped-taps"
    options: ClassVar[OptionSpec] = {
        "key": ((str,), "h"),
        "orientation": ((str,), "convolution"),
        "channels_key": ((str, type(None)), None),
        "channels_divisor": ((int,), 1),
        "length": ((int, type(None)), None),
    }

    def check_options(self, given: dict[str, Any]) -> list[str]:
        problems = super().check_options(given)
        value = given.get("orientation", ORIENTATIONS[0])
        if isinstance(value, str) and value not in ORIENTATIONS:
            problems.append(f"option 'orientation' must be one of {', '.join(ORIENTATIONS)}, "
                            f"got {value!r}")
        divisor = given.get("channels_divisor", 1)
        if isinstance(divisor, int) and divisor < 1:
            problems.append(f"option 'channels_divisor' must be at least 1, got {divisor}")
        return problems

    def _taps(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        """(G, K) from the stored weight's shape (G, 1, K) or (G, K)."""
        shape = view.shape(options["key"])
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[1] != 1) or 0 in shape:
            raise LcdError(f"expected grouped taps of shape (G, 1, K) or (G, K), got "
                           f"{list(shape)}", file=view.file, key=view.key(options["key"]))
        return shape[0], shape[-1]

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        groups, taps = self._taps(view, options)
        want = options["length"]
        clamped = {**options, "length": None if want is None else min(want, taps)}
        channels = group_channels(view, groups, options["key"], options["channels_key"],
                                  options["channels_divisor"])
        return channels, resolve_length(view, taps, clamped)

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        channels, length = self.shape(view, options)
        groups, taps = self._taps(view, options)
        w = view.get(options["key"]).reshape(groups, taps)  # (G, K)
        if options["orientation"] == "cross-correlation":
            w = w.flip(-1)  # (G, K): h[tau] = w[K-1-tau]
        h = w.repeat_interleave(channels // groups, dim=0)  # (C, K)
        return h[:, :length].contiguous()  # (C, L)
