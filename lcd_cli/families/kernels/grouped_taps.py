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

Precision (options ``taps_dtype``, ``engine_taps_dtype``, ``engine_keeps_shapes``): the stored
taps are rounded to ``taps_dtype`` (``stored``, the default: the file's values exactly, float32
for Evo 2) before the kernel is formed in float64. An engine may run other values than those stored:
vortex's ``load_checkpoint`` (``StripedHyena.to_bfloat16_except_pr_lc``) casts every parameter
to bfloat16 except names containing ``log_poles`` / ``residues`` and shapes (4096, 1, 128), so
Evo 2's (256, 1, 128) MR taps run in bfloat16. ``engine_taps_dtype`` records that cast (null:
the engine keeps the stored taps) and ``engine_keeps_shapes`` the stored shapes it leaves alone;
``taps_dtype: bfloat16`` then materializes exactly the taps the engine runs (torch's
round-to-nearest-even from the stored dtype, as the engine's own cast). When ``taps_dtype``
differs from the engine's cast, :meth:`GroupedTapsKernel.warnings` says how far apart the two
sets of taps are on that layer (relative l2 over its G x K taps).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels.base import Materializer, OptionSpec, resolve_length
from lcd_cli.families.view import LayerView

ORIENTATIONS = ("convolution", "cross-correlation")
# taps_dtype / engine_taps_dtype values -> the torch dtype the taps are rounded to
TAPS_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                       "float16": torch.float16}
STORED = "stored"  # taps_dtype: the stored values, not rounded


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
        "taps_dtype": ((str,), STORED),
        "engine_taps_dtype": ((str, type(None)), None),
        "engine_keeps_shapes": ((list,), []),
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
        for name, extra in (("taps_dtype", (STORED,)), ("engine_taps_dtype", ())):
            value = given.get(name)
            if isinstance(value, str) and value not in (*extra, *TAPS_DTYPES):
                problems.append(f"option '{name}' must be one of "
                                f"{', '.join((*extra, *TAPS_DTYPES))}"
                                f"{' or null' if not extra else ''}, got {value!r}")
        shapes = given.get("engine_keeps_shapes", [])
        if isinstance(shapes, list) and not all(
                isinstance(sh, list) and all(type(n) is int for n in sh) for sh in shapes):
            problems.append(f"option 'engine_keeps_shapes' must be a list of shapes (lists of "
                            f"ints), got {shapes!r}")
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
        w = self._rounded(view, options, options["taps_dtype"]).reshape(groups, taps)  # (G, K)
        if options["orientation"] == "cross-correlation":
            w = w.flip(-1)  # (G, K): h[tau] = w[K-1-tau]
        h = w.repeat_interleave(channels // groups, dim=0)  # (C, K)
        return h[:, :length].contiguous()  # (C, L)

    def _rounded(self, view: LayerView, options: dict[str, Any], dtype: str) -> Tensor:
        """The stored taps rounded to ``dtype`` (as ``Tensor.to`` rounds: to nearest even;
        ``stored``: not rounded), then widened exactly to float64, in the stored shape."""
        if dtype == STORED:
            return view.get(options["key"])  # float64, exact
        stored = view.get(options["key"], dtype=None)  # the file's dtype
        return stored.to(TAPS_DTYPES[dtype]).to(torch.float64)

    def _engine_cast(self, view: LayerView, options: dict[str, Any]) -> str | None:
        """The dtype the engine casts this layer's stored taps to, or None when it keeps them."""
        engine = options["engine_taps_dtype"]
        shape = list(view.shape(options["key"]))
        if engine is None or shape in [list(s) for s in options["engine_keeps_shapes"]]:
            return None
        return str(engine)

    def _engine_gap(self, view: LayerView, options: dict[str, Any]) -> float | None:
        """Relative l2 distance of the taps used here from the taps the engine runs, over
        the layer's G x K taps; None when the engine keeps the stored taps."""
        engine = self._engine_cast(view, options)
        if engine is None:
            return None
        used = self._rounded(view, options, options["taps_dtype"])
        ran = self._rounded(view, options, engine)
        return float((used - ran).norm() / used.norm().clamp_min(1e-300))

    def info(self, view: LayerView, options: dict[str, Any]) -> dict[str, Any]:
        gap = self._engine_gap(view, options)
        if gap is None:
            return {}
        return {"engine_taps_dtype": self._engine_cast(view, options),
                "engine_taps_rel_diff": gap}

    def warnings(self, view: LayerView, options: dict[str, Any]) -> list[str]:
        engine = self._engine_cast(view, options)
        gap = self._engine_gap(view, options)
        if engine is None or gap is None or gap == 0.0 or engine == options["taps_dtype"]:
            return []
        groups, taps = self._taps(view, options)
        used = options["taps_dtype"]
        used = f"stored {view.ckpt.info(view.key(options['key'])).dtype}" if used == STORED else used
        return [f"the engine casts these taps to {engine} when it loads them, so it runs taps "
                f"{gap:.2e} away (relative l2 over the layer's {groups} x {taps} taps) from "
                f"the {used} taps fitted here; a fit closer than that is "
                f"measured against taps the engine does not run. --set taps_dtype={engine} "
                "fits the engine's taps"]
