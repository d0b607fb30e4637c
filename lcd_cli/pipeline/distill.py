"""`lcd distill`, the pipeline: plan -> materialize -> fit -> score -> write -> report.

Layer 5 (pipeline). The plan (lcd_cli.pipeline.plan) groups the layers by kind; each kind
materializes, fits and scores its layers (lcd_cli.kinds); the layout turns the fitted parts
into tensors (lcd_cli.layouts); this module writes the checkpoint and the report. It knows no
family and no kind.

Output: every tensor that a kind does not remove is copied byte for byte; each layer's new
tensors go into the shard that held its first generator key (shared ones into the first
shard). A single file gives a file; a model folder (sharded, or holding config.json) gives a
model folder with the same weight file names, its other files and the report
(lcd_cli.pipeline.folders), written as one unit.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from lcd_cli import __version__
from lcd_cli.errors import LcdError
from lcd_cli.io.checkpoint import (
    Checkpoint,
    OutEntry,
    sha256_files,
    write_index,
    write_safetensors,
)
from lcd_cli.io.signals import Terminated
from lcd_cli.kinds.base import OnLayer, OnStep
from lcd_cli.layouts import LayerResult, SharedResult
from lcd_cli.pipeline.distributed import Ranks, ranks, shutdown
from lcd_cli.pipeline.folders import REPORT_NAME, auxiliary_files, patched_config
from lcd_cli.pipeline.plan import DistillPlan, KindGroup
from lcd_cli.pipeline.progress import Progress
from lcd_cli.pipeline.report import build_report
from lcd_cli.pipeline.resume import ResumeStore, store_for


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

    Layers of kinds that fit them one at a time are kept as they finish (pipeline.resume): a
    rerun after an interruption or a crash reuses them. ``progress`` gets the events of
    lcd_cli.pipeline.progress (start, group, layer, phase, done); ``on_layer`` is called with
    each finished layer as well.
    """
    tell = progress.event if progress else (lambda name, /, **fields: None)
    tell("start", layers=len(plan.layers), source=str(plan.source), device=plan.settings.device,
         order=plan.order, tol=plan.tol, max_order=plan.max_order,
         shapes={p.name: f"C={p.channels}, L={p.length}" for p in plan.layers})

    def layer_done(res: LayerResult) -> None:
        tell("layer", stats=res.stats)
        for note in res.stats.get("warnings", []):  # the materializer's (e.g. engine precision)
            if progress:
                progress.warn(f"{res.name}: {note}")
        if on_layer:
            on_layer(res)

    phases: dict[str, float] = {}
    tell("phase", name="hashing the source")
    mark = time.perf_counter()
    source_sha = sha256_files(ckpt.files)  # keys the resume store
    phases["hash_source"] = time.perf_counter() - mark
    store = ResumeStore(store_for(plan.output), source_sha, plan.settings, plan.layout.name)
    job = ranks(plan.settings.device)
    mark = time.perf_counter()
    try:
        results, shared = fit_all(plan, ckpt, store, job, layer_done,
                                  lambda g: tell("group", kind=g.kind.name,
                                                 layers=[p.name for p in g.layers]),
                                  on_step=progress.fit_step if progress else None)
    except (KeyboardInterrupt, Terminated) as stop:
        kept = len(store.saved) + len(store.reused)
        code = stop.exit_code if isinstance(stop, Terminated) else 130
        raise LcdError(f"interrupted with {kept} of {len(plan.layers)} layer(s) fitted; they "
                       f"are kept in {store.folder}", exit_code=code,
                       hint="run the same command again to resume from them") from None
    phases["materialize_fit_score"] = time.perf_counter() - mark
    if not job.writer:  # torchrun: rank 0 writes the one output
        shutdown(job)
        return {"rank": job.rank, "written_by": 0, "layers": [], "output": {"path": None}}
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
    entries = output_entries(plan, ckpt, results, shared)
    lcd_section = {"lcd_version": __version__, "layout": plan.layout.name,
                   "orders": {r.name: r.stats["order"] for r in results},
                   "source_sha256": source_sha, "report": REPORT_NAME}
    txn = plan.transaction
    assert txn is not None, "plans are made by plan_distill"
    tell("phase", name="writing", path=str(plan.output))
    mark = time.perf_counter()
    with txn:  # checks again, makes the temporaries; nothing lands unless all of it does
        out = txn.path(plan.output)
        if plan.folder is None:
            write_safetensors(out, entries[ckpt.shards[0]], metadata)
            written = [out]
        else:
            written = write_folder(out, plan, ckpt, entries, metadata, lcd_section, results)
        phases["write"] = time.perf_counter() - mark
        final = [plan.output / w.relative_to(out) if w != out else plan.output for w in written]
        report = build_report(plan, results, shared, command, source_sha, sha256_files(written),
                              files=final, phases=phases)
        tell("phase", name="report", path=str(plan.report))
        text = yaml.safe_dump(report, sort_keys=False, width=100)
        if plan.report_inside:
            (out / plan.report.name).write_text(text)
        else:
            txn.path(plan.report).write_text(text)
        txn.commit()
    store.discard()
    shutdown(job)
    tell("done", output=str(plan.output), report=str(plan.report))
    return report


