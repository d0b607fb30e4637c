"""STU / Flash-STU: fixed spectral filters phi (shared by every layer) mixed by learned M.

Dimensions: L filter length, K filters, I/O input/output features, C approx-mode channels.

The "kernel" of a layer, for inspection and fitting, is:
  exact mode:  its 2K basis filters [phi_k[s]; (-1)^s phi_k[s]] (2K, L) (K without M_phi_minus):
               every (i, o) kernel H[s, i, o] is a combination of them (lcd_cli.stu.layer);
  approx mode: its C depthwise kernels (1 + (-1)^s) (phi M_filters)[s, c] (C, L).
phi is the checkpoint's buffer (option ``phi_key``, a full key, default ``phi``) when stored,
else recomputed (lcd_cli.stu.filters) at ``length`` (the model's seq_len) with K from M.
Option ``basis`` (complex or real shared poles) is used by `lcd distill` (lcd_cli.stu.distill).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from lcd_cli.kernels.base import Materializer, OptionSpec
from lcd_cli.layers import LayerView


class STUKernel(Materializer):
    name = "stu"
    options: ClassVar[OptionSpec] = {
        "mode": ((str,), "exact"),
        "phi_key": ((str,), "phi"),
        "use_hankel_l": ((bool,), False),
        "length": ((int, type(None)), None),
        "basis": ((str,), "complex"),
    }

    def check_options(self, given: dict[str, Any]) -> list[str]:
        problems = super().check_options(given)
        if given.get("mode", "exact") not in ("exact", "approx"):
            problems.append(f"option 'mode' must be 'exact' or 'approx', got {given['mode']!r}")
        if given.get("basis", "complex") not in ("complex", "real"):
            problems.append(f"option 'basis' must be 'complex' or 'real', got {given['basis']!r}")
        return problems

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        from lcd_cli.stu.distill import layer_params_shape

        info = layer_params_shape(view, options)
        return info["channels"], info["length"]

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        from lcd_cli.stu.distill import load_layer
        from lcd_cli.stu.filters import signed_basis
        from lcd_cli.stu.layer import approx_kernels

        params = load_layer(view, options)
        phi = params.phi  # (L, K)
        if params.mode == "approx":
            return approx_kernels(phi, params.m_filters)  # (C, L)
        basis = signed_basis(phi)  # (2K, L)
        return basis if params.m_minus is not None else basis[: phi.shape[1]].contiguous()
