"""Kernels of SSM-parameterised long convolutions: S4D, S4 (diagonal and DPLR), H3.

These layers already are state space models of order 2N (N stored modes, one of each
conjugate pair); distilling them to a lower order is model order reduction.

Dimensions:
    C  output channels of the SSM (upstream ``channels``; 1 for S4D and H3)
    H  heads (d_model); kernel channels are flattened as c * H + h (upstream ``(c h)``)
    S  independent (A, B) copies (``n_ssm``); head h uses copy h % S (upstream ``(v t)``)
    N  stored modes, half the state size
    L  kernel length: the input length (not stored; config option ``length``)

Math (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State Space
Models" (S4D), Sec. 2-3; Fu et al. 2023, "Hungry Hungry Hippos" (H3), Sec. 3):
    K[c, h, l] = 2 Re sum_n C[c, h, n] B[h, n] dB[h, n] dA[h, n]^l      (conjugate pairs: 2 Re)
    zoh:       dA = exp(dt A),                  dB = (exp(dt A) - 1) / A
    bilinear:  dA = (1 + dt A/2) / (1 - dt A/2), dB = dt / (1 - dt A/2)
    S4D  (state-spaces/s4 models/s4/s4d.py):  A = -exp(log_A_real) + i A_imag,
         dt = exp(log_dt) (H,), B = 1, zoh only; C (H, N, 2).
    S4   (models/s4/s4.py SSMKernelDiag):     A = -T_re(A_real) - i T_im(A_imag)  (note the minus),
         dt = T_dt(inv_dt) (H, 1) or (H, N) (sinh first when dt_fast), B (1, S, N, 2),
         C (C, H, N, 2); disc zoh (default) or bilinear. With ``P`` (R, S, N, 2) the layer is
         DPLR (SSMKernelDPLR; bilinear only): see :mod:`lcd_cli.families.kernels.s4_dplr`.
    H3   (HazyResearch/H3 ss_kernel_diag.py SSKernelDiag): A = -T_re(inv_A_real) + i A_imag,
         dt = exp(log_dt) (H,), B (S, N, 2), C (C, H, N, 2); disc bilinear (default) or zoh.
    T: none x | exp e^x | relu max(x, 0) + 1e-4 | sigmoid | softplus (upstream param_transform).
    bandlimit b: C is zeroed where dt |Im A| / (2 pi) >= b / 2 (S4ND).
    H3 shift SSM (ss_kernel_shift.py): B (H, N), C (C, H, N) real, a length-N FIR filter
    k[t] = sum_{n+t<N} B[n] C[n+t], zero beyond N (recognised, not distilled).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels import s4_dplr
from lcd_cli.families.kernels.base import Materializer, OptionSpec, resolve_length
from lcd_cli.families.view import LayerView
from lcd_cli.numerics.modal import from_pairs, modal_kernel

TRANSFORMS = ("none", "exp", "relu", "sigmoid", "softplus")
DISCRETIZATIONS = ("zoh", "bilinear")
# Eigenvector condition number up to which eig(A) counts real / paired eigenvalues reliably.
EIG_RELIABLE = 1e8


def transform(x: Tensor, name: str) -> Tensor:
    """Upstream ``param_transform``: the positive value behind a stored parameter."""
    if name == "none":
        return x
    if name == "exp":
        return torch.exp(x)
    if name == "relu":
        return F.relu(x) + 1e-4
    if name == "sigmoid":
        return torch.sigmoid(x)
    return F.softplus(x)


def discretize(dt: Tensor, A: Tensor, disc: str) -> tuple[Tensor, Tensor]:
    """(dA, dB) per mode: zoh or bilinear; dt (H, 1) or (H, N) real, A (H, N) complex."""
    dtA = dt * A  # (H, N)
    if disc == "zoh":
        return torch.exp(dtA), torch.expm1(dtA) / A  # (H, N), (H, N)
    return (1 + dtA / 2) / (1 - dtA / 2), dt / (1 - dtA / 2)  # (H, N), (H, N)


def diagonal_modes(dt: Tensor, A: Tensor, BC: Tensor, disc: str) -> tuple[Tensor, Tensor]:
    """Poles dA and residues 2 BC dB, flattened to (C * H, N): K = Re sum_n R_n p_n^l.

    Args:
        dt: (H, 1) or (H, N) real; A: (H, N) complex; BC: (C, H, N) complex (B C product).
    """
    dA, dB = discretize(dt, A, disc)  # (H, N)
    channels, heads, modes = BC.shape
    poles = dA.expand(channels, heads, modes).reshape(channels * heads, modes)  # (C H, N)
    residues = (2 * BC * dB).reshape(channels * heads, modes)  # (C H, N)
    return poles, residues


def diagonal_kernel(dt: Tensor, A: Tensor, BC: Tensor, disc: str, length: int) -> Tensor:
    """K[c, h, l] = 2 Re sum_n BC[c, h, n] dB[h, n] dA[h, n]^l, flattened to (C * H, L)."""
    return modal_kernel(*diagonal_modes(dt, A, BC, disc), length)  # (C H, L)


def _bad(view: LayerView, rel: str, reason: str, hint: str | None = None) -> LcdError:
    return LcdError(reason, file=view.file, key=view.key(rel), hint=hint)


def _check(view: LayerView, rel: str, want: tuple[int | None, ...], what: str) -> tuple[int, ...]:
    """Shape of ``rel``; None in ``want`` is any size. Raises LcdError naming the key."""
    shape = view.shape(rel)
    if len(shape) != len(want) or any(w is not None and s != w
                                      for s, w in zip(shape, want, strict=True)):
        shown = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
        raise _bad(view, rel, f"expected shape {what} = {shown}, got {list(shape)}")
    return shape


def _heads_of(view: LayerView, rel: str, heads: int, copies: int) -> None:
    if copies < 1 or heads % copies:
        raise _bad(view, rel, f"{copies} (A, B) copies do not divide the {heads} heads",
                   hint="n_ssm must divide d_model")


def _tile(x: Tensor, heads: int) -> Tensor:
    """(..., S, N) -> (..., H, N): head h uses copy h % S (upstream repeat '(v t)')."""
    return x.repeat(*([1] * (x.ndim - 2)), heads // x.shape[-2], 1)


def _bandlimit(C: Tensor, dt: Tensor, A: Tensor, limit: float | None) -> Tensor:
    if limit is None:
        return C
    freqs = dt * A.imag.abs() / (2 * math.pi)  # (H, N)
    return C * (freqs < limit * 0.5).to(C.dtype)  # (C, H, N)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    return [] if value in allowed else [f"option '{name}' must be one of {', '.join(allowed)}, "
                                        f"got {value!r}"]


class _DiagonalSSM(Materializer):
    """Shared shape logic: subclasses return (dt, A, BC, disc) for the kernel."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # string options -> allowed values

    def check_options(self, given: dict[str, Any]) -> list[str]:
        problems = super().check_options(given)
        for key, allowed in self.choices.items():
            if isinstance(given.get(key), str):
                problems += _choice(key, given[key], allowed)
        return problems

    def _dims(self, view: LayerView) -> tuple[int, int, int]:
        """(C, H, N) from shapes; raises LcdError on any mis-shaped parameter."""
        raise NotImplementedError

    def _params(self, view: LayerView, options: dict[str, Any]
                ) -> tuple[Tensor, Tensor, Tensor, str]:
        raise NotImplementedError

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        channels, heads, _ = self._dims(view)
        return channels * heads, resolve_length(view, None, options)

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        _, length = self.shape(view, options)
        dt, A, BC, disc = self._params(view, options)
        return diagonal_kernel(dt, A, BC, disc, length)  # (C H, L)

    def modes(self, view: LayerView, options: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        dt, A, BC, disc = self._params(view, options)
        return diagonal_modes(dt, A, BC, disc)  # (C H, N) each

    def info(self, view: LayerView, options: dict[str, Any]) -> dict[str, Any]:
        _, _, modes = self._dims(view)
        return {"source_state": "diagonal", "d_state": 2 * modes,
                "exact_order": modes}


class S4DKernel(_DiagonalSSM):
    """state-spaces/s4 ``models/s4/s4d.py`` S4DKernel (ZOH, no B)."""

    name = "s4d"
    options: ClassVar[OptionSpec] = {"length": ((int, type(None)), None)}

    def _dims(self, view: LayerView) -> tuple[int, int, int]:
        (heads,) = _check(view, "log_dt", (None,), "(H)")
        _, modes, _ = _check(view, "C", (heads, None, 2), "(H, N, 2)")
        _check(view, "log_A_real", (heads, modes), "(H, N)")
        _check(view, "A_imag", (heads, modes), "(H, N)")
        return 1, heads, modes

    def _params(self, view: LayerView, options: dict[str, Any]
                ) -> tuple[Tensor, Tensor, Tensor, str]:
        dt = torch.exp(view.get("log_dt"))[:, None]  # (H, 1)
        A = torch.complex(-torch.exp(view.get("log_A_real")), view.get("A_imag"))  # (H, N)
        C = from_pairs(view.get("C"))[None]  # (1, H, N)
        return dt, A, C, "zoh"


class S4Kernel(_DiagonalSSM):
    """state-spaces/s4 ``models/s4/s4.py`` SSMKernelDiag, and SSMKernelDPLR when ``P`` exists."""

    name = "s4"
    options: ClassVar[OptionSpec] = {
        "disc": ((str,), "zoh"),
        "dt_transform": ((str,), "exp"),
        "real_transform": ((str,), "exp"),
        "imag_transform": ((str,), "none"),
        "dt_fast": ((bool,), False),
        "bandlimit": ((float, int, type(None)), None),
        "length": ((int, type(None)), None),
    }

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "disc": DISCRETIZATIONS, "dt_transform": TRANSFORMS, "real_transform": TRANSFORMS,
        "imag_transform": TRANSFORMS}

    def _dims(self, view: LayerView) -> tuple[int, int, int]:
        channels, heads, modes, _ = _check(view, "C", (None, None, None, 2), "(C, H, N, 2)")
        copies, _ = _check(view, "A_real", (None, modes), "(S, N)")
        _heads_of(view, "A_real", heads, copies)
        _check(view, "A_imag", (copies, modes), "(S, N)")
        _check(view, "B", (1, copies, modes, 2), "(1, S, N, 2)")
        dt_shape = view.shape("inv_dt")
        if dt_shape not in ((heads, 1), (heads, modes)):
            raise _bad(view, "inv_dt", f"expected shape (H, 1) or (H, N) = ({heads}, 1) or "
                       f"({heads}, {modes}), got {list(dt_shape)}")
        if view.has("P"):
            _check(view, "P", (None, copies, modes, 2), "(R, S, N, 2)")
            if view.has("l_kernel") and view.shape("l_kernel") not in ((), (1,)):
                raise _bad(view, "l_kernel", f"expected a scalar, got {list(view.shape('l_kernel'))}")
        self._check_skip(view, channels, heads)
        return channels, heads, modes

    def _check_skip(self, view: LayerView, channels: int, heads: int) -> None:
        """A bidirectional FFTConv stores C with twice the channels of D: not causal."""
        layer = view.layer
        if layer.skip_key is None:
            return
        d = view.ckpt.info(layer.skip_key).shape
        if len(d) == 2 and d[1] == heads and channels == 2 * d[0]:
            raise LcdError(f"C has {channels} channels, twice the {d[0]} of D: a bidirectional "
                           "S4 layer (two-sided kernel)", file=view.file, key=view.key("C"),
                           hint="bidirectional S4 is not supported")

    def _common(self, view: LayerView, options: dict[str, Any]
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """dt (H, 1|N), A (H, N), B (H, N), C (C, H, N) after transforms and bandlimit."""
        _, heads, _ = self._dims(view)
        inv_dt = view.get("inv_dt")  # (H, 1) or (H, N)
        if options["dt_fast"]:
            inv_dt = torch.sinh(inv_dt)
        dt = transform(inv_dt, options["dt_transform"])  # (H, 1) or (H, N)
        A = torch.complex(-transform(view.get("A_real"), options["real_transform"]),
                          -transform(view.get("A_imag"), options["imag_transform"]))  # (S, N)
        A = _tile(A, heads)  # (H, N)
        B = _tile(from_pairs(view.get("B"))[0], heads)  # (H, N)
        C = _bandlimit(from_pairs(view.get("C")), dt, A, options["bandlimit"])  # (C, H, N)
        return dt, A, B, C

    def _params(self, view: LayerView, options: dict[str, Any]
                ) -> tuple[Tensor, Tensor, Tensor, str]:
        dt, A, B, C = self._common(view, options)
        return dt, A, B * C, options["disc"]

    def _dplr(self, view: LayerView, options: dict[str, Any]
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        dt, A, B, C = self._common(view, options)
        P = _tile(from_pairs(view.get("P")), A.shape[0])  # (R, H, N)
        return dt, A, P, B, C

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        """DPLR: L defaults to the stored ``l_kernel``; longer L is allowed (upstream doubles)."""
        if not view.has("P"):
            return super().shape(view, options)
        channels, heads, _ = self._dims(view)
        want = options.get("length")
        if want is None:
            return channels * heads, resolve_length(view, self._stored_length(view) or None,
                                                    options)
        if want < 1:
            raise LcdError(f"kernel length {want} is out of range", file=view.file,
                           key=view.prefix, hint="choose a positive --length")
        return channels * heads, int(want)

    def evidence(self, view: LayerView, options: dict[str, Any]) -> dict[str, tuple[Any, str]]:
        """A DPLR layer stores its length: the ``l_kernel`` buffer (0 until C is converted)."""
        if view.has("P") and view.has("l_kernel") and (stored := self._stored_length(view)):
            return {"length": (stored, f"l_kernel {stored} stored (the length C~ is "
                               "attuned to)")}
        return {}

    def _stored_length(self, view: LayerView) -> int:
        if not view.has("l_kernel"):
            return 0
        value = float(view.get("l_kernel").reshape(-1)[0])
        if value < 0 or value != int(value):
            raise _bad(view, "l_kernel", f"expected a non-negative integer, got {value}")
        return int(value)

    def modes(self, view: LayerView, options: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        # DPLR: A is non-normal, its eigenbasis may be ill-conditioned; the kernel is fitted.
        return None if view.has("P") else super().modes(view, options)

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        if not view.has("P"):
            return super().kernel(view, options)
        channels, heads, _ = self._dims(view)
        _, length = self.shape(view, options)
        dt, A, P, B, Ct = self._dplr(view, options)
        stored = self._stored_length(view)
        if stored == 0 or stored < length:
            dA, _ = s4_dplr.dense_system(dt, A, P, B)  # (H, 2N, 2N)
            Ct, ld = s4_dplr.attune(Ct, dA, stored, length)  # (C, H, N)
        else:
            ld = stored
        k = s4_dplr.cauchy_kernel(dt, A, P, B, Ct, ld, length)  # (C, H, L)
        return k.reshape(channels * heads, length)  # (C H, L)

    def info(self, view: LayerView, options: dict[str, Any]) -> dict[str, Any]:
        if not view.has("P"):
            return super().info(view, options)
        _, _, modes = self._dims(view)
        dt, A, P, _, _ = self._dplr(view, options)
        cond, order = s4_dplr.eigen_facts(dt, A, P)  # (H,), (H,)
        # Beyond EIG_RELIABLE, roundoff splits real eigenvalues into pairs: fall back to 2N.
        exact = int(order.max()) if float(cond.max()) < EIG_RELIABLE else 2 * modes
        return {"source_state": "DPLR", "d_state": 2 * modes, "rank": int(P.shape[0]),
                "exact_order": exact, "l_kernel": self._stored_length(view),
                "eigvec_cond_median": float(cond.median()), "eigvec_cond_max": float(cond.max())}


class H3Kernel(_DiagonalSSM):
    """HazyResearch/H3 ``SSKernelDiag`` (the state-spaces v3 S4D kernel)."""

    name = "h3"
    options: ClassVar[OptionSpec] = {
        "disc": ((str,), "bilinear"),
        "real_type": ((str,), "exp"),
        "force_real": ((bool,), False),
        "bandlimit": ((float, int, type(None)), None),
        "length": ((int, type(None)), None),
    }

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "disc": DISCRETIZATIONS, "real_type": TRANSFORMS}

    def _dims(self, view: LayerView) -> tuple[int, int, int]:
        (heads,) = _check(view, "log_dt", (None,), "(H)")
        channels, _, modes, _ = _check(view, "C", (None, heads, None, 2), "(C, H, N, 2)")
        copies, _ = _check(view, "inv_A_real", (None, modes), "(S, N)")
        _heads_of(view, "inv_A_real", heads, copies)
        _check(view, "A_imag", (copies, modes), "(S, N)")
        _check(view, "B", (copies, modes, 2), "(S, N, 2)")
        return channels, heads, modes

    def _params(self, view: LayerView, options: dict[str, Any]
                ) -> tuple[Tensor, Tensor, Tensor, str]:
        _, heads, _ = self._dims(view)
        dt = torch.exp(view.get("log_dt"))[:, None]  # (H, 1)
        A_real = -transform(view.get("inv_A_real"), options["real_type"])  # (S, N)
        A_imag = view.get("A_imag")  # (S, N)
        if options["force_real"]:
            A_imag = torch.zeros_like(A_imag)
        A = _tile(torch.complex(A_real, A_imag), heads)  # (H, N)
        B = _tile(from_pairs(view.get("B")), heads)  # (H, N)
        C = _bandlimit(from_pairs(view.get("C")), dt, A, options["bandlimit"])  # (C, H, N)
        return dt, A, B * C, options["disc"]


class H3ShiftKernel(Materializer):
    """HazyResearch/H3 ``SSKernelShift``: a length-N FIR filter (recognised, not distilled)."""

    name = "h3-shift"
    options: ClassVar[OptionSpec] = {"length": ((int, type(None)), None)}

    def _dims(self, view: LayerView) -> tuple[int, int, int]:
        heads, taps = _check(view, "B", (None, None), "(H, N)")
        channels, _, _ = _check(view, "C", (None, heads, taps), "(C, H, N)")
        return channels, heads, taps

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        channels, heads, taps = self._dims(view)
        want = options.get("length")
        if want is not None and want < 1:
            raise LcdError(f"kernel length {want} is out of range", file=view.file,
                           key=view.prefix)
        return channels * heads, want if want is not None else taps

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        channels, heads, taps = self._dims(view)
        _, length = self.shape(view, options)
        B = view.get("B")  # (H, N)
        C = view.get("C")  # (C, H, N)
        k = torch.zeros(channels, heads, max(length, taps), dtype=torch.float64)  # (C, H, L')
        for t in range(taps):
            k[..., t] = (B[:, : taps - t] * C[..., t:]).sum(-1)  # (C, H)
        return k[..., :length].reshape(channels * heads, length)  # (C H, L)

    def info(self, view: LayerView, options: dict[str, Any]) -> dict[str, Any]:
        return {"source_state": "shift (FIR)", "taps": self._dims(view)[2]}
