"""Hyena / HyenaDNA implicit filters: a Sin-activated MLP of positional features, windowed.

Dimensions: L kernel length (<= l_max), E positional-embedding width, W MLP width, C channels.

Upstream (safari ``HyenaFilter``; HyenaDNA port):
  z[t] = [t/(l_max-1), cos(f w_t), -sin(f w_t)],  f = linspace(1e-4, B-1, B), B = (E-1)/2,
         w_t = 2 pi t / l_max                       (or the stored ``pos_emb.z``)
  a = sin(w_mod freq (W_0 z + b_0)); a = sin(w_mod freq (W_j a + b_j)) ...; h = W_last a
  h[t, c] *= exp(-t_norm[t] |delta_c|) + shift        (if modulate; t_norm = stored ``pos_emb.t``)
  h[t, :] /= ||h[t, :]||_1                            (if normalized)
The kernel is evaluated on the first L rows of the l_max positions (t is not renormalised).
The Sin module is shared, so a file may store only the first ``freq``: it is reused.

Bidirectional filters (M2 ``HyenaFilter(bidirectional=True)``, m2 bert/src/mm/hyena_utils.py):
a second MLP ``implicit_filter_rev`` (same positional features, same Sin module, same
modulation and normalization) gives k_rev; the layer convolves with the two-sided kernel
``pad(k_fwd, (0, L)) + pad(k_rev.flip(-1), (L, 0))`` over 2L circular lags, i.e.
h[tau] = k_fwd[tau] for tau >= 0 and h[-(j+1)] = k_rev[j] (see ``lcd_cli.bidirectional``).
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels.base import Materializer, OptionSpec, resolve_length
from lcd_cli.families.view import LayerView

FWD, REV = "implicit_filter", "implicit_filter_rev"
# Keys of the filter MLP: nn.Sequential(Linear, Sin, Linear, Sin, ..., Linear), so linears
# (weight, bias) at even indices and the shared Sin's ``freq`` at odd ones.
_MLP_KEY = re.compile(r"^(\d+)\.(weight|bias|freq)$")
_ROW_BUDGET = 1 << 21  # float64 words of one block of (time rows, MLP width) activations (16 MiB)


def positional_features(l_max: int, emb_dim: int) -> tuple[Tensor, Tensor]:
    """Recompute z (l_max, E) and t_norm (l_max, 1) in float64 as the upstream buffer init."""
    bands = (emb_dim - 1) // 2
    t_norm = torch.linspace(0, 1, l_max, dtype=torch.float64)[:, None]  # (l_max, 1)
    w = 2 * math.pi * torch.arange(l_max, dtype=torch.float64)[:, None] / l_max  # (l_max, 1)
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)[None]  # (1, B)
    z = torch.cat([t_norm, torch.cos(f * w), -torch.sin(f * w)], dim=-1)  # (l_max, E)
    return z, t_norm


class HyenaKernel(Materializer):
    name = "hyena"
    options: ClassVar[OptionSpec] = {
        "shift": ((float, int), 0.0),
        "modulate": ((bool,), True),
        "normalized": ((bool,), False),
        "sin_freq": ((float, int, type(None)), None),
        "l_max": ((int, type(None)), None),
        "length": ((int, type(None)), None),
        "w_mod": ((float, int), 1.0),
    }

    def _linears(self, view: LayerView, net: str = FWD) -> list[int]:
        pattern = re.compile(rf"^{net}\.(\d+)\.weight$")
        idx = sorted(int(m.group(1)) for k in view.names() if (m := pattern.match(k)))
        if len(idx) < 2:
            hint = ("a bidirectional (causal: false) config needs the reverse filter MLP"
                    if net == REV else None)
            raise LcdError(f"expected at least 2 linear layers {net}.<j>.weight, found "
                           f"{len(idx)}", file=view.file, key=view.key(net), hint=hint)
        return idx

    def check_structure(self, view: LayerView, options: dict[str, Any]) -> list[str]:
        """Each filter MLP is upstream's nn.Sequential: linears at 0, 2, ..., 2m with no gap
        (a gap would be read as a shorter MLP), a Sin ``freq`` only between two linears, a bias
        only beside its weight, and no other key under it."""
        problems = []
        for net in (FWD, REV):
            rel = [k[len(net) + 1:] for k in view.names() if k.startswith(net + ".")]
            if not rel:
                continue
            parsed = [(k, _MLP_KEY.match(k)) for k in rel]
            extra = [view.key(f"{net}.{k}") for k, m in parsed if m is None]
            entries = [(int(m.group(1)), m.group(2)) for _, m in parsed if m is not None]
            linears = sorted(j for j, kind in entries if kind == "weight")
            if extra:
                problems.append(f"{', '.join(extra)}: not a Linear weight/bias or Sin freq of "
                                "the filter MLP")
            if not linears:
                continue
            want = list(range(0, linears[-1] + 1, 2))
            if linears != want:
                missing = [view.key(f"{net}.{j}.weight") for j in want if j not in linears]
                odd = [view.key(f"{net}.{j}.weight") for j in linears if j % 2]
                problems.append(f"the linear layers of {view.key(net)} are at {linears}, not "
                                f"0, 2, ..., {want[-1]} as upstream's Sequential(Linear, Sin, "
                                "...) stores them"
                                + (f": {', '.join(missing)} missing" if missing else "")
                                + (f"; {', '.join(odd)} at a Sin position" if odd else ""))
            orphans = [view.key(f"{net}.{j}.{kind}") for j, kind in entries
                       if (kind == "bias" and j not in linears)
                       or (kind == "freq" and not (j % 2 and j - 1 in linears
                                                   and j < linears[-1]))]
            if orphans:
                problems.append(f"{', '.join(sorted(orphans))} belong(s) to no layer of the "
                                "filter MLP (a bias without its weight, or a Sin freq not "
                                "between two linears)")
        return problems

    def _l_max(self, view: LayerView, options: dict[str, Any]) -> int:
        for rel in ("pos_emb.z", "pos_emb.t"):
            if view.has(rel):
                shape = view.shape(rel)
                if len(shape) != 3 or shape[0] != 1:
                    raise LcdError(f"expected shape (1, l_max, *), got {list(shape)}",
                                   file=view.file, key=view.key(rel))
                return shape[1]
        if options["l_max"] is None:
            raise LcdError("neither pos_emb.z nor pos_emb.t is stored, so l_max is unknown",
                           file=view.file, key=view.prefix, hint="set the config option 'l_max'")
        return int(options["l_max"])

    def shape(self, view: LayerView, options: dict[str, Any], net: str = FWD) -> tuple[int, int]:
        idx = self._linears(view, net)
        shapes = [view.shape(f"{net}.{j}.weight") for j in idx]
        for j, s in enumerate(shapes):
            # Each weight must be 2-D and take the previous layer's output width as input.
            if len(s) != 2 or (j > 0 and s[1] != shapes[j - 1][0]):
                raise LcdError(f"linear layer shapes do not chain: {[list(x) for x in shapes]}",
                               file=view.file, key=view.key(f"{net}.{idx[j]}.weight"))
        channels, emb_dim = shapes[-1][0], shapes[0][1]
        if net == REV:
            fwd = self.shape(view, options)
            fwd_emb = view.shape(f"{FWD}.{self._linears(view)[0]}.weight")[1]
            if (channels, emb_dim) != (fwd[0], fwd_emb):
                raise LcdError(f"the reverse filter maps {emb_dim} features to {channels} "
                               f"channels, the forward filter {fwd_emb} to {fwd[0]}",
                               file=view.file, key=view.key(f"{net}.{idx[-1]}.weight"))
        l_max = self._l_max(view, options)
        if view.has("pos_emb.z") and view.shape("pos_emb.z")[2] != emb_dim:
            raise LcdError(f"pos_emb.z width {view.shape('pos_emb.z')[2]} does not match the "
                           f"first linear's input {emb_dim}", file=view.file,
                           key=view.key("pos_emb.z"))
        if options["modulate"] and view.shape("modulation.deltas")[-1] != channels:
            raise LcdError(f"expected {channels} deltas, shape is "
                           f"{list(view.shape('modulation.deltas'))}", file=view.file,
                           key=view.key("modulation.deltas"))
        return channels, resolve_length(view, l_max, options)

    def _freqs(self, view: LayerView, idx: list[int], options: dict[str, Any],
               net: str = FWD) -> list[Tensor]:
        """The Sin frequency after each hidden linear (shared module: fall back to the first
        stored one, of this MLP or, for the reverse MLP, of the forward one)."""
        stored = {j: f"{net}.{j + 1}.freq" for j in idx[:-1]}
        shared = [f"{FWD}.{j + 1}.freq" for j in self._linears(view)[:-1]]
        available = [rel for rel in [*stored.values(), *shared] if view.has(rel)]
        if available:
            first = view.get(available[0])
            return [view.get(stored[j]) if view.has(stored[j]) else first for j in idx[:-1]]
        if options["sin_freq"] is None:
            raise LcdError("no Sin frequency (implicit_filter.<j>.freq) is stored",
                           file=view.file, key=view.prefix,
                           hint="set the config option 'sin_freq' to the model's Sin w")
        return [torch.tensor(float(options["sin_freq"]), dtype=torch.float64)] * (len(idx) - 1)

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        return self._filter(view, options, FWD)

    def kernel_rev(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        """k_rev (C, L): the ``implicit_filter_rev`` MLP, modulated like the forward one."""
        return self._filter(view, options, REV)

    def kernel_channels(self, view: LayerView, options: dict[str, Any], idx: Tensor) -> Tensor:
        """Only the last linear layer and the modulation are per channel: the MLP runs once,
        its output layer for the sampled channels only (unless ``normalized``, whose L1 norm
        over channels needs them all)."""
        if options["normalized"]:
            return self.kernel(view, options)[idx]
        return self._filter(view, options, FWD, idx)

    def _filter(self, view: LayerView, options: dict[str, Any], net: str,
                idx_channels: Tensor | None = None) -> Tensor:
        """The (C, L) kernel of MLP ``net``, or of the channels ``idx_channels`` only."""
        channels, length = self.shape(view, options, net)
        pick = slice(None) if idx_channels is None else idx_channels
        idx = self._linears(view, net)
        l_max = self._l_max(view, options)
        emb_dim = view.shape(f"{net}.{idx[0]}.weight")[1]
        z, t_norm = positional_features(l_max, emb_dim)  # (l_max, E), (l_max, 1)
        if view.has("pos_emb.z"):
            z = view.get("pos_emb.z")[0]  # (l_max, E)
        if view.has("pos_emb.t"):
            t_norm = view.get("pos_emb.t")[0]  # (l_max, 1)
        freqs = self._freqs(view, idx, options, net)
        w_mod = float(options.get("w_mod", 1.0))
        weights = [view.get(f"{net}.{j}.weight") for j in idx]  # [(W, E), (W, W), ..., (C, W)]
        biases = [view.get(f"{net}.{j}.bias") if view.has(f"{net}.{j}.bias") else None
                  for j in idx]
        w_last, b_last = weights[-1][pick], biases[-1]  # (C', W), (C,) or None
        if b_last is not None:
            b_last = b_last[pick]  # (C',)
        deltas = (view.get("modulation.deltas").reshape(1, channels)[:, pick].abs()
                  if options["modulate"] else None)  # (1, C')
        widest = max([w_last.shape[0]] + [w.shape[0] for w in weights[:-1]])
        rows = max(1, _ROW_BUDGET // widest)  # time rows per block
        out: Tensor | None = None  # (C', L), in the dtype of the MLP's output
        for t0 in range(0, length, rows):
            # Rows are independent: blocks bound the (rows, W) temporaries to cache-sized
            # pieces (one (L, C) pass each at L = 1M: 36 s, mostly page faults, for 256 ch).
            t1 = min(length, t0 + rows)
            a = z[t0:t1]  # (Lb, E)
            for w, b, freq in zip(weights[:-1], biases[:-1], freqs, strict=True):
                a = a @ w.T  # (Lb, W)
                if b is not None:
                    a = a + b
                a = torch.sin(w_mod * freq.reshape(1, -1) * a)  # (Lb, W)
            h = a @ w_last.T  # (Lb, C')
            if b_last is not None:
                h = h + b_last
            if deltas is not None:
                h = h * (torch.exp(-t_norm[t0:t1] * deltas) + float(options["shift"]))
            if options["normalized"]:
                h = h / h.abs().sum(dim=-1, keepdim=True)  # L1 over channels at each t
            if out is None:
                out = torch.empty(h.shape[1], length, dtype=h.dtype)  # (C', L)
            out[:, t0:t1] = h.T
        assert out is not None  # length >= 1 (resolve_length)
        return out
