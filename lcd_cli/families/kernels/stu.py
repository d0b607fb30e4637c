"""STU / Flash-STU: fixed spectral filters phi (shared by every layer) mixed by learned M.

Dimensions: L filter length, K filters, I/O input/output features, C approx-mode channels.

The "kernel" of a layer, for inspection and fitting, is:
  exact mode:  its 2K basis filters [phi_k[s]; (-1)^s phi_k[s]] (2K, L) (K without M_phi_minus):
               every (i, o) kernel H[s, i, o] is a combination of them (lcd_cli.numerics.stu_layer);
  approx mode: its C depthwise kernels (1 + (-1)^s) (phi M_filters)[s, c] (C, L).
phi is the checkpoint's buffer (option ``phi_key``, a full key, default ``phi``) when stored,
else recomputed (lcd_cli.numerics.stu_filters) at ``length`` (the model's seq_len) with K from M.
Option ``basis`` (complex or real shared poles) is used by `lcd distill` (lcd_cli.kinds.shared_basis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels.base import Materializer, OptionSpec
from lcd_cli.families.view import LayerView
from lcd_cli.numerics.stu_filters import signed_basis, spectral_filters
from lcd_cli.numerics.stu_layer import approx_forward, approx_kernels, exact_forward
from lcd_cli.numerics.stu_runtime import STURecurrent


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
        info = layer_params_shape(view, options)
        return info["channels"], info["length"]

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        params = load_layer(view, options)
        phi = params.phi  # (L, K)
        if params.mode == "approx":
            return approx_kernels(phi, params.m_filters)  # (C, L)
        basis = signed_basis(phi)  # (2K, L)
        return basis if params.m_minus is not None else basis[: phi.shape[1]].contiguous()


# ----------------------------------------------------------------------------- parameters


@dataclass
class STUParams:
    """One layer's parameters in float64, plus the basis phi (L, K) it uses."""

    mode: str
    phi: Tensor  # (L, K)
    phi_stored: bool
    m_plus: Tensor | None = None  # (K, I, O)
    m_minus: Tensor | None = None  # (K, I, O)
    m_inputs: Tensor | None = None  # (I, C)
    m_filters: Tensor | None = None  # (K, C)


def basis_prefix(phi_key: str) -> str:
    """Where the shared basis goes: next to the phi buffer."""
    parent = phi_key.rpartition(".")[0]
    return f"{parent}.stu_basis" if parent else "stu_basis"


def layer_params_shape(view: LayerView, options: dict[str, Any]) -> dict[str, Any]:
    """Mode, K, I, O, channels and length from headers; LcdError on mis-shaped parameters."""
    mode = options["mode"]
    if mode == "exact":
        sp = view.shape("M_phi_plus")
        if len(sp) != 3:
            raise LcdError(f"expected M_phi_plus of shape (K, d_in, d_out), got {list(sp)}",
                           file=view.file, key=view.key("M_phi_plus"))
        if view.has("M_phi_minus") and view.shape("M_phi_minus") != sp:
            raise LcdError(f"M_phi_minus {list(view.shape('M_phi_minus'))} does not match "
                           f"M_phi_plus {list(sp)}", file=view.file, key=view.key("M_phi_minus"))
        if not view.has("M_phi_minus") and not options["use_hankel_l"]:
            view.shape("M_phi_minus")  # raises: missing
        k = sp[0]
        channels = 2 * k if view.has("M_phi_minus") else k
    else:
        si, sf = view.shape("M_inputs"), view.shape("M_filters")
        if len(si) != 2:
            raise LcdError(f"expected M_inputs of shape (d_in, d_out), got {list(si)}",
                           file=view.file, key=view.key("M_inputs"))
        if len(sf) != 2 or sf[1] != si[1]:
            raise LcdError(f"expected M_filters of shape (K, {si[1]}) (one column per projected "
                           f"channel), got {list(sf)}", file=view.file, key=view.key("M_filters"))
        k, channels = sf[0], si[1]
    phi_key = options["phi_key"]
    natural = None
    if phi_key in view.ckpt:
        shape = view.ckpt.info(phi_key).shape
        if len(shape) != 2 or shape[1] != k:
            raise LcdError(f"the stored phi has shape {list(shape)} but the layer's M matrices "
                           f"have K={k}: expected ({'L'}, {k})", file=view.file, key=phi_key,
                           hint="is it the right --family, or a checkpoint with swapped "
                           "get_spectral_filters arguments?")
        natural = shape[0]
    want = options.get("length")
    if natural is None and want is None:
        raise LcdError(f"no stored phi buffer ('{phi_key}'), so the filter length is unknown",
                       file=view.file, key=phi_key,
                       hint="set --length (the model's seq_len) to recompute phi")
    if want is not None and (want < 2 or (natural is not None and want > natural)):
        raise LcdError(f"length {want} is out of range 2..{natural or 'inf'}", file=view.file,
                       key=phi_key)
    return {"mode": mode, "k": k, "channels": channels, "length": int(want or natural),
            "phi_stored": natural is not None}


