"""The distill report: what was asked, what each layer scored, and both files' sha256.

Layer 5 (pipeline). Written as YAML beside the output; `lcd verify` reads its tolerance and
per-layer shapes back.
"""

from __future__ import annotations

import platform
import sys
import time
from typing import Any

import torch

from lcd_cli import __version__
from lcd_cli.families.layers import layer_options
from lcd_cli.layouts import LayerResult, SharedResult
from lcd_cli.pipeline.plan import DistillPlan


def build_report(plan: DistillPlan, results: list[LayerResult], shared: list[SharedResult],
                 command: str, source_sha: str, output_sha: str) -> dict[str, Any]:
    layers = [r.stats for r in results]
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
        "output": {"path": str(plan.output), "sha256": output_sha},
        "settings": {"order": plan.order, "tol": plan.tol, "max_order": plan.max_order,
                     "layout": plan.layout.name},
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
    for s in shared:
        report |= s.report
    return report
