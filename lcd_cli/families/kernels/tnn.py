"""TNN (Toeplitz neural network) kernels: an MLP of the relative position, decayed.

Dimensions: L kernel length (the sequence length n the Toeplitz operator is built for),
E RPE width, C = heads * head_dim channels (channel c = head * head_dim + d).

Upstream (Qin et al., "Toeplitz Neural Network for Sequence Modeling", ICLR 2023;
tnn-pytorch ``tnn/tno.py`` + ``tnn_pytorch/rpe.py``, fairseq-evo ``tno.py``):
  positions   p(t) = t (par_type 1), t / (L-1) (2), exp(t / (L-1)) (3), for t = 1 .. L-1
              (the divisor is the number of positions built, n - 1); p(0) = 0 (exp(0) = 1 for 3)
  RPE         x = W_pos p + b_pos (E); per block x = W_j act(norm(x)) + b_j (+ x if residual);
              RPE(p) = W_out act(norm(x)) + b_out (C); act ReLU (or SiLU)
  norm        SimpleRMSNorm x / (||x||_2 / sqrt(E) + 1e-8), no weight (or LayerNorm, eps 1e-5,
              with weight and bias stored at ``.0.weight`` / ``.0.bias``)
  decay       gamma (C,): fixed (``use_decay``: the stored ``gamma`` (h, 1, d), or the option),
              learned (``use_multi_decay``: lambda + (1 - lambda) sigmoid(gamma)), or none
  causal      h[0] = RPE(p(0)), h[t] = gamma^t RPE(p(t))                (t = 1 .. L-1)
  non-causal  also h[-t] = gamma^t RPE(-p(t)) (t = 1 .. L-1; par_type 1 and 2 only); the
              zero lag is counted once. Upstream builds a = [h[0], h[1..n-1], h[0], h[-(n-1)..-1]]
              and convolves over 2n circular points: the second h[0] sits at lag +-n, which
              no input pair reaches.
  act_type    an optional elementwise function of the whole kernel (default none).
No skip term D. Anti-causal half for lcd: k_rev[j] = h[-(j+1)], j = 0 .. L-1; the last tap
(lag -L, never reached by an input of length <= L) continues the same formula.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels.base import Materializer, OptionSpec, resolve_length
from lcd_cli.families.view import LayerView

_BLOCK = re.compile(r"^rpe\.layers\.(\d+)\.2\.weight$")
# Keys of the RPE MLP (Rpe: pos_proj, layers.{j} = [norm, act, Linear], out = [norm, act, Linear]);
# the norm (index 0) has parameters only as a LayerNorm.
_RPE_KEY = re.compile(r"^rpe\.(?:pos_proj|out\.[02]|layers\.(\d+)\.[02])\.(?:weight|bias)$")
_ACTS = {"relu": torch.relu, "silu": F.silu}
_KERNEL_ACTS = {"none": lambda x: x, "relu": torch.relu, "silu": F.silu}
_RMS_EPS = 1e-8
_LN_EPS = 1e-5


class TnnKernel(Materializer):
    name = "tnn"
    options: ClassVar[OptionSpec] = {
        "par_type": ((int,), 1),
        "decay": ((str,), "learned"),
        "gamma": ((float, int), 0.99),
        "rpe_act": ((str,), "relu"),
        "act_type": ((str,), "none"),
        "norm": ((str,), "simplermsnorm"),
        "residual": ((bool,), False),
        "length": ((int, type(None)), None),
    }

    def check_options(self, given: dict[str, Any]) -> list[str]:
        problems = super().check_options(given)
        allowed = {"par_type": (1, 2, 3), "decay": ("learned", "fixed", "none"),
                   "rpe_act": tuple(_ACTS), "act_type": tuple(_KERNEL_ACTS),
                   "norm": ("simplermsnorm", "layernorm")}
        for key, values in allowed.items():
            if key in given and given[key] not in values:
                problems.append(f"option '{key}' must be one of {list(values)}, got "
                                f"{given[key]!r}")
        return problems

    # ---- evidence and structure ------------------------------------------------------------

    def evidence(self, view: LayerView, options: dict[str, Any]) -> dict[str, tuple[Any, str]]:
        """The decay from the stored ``gamma`` (tnn-pytorch / fairseq-evo ``Tno``): absent
        without decay; ``use_decay`` stores ``ones(h, 1, d) * gamma``, one constant in (0, 1)
        (requires_grad False); ``use_multi_decay`` stores trained logits from ``randn``."""
        if not view.has("gamma"):
            return {"decay": ("none", "no gamma stored (Tno built without use_decay / "
                              "use_multi_decay)")}
        g = view.get("gamma")
        lo, hi = float(g.min()), float(g.max())
        if lo == hi and 0 < lo < 1:
            return {"decay": ("fixed", f"gamma is one constant {lo:.6g} in (0, 1), the fixed "
                              "decay buffer (use_decay)")}
        if lo == hi:
            return {}  # one constant outside (0, 1): neither variant's signature, let others say
        return {"decay": ("learned", f"gamma varies ({lo:.3g} .. {hi:.3g}): trained decay "
                          "logits (use_multi_decay)")}

    def check_structure(self, view: LayerView, options: dict[str, Any]) -> list[str]:
        """RPE keys are the Rpe module's; its blocks rpe.layers.{j} are contiguous from 0."""
        problems = []
        extra = [k for k in view.names() if k.startswith("rpe.") and not _RPE_KEY.match(k)]
        if extra:
            problems.append(f"{', '.join(view.key(k) for k in extra)}: not keys of the TNN Rpe "
                            "module")
        blocks = self._blocks(view)
        if blocks != list(range(len(blocks))):
            missing = sorted(set(range(max(blocks) + 1)) - set(blocks))
            problems.append(f"the RPE blocks rpe.layers.<j>.2.weight are at {blocks}; upstream "
                            f"numbers them 0 .. n-1, so {missing} are missing")
        orphans = [view.key(k) for k in view.names()
                   if (m := _RPE_KEY.match(k)) and m.group(1) is not None
                   and int(m.group(1)) not in blocks]
        if orphans:
            problems.append(f"{', '.join(orphans)} belong(s) to no RPE block (its "
                            "rpe.layers.<j>.2.weight is missing)")
        return problems

    # ---- shapes --------------------------------------------------------------------------

    def _blocks(self, view: LayerView) -> list[int]:
        return sorted(int(m.group(1)) for k in view.names() if (m := _BLOCK.match(k)))

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        pos = view.shape("rpe.pos_proj.weight")
        if len(pos) != 2 or pos[1] != 1:
            raise LcdError(f"expected (E, 1), got {list(pos)}", file=view.file,
                           key=view.key("rpe.pos_proj.weight"))
        width = pos[0]
        for j in self._blocks(view):
            rel = f"rpe.layers.{j}.2.weight"
            if view.shape(rel) != (width, width):
                raise LcdError(f"expected ({width}, {width}), got {list(view.shape(rel))}",
                               file=view.file, key=view.key(rel))
        out = view.shape("rpe.out.2.weight")
        if len(out) != 2 or out[1] != width:
            raise LcdError(f"expected (C, {width}), got {list(out)}", file=view.file,
                           key=view.key("rpe.out.2.weight"))
        channels = out[0]
        if options["decay"] != "none":
            if view.has("gamma"):
                g = view.shape("gamma")
                if len(g) != 3 or g[1] != 1 or g[0] * g[2] != channels:
                    raise LcdError(f"expected gamma of shape (heads, 1, head_dim) with heads * "
                                   f"head_dim = {channels}, got {list(g)}", file=view.file,
                                   key=view.key("gamma"))
            elif options["decay"] == "learned":
                raise LcdError("decay 'learned' needs the stored gamma (heads, 1, head_dim)",
                               file=view.file, key=view.key("gamma"),
                               hint="set the config option decay: fixed (gamma from the "
                               "option) or decay: none")
        return channels, resolve_length(view, None, options)

    # ---- kernel --------------------------------------------------------------------------

    def _norm(self, view: LayerView, rel: str, x: Tensor, kind: str) -> Tensor:
        """norm of x (P, E) over E; LayerNorm reads ``<rel>.weight`` / ``<rel>.bias``."""
        width = x.shape[-1]
        if kind == "simplermsnorm":
            rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * width ** -0.5  # (P, 1)
            return x / (rms + _RMS_EPS)
        x = F.layer_norm(x, (width,), eps=_LN_EPS)  # (P, E)
        return x * view.get(f"{rel}.weight") + view.get(f"{rel}.bias")

    def _linear(self, view: LayerView, rel: str, x: Tensor) -> Tensor:
        y = x @ view.get(f"{rel}.weight").T
        return y + view.get(f"{rel}.bias") if view.has(f"{rel}.bias") else y

    def rpe(self, view: LayerView, options: dict[str, Any], p: Tensor) -> Tensor:
        """RPE(p) for positions p (P,) float64 -> (P, C)."""
        act = _ACTS[options["rpe_act"]]
        x = self._linear(view, "rpe.pos_proj", p[:, None])  # (P, E)
        for j in self._blocks(view):
            y = self._linear(view, f"rpe.layers.{j}.2",
                             act(self._norm(view, f"rpe.layers.{j}.0", x, options["norm"])))
            x = x + y if options["residual"] else y  # (P, E)
        return self._linear(view, "rpe.out.2",
                            act(self._norm(view, "rpe.out.0", x, options["norm"])))  # (P, C)

    def _gamma(self, view: LayerView, options: dict[str, Any], channels: int) -> Tensor:
        """Per-channel decay (C,) float64 (ones when decay is none)."""
        if options["decay"] == "none":
            return torch.ones(channels, dtype=torch.float64)
        if options["decay"] == "fixed" and not view.has("gamma"):
            return torch.full((channels,), float(options["gamma"]), dtype=torch.float64)
        g = view.get("gamma").reshape(channels)  # (C,) from (h, 1, d): c = head * d + j
        if options["decay"] == "learned":
            lam = float(options["gamma"])
            g = lam + (1 - lam) * torch.sigmoid(g)
        return g

    def positions(self, length: int, par_type: int, sign: int) -> Tensor:
        """p(sign * t) for t = 0 .. L-1 (L,) float64 (p(0) first), divisor n - 1 = L - 1."""
        t = torch.arange(length, dtype=torch.float64)  # (L,)
        if par_type == 1:
            return sign * t
        scaled = t / max(length - 1, 1)
        return sign * scaled if par_type == 2 else torch.exp(scaled)

    def _half(self, view: LayerView, options: dict[str, Any], sign: int) -> Tensor:
        channels, length = self.shape(view, options)
        if sign < 0 and options["par_type"] == 3:
            raise LcdError("par_type 3 (exp positions) has no negative positions upstream, so "
                           "there is no non-causal TNN with it", file=view.file, key=view.prefix,
                           hint="use the causal config (--family tnn)")
        gamma = self._gamma(view, options, channels)  # (C,)
        if sign > 0:
            t = torch.arange(length, dtype=torch.float64)  # (L,) lags 0 .. L-1
            p = self.positions(length, options["par_type"], 1)  # (L,)
        else:
            t = torch.arange(1, length + 1, dtype=torch.float64)  # (L,) lags -1 .. -L
            p = -t if options["par_type"] == 1 else -t / max(length - 1, 1)  # (L,)
        h = self.rpe(view, options, p) * gamma[None, :] ** t[:, None]  # (L, C)
        return _KERNEL_ACTS[options["act_type"]](h).T.contiguous()  # (C, L)

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        return self._half(view, options, 1)

    def kernel_rev(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        """k_rev[j] = h[-(j+1)] = gamma^(j+1) RPE(-p(j+1)), (C, L)."""
        return self._half(view, options, -1)
