"""Where a run's files go: one rule shared by `lcd distill` (writing) and `lcd verify` (looking up).

Layer 5 (pipeline). The report and the log follow the *output*, never the input, so two runs
of one source with different ``-o`` never collide, and `lcd verify OUT` finds OUT's report:

    output                      report                      log
    model.lcd.safetensors       model.lcd.report.yaml       model.lcd.report.log
    other.safetensors           other.report.yaml           other.report.log
    folder-lcd/ (model folder)  folder-lcd/lcd.report.yaml  folder-lcd.log (beside it)

(model folders: lcd_cli.pipeline.folders; the plan's ``report`` and ``log_path``).
"""

from __future__ import annotations

from pathlib import Path

SUFFIX = ".safetensors"
REPORT_SUFFIX = ".report.yaml"


def report_path_for(output: Path) -> Path:
    """The default report of an output file or folder: ``<output stem>.report.yaml`` beside it."""
    output = Path(output)
    if output.name in ("", "..") or output.name == ".":  # "." / "..": the folder they name
        output = output.resolve()
    return output.with_name(output.name.removesuffix(SUFFIX) + REPORT_SUFFIX)


def log_path_for(report: Path) -> Path:
    """The run's log beside its report: ``<report stem>.log``."""
    return Path(report).with_suffix(".log")
