"""`lcd verify`: check a distilled checkpoint's recurrent path against the original convolution.

Layer 5 (pipeline). Each layer's kind does the check (lcd_cli.kinds); this module finds the
layers, reads the report and the tolerance, and collects the rows.

The distilled file's metadata names the family configs it was made with (echoed in full), so
the reference kernels are materialized exactly as at distillation time. Per layer the result
holds the worst relative output error, the pole radius, finiteness and, for inputs longer
than the kernel, the deviation from the truncated convolution (reported, not judged).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lcd_cli.errors import LcdError
from lcd_cli.families.config import parse_config
from lcd_cli.families.layers import find_layers
from lcd_cli.io.checkpoint import Checkpoint, open_checkpoint
from lcd_cli.kinds import VerifyOptions, kind_for
from lcd_cli.layouts import get_layout
from lcd_cli.pipeline.folders import REPORT_NAME

DEFAULT_TOL = 1e-2
# Layout names written by earlier lcd versions, and the layout that reads them.
LEGACY_LAYOUTS = {"stu-shared-basis-v1": "lcd"}


def _layout_name(distilled: Checkpoint) -> str:
    name = distilled.metadata.get("lcd_layout", "lcd")
    return LEGACY_LAYOUTS.get(name, name)


def _configs(distilled: Checkpoint) -> list[Any]:
    raw = distilled.metadata.get("lcd_config")
    if raw is None:
        raise LcdError("no lcd_config metadata: this checkpoint was not written by `lcd distill`",
                       file=distilled.source, hint="pass the output of `lcd distill`")
    try:
        docs = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LcdError(f"lcd_config metadata is not valid JSON ({e})", file=distilled.source,
                       key="__metadata__.lcd_config") from e
    return [parse_config(yaml.safe_dump(doc), f"{distilled.source}:lcd_config[{name}]")
            for name, doc in docs.items()]


def default_report(distilled: Checkpoint) -> Path | None:
    """Where `lcd distill` put the report by default: inside a distilled model folder, else
    beside the file, named after it (and, for outputs of earlier versions, beside the folder)."""
    folder = distilled.shards[0].parent
    candidates = [folder / REPORT_NAME,
                  distilled.source.with_name(
                      distilled.source.name.removesuffix(".safetensors") + ".report.yaml"),
                  folder.with_name(folder.name + ".report.yaml")]
    if not distilled.sharded:
        candidates.pop()
    return next((c for c in candidates if c.is_file()), None)


def _load_report(distilled: Checkpoint, report: Path | None) -> dict[str, Any] | None:
    path = report
    if path is None:
        path = default_report(distilled)
        if path is None:
            return None
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise LcdError(f"cannot read the report ({e})", file=path) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise LcdError("not an lcd distill report (no 'layers' list)", file=path)
    return doc


def verify_checkpoint(
    distilled_path: Path,
    reference_path: Path,
    *,
    tol: float | None = None,
    report: Path | None = None,
    length: int | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> dict[str, Any]:
    if tol is not None and not tol > 0:
        raise LcdError(f"--tol {tol} must be positive")
    if length is not None and length < 1:
        raise LcdError(f"--length {length} must be at least 1")
    with open_checkpoint(distilled_path) as distilled, open_checkpoint(reference_path) as ref:
        rep = _load_report(distilled, report)
        if tol is None:
            tol = float(rep["tolerance"]) if rep and rep.get("tolerance") else DEFAULT_TOL
        reported = {row["name"]: row for row in rep["layers"]} if rep else {}
        layout = get_layout(_layout_name(distilled))
        options = VerifyOptions(tol, length, seed, channels, reported)
        rows = []
        for cfg in _configs(distilled):
            if not cfg.distill:
                continue
            layers = find_layers(ref, cfg)
            if layers:
                rows += kind_for(cfg).verify(distilled, ref, layers, layout, options)
        if not rows:
            raise LcdError("no distilled layer of the recorded families is in the reference",
                           file=reference_path, hint="is --reference the original checkpoint?")
    return {"distilled": str(distilled_path), "reference": str(reference_path), "tol": tol,
            "length": length or max(r.get("length", 0) for r in rows) or None, "seed": seed,
            "passed": all(r["passed"] for r in rows), "layers": rows}
