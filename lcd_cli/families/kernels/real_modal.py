"""Real modal filters (Evo 2 / StripedHyena 2 Hyena-LI): sums of real decaying exponentials.

Dimensions:
    G  filter rows (vortex ``num_systems`` = hcl_filter_groups, = C in released Evo 2);
       channel c uses row c // (C / G)
    C  channels: the size of the layer's skip term D when one is stored, else G
    N  modes per row (``state_size``, 16 in Evo 2)
    L  kernel length, t = 0 .. L-1 (not stored: the input length, from config/CLI)

Kernel (vortex ``HyenaCascade.compute_filter``):
    h[g, t] = sum_n R[g, n] exp(log_poles[g, n] t),
log_poles (G, N, 1) and residues (G, N), both real. Savanna trains p and gamma and the converter
stores log_poles = -exp(p) exp(gamma) < 0, so every mode decays. The recurrence of vortex's
``step_iir`` is s_t = exp(log_poles) s_{t-1} + u_t, y_t = sum_n R s_t + D u_t: the diagonal
SSM of ``lcd_cli.numerics.modal`` with real poles exp(log_poles) and real residues, so N complex modes
represent the layer exactly and distillation reduces the order below N.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels.base import Materializer, OptionSpec, resolve_length
from lcd_cli.families.kernels.grouped_taps import group_channels
from lcd_cli.families.view import LayerView
from lcd_cli.numerics.modal import modal_kernel


class RealModalKernel(Materializer):
    name = "real-modal"
    options: ClassVar[OptionSpec] = {
        "log_poles": ((str,), "log_poles"),
        "residues": ((str,), "residues"),
        "length": ((int, type(None)), None),
    }

    def _modes(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        """(G, N) from log_poles (G, N, 1) or (G, N) and residues (G, N), real."""
        lp, res = options["log_poles"], options["residues"]
        shape = view.shape(lp)
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 1) or 0 in shape:
            raise LcdError(f"expected real log_poles of shape (G, N, 1) or (G, N), got "
                           f"{list(shape)}", file=view.file, key=view.key(lp))
        for rel in (lp, res):
            dtype = view.ckpt.info(view.key(rel)).dtype
            if dtype.startswith("C"):
                raise LcdError(f"expected a real tensor, got {dtype}", file=view.file,
                               key=view.key(rel), hint="complex poles are the 'modal' family")
        rows, modes = shape[0], shape[1]
        r_shape = view.shape(res)
        if tuple(r_shape) not in ((rows, modes), (rows, modes, 1)):
            raise LcdError(f"residues {list(r_shape)} do not match log_poles {list(shape)} "
                           f"(expected [{rows}, {modes}])", file=view.file, key=view.key(res))
        return rows, modes

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        rows, _ = self._modes(view, options)
        channels = group_channels(view, rows, options["log_poles"])
        return channels, resolve_length(view, None, options)

    def modes(self, view: LayerView, options: dict[str, Any]) -> tuple[Tensor, Tensor]:
        channels, _ = self.shape(view, options)
        rows, modes = self._modes(view, options)
        log_poles = view.get(options["log_poles"]).reshape(rows, modes)  # (G, N)
        residues = view.get(options["residues"]).reshape(rows, modes)  # (G, N)
        poles = torch.exp(log_poles).to(torch.complex128)  # (G, N) real poles
        per = channels // rows
        return (poles.repeat_interleave(per, dim=0),
                residues.to(torch.complex128).repeat_interleave(per, dim=0))  # (C, N) each

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        _, length = self.shape(view, options)
        poles, residues = self.modes(view, options)  # (C, N) each
        return modal_kernel(poles, residues, length)  # (C, L): Re of a real sum
