"""`lcd distill`, the pipeline: plan -> materialize -> fit -> score -> write -> report.

Layer 5 (pipeline). The plan (lcd_cli.pipeline.plan) groups the layers by kind; each kind
materializes, fits and scores its layers (lcd_cli.kinds); the layout turns the fitted parts
into tensors (lcd_cli.layouts); this module writes the checkpoint and the report. It knows no
family and no kind.

Output: every tensor that a kind does not remove is copied byte for byte; each layer's new
tensors go into the shard that held its first generator key (shared ones into the first shard
of what they replace); a sharded input gives a sharded output (same shard names).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from lcd_cli import __version__
from lcd_cli.io.checkpoint import (
    DTYPES,
    Checkpoint,
    OutEntry,
    atomic_output,
    open_checkpoint,
    sha256_files,
    write_index,
    write_safetensors,
)
from lcd_cli.kinds.base import OnLayer
from lcd_cli.layouts import LayerResult, SharedResult
from lcd_cli.pipeline.plan import DistillPlan
from lcd_cli.pipeline.progress import Progress
from lcd_cli.pipeline.report import build_report


def run_distill(
    plan: DistillPlan,
    ckpt: Checkpoint,
    *,
    force: bool = False,
    command: str = "",
    on_layer: OnLayer | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fit every planned layer kind by kind, then write checkpoint and report atomically.

    ``progress`` gets the events of lcd_cli.pipeline.progress (start, group, layer, phase,
    done); ``on_layer`` is called with each finished layer as well.
    """
    tell = progress.event if progress else (lambda name, /, **fields: None)
    tell("start", layers=len(plan.layers), source=str(plan.source), device=plan.settings.device,
         order=plan.order, tol=plan.tol, max_order=plan.max_order,
         shapes={p.name: f"C={p.channels}, L={p.length}" for p in plan.layers})

    def layer_done(res: LayerResult) -> None:
        tell("layer", stats=res.stats)
        if on_layer:
            on_layer(res)

    results: list[LayerResult] = []
    shared: list[SharedResult] = []
    phases: dict[str, float] = {}
    start = time.perf_counter()
    for group in plan.groups:
        tell("group", kind=group.kind.name, layers=[p.name for p in group.layers])
        out = group.kind.fit(ckpt, group.layers, plan.settings, layer_done)
        results += out.layers
        shared += out.shared
    phases["materialize_fit_score"] = time.perf_counter() - start
    tell("phase", name="hashing the source")
    mark = time.perf_counter()
    source_sha = sha256_files(ckpt.files)
    phases["hash_source"] = time.perf_counter() - mark
    metadata = {
        **ckpt.metadata,
        "format": "pt",
        "lcd_version": __version__,
        "lcd_family": ",".join(plan.configs),
        "lcd_layout": plan.layout.name,
        "lcd_order": json.dumps({r.name: r.stats["order"] for r in results}),
        "lcd_source_sha256": source_sha,
        "lcd_config": json.dumps(plan.configs),
        **plan.layout.metadata(results),
    }
    for s in shared:
        metadata |= s.metadata
    tell("phase", name="writing", path=str(plan.output))
    mark = time.perf_counter()
    write_checkpoint(plan, ckpt, results, shared, metadata, force)
    with open_checkpoint(plan.output) as written:  # index first, then shards (as verify hashes)
        out_files = written.files
    output_sha = sha256_files(out_files)
    phases["write"] = time.perf_counter() - mark
    report = build_report(plan, results, shared, command, source_sha, output_sha,
                          files=out_files, phases=phases)
    tell("phase", name="report", path=str(plan.report))
    with atomic_output(plan.report, force=force) as tmp:
        tmp.write_text(yaml.safe_dump(report, sort_keys=False, width=100))
    tell("done", output=str(plan.output), report=str(plan.report))
    return report


def write_checkpoint(plan: DistillPlan, ckpt: Checkpoint, results: list[LayerResult],
                     shared: list[SharedResult], metadata: dict[str, str], force: bool) -> None:
    removed = {k for g in plan.groups for p in g.layers for k in g.kind.removed_keys(p.layer)}
    for g in plan.groups:
        removed |= set(g.kind.shared_keys(g.layers, plan.layout)[0])
    planned = {p.name: p for p in plan.layers}
    shard_entries: dict[Path, list[OutEntry]] = {s: [] for s in ckpt.shards}
    for info in ckpt.tensors.values():
        if info.name not in removed:
            shard_entries[info.shard].append(OutEntry.copy(info))
    for r in results:
        layer = planned[r.name].layer
        home = ckpt.info(layer.generator_keys[0]).shard if layer.generator_keys else ckpt.shards[0]
        shard_entries[home] += [OutEntry.tensor(k, v) for k, v in plan.layout.layer_tensors(r)]
    for s in shared:
        shard_entries[ckpt.shards[0]] += [OutEntry.tensor(k, v)
                                          for k, v in plan.layout.shared_tensors(s)]
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
