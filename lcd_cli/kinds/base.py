"""What a layer kind is: the plug-in interface the pipeline asks, and never looks behind.

Layer 4 (kinds and layouts): imports numerics, io, families, layouts and errors only.

A kind is one way of distilling a layer: *causal* (one modal SSM per channel), *two-sided*
(a forward and a backward SSM), *shared basis* (one set of poles for every layer, STU). It
says which family configs it claims and, for those layers:
  - which keys it removes and which parts it adds (:meth:`removed_keys`, :meth:`parts`,
    :meth:`shared_keys`), from headers only, for plans and dry runs;
  - what it cannot do, found before any fitting (:meth:`check_plan`);
  - how it fits them: one layer at a time or jointly (:meth:`fit`, which reports each layer
    as it finishes through ``on_layer``, and what it is doing inside a layer, such as chunks
    of channels fitted or bisection steps, through ``on_step``);
  - how `lcd verify` checks a written checkpoint (:meth:`verify`), building its runtime from it;
  - how `lcd inspect` measures compressibility (:meth:`compressibility`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lcd_cli.families.spec import FamilyConfig
from lcd_cli.families.view import Layer
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.layouts.base import LayerResult, Layout, SharedResult


@dataclass
class PlannedLayer:
    """A layer to distill, with its sizes read from headers."""

    layer: Layer
    channels: int
    length: int

    @property
    def name(self) -> str:
        return self.layer.prefix


@dataclass(frozen=True)
class FitSettings:
    """What the user asked of the fit: a fixed order, or a tolerance up to a largest order."""

    order: int | None
    tol: float | None
    max_order: int
    device: str | None = None
    seed: int = 0
    workers: int | None = None  # CPU worker processes per layer's fit (None: in-process)
    # Pole class of a modal fit: "complex" (conjugate-pair modes, lcd_cli.numerics.fit) or
    # "real" (poles on (0, 1), real residues: lcd_cli.numerics.fit_real; the vortex engine's)
    poles: str = "complex"


@dataclass
class KindOutput:
    """A kind's fitted layers (in plan order) and anything it fitted once for all of them."""

    layers: list[LayerResult]
    shared: list[SharedResult] = field(default_factory=list)


@dataclass(frozen=True)
class VerifyOptions:
    tol: float
    length: int | None = None  # input length T (default: the kernel length)
    seed: int = 0
    channels: int | None = None  # check only this many channels per layer
    reported: dict[str, dict[str, Any]] = field(default_factory=dict)  # report rows by name


OnLayer = Callable[[LayerResult], None]
OnStep = Callable[[str], None]  # a short message from inside a layer's fit (progress)


class PhaseClock:
    """Seconds per phase of one layer's work (materialize, fit, score), for its report row."""

    def __init__(self) -> None:
        self.start = self.mark = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """Close the phase ``name`` (added to an earlier lap of that name)."""
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self.mark, 3)
        self.mark = now

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


class LayerKind:
    """A way of distilling layers. Subclasses set ``name`` and implement the methods."""

    name: ClassVar[str]
    # Whether each layer is fitted on its own (so the pipeline may fit, keep and reuse them
    # one at a time); False for kinds that fit their layers jointly.
    independent_layers: ClassVar[bool] = True
    # Pole classes its fit offers (FitSettings.poles).
    pole_classes: ClassVar[tuple[str, ...]] = ("complex",)

    def claims(self, config: FamilyConfig) -> bool:
        """Whether layers of this family config are of this kind."""
        raise NotImplementedError

    def check_plan(self, ckpt: Checkpoint, planned: list[PlannedLayer],
                   others: list[PlannedLayer]) -> None:
        """Raise LcdError for what this kind cannot do with its layers (``planned``) beside
        the other kinds' layers of the same run (``others``), from headers only."""

    def removed_keys(self, layer: Layer) -> list[str]:
        """Full keys of one layer that the distilled checkpoint no longer holds."""
        return list(layer.generator_keys)

    def parts(self, layer: Layer) -> list[str]:
        """Names of the fitted parts each layer gets (the layout names their keys)."""
        return []

    def shared_keys(self, planned: list[PlannedLayer], layout: Layout) -> tuple[list[str],
                                                                                  list[str]]:
        """Keys removed and added once for all layers of this kind (headers only)."""
        return [], []

    def fit(self, ckpt: Checkpoint, planned: list[PlannedLayer], settings: FitSettings,
            on_layer: OnLayer | None = None, on_step: OnStep | None = None) -> KindOutput:
        """By default each layer on its own (:meth:`_fit_layer`), in plan order; a kind that
        fits its layers jointly overrides this."""
        results = []
        for p in planned:
            res = self._fit_layer(ckpt, p, settings, on_step)
            results.append(res)
            if on_layer:
                on_layer(res)
        return KindOutput(results)

    def _fit_layer(self, ckpt: Checkpoint, planned: PlannedLayer, settings: FitSettings,
                   on_step: OnStep | None = None) -> LayerResult:
        """One layer: materialize, fit, score (kinds with independent layers)."""
        raise NotImplementedError

    def verify(self, distilled: Checkpoint, ref: Checkpoint, layers: list[Layer],
               layout: Layout, options: VerifyOptions) -> list[dict[str, Any]]:
        """One `lcd verify` row per layer: errors, ``passed`` and ``reason``."""
        raise NotImplementedError

    def compressibility(self, ckpt: Checkpoint, layer: Layer, channels: int) -> dict[str, Any]:
        raise NotImplementedError


def f32_reason(worst_f32: float, worst: float, tol: float) -> str | None:
    """The verdict's words when the float32 (complex64) paths miss tol, else None; the advice
    on cancelling residues only where the float64 paths pass (else the fit itself is off)."""
    if worst_f32 <= tol:
        return None
    what = f"float32 error {worst_f32:.2e} > {tol:.1e} (the complex64 recurrence or kernel " \
           "that engines run"
    if not worst <= tol:
        return what + ")"
    return (f"{what}; float64 error {worst:.2e}): the residues cancel only in float64, refit "
            "the layer (lcd distill keeps float32-safe residues) or lower the order")


def judge(row: dict[str, Any], *, finite: bool, pole_abs: dict[str, float], worst: float,
          tol: float, reported: dict[str, Any] | None, channels: int, orders: list[int],
          worst_f32: float | None = None) -> dict[str, Any]:
    """Set ``passed`` / ``reason`` of a verify row: NaN/Inf, an unstable pole (per named half),
    an error above tol (of the float64 paths, and of the float32 / complex64 paths that
    engines run, ``worst_f32``), or a shape other than the report's."""
    reasons = []
    if not finite:
        reasons.append("NaN/Inf")
    for where, value in pole_abs.items():
        if value >= 1:
            reasons.append(f"unstable pole{where} |p|={value:.6f}")
    if not worst <= tol:
        reasons.append(f"error {worst:.2e} > {tol:.1e}")
    if worst_f32 is not None and (why := f32_reason(worst_f32, worst, tol)):
        reasons.append(why)
    if reported and (reported["channels"] != channels
                     or any(reported["order"] != n for n in orders)):
        reasons.append(f"shape differs from the report (C={reported['channels']}, "
                       f"N={reported['order']})")
    row["passed"] = not reasons
    row["reason"] = "; ".join(reasons)
    return row
