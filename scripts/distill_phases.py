#!/usr/bin/env python
"""Where an end-to-end `lcd distill` spends its time, per layer and phase (materialize, fit,
score), for the current checkout and optionally an earlier revision, on the same checkpoint.

    python scripts/distill_phases.py                       # Evo-1 width: 4096 channels, L = 8192
    python scripts/distill_phases.py --baseline-rev 514c4ee --runs 2
    python scripts/distill_phases.py --example hyenadna --d-model 256 --order 16 -L 8192

The checkpoint is `lcd example` at the given width (StripedHyena / Evo 1 by default: d_model
4096, n_blocks 3, so two hyena layers of 4096 channels, 8 modes each, scored at L = 8192, as
Evo-1-7B's 29 hyena layers would be). Each run is a fresh `python -m lcd_cli distill` process
with PYTHONPATH on the checkout (the baseline: a `git worktree` of --baseline-rev), started from
an empty folder so that neither shadows the other; with --runs 2 the order alternates
(baseline, current, current, baseline) so machine drift favours neither. The table gives the
wall time and, from each report, every layer's phases.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcd_cli.examples import make_example, write_example  # noqa: E402


def distill(src: Path, root: Path, out: Path, args: argparse.Namespace) -> tuple[float, dict]:
    """One `lcd distill` of src with the package at root: (wall seconds, the report)."""
    cmd = [sys.executable, "-m", "lcd_cli", "distill", str(src), "--order", str(args.order),
           "-o", str(out)] + (["--workers", str(args.workers)] if args.workers else [])
    if args.length:
        cmd += ["--length", str(args.length)]
    env = os.environ | {"PYTHONPATH": str(root)}
    start = time.perf_counter()
    run = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True,
                         check=False)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"lcd distill failed ({root}):\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    report = out.with_name(out.stem + ".report.yaml")
    return wall, yaml.safe_load(report.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--example", default="stripedhyena")
    ap.add_argument("--d-model", type=int, default=4096)
    ap.add_argument("--blocks", type=int, default=3, help="n_blocks (stripedhyena) / n_layers")
    ap.add_argument("--order", "-n", type=int, default=8)
    ap.add_argument("--length", "-L", type=int, default=0, help="--length of lcd distill")
    ap.add_argument("--workers", type=int, default=0,
                    help="--workers of lcd distill (default: not given, one per core)")
    ap.add_argument("--baseline-rev", default="", help="also run this git revision")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()

    sizes = {"d_model": args.d_model,
             ("n_blocks" if args.example == "stripedhyena" else "n_layers"): args.blocks}
    if args.example == "hyenadna" and args.length:
        sizes["l_max"] = args.length
    print(f"# {platform.processor() or platform.machine()} "
          f"({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}; {args.example} {sizes}, "
          f"N = {args.order}, --workers {args.workers or 'default'}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = write_example(make_example(args.example, seed=0, **sizes), tmp / "src.safetensors")[0]
        roots = {"current": ROOT}
        if args.baseline_rev:
            base = tmp / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                            args.baseline_rev], check=True, capture_output=True)
            roots = {"baseline": base, "current": ROOT}
        try:
            order = list(roots)
            print("| run | revision | wall s | layer | materialize s | fit s | score s | "
                  "rel_l2 max | floor |")
            print("|---|---|---:|---|---:|---:|---:|---:|---:|")
            for run in range(args.runs):
                for name in order if run % 2 == 0 else order[::-1]:
                    work = tmp / f"{name}{run}"
                    work.mkdir()
                    wall, report = distill(src, roots[name], work / "out.safetensors", args)
                    for row in report["layers"]:
                        ph = row["phases"]
                        print(f"| {run} | {name} | {wall:.1f} | {row['name']} | "
                              f"{ph.get('materialize', 0):.2f} | {ph.get('fit', 0):.2f} | "
                              f"{ph.get('score', 0):.2f} | {row['rel_l2']['max']:.2e} | "
                              f"{row['floor']:.2e} |")
        finally:
            if args.baseline_rev:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tmp / "baseline")], check=False, capture_output=True)


if __name__ == "__main__":
    main()