def load_phi(view: LayerView, options: dict[str, Any], k: int, length: int) -> tuple[Tensor, bool]:
    """phi (L, K) float64: the stored buffer (truncated to L) or recomputed; and whether stored."""
    key = options["phi_key"]
    if key in view.ckpt:
        return view.ckpt.get(key, torch.float64)[:length].contiguous(), True
    return spectral_filters(length, k, options["use_hankel_l"]), False


def load_layer(view: LayerView, options: dict[str, Any], phi: Tensor | None = None) -> STUParams:
    """The layer's M matrices (float64) and phi (given, else loaded or recomputed)."""
    info = layer_params_shape(view, options)
    stored = info["phi_stored"]
    if phi is None:
        phi, stored = load_phi(view, options, info["k"], info["length"])
    if info["mode"] == "exact":
        mm = view.get("M_phi_minus") if view.has("M_phi_minus") else None
        return STUParams("exact", phi, stored, m_plus=view.get("M_phi_plus"), m_minus=mm)
    return STUParams("approx", phi, stored, m_inputs=view.get("M_inputs"),
                     m_filters=view.get("M_filters"))


def runtime(params: STUParams, poles: Tensor, residues: Tensor,
            dtype: torch.dtype = torch.float32) -> STURecurrent:
    """The recurrent layer of these parameters on the basis (poles (N,), residues (K, N))."""
    return STURecurrent(poles, residues, params.mode, m_plus=params.m_plus,
                        m_minus=params.m_minus, m_inputs=params.m_inputs,
                        m_filters=params.m_filters, dtype=dtype)


def reference_forward(params: STUParams, u: Tensor) -> Tensor:
    """The checkpoint's own convolution, float64: u (B, T, I) -> (B, T, O)."""
    if params.mode == "exact":
        assert params.m_plus is not None
        return exact_forward(u, params.phi, params.m_plus, params.m_minus)
    assert params.m_inputs is not None and params.m_filters is not None
    return approx_forward(u, params.phi, params.m_inputs, params.m_filters)


def modal_form(params: STUParams, poles: Tensor, residues: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The layer's kernels (as the materializer gives them) and their per-channel modal form:
    h (C, L), poles (C, M), residues (C, M) complex (M = N or 2N)."""
    k = params.phi.shape[1]
    if params.mode == "exact":
        h = signed_basis(params.phi)  # (2K, L)
        p = torch.cat([poles[None].expand(k, -1), -poles[None].expand(k, -1)])  # (2K, N)
        r = torch.cat([residues, residues])  # (2K, N)
        if params.m_minus is None:
            h, p, r = h[:k], p[:k], r[:k]
        return h, p, r
    assert params.m_filters is not None
    h = approx_kernels(params.phi, params.m_filters)  # (C, L)
    w = (residues.T @ params.m_filters.to(torch.complex128)).T  # (C, N)
    c = w.shape[0]
    p = torch.cat([poles, -poles])[None].expand(c, -1)  # (C, 2N)
    return h, p, torch.cat([w, w], 1)


def clean_target(phi: Tensor, use_hankel_l: bool) -> Tensor | None:
    """The float64 recomputation of a stored phi (L, K), signs aligned to it, when it matches
    the stored one to 1e-2 per filter (i.e. the stored phi is the standard one, rounded);
    else None. Poles are placed on it: rounding noise (float32 / bf16 buffers) derails ERA."""
    clean = spectral_filters(phi.shape[0], phi.shape[1], use_hankel_l)  # (L, K)
    sign = torch.where((clean * phi).sum(0) < 0, -1.0, 1.0).to(clean.dtype)  # (K,)
    clean = clean * sign
    err = torch.linalg.vector_norm(clean - phi, dim=0) / torch.linalg.vector_norm(phi, dim=0)
    return clean if bool((err < 1e-2).all()) else None

