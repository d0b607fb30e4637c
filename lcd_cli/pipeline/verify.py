"""`lcd verify`: check a distilled checkpoint's recurrent path against the original convolution.

Layer 5 (pipeline). Each layer's kind does the check (lcd_cli.kinds); this module finds the
layers, pairs the checkpoint with its report and its source, reads the tolerance, and collects
the rows.
Every row also holds ``worst_f32``, the error of the complex64 paths engines run (causal and
two-sided kinds; the STU kind its float32 runtime), judged against the same tolerance.

Pairing (before any kernel is materialized):
  - the report is the one `lcd distill` wrote by default (:func:`default_report`) unless
    ``--report`` names one; it must record the distilled files' sha256 (``output.sha256``),
    else it belongs to another run (``--no-check-report`` skips this);
  - ``--reference`` must hash to the distilled checkpoint's ``lcd_source_sha256`` metadata,
    else it is not the checkpoint the layers were distilled from (``--no-check-source``).
The report's fields that verify uses are type-checked (``tolerance``, ``layers[i].name /
channels / order``, ``output.sha256``): a malformed report is an LcdError naming the key.

The distilled file's metadata names the family configs it was made with (echoed in full), so
the reference kernels are materialized exactly as at distillation time. Per layer the result
holds the worst relative output error, the pole radius, finiteness and, for inputs longer
than the kernel, the deviation from the truncated convolution (reported, not judged).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import yaml

from lcd_cli.errors import LcdError
from lcd_cli.families.config import recorded_configs
from lcd_cli.families.layers import find_layers
from lcd_cli.io.checkpoint import Checkpoint, atomic_output, open_checkpoint, sha256_files
from lcd_cli.kinds import VerifyOptions, kind_for
from lcd_cli.layouts import get_layout
from lcd_cli.pipeline.folders import REPORT_NAME
from lcd_cli.pipeline.naming import report_path_for

DEFAULT_TOL = 1e-2
# Layout names written by earlier lcd versions, and the layout that reads them.
LEGACY_LAYOUTS = {"stu-shared-basis-v1": "lcd"}


def _layout_name(distilled: Checkpoint) -> str:
    name = distilled.metadata.get("lcd_layout", "lcd")
    return LEGACY_LAYOUTS.get(name, name)


def default_report(distilled: Checkpoint) -> Path | None:
    """Where `lcd distill` put the report by default: inside a distilled model folder, else
    beside the file, named after it (and, for outputs of earlier versions, beside the folder)."""
    folder = distilled.shards[0].parent
    candidates = [folder / REPORT_NAME, report_path_for(distilled.source),
                  report_path_for(folder)]
    if not distilled.sharded:
        candidates.pop()
    return next((c for c in candidates if c.is_file()), None)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def validate_report(doc: object, path: Path) -> dict[str, Any]:
    """The fields verify uses, type-checked; an LcdError names the first wrong key."""
    hint = "pass the report `lcd distill` wrote with this checkpoint, or --no-report"
    if not isinstance(doc, dict):
        raise LcdError(f"not an lcd distill report (a YAML {type(doc).__name__}, not a mapping)",
                       file=path, hint=hint)
    if not isinstance(doc.get("layers"), list):
        raise LcdError("not an lcd distill report (no 'layers' list)", file=path, key="layers",
                       hint=hint)
    tol = doc.get("tolerance")
    if tol is not None and not (_is_number(tol) and math.isfinite(tol) and tol > 0):
        raise LcdError(f"'tolerance' must be a positive number or null, not {tol!r}", file=path,
                       key="tolerance", hint=hint)
    for i, row in enumerate(doc["layers"]):
        if not isinstance(row, dict):
            raise LcdError(f"each layer must be a mapping, not {type(row).__name__}", file=path,
                           key=f"layers[{i}]", hint=hint)
        for field, types, what in (("name", str, "a string"), ("channels", int, "an integer"),
                                   ("order", int, "an integer")):
            value = row.get(field)
            if not isinstance(value, types) or isinstance(value, bool):
                raise LcdError(f"'{field}' must be {what}, not {value!r}", file=path,
                               key=f"layers[{i}].{field}", hint=hint)
    output = doc.get("output")
    if output is not None and not (isinstance(output, dict)
                                   and isinstance(output.get("sha256"), str | None)):
        raise LcdError("'output' must be a mapping with a string 'sha256'", file=path,
                       key="output.sha256", hint=hint)
    return doc


def load_report(distilled: Checkpoint, report: Path | None) -> tuple[dict[str, Any] | None,
                                                                    Path | None]:
    """The report (validated) and its path; (None, None) when the default one does not exist."""
    path = report if report is not None else default_report(distilled)
    if path is None:
        return None, None
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LcdError(f"cannot read the report ({e})", file=path) from e
    return validate_report(doc, Path(path)), Path(path)


def check_pairing(distilled: Checkpoint, ref: Checkpoint, rep: dict[str, Any] | None,
                  rep_path: Path | None, *, check_report: bool, check_source: bool) -> None:
    """The report must be this checkpoint's, and the reference its source (by sha256)."""
    if check_report and rep is not None and (rep.get("output") or {}).get("sha256"):
        recorded = rep["output"]["sha256"]
        actual = sha256_files(distilled.files)
        if recorded != actual:
            raise LcdError(
                f"the report belongs to another checkpoint: it records output sha256 "
                f"{recorded[:12]}…, the distilled files hash to {actual[:12]}…", file=rep_path,
                hint="pass this checkpoint's own report with --report, verify without it "
                "(--no-report), or --no-check-report if the files were re-saved on purpose")
    if check_source and (recorded := distilled.metadata.get("lcd_source_sha256")):
        actual = sha256_files(ref.files)
        if recorded != actual:
            raise LcdError(
                f"this is not the checkpoint it was distilled from: the distilled checkpoint "
                f"records source sha256 {recorded[:12]}…, --reference hashes to {actual[:12]}…",
                file=ref.source, key="__metadata__.lcd_source_sha256",
                hint="pass the original checkpoint as --reference, or --no-check-source to "
                "compare against this one anyway")


