"""Step 1 of the pipeline: the plan, decided from headers alone (printed by ``--dry-run``).

Layer 5 (pipeline). Finds the layers (families), asks each layer's kind what it removes and
adds and what it cannot do, and checks the output targets, all before any tensor is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcd_cli.errors import LcdError
from lcd_cli.families.layers import layer_summary, select_configs
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.kinds import FitSettings, LayerKind, PlannedLayer, kind_for
from lcd_cli.layouts import Layout, get_layout
from lcd_cli.pipeline.naming import report_path_for


@dataclass
class KindGroup:
    """The planned layers of one kind, in checkpoint order."""

    kind: LayerKind
    layers: list[PlannedLayer]


@dataclass
class DistillPlan:
    """Everything decided before any tensor is loaded."""

    source: Path
    output: Path
    report: Path
    groups: list[KindGroup]
    skipped: list[dict[str, Any]]
    settings: FitSettings
    layout: Layout
    sharded: bool
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def layers(self) -> list[PlannedLayer]:
        return [p for g in self.groups for p in g.layers]

    @property
    def order(self) -> int | None:
        return self.settings.order

    @property
    def tol(self) -> float | None:
        return self.settings.tol

    @property
    def max_order(self) -> int:
        return self.settings.max_order

    def describe(self) -> dict[str, Any]:
        layers, shared_remove, shared_add = [], [], []
        for g in self.groups:
            for p in g.layers:
                add = [k for part in g.kind.parts(p.layer)
                       for k in self.layout.part_keys(p.name, part)]
                layers.append({"name": p.name, "family": p.layer.config.name,
                               "kind": g.kind.name, "channels": p.channels, "length": p.length,
                               "remove": g.kind.removed_keys(p.layer), "add": add})
            remove, add = g.kind.shared_keys(g.layers, self.layout)
            shared_remove += remove
            shared_add += add
        desc: dict[str, Any] = {
            "source": str(self.source), "output": str(self.output), "report": str(self.report),
            "order": self.order, "tol": self.tol, "max_order": self.max_order,
            "layout": self.layout.name, "layers": layers, "skipped": self.skipped,
        }
        if shared_remove or shared_add:
            desc["shared"] = {"remove": shared_remove, "add": shared_add}
        return desc


def default_output(source: Path, sharded: bool) -> Path:
    """``<stem>.lcd.safetensors``, or the folder ``<folder>-lcd`` for a sharded input."""
    if sharded:
        return source.parent.with_name(source.parent.name + "-lcd")
    return source.with_name(source.name.removesuffix(".safetensors") + ".lcd.safetensors")


def plan_distill(
    ckpt: Checkpoint,
    *,
    order: int | None,
    tol: float | None,
    max_order: int = 64,
    family: str | None = None,
    config: Path | None = None,
    length: int | None = None,
    output: Path | None = None,
    report: Path | None = None,
    force: bool = False,
    layout: str = "lcd",
    device: str | None = None,
    seed: int = 0,
) -> DistillPlan:
    if (order is None) == (tol is None):
        raise LcdError("give exactly one of --order N or --tol EPS")
    if order is not None and order < 1:
        raise LcdError(f"--order {order} must be at least 1", key="order")
    if tol is not None and not 0 < tol < 1:
        raise LcdError(f"--tol {tol} is out of range (0, 1)")
    if max_order < 1:
        raise LcdError(f"--max-order {max_order} must be at least 1")
    chosen_layout = get_layout(layout)
    options = {"length": length} if length is not None else None
    found = select_configs(ckpt, family, config, options)
    groups: dict[str, KindGroup] = {}
    skipped, problems = [], []
    for cfg, cfg_layers in found:
        for layer in cfg_layers:
            info = layer_summary(ckpt, layer)
            if not cfg.distill:
                skipped.append({"name": layer.prefix, "family": cfg.name,
                                "reason": cfg.description or "not distilled by this config"})
                continue
            n_max = info["length"] - 1
            want = order if order is not None else max_order
            if not 1 <= want <= n_max:
                problems.append(f"'{layer.prefix}' (length {info['length']}: orders 1..{n_max})")
            kind = kind_for(cfg)
            groups.setdefault(kind.name, KindGroup(kind, []))
            groups[kind.name].layers.append(PlannedLayer(layer, info["channels"], info["length"]))
    if problems:
        flag = "--order" if order is not None else "--max-order"
        raise LcdError(f"{flag} {order or max_order} is out of range for {len(problems)} layer(s): "
                       + ", ".join(problems), file=ckpt.source,
                       hint="an order must be between 1 and the kernel length - 1")
    if not groups:
        raise LcdError("no layer to distill (every layer found is marked distill: false)",
                       file=ckpt.source)
    for g in groups.values():  # what a kind cannot do, before any tensor is loaded
        others = [p for o in groups.values() if o is not g for p in o.layers]
        g.kind.check_plan(ckpt, g.layers, others)
    output = Path(output) if output else default_output(ckpt.source, ckpt.sharded)
    report = Path(report) if report else report_path_for(output)  # follows the output
    inputs = {p.resolve() for p in ckpt.files}
    for target in (output, report):
        if target.resolve() in inputs or (ckpt.sharded and target.resolve() == ckpt.source.parent.resolve()):
            raise LcdError("the output would overwrite the input", file=target,
                           hint="choose another --output / --report")
        if target.exists() and not force:
            raise LcdError("the output already exists", file=target,
                           hint="pass --force to overwrite it, or choose another path")
    settings = FitSettings(order, tol, max_order, device=device, seed=seed)
    configs = {cfg.name: {**cfg.raw, "options": cfg.options} for cfg, _ in found}
    return DistillPlan(ckpt.source, output, report, list(groups.values()), skipped, settings,
                       chosen_layout, ckpt.sharded, configs)
