"""The vortex engine's own layout (Evo 2): ``<prefix>.log_poles`` (C, K, 1), ``<prefix>.residues``
(C, K), both real float32.

Layer 4 (kinds and layouts). Dimensions: C channels (the engine's ``num_systems``: for a
Hyena-LI block ``hidden_size``, one filter per channel), N a layer's fitted order, K the one
state size of the model (the engine's ``config.state_size``), K = max over layers of N.

The engine (PyPI ``vtx`` 1.1.0, ``vortex/model/model.py`` ``HyenaCascade``, ``engine.py``
``HyenaInferenceEngine``) holds each Hyena-LI block's filter as ``blocks.{i}.filter.log_poles``
(num_systems, state_size, 1) and ``blocks.{i}.filter.residues`` (num_systems, state_size), both
real, and the skip term ``blocks.{i}.filter.D`` (C). It runs them as
  parallel  h[c, t] = sum_n R[c, n] exp(log_poles[c, n] t)  (float32), FFT convolution
  prefill   x = FFT convolution of the input with exp(log_poles t)  (``prefill_via_modal_fft``)
  step      x = exp(log_poles) x + u,  y = sum_n R x + D u  (``step_iir``, real state)
so only real poles in (0, 1) with real residues fit its filters: the layout sets
:attr:`poles` = "real" and `lcd distill` fits that class (``numerics.fit_real``); an explicit
``--poles complex`` is refused at plan time.

Written: log_poles = float32(log p) of the fitted float32 pole p (exp(log_poles t) then is
p^t to float32 accuracy), residues as fitted. A layer fitted with N < K modes is padded with
inert modes, R = 0 and log_poles = INERT_LOG_POLE: finite, so 0 * exp(t log p) = 0 exactly in
all three paths (log_poles = -inf would not: -inf * 0 = NaN at t = 0).

dtype: the engine's ``load_checkpoint`` casts every parameter to bfloat16 except those whose
name contains ``log_poles`` or ``residues`` (``to_bfloat16_except_pr_lc``); the keys written
here are the engine's own, so the distilled filter stays float32 under it (bfloat16 log-poles
would move a slow pole by ~1e-3 relative and ruin the fit).

Which layers: only Hyena-LI filters, i.e. layers whose generator is exactly the engine's
``<prefix>.log_poles`` (C, N, 1) / ``<prefix>.residues`` (C, N), fitted into one causal SSM.
Hyena-MR and Hyena-SE blocks hold explicit FIR taps (``filter.h``) that the engine convolves
directly; it has no modal form for them, so :meth:`check_plan` refuses such layers and names
the option that leaves them untouched (``--family evo2-li``: only LI layers are distilled,
everything else is copied byte for byte). Other families' layers are refused likewise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.view import Layer
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.layouts.one_state import PART, OneStateSizeLayout, recorded_order
from lcd_cli.numerics.ssm import DiagonalSSM

INERT_LOG_POLE = math.log(0.5)  # log-pole of a padding mode: finite, decaying, exact in float32
ENGINE_KEYS = ("log_poles", "residues")  # the engine filter's parameters, relative to the prefix
HINT = ("distill only the Hyena-LI layers with --family evo2-li (Hyena-MR / SE layers are then "
        "copied unchanged), or use --layout lcd")


def engine_tensors(poles: Tensor, residues: Tensor, modes: int) -> tuple[Tensor, Tensor]:
    """(C, N, 2) real-pole pairs -> the engine's log_poles (C, K, 1) and residues (C, K),
    float32, padded to K = ``modes`` with inert modes. Raises LcdError for a pole that is not
    real and inside (0, 1) or a residue that is not real (a complex fit)."""
    channels, n, _ = poles.shape
    if n > modes:
        raise ValueError(f"cannot pad {n} modes down to {modes}")
    p = poles[..., 0].to(torch.float64)  # (C, N)
    if bool((poles[..., 1] != 0).any() | (residues[..., 1] != 0).any()) or not bool(
            ((p > 0) & (p < 1)).all()):
        raise LcdError("the vortex layout stores real poles in (0, 1) with real residues; "
                       "this fit has others", key="poles", hint="fit with --poles real")
    log_p = torch.full((channels, modes), INERT_LOG_POLE, dtype=torch.float64)  # (C, K)
    log_p[:, :n] = torch.log(p)
    res = torch.zeros(channels, modes, dtype=torch.float32)  # (C, K)
    res[:, :n] = residues[..., 0].to(torch.float32)
    return log_p.to(torch.float32)[:, :, None].contiguous(), res  # (C, K, 1), (C, K)


class VortexLayout(OneStateSizeLayout):
    name: ClassVar[str] = "vortex"
    poles: ClassVar[str | None] = "real"
    config_files: ClassVar[tuple[str, ...]] = ("config.json", "config.yml", "config.yaml")

    def part_keys(self, prefix: str, part: str) -> tuple[str, str]:
        if part != PART:
            raise LcdError(f"the vortex layout has no place for part '{part}' of '{prefix}'",
                           key="layout", hint="use --layout lcd")
        return f"{prefix}.log_poles", f"{prefix}.residues"

    def check_plan(self, ckpt: Checkpoint, layers: Sequence[tuple[Layer, Sequence[str]]]) -> None:
        problems = []
        for layer, parts in layers:
            lp_key, r_key = (f"{layer.prefix}.{k}" for k in ENGINE_KEYS)
            if list(parts) != [PART]:
                why = ("is fitted as " + " + ".join(parts) if parts else "shares one basis")
                problems.append(f"'{layer.prefix}' ({layer.config.name}) {why}: the engine's "
                                "block holds one causal SSM per layer")
                continue
            if tuple(sorted(layer.generator_keys)) != (lp_key, r_key):
                problems.append(f"'{layer.prefix}' ({layer.config.name}) is not a Hyena-LI "
                                "filter (its generator is not <prefix>.log_poles / "
                                "<prefix>.residues): the engine runs it from its own "
                                "parameters (explicit taps for Hyena-MR / SE)")
                continue
            lp, r = ckpt.info(lp_key).shape, ckpt.info(r_key).shape
            rows = [lp[0]] if lp else []
            if layer.skip_key and layer.skip_key in ckpt:
                rows.append(math.prod(ckpt.info(layer.skip_key).shape))
            if len(lp) != 3 or lp[2] != 1 or tuple(r) != tuple(lp[:2]) or len(set(rows)) != 1:
                problems.append(f"'{layer.prefix}' has log_poles {list(lp)} and residues "
                                f"{list(r)}: the engine holds (C, N, 1) and (C, N), one "
                                "filter per channel")
        if problems:
            raise LcdError(f"--layout vortex cannot store {len(problems)} layer(s): "
                           + "; ".join(problems), file=ckpt.source, key="layout", hint=HINT)

    def engine_part(self, poles: Tensor, residues: Tensor, modes: int) -> list[Tensor]:
        return list(engine_tensors(poles, residues, modes))  # (C, K, 1), (C, K)

    def read_part(self, distilled: Checkpoint, prefix: str, part: str, D: Tensor | None,
                  channels: int, hint: str | None = None) -> DiagonalSSM:
        """The layer's engine tensors as a float64 DiagonalSSM with poles exp(log_poles),
        without the padding modes past its recorded order when they are exactly inert."""
        kp, kr = self.part_keys(prefix, part)
        for key in (kp, kr):
            if key not in distilled:
                raise LcdError("the distilled layer is missing", file=distilled.source, key=key,
                               hint=hint)
        lp_shape, r_shape = distilled.info(kp).shape, distilled.info(kr).shape
        if len(lp_shape) != 3 or lp_shape[0] != channels or lp_shape[2] != 1:
            raise LcdError(f"expected the engine's log_poles shape ({channels}, K, 1), got "
                           f"{list(lp_shape)}", file=distilled.source, key=kp)
        if tuple(r_shape) != tuple(lp_shape[:2]):
            raise LcdError(f"expected residues of shape {list(lp_shape[:2])}, got "
                           f"{list(r_shape)}", file=distilled.source, key=kr)
        log_p = distilled.get(kp, torch.float64, finite=False)[:, :, 0]  # (C, K)
        res = distilled.get(kr, torch.float64, finite=False)  # (C, K)
        n = recorded_order(distilled, prefix, log_p.shape[1])
        inert = bool((res[:, n:] == 0).all()
                     and (log_p[:, n:] == float(torch.tensor(INERT_LOG_POLE,
                                                             dtype=torch.float32))).all())
        if inert:
            log_p, res = log_p[:, :n], res[:, :n]  # (C, N)
        zeros = torch.zeros_like(res)  # (C, N)
        poles = torch.stack([torch.exp(log_p), zeros], dim=-1)  # (C, N, 2)
        return DiagonalSSM.from_pairs(poles, torch.stack([res, zeros], dim=-1), D,
                                      dtype=torch.float64)