def verify_checkpoint(
    distilled_path: Path,
    reference_path: Path,
    *,
    tol: float | None = None,
    report: Path | None = None,
    length: int | None = None,
    seed: int = 0,
    channels: int | None = None,
    use_report: bool = True,
    check_report: bool = True,
    check_source: bool = True,
    require_report: bool = False,
) -> dict[str, Any]:
    if tol is not None and not tol > 0:
        raise LcdError(f"--tol {tol} must be positive")
    if length is not None and length < 1:
        raise LcdError(f"--input-length {length} must be at least 1")
    if channels is not None and channels < 1:
        raise LcdError(f"--channels {channels} must be at least 1", key="channels")
    if report is not None and not use_report:
        raise LcdError("--report and --no-report contradict each other")
    start = time.perf_counter()
    with open_checkpoint(distilled_path) as distilled, open_checkpoint(reference_path) as ref:
        rep, rep_path = load_report(distilled, report) if use_report else (None, None)
        if require_report and rep is None:
            raise LcdError("no report to record the outcome in (none inside the output folder "
                           "nor beside the file, named after it)", file=distilled.source,
                           hint="pass the distill report with --report, or drop --record")
        configs = recorded_configs(distilled)
        check_pairing(distilled, ref, rep, rep_path, check_report=check_report,
                      check_source=check_source)
        tol_source = "--tol"
        if tol is None:
            tol, tol_source = ((float(rep["tolerance"]), "report") if rep and rep.get("tolerance")
                               else (DEFAULT_TOL, "default"))
        reported = {row["name"]: row for row in rep["layers"]} if rep else {}
        layout = get_layout(_layout_name(distilled))
        options = VerifyOptions(tol, length, seed, channels, reported)
        rows = []
        for cfg in configs:
            if not cfg.distill:
                continue
            layers = find_layers(ref, cfg)
            if layers:
                rows += kind_for(cfg).verify(distilled, ref, layers, layout, options)
        if not rows:
            raise LcdError("no distilled layer of the recorded families is in the reference",
                           file=reference_path, hint="is --reference the original checkpoint?")
    return {"distilled": str(distilled_path), "reference": str(reference_path), "tol": tol,
            "tol_source": tol_source, "report": None if rep_path is None else str(rep_path),
            "length": length or max(r.get("length", 0) for r in rows) or None, "seed": seed,
            "passed": all(r["passed"] for r in rows), "layers": rows,
            "seconds": round(time.perf_counter() - start, 3)}


def verify_section(result: dict[str, Any], command: str) -> dict[str, Any]:
    """What `lcd verify --record` writes into the report's ``verify:`` section."""
    return {
        "passed": result["passed"], "tol": result["tol"], "tol_source": result["tol_source"],
        "length": result["length"], "seed": result["seed"], "reference": result["reference"],
        "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": result["seconds"],
        "layers": [{"name": r["name"], "worst": r["worst"],
                    **({"worst_f32": r["worst_f32"]} if "worst_f32" in r else {}),
                    "passed": r["passed"], "reason": r["reason"]} for r in result["layers"]],
    }


def record_verify(report: Path, section: dict[str, Any]) -> None:
    """Write (or replace) the report's ``verify:`` section, atomically."""
    try:
        doc = yaml.safe_load(Path(report).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LcdError(f"cannot read the report ({e})", file=report) from e
    doc = validate_report(doc, Path(report))
    doc["verify"] = section
    with atomic_output(Path(report), force=True) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False, width=100))
