"""What the engine layouts (stripedhyena, vortex) share: one causal SSM per layer, stored at one
state size K for every layer of the model, as the engine's config has one ``state_size``.

Layer 4 (kinds and layouts). Dimensions: C channels, N a layer's fitted order, K the model's
state size, K = max over layers of N.

A subclass says how a layer's (C, N, 2) [real, imag] pairs become the engine's tensors padded
to K with inert modes (:meth:`OneStateSizeLayout.engine_part`); this module writes them under
:meth:`part_keys`, records K as metadata ``lcd_state_size``, patches the config's
``state_size``, and reads each layer's fitted order back (:func:`recorded_order`) so verify can
drop the padding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.layouts.base import LayerResult, Layout

PART = "ssm"  # the one part these layouts store (a causal layer's SSM)
STATE_SIZE_KEY = "lcd_state_size"  # metadata: K, the engine config's state_size


class OneStateSizeLayout(Layout):
    """An engine's layout: every layer one part, padded to the run's one state size."""

    def engine_part(self, poles: Tensor, residues: Tensor, modes: int) -> list[Tensor]:
        """(C, N, 2) pairs -> the engine's (poles, residues) tensors padded to ``modes``."""
        raise NotImplementedError

    def part(self, result: LayerResult) -> tuple[Tensor, Tensor]:
        """The layer's one part (C, N, 2) pairs; a clear error for a kind that fits others."""
        if set(result.parts) != {PART}:
            raise LcdError(f"layer '{result.name}' has parts {sorted(result.parts)}; the "
                           f"{self.name} layout stores one causal SSM ('{PART}') per layer",
                           key="layout", hint="use --layout lcd for this checkpoint")
        return result.parts[PART]

    def state_size(self, results: Sequence[LayerResult]) -> int:
        """K: the largest fitted order over the run's layers."""
        if not results:
            raise ValueError("state_size of no layer")
        return max(self.part(r)[0].shape[1] for r in results)

    def layer_tensors(self, result: LayerResult, results: Sequence[LayerResult] = ()
                      ) -> list[tuple[str, Tensor]]:
        if not any(r is result for r in results):
            raise ValueError(f"the {self.name} layout needs every layer of the run (results)")
        poles, residues = self.part(result)  # (C, N, 2)
        keys = self.part_keys(result.name, PART)
        return list(zip(keys, self.engine_part(poles, residues, self.state_size(results)),
                        strict=True))

    def metadata(self, results: list[LayerResult]) -> dict[str, str]:
        return {STATE_SIZE_KEY: str(self.state_size(results))} if results else {}

    def config_patch(self, config: dict[str, Any], results: Sequence[LayerResult]
                     ) -> dict[str, Any]:
        """The engine config (config.json or the engine's YAML) with ``state_size = K``."""
        return {**config, "state_size": self.state_size(results)}


def recorded_order(distilled: Checkpoint, prefix: str, modes: int) -> int:
    """The layer's fitted order from metadata ``lcd_order`` (K when not recorded)."""
    try:
        orders = json.loads(distilled.metadata.get("lcd_order", "{}"))
    except json.JSONDecodeError as e:
        raise LcdError(f"lcd_order metadata is not valid JSON ({e})", file=distilled.source,
                       key="__metadata__.lcd_order") from e
    order = orders.get(prefix, modes) if isinstance(orders, dict) else modes
    if not isinstance(order, int) or not 1 <= order <= modes:
        raise LcdError(f"recorded order {order!r} of '{prefix}' does not fit the stored {modes} "
                       "modes", file=distilled.source, key="__metadata__.lcd_order")
    return order