def fit_all(plan: DistillPlan, ckpt: Checkpoint, store: ResumeStore, job: Ranks,
            on_layer: OnLayer | None, on_group: Callable[[KindGroup], None] | None = None,
            on_step: OnStep | None = None) -> tuple[list[LayerResult], list[SharedResult]]:
    """Fit every group, in plan order: layers of one-at-a-time kinds are taken from the resume
    store or fitted and kept; under torchrun each rank fits its share and all are gathered.
    ``on_step`` hears what happens inside a layer's fit (chunks of channels, bisection)."""
    settings = replace(plan.settings, device=job.device(plan.settings.device))
    if job.distributed:  # the ranks are the parallelism: one process each
        settings = replace(settings, workers=None)
    results: list[LayerResult] = []
    shared: list[SharedResult] = []
    for group in plan.groups:
        if on_group:
            on_group(group)
        if not group.kind.independent_layers:
            if job.writer:
                out = group.kind.fit(ckpt, group.layers, settings, on_layer, on_step)
                results += out.layers
                shared += out.shared
            continue
        fitted: dict[str, LayerResult] = {}
        for i, planned in enumerate(group.layers):
            if not job.mine(i):
                continue
            res = store.load(planned)
            if res is None:
                res = group.kind.fit(ckpt, [planned], settings, on_step=on_step).layers[0]
                store.save(planned, res)
            else:
                res.stats["resumed"] = True
            fitted[planned.name] = res
            if on_layer:
                on_layer(res)
        fitted = job.gather(fitted)
        results += [fitted[p.name] for p in group.layers]
    return results, shared


def output_entries(plan: DistillPlan, ckpt: Checkpoint, results: list[LayerResult],
                   shared: list[SharedResult]) -> dict[Path, list[OutEntry]]:
    """The tensors of each output shard (keyed by input shard): untouched ones copied byte for
    byte, in input order, then each layer's new tensors in the shard of its first generator key,
    then shared ones in the first shard."""
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
        shard_entries[home] += [OutEntry.tensor(k, v) for k, v in plan.layout.layer_tensors(r, results)]
    for s in shared:
        shard_entries[ckpt.shards[0]] += [OutEntry.tensor(k, v)
                                          for k, v in plan.layout.shared_tensors(s)]
    return shard_entries


def write_folder(tmp: Path, plan: DistillPlan, ckpt: Checkpoint,
                 entries: dict[Path, list[OutEntry]], metadata: dict[str, str],
                 lcd_section: dict[str, Any], results: list[LayerResult]) -> list[Path]:
    """Fill a model folder: weights named like the input's, every non-weight file of the
    input folder copied, the layout's config files (config.json by default) patched and
    given an ``lcd`` section. Returns the weight files
    (index first) whose sha256 the report records."""
    assert plan.folder is not None
    for rel in auxiliary_files(plan.folder, ckpt.files):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        src = plan.folder / rel
        if rel.as_posix() in plan.layout.config_files:
            (tmp / rel).write_text(patched_config(
                src.read_text(), lcd_section, src,
                lambda doc: plan.layout.config_patch(doc, results)))
        else:
            shutil.copyfile(src, tmp / rel)
    if not ckpt.sharded:
        out = tmp / ckpt.source.name
        write_safetensors(out, entries[ckpt.shards[0]], metadata)
        return [out]
    weight_map: dict[str, str] = {}
    total = 0
    for shard, shard_entries in entries.items():
        write_safetensors(tmp / shard.name, shard_entries, metadata)
        weight_map |= {e.name: shard.name for e in shard_entries}
        total += sum(e.nbytes for e in shard_entries)
    assert ckpt.index is not None
    index = tmp / ckpt.index.name
    write_index(index, weight_map, total, {"lcd_version": __version__})
    return [index, *(tmp / shard.name for shard in entries)]
