"""Step 1 of the pipeline: the plan, decided from headers alone (printed by ``--dry-run``).

Layer 5 (pipeline). Finds the layers (families), asks each layer's kind what it removes and
adds and what it cannot do, and checks the output targets, all before any tensor is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcd_cli.errors import LcdError
from lcd_cli.families.layers import echo_config, layer_options, layer_summary, select_configs
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.io.transaction import OutputTransaction, Target
from lcd_cli.kinds import FitSettings, LayerKind, PlannedLayer, kind_for
from lcd_cli.layouts import Layout, get_layout
from lcd_cli.numerics.parallel import cpu_count
from lcd_cli.pipeline.folders import (
    REPORT_NAME,
    auxiliary_files,
    check_output_folder,
    default_folder_output,
    is_model_folder,
)
from lcd_cli.pipeline.naming import log_path_for, report_path_for


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
    folder: Path | None = None  # the input model folder, when distilled as one (pipeline.folders)
    transaction: OutputTransaction | None = None  # every output, validated at plan time

    @property
    def log_path(self) -> Path:
        """The run's log: beside the report of a file output; beside an output folder (which
        only appears, whole, when the run ends)."""
        if self.folder is not None:
            return self.output.with_name(self.output.name + ".log")
        return log_path_for(self.report)

    @property
    def report_inside(self) -> bool:
        """Whether the report is written inside the output folder (one target, not two)."""
        return self.folder is not None and self.report.parent.resolve() == self.output.resolve()

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
                               "remove": g.kind.removed_keys(p.layer), "add": add,
                               **layer_options(p.layer)})
            remove, add = g.kind.shared_keys(g.layers, self.layout)
            shared_remove += remove
            shared_add += add
        desc: dict[str, Any] = {
            "source": str(self.source), "output": str(self.output), "report": str(self.report),
            "order": self.order, "tol": self.tol, "max_order": self.max_order,
            "layout": self.layout.name, "layers": layers, "skipped": self.skipped,
        }
        if self.settings.poles != "complex":
            desc["poles"] = self.settings.poles
        if shared_remove or shared_add:
            desc["shared"] = {"remove": shared_remove, "add": shared_add}
        return desc


def default_outputs(ckpt: Checkpoint, folder: Path | None, output: Path | None
                    ) -> tuple[Path, Path]:
    """Output and report paths. A model folder gives a folder (default ``<folder>-lcd``) with
    the report inside; a single file gives ``<stem>.lcd.safetensors`` and the report beside the
    output, named after it (``<output stem>.report.yaml``)."""
    if folder is not None:
        out = Path(output) if output else default_folder_output(folder)
        return out, out / REPORT_NAME
    out = Path(output) if output else ckpt.source.with_name(
        ckpt.source.name.removesuffix(".safetensors") + ".lcd.safetensors")
    return out, report_path_for(out)


def default_workers(device: str | None) -> int | None:
    """Worker processes when --workers is not given: one per core for a CPU fit (a layer of
    one chunk of channels still fits in-process: numerics.parallel.run_jobs), none on a GPU."""
    if device is not None and not device.startswith("cpu"):
        return None
    count = cpu_count()
    return count if count > 1 else None


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
    argument: Path | None = None,
    sets: list[str] | None = None,
    model_config: Path | None = None,
    workers: int | None = None,
    poles: str | None = None,
) -> DistillPlan:
    """The plan for distilling ``ckpt`` (opened from ``argument``: a file, index or folder)."""
    if (order is None) == (tol is None):
        raise LcdError("give exactly one of --order N or --tol EPS")
    if order is not None and order < 1:
        raise LcdError(f"--order {order} must be at least 1", key="order")
    if tol is not None and not 0 < tol < 1:
        raise LcdError(f"--tol {tol} is out of range (0, 1)")
    if max_order < 1:
        raise LcdError(f"--max-order {max_order} must be at least 1")
    chosen_layout = get_layout(layout)
    pole_class = resolve_poles(poles, chosen_layout)
    options = {"length": length} if length is not None else None
    found = select_configs(ckpt, family, config, options, sets=sets, model_config=model_config)
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
        if pole_class not in g.kind.pole_classes:
            raise LcdError(f"--poles {pole_class}: {g.kind.name} layers (e.g. "
                           f"'{g.layers[0].name}') are fitted with "
                           f"{' or '.join(g.kind.pole_classes)} poles only", key="poles",
                           hint="restrict the run to other layers with --family, or use "
                                "--poles complex")
        others = [p for o in groups.values() if o is not g for p in o.layers]
        g.kind.check_plan(ckpt, g.layers, others)
    chosen_layout.check_plan(ckpt, [(p.layer, g.kind.parts(p.layer)) for g in groups.values()
                                    for p in g.layers])
    home = ckpt.shards[0].parent
    folder = home if is_model_folder(Path(argument or ckpt.source), home, ckpt.sharded) else None
    output, report_default = default_outputs(ckpt, folder, output)
    report = Path(report) if report else report_default
    if folder is not None:
        check_output_folder(output, ckpt.files)
    if workers is not None and workers < 1:
        raise LcdError(f"--workers {workers} must be at least 1", key="workers")
    settings = FitSettings(order, tol, max_order, device=device, seed=seed,
                           workers=default_workers(device) if workers is None else workers,
                           poles=pole_class)
    configs = {cfg.name: echo_config(cfg) for cfg, _ in found}
    plan = DistillPlan(ckpt.source, output, report, list(groups.values()), skipped, settings,
                       chosen_layout, ckpt.sharded, configs, folder)
    # Every target checked against the others and the inputs (links resolved), its folder,
    # existing outputs (--force) and free space, before any tensor is loaded.
    size = planned_bytes(ckpt, plan)
    targets = [Target(output, "file" if folder is None else "dir", nbytes=size,
                      label="checkpoint" if folder is None else "output folder")]
    if not plan.report_inside:
        targets.append(Target(report, "file", label="report"))
    plan.transaction = OutputTransaction(targets, inputs=ckpt.inputs, force=force)
    return plan


POLE_CLASSES = ("complex", "real")


def resolve_poles(poles: str | None, layout: Layout) -> str:
    """The pole class to fit: the one asked for (--poles), else the layout's, else complex.
    A layout that stores one class only refuses the other."""
    if poles is not None and poles not in POLE_CLASSES:
        raise LcdError(f"unknown pole class '{poles}'", key="poles",
                       hint=f"choose one of {', '.join(POLE_CLASSES)}")
    if layout.poles is not None and poles is not None and poles != layout.poles:
        raise LcdError(f"--layout {layout.name} stores {layout.poles} poles only, not --poles "
                       f"{poles}", key="poles",
                       hint=f"drop --poles (the {layout.name} layout fits {layout.poles} poles), "
                            "or use --layout lcd for complex poles")
    return poles or layout.poles or "complex"


def planned_bytes(ckpt: Checkpoint, plan: DistillPlan) -> int:
    """An upper bound on the output's size: every input tensor, plus (C, N, 2) float32 poles and
    residues per fitted part at the largest order allowed, plus the folder's other files."""
    n = plan.order or plan.max_order
    added = sum(2 * p.channels * n * 2 * 4 * len(g.kind.parts(p.layer))
                for g in plan.groups for p in g.layers)
    extra = 0
    if plan.folder is not None:
        extra = sum((plan.folder / rel).stat().st_size
                    for rel in auxiliary_files(plan.folder, ckpt.files))
    return sum(i.nbytes for i in ckpt.tensors.values()) + added + extra
