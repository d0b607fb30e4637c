"""`lcd distill`: plan (headers only), fit every layer, write the new checkpoint and report.

Output layout: every tensor that is not a kernel generator is copied byte for byte; each
distilled layer's generator keys are removed and ``<prefix>.ssm.poles`` / ``<prefix>.ssm.residues``
(float32, (C, N, 2) [real, imag]) are added, so that h[c, t] = Re sum_n R[c, n] p[c, n]^t.
The skip term D stays where it was. A sharded input gives a sharded output (same shard names).
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from lcd_cli import __version__
from lcd_cli.errors import LcdError
from lcd_cli.families.layers import (
    Layer,
    echo_config,
    generator_info,
    layer_options,
    layer_summary,
    materialize,
    select_configs,
    source_modes,
)
from lcd_cli.families.view import join_key
from lcd_cli.io.checkpoint import (
    DTYPES,
    Checkpoint,
    OutEntry,
    atomic_output,
    sha256_files,
    write_index,
    write_safetensors,
)
from lcd_cli.numerics.metrics import kernel_errors
from lcd_cli.numerics.modal import from_pairs, to_pairs

SSM_POLES = "ssm.poles"
SSM_RESIDUES = "ssm.residues"


@dataclass
class PlannedLayer:
    layer: Layer
    channels: int
    length: int

    @property
    def name(self) -> str:
        return self.layer.prefix


@dataclass
class DistillPlan:
    """Everything decided before any tensor is loaded (printed by ``--dry-run``)."""

    source: Path
    output: Path
    report: Path
    layers: list[PlannedLayer]
    skipped: list[dict[str, Any]]
    order: int | None
    tol: float | None
    max_order: int
    sharded: bool
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        stu = [p for p in self.layers if p.layer.config.materializer == "stu"]
        if stu:  # one shared basis replaces the phi buffer; the layers' tensors are kept
            from lcd_cli.kinds.shared_basis import planned_keys

            remove, add = planned_keys(stu[0].layer.config.options)
            return {"source": str(self.source), "output": str(self.output),
                    "report": str(self.report), "order": self.order, "tol": self.tol,
                    "max_order": self.max_order,
                    "layers": [{"name": p.name, "family": p.layer.config.name,
                                "channels": p.channels, "length": p.length, "remove": [],
                                "add": [], **layer_options(p.layer)} for p in stu],
                    "shared": {"remove": remove, "add": add}, "skipped": self.skipped}
        return {
            "source": str(self.source),
            "output": str(self.output),
            "report": str(self.report),
            "order": self.order,
            "tol": self.tol,
            "max_order": self.max_order,
            "layers": [{"name": p.name, "family": p.layer.config.name, "channels": p.channels,
                        "length": p.length, "remove": list(p.layer.generator_keys),
                        "add": [join_key(p.name, SSM_POLES), join_key(p.name, SSM_RESIDUES)]
                        + ([] if p.layer.config.causal else
                           [join_key(p.name, "ssm_rev.poles"), join_key(p.name, "ssm_rev.residues")]),
                        **layer_options(p.layer)}
                       for p in self.layers],
            "skipped": self.skipped,
        }


def default_outputs(source: Path, sharded: bool) -> tuple[Path, Path]:
    """``<stem>.lcd.safetensors`` (or folder ``<folder>-lcd``) and ``<stem>.lcd.report.yaml``."""
    if sharded:
        folder = source.parent
        return folder.with_name(folder.name + "-lcd"), folder.with_name(folder.name + "-lcd.report.yaml")
    stem = source.name.removesuffix(".safetensors")
    return source.with_name(f"{stem}.lcd.safetensors"), source.with_name(f"{stem}.lcd.report.yaml")


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
    sets: list[str] | None = None,
    model_config: Path | None = None,
) -> DistillPlan:
    if (order is None) == (tol is None):
        raise LcdError("give exactly one of --order N or --tol EPS")
    if tol is not None and not 0 < tol < 1:
        raise LcdError(f"--tol {tol} is out of range (0, 1)")
    if max_order < 1:
        raise LcdError(f"--max-order {max_order} must be at least 1")
    options = {"length": length} if length is not None else None
    found = select_configs(ckpt, family, config, options, sets=sets, model_config=model_config)
    layers, skipped, problems = [], [], []
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
            layers.append(PlannedLayer(layer, info["channels"], info["length"]))
    if problems:
        flag = "--order" if order is not None else "--max-order"
        raise LcdError(f"{flag} {order or max_order} is out of range for {len(problems)} layer(s): "
                       + ", ".join(problems), file=ckpt.source,
                       hint="an order must be between 1 and the kernel length - 1")
    if not layers:
        raise LcdError("no layer to distill (every layer found is marked distill: false)",
                       file=ckpt.source)
    if any(p.layer.config.materializer == "stu" for p in layers):
        from lcd_cli.kinds.shared_basis import check_stu_plan

        check_stu_plan(ckpt, [p.layer for p in layers])  # before any tensor is loaded
    out_default, report_default = default_outputs(ckpt.source, ckpt.sharded)
    output = Path(output) if output else out_default
    report = Path(report) if report else report_default
    inputs = {p.resolve() for p in ckpt.files}
    for target in (output, report):
        if target.resolve() in inputs or (ckpt.sharded and target.resolve() == ckpt.source.parent.resolve()):
            raise LcdError("the output would overwrite the input", file=target,
                           hint="choose another --output / --report")
        if target.exists() and not force:
            raise LcdError("the output already exists", file=target,
                           hint="pass --force to overwrite it, or choose another path")
    return DistillPlan(ckpt.source, output, report, layers, skipped, order, tol, max_order,
                       ckpt.sharded, {cfg.name: echo_config(cfg) for cfg, _ in found})


@dataclass
class LayerResult:
    name: str
    poles: torch.Tensor  # (C, N, 2) float32
    residues: torch.Tensor  # (C, N, 2) float32
    stats: dict[str, Any]
    rev: tuple[torch.Tensor, torch.Tensor] | None = None  # non-causal: anti-causal half


def fit_layer(ckpt: Checkpoint, planned: PlannedLayer, plan: DistillPlan, *, device: str | None,
              seed: int) -> LayerResult:
    """Materialize, fit and score one layer. Scores use the float32 parameters as written."""
    from lcd_cli.numerics.fit import fit_modal, fit_modal_to_tolerance

    if not planned.layer.config.causal:
        from lcd_cli.kinds.two_sided import fit_two_sided_layer

        return fit_two_sided_layer(ckpt, planned, plan, device=device, seed=seed)
    start = time.perf_counter()
    h, _ = materialize(ckpt, planned.layer)  # (C, L) float64
    source = source_modes(ckpt, planned.layer)  # (C, M) or None: an SSM source's own poles
    if plan.order is not None:
        fit = fit_modal(h, plan.order, device=device, seed=seed, source=source)
    else:
        assert plan.tol is not None
        fit = fit_modal_to_tolerance(h, plan.tol, plan.max_order, device=device, seed=seed,
                                     source=source)
    poles, residues = to_pairs(fit.poles), to_pairs(fit.residues)  # (C, N, 2) float32
    stats = kernel_errors(h, from_pairs(poles), from_pairs(residues), order=fit.order)
    stats |= {"name": planned.name, "family": planned.layer.config.name,
              "channels": planned.channels, "length": planned.length, "order": fit.order,
              "method": fit.method, "seconds": round(time.perf_counter() - start, 3)}
    if plan.tol is not None:
        stats["tol_met"] = bool(stats["rel_l2"]["max"] <= plan.tol)
    if facts := generator_info(ckpt, planned.layer):  # e.g. SSM state size, eigvec conditioning
        stats["generator_info"] = facts
    return LayerResult(planned.name, poles, residues, stats)


def run_distill(
    plan: DistillPlan,
    ckpt: Checkpoint,
    *,
    device: str | None,
    seed: int = 0,
    force: bool = False,
    command: str = "",
    on_layer: Callable[[LayerResult], None] | None = None,
) -> dict[str, Any]:
    """Fit every planned layer (one at a time), then write checkpoint and report atomically."""
    if any(p.layer.config.materializer == "stu" for p in plan.layers):  # shared basis
        from lcd_cli.kinds.shared_basis import run_stu_distill

        return run_stu_distill(plan, ckpt, seed=seed, force=force, command=command,
                               on_layer=on_layer)
    results = []
    for planned in plan.layers:
        res = fit_layer(ckpt, planned, plan, device=device, seed=seed)
        results.append(res)
        if on_layer:
            on_layer(res)
    source_sha = sha256_files(ckpt.files)
    metadata = {
        **ckpt.metadata,
        "format": "pt",
        "lcd_version": __version__,
        "lcd_family": ",".join(plan.configs),
        "lcd_order": json.dumps({r.name: r.stats["order"] for r in results}),
        "lcd_source_sha256": source_sha,
        "lcd_config": json.dumps(plan.configs),
    }
    _write_checkpoint(plan, ckpt, results, metadata, force)
    out_files = ([plan.output / "model.safetensors.index.json"] if plan.sharded else [plan.output])
    report = _report(plan, results, command, source_sha, sha256_files(out_files), device, seed)
    with atomic_output(plan.report, force=force) as tmp:
        tmp.write_text(yaml.safe_dump(report, sort_keys=False, width=100))
    return report


def _write_checkpoint(plan: DistillPlan, ckpt: Checkpoint, results: list[LayerResult],
                      metadata: dict[str, str], force: bool) -> None:
    removed = {k for p in plan.layers for k in p.layer.generator_keys}
    by_layer = {r.name: r for r in results}
    # Each layer's SSM tensors go into the shard that held its first generator key.
    home = {p.name: ckpt.info(p.layer.generator_keys[0]).shard for p in plan.layers}
    shard_entries: dict[Path, list[OutEntry]] = {s: [] for s in ckpt.shards}
    for info in ckpt.tensors.values():
        if info.name not in removed:
            shard_entries[info.shard].append(OutEntry.copy(info))
    for name, shard in home.items():
        r = by_layer[name]
        shard_entries[shard] += [OutEntry.tensor(join_key(name, SSM_POLES), r.poles),
                                 OutEntry.tensor(join_key(name, SSM_RESIDUES), r.residues)]
        if r.rev is not None:
            shard_entries[shard] += [OutEntry.tensor(join_key(name, "ssm_rev.poles"), r.rev[0]),
                                     OutEntry.tensor(join_key(name, "ssm_rev.residues"), r.rev[1])]
    if not plan.sharded:
        with atomic_output(plan.output, force=force) as tmp:
            write_safetensors(tmp, shard_entries[ckpt.shards[0]], metadata)
        return
    with atomic_output(plan.output, force=force, directory=True) as tmp:
        weight_map: dict[str, str] = {}
        total = 0
        for shard, entries in shard_entries.items():
            write_safetensors(tmp / shard.name, entries, metadata)
            weight_map |= {e.name: shard.name for e in entries}
            total += sum(math.prod(e.shape) * DTYPES[e.dtype][0] for e in entries)
        write_index(tmp / "model.safetensors.index.json", weight_map, total,
                    {"lcd_version": __version__})


def _report(plan: DistillPlan, results: list[LayerResult], command: str, source_sha: str,
            output_sha: str, device: str | None, seed: int) -> dict[str, Any]:
    layers = [r.stats for r in results]
    total_params = sum(s["channels"] * s.get("state_modes", s["order"]) * 4 for s in layers)
    return {
        "lcd_version": __version__,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": {"python": platform.python_version(), "torch": str(torch.__version__),
                        "device": device or "auto", "seed": seed},
        "source": {"path": str(plan.source), "sha256": source_sha},
        "output": {"path": str(plan.output), "sha256": output_sha},
        "settings": {"order": plan.order, "tol": plan.tol, "max_order": plan.max_order},
        "tolerance": plan.tol,
        "configs": plan.configs,
        "layer_options": {p.name: layer_options(p.layer) for p in plan.layers},
        "layers": layers,
        "skipped": plan.skipped,
        "totals": {
            "layers": len(layers),
            "ssm_params": total_params,
            "rel_l2_max": max((s["rel_l2"]["max"] for s in layers), default=0.0),
            "rel_l2_median_of_medians": sorted(s["rel_l2"]["median"] for s in layers)[
                len(layers) // 2] if layers else 0.0,
            "seconds": round(sum(s["seconds"] for s in layers), 3),
        },
        "argv": sys.argv[1:],
    }
