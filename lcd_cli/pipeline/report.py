"""The distill report: what was asked, what each layer scored, where everything went.

Layer 5 (pipeline). Written as YAML beside the output (lcd_cli.pipeline.naming); `lcd verify`
reads its tolerance and per-layer shapes back and pairs it with the checkpoint by
``output.sha256`` (sha256 over the output's files, index first), and `lcd verify --record`
adds a ``verify:`` section.

Besides the kinds' per-layer statistics the report holds, per layer, the ``worst_channels``
(the WORST_CHANNELS channels of largest rel_l2: index and error; the full per-channel list the
metrics compute stays out of the file), and for the run: ``resources.peak_rss_mb`` (the
process's peak resident memory, from getrusage), ``phases`` (seconds: materialize + fit + score
as the kinds do them together, hashing the source, writing), ``output.files`` and
``report.path``.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lcd_cli import __version__
from lcd_cli.families.layers import layer_options
from lcd_cli.layouts import LayerResult, SharedResult
from lcd_cli.pipeline.plan import DistillPlan

WORST_CHANNELS = 5  # channels listed per layer in the report
PER_CHANNEL = "rel_l2_channels"  # the metrics' per-channel list (kept out of the file)
# ru_maxrss is in KiB on Linux, in bytes on macOS.
RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def worst_channels(per_channel: list[float], most: int = WORST_CHANNELS) -> list[dict[str, Any]]:
    """The ``most`` channels of largest rel_l2 (largest first; ties: lower index first)."""
    order = sorted(range(len(per_channel)), key=lambda c: (-per_channel[c], c))
    return [{"channel": c, "rel_l2": float(per_channel[c])} for c in order[:most]]


def summarize_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """A copy of a layer's stats with every per-channel list replaced by its worst channels."""
    out: dict[str, Any] = {}
    for key, value in stats.items():
        if key == PER_CHANNEL:
            out["worst_channels"] = worst_channels(value)
        elif isinstance(value, dict):
            out[key] = summarize_stats(value)
        else:
            out[key] = value
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT / 2**20, 1)


def build_report(plan: DistillPlan, results: list[LayerResult], shared: list[SharedResult],
                 command: str, source_sha: str, output_sha: str, *,
                 files: list[Path] | None = None,
                 phases: dict[str, float] | None = None) -> dict[str, Any]:
    layers = [summarize_stats(r.stats) for r in results]
    total_params = sum(s["channels"] * s.get("state_modes", s["order"]) * 4 for s in layers)
    for s in shared:
        if s.ssm_params is not None:
            total_params = s.ssm_params
    report: dict[str, Any] = {
        "lcd_version": __version__,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": {"python": platform.python_version(), "torch": str(torch.__version__),
                        "device": plan.settings.device or "auto", "seed": plan.settings.seed},
        "source": {"path": str(plan.source), "sha256": source_sha},
        "output": {"path": str(plan.output), "sha256": output_sha,
                   "files": [str(f) for f in files or [plan.output]]},
        "report": {"path": str(plan.report)},
        "settings": {"order": plan.order, "tol": plan.tol, "max_order": plan.max_order,
                     "layout": plan.layout.name, "workers": plan.settings.workers or 1,
                     **({"poles": plan.settings.poles}
                        if plan.settings.poles != "complex" else {})},
        "tolerance": plan.tol,
        "configs": plan.configs,
        "layer_options": {p.name: layer_options(p.layer) for p in plan.layers},
        "layers": layers,
        "skipped": plan.skipped,
        "warnings": [f"{s['name']}: {w}" for s in layers for w in s.get("warnings", [])],
        "totals": {
            "layers": len(layers),
            "ssm_params": total_params,
            "rel_l2_max": max((s["rel_l2"]["max"] for s in layers), default=0.0),
            "rel_l2_median_of_medians": sorted(s["rel_l2"]["median"] for s in layers)[
                len(layers) // 2] if layers else 0.0,
            "seconds": round(sum(s["seconds"] for s in layers), 3),
        },
        "phases": {k: round(v, 3) for k, v in (phases or {}).items()},
        "resources": {"peak_rss_mb": peak_rss_mb()},
        "argv": sys.argv[1:],
    }
    for s in shared:
        report |= s.report
    return report
