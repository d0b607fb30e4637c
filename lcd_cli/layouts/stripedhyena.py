"""The StripedHyena engine's own layout: ``<prefix>.poles`` / ``<prefix>.residues``, (C, K, 1, 2).

Layer 4 (kinds and layouts). Dimensions: C channels (the engine's ``num_systems``; with
``hyena_filter_groups = 1`` the hidden size), N a layer's fitted order, K the one state size
of the model (the engine's ``config.state_size``), K = max over layers of N.

The engine (PyPI ``stripedhyena`` 0.2.2, ``model.py`` ``ParallelHyenaFilter``, ``engine.py``
``HyenaInferenceEngine``) holds each Hyena block's filter as two parameters of shape
(num_systems, state_size, 1, 2), [real, imag], under ``blocks.{i}.filter.poles`` and
``blocks.{i}.filter.residues``, and the skip term ``blocks.{i}.filter.D`` (C). It runs them as
  parallel   h[c, t] = Re sum_n R[c, n] exp(t log p[c, n])   (complex64), FFT convolution
  prefill    x = sum_tau p^(L-1-tau) u_tau via an FFT of p^t  (``prefill_via_modal_fft``)
             or the recurrence (``prefill_via_direct_recurrence``)
  step       x = p x + u,  y = Re sum_n R x + D u
so a distilled layer goes in exactly where the engine's own modes were. Every layer needs the
same K: a layer fitted with N < K modes (``--tol``) is padded with inert modes, R = 0 and
p = INERT_POLE. Their contribution is exactly zero in all three paths (0 * finite = 0): the
pole only has to keep exp(t log p), p^t and the state finite. p = 0 would not: log 0 = -inf and
0 * -inf = NaN at t = 0 in the parallel path.

Which layers: only layers the engine itself holds, i.e. whose generator is exactly the
engine's ``<prefix>.poles`` / ``<prefix>.residues`` in its (C, N, 1, 2) shape, and that are fitted
into one causal SSM. Other families (HyenaDNA's implicit MLP filter, S4, explicit long convs,
Evo 2's ``log_poles`` for the vortex engine) sit in model code the StripedHyena engine does not
load (other projections, norms, MLPs and key names), and two-sided or shared-basis layers need a
second SSM or a shared basis that its block has no place for: :meth:`check_plan` refuses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.view import Layer
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.layouts.one_state import PART, OneStateSizeLayout, recorded_order
from lcd_cli.numerics.ssm import DiagonalSSM

# Pole of a padding mode: finite and non-zero (log 0 = -inf gives NaN in the engine's
# exp(t log p)), inside the unit circle (its state stays bounded), real (no phase to round).
INERT_POLE = 0.5
ENGINE_KEYS = ("poles", "residues")  # the engine filter's parameters, relative to the prefix


def pad_modes(poles: Tensor, residues: Tensor, modes: int) -> tuple[Tensor, Tensor]:
    """(C, N, 2) pairs padded to (C, modes, 2) with inert modes (p = INERT_POLE, R = 0)."""
    channels, n, _ = poles.shape
    if n > modes:
        raise ValueError(f"cannot pad {n} modes down to {modes}")
    pad_p = torch.zeros(channels, modes - n, 2, dtype=poles.dtype)  # (C, K - N, 2)
    pad_p[..., 0] = INERT_POLE
    pad_r = torch.zeros(channels, modes - n, 2, dtype=residues.dtype)  # (C, K - N, 2)
    return torch.cat([poles, pad_p], dim=1), torch.cat([residues, pad_r], dim=1)  # (C, K, 2)


class StripedHyenaLayout(OneStateSizeLayout):
    name: ClassVar[str] = "stripedhyena"

    def part_keys(self, prefix: str, part: str) -> tuple[str, str]:
        if part != PART:
            raise LcdError(f"the stripedhyena layout has no place for part '{part}' of "
                           f"'{prefix}'", key="layout", hint="use --layout lcd")
        return f"{prefix}.poles", f"{prefix}.residues"

    def check_plan(self, ckpt: Checkpoint, layers: Sequence[tuple[Layer, Sequence[str]]]) -> None:
        problems = []
        for layer, parts in layers:
            engine_keys = tuple(f"{layer.prefix}.{k}" for k in ENGINE_KEYS)
            if list(parts) != [PART]:
                why = ("is fitted as " + " + ".join(parts) if parts else "shares one basis")
                problems.append(f"'{layer.prefix}' ({layer.config.name}) {why}: the engine's "
                                "block holds one causal SSM per layer")
            elif tuple(sorted(layer.generator_keys)) != engine_keys or any(
                    len(ckpt.info(k).shape) != 4 or ckpt.info(k).shape[2] != 1
                    for k in engine_keys):
                problems.append(f"'{layer.prefix}' ({layer.config.name}) is not a StripedHyena "
                                "filter (its generator is not <prefix>.poles / <prefix>.residues "
                                "of shape (C, N, 1, 2)), so the engine does not load its model")
        if problems:
            raise LcdError(f"--layout stripedhyena cannot store {len(problems)} layer(s): "
                           + "; ".join(problems), file=ckpt.source, key="layout",
                           hint="use --layout lcd (the default), and the drop-in module "
                                "lcd_cli.runtime for model code (docs/engines.md)")

    def engine_part(self, poles: Tensor, residues: Tensor, modes: int) -> list[Tensor]:
        poles, residues = pad_modes(poles, residues, modes)  # (C, K, 2)
        return [poles[:, :, None].contiguous(), residues[:, :, None].contiguous()]  # (C, K, 1, 2)

    def read_part(self, distilled: Checkpoint, prefix: str, part: str, D: Tensor | None,
                  channels: int, hint: str | None = None) -> DiagonalSSM:
        """The layer's (C, K, 1, 2) modes as a float64 DiagonalSSM, without the padding modes
        past its recorded order (metadata ``lcd_order``) when they are exactly inert; modes
        that are not are kept, so the check measures them."""
        keys = self.part_keys(prefix, part)
        for key in keys:
            if key not in distilled:
                raise LcdError("the distilled layer is missing", file=distilled.source, key=key,
                               hint=hint)
            shape = distilled.info(key).shape
            if len(shape) != 4 or shape[0] != channels or shape[2:] != (1, 2):
                raise LcdError(f"expected the engine's shape ({channels}, K, 1, 2), got "
                               f"{list(shape)}", file=distilled.source, key=key)
        if distilled.info(keys[0]).shape != distilled.info(keys[1]).shape:
            raise LcdError("poles and residues have different shapes", file=distilled.source,
                           key=keys[1])
        poles = distilled.get(keys[0], torch.float64, finite=False)[:, :, 0]  # (C, K, 2)
        residues = distilled.get(keys[1], torch.float64, finite=False)[:, :, 0]  # (C, K, 2)
        n = recorded_order(distilled, prefix, poles.shape[1])
        tail_p, tail_r = poles[:, n:], residues[:, n:]  # (C, K - N, 2)
        inert = bool((tail_r == 0).all() and (tail_p[..., 0] == INERT_POLE).all()
                     and (tail_p[..., 1] == 0).all())
        if inert:
            poles, residues = poles[:, :n], residues[:, :n]  # (C, N, 2)
        return DiagonalSSM.from_pairs(poles, residues, D, dtype=torch.float64)
