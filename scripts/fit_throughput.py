#!/usr/bin/env python
"""Fitter throughput (issue 18): the current fit_modal against the fitter of an earlier revision,
side by side in one process, on the same kernels.

    python scripts/fit_throughput.py --threads 1 --json fit_throughput.json
    python scripts/fit_throughput.py --quick          # a small smoke run of the whole script
    python scripts/fit_throughput.py --device cuda --no-baseline --rows hyenadna:8192 \
        hyenadna:65536 --channels 1024 --big-channels 0 --order 16   # the GPU table (then 32)

Table rows (N = --order, default 16): kernels of the bundled example checkpoints, materialized
exactly as `lcd distill` does: "HyenaDNA-like" (`lcd example hyenadna`, l_max = L, the -hf
port's 0.05 window shift) and "StripedHyena modal, 8 modes" (`lcd example stripedhyena`,
evaluated at length L, handed its own poles and residues, as `lcd distill` does: at N >= 8 that
realization is the fit; --source poles hands the poles only, as one more start, as the tables
of 2026-12-02 did, --source none nothing, as the tables before). For each row the baseline
and the current fitter fit the same (C, L) kernels one after the other (the order alternates
from row to row, so machine drift does not favour one); the table gives seconds per channel,
channels per second, the speed-up and the median / max relative l2 error of each.

Then the large job: 1024 HyenaDNA-like channels at L = 8192, N = 16, with the current fitter
in-process (--workers 1) and with worker processes (e.g. 2, one torch thread each; the wall time
includes starting them); --big-baseline adds the baseline on the same job.

The process keeps freed memory for reuse as `lcd distill` does (`numerics/allocator.py`), so
both fitters run with the same allocator; LCD_MALLOC=system measures glibc's defaults.

The baseline is `lcd_cli/numerics/fit.py` and `hankel.py` as of --baseline-rev (default: the
revision the issue's figures were measured on), read with `git show` and loaded as private
modules of this script only; the package itself has one fitter.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcd_cli.examples import make_example, write_example  # noqa: E402
from lcd_cli.families.layers import materialize, select_configs, source_realization  # noqa: E402
from lcd_cli.io.checkpoint import open_checkpoint  # noqa: E402
from lcd_cli.numerics import fit as current  # noqa: E402
from lcd_cli.numerics.allocator import keep_freed_memory  # noqa: E402

BASELINE_REV = "4abaab1"  # the fitter the figures were measured on
KERNELS = {"hyenadna": "HyenaDNA-like", "stripedhyena": "StripedHyena modal, 8 modes"}
# (example, L, channels): the table.
ROWS = [("hyenadna", 1024, 64), ("hyenadna", 8192, 64), ("hyenadna", 65536, 64),
        ("hyenadna", 1_000_002, 32),
        ("stripedhyena", 1024, 64), ("stripedhyena", 8192, 64), ("stripedhyena", 65536, 64)]
EVO1_CHANNELS = 29 * 4096  # an Evo-1 / StripedHyena-7B-sized model: 29 Hyena layers of 4096
QUICK_ROWS = [("hyenadna", 300, 6), ("stripedhyena", 300, 6)]
WARMUP_CHANNELS = 16  # one LM batch of rows (`fit._LANES` on AVX-512)


def load_baseline(rev: str) -> ModuleType:
    """fit.py of `rev`, importing hankel.py of `rev` (both private to this script)."""
    tmp = Path(tempfile.mkdtemp(prefix="lcd_fit_baseline_"))
    modules = {}
    for name in ("hankel", "fit"):
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:lcd_cli/numerics/{name}.py"],
                             capture_output=True, text=True, check=True).stdout
        src = src.replace("from lcd_cli.numerics.hankel import", "from lcd_baseline_hankel import")
        path = tmp / f"lcd_baseline_{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"lcd_baseline_{name}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses resolve their module by name
        spec.loader.exec_module(mod)
        modules[name] = mod
    return modules["fit"]


def example_layer(example: str, length: int, channels: int, seed: int = 0
                  ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Layer 0 of `lcd example`, materialized at length L: kernels (C, L) float64 and, for an
    SSM-parameterised source, the poles and residues (C, M) of its own realization, which
    `lcd distill` passes to the fit (`families.layers.source_realization`); else None."""
    sizes = {"hyenadna": {"d_model": channels, "n_layers": 1, "l_max": length},
             "stripedhyena": {"d_model": channels, "n_blocks": 1}}[example]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_example(make_example(example, seed=seed, **sizes),
                             Path(tmp) / f"{example}.safetensors")[0]
        with open_checkpoint(path) as ckpt:
            (_, layers), = select_configs(ckpt, options={"length": length})
            return materialize(ckpt, layers[0])[0], source_realization(ckpt, layers[0])


def example_kernels(example: str, length: int, channels: int, seed: int = 0) -> Tensor:
    """Layer 0 of `lcd example`, materialized at length L: (C, L) float64."""
    return example_layer(example, length, channels, seed)[0]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: object, h: Tensor, order: int, device: str = "cpu", **kw: object) -> dict[str, float]:
    if device != "cpu":
        kw["device"] = device
    _sync(device)
    start = time.perf_counter()
    res = fn(h, order, **kw)  # type: ignore[operator]
    _sync(device)
    wall = time.perf_counter() - start
    err = res.rel_l2
    return {"seconds": wall, "sec_per_channel": wall / h.shape[0], "channels_per_sec": h.shape[0] / wall,
            "median": float(err.median()), "max": float(err.max())}


def run(args: argparse.Namespace) -> dict:
    baseline = None if args.no_baseline else load_baseline(args.baseline_rev)
    rows = QUICK_ROWS if args.quick else [
        r for r in ROWS if args.rows is None or f"{r[0]}:{r[1]}" in args.rows]
    out: dict = {"rows": [], "big": {}}
    for i, (example, length, channels) in enumerate(rows):
        channels = args.channels or channels
        h, source = example_layer(example, length, channels)
        # As `lcd distill` fits the layer: with the source's own realization where it has one
        # (its poles only for a fitter without `source_residues`, or with --source poles).
        use = "none" if source is None or args.no_source else args.source
        order = min(args.order, length - 1)
        pair = [("current", current.fit_modal)]
        if baseline is not None:
            pair.insert(0, ("baseline", baseline.fit_modal))
        if i % 2:
            pair.reverse()
        kernels = KERNELS[example] + {"none": "", "poles": ", source poles",
                                      "realization": ", source realization"}[use]
        row: dict = {"kernels": kernels, "length": length, "channels": channels, "order": order,
                     "source": use}
        for name, fn in pair:
            kw = {}
            if use != "none":
                assert source is not None
                kw["source"] = source[0]
                if use == "realization" and "source_residues" in inspect.signature(fn).parameters:
                    kw["source_residues"] = source[1]
            # Warm-up on a few channels first, so that neither fitter pays the process's first
            # touch of this row's memory (the first of a pair at L = 1024 was up to 1.4x slower).
            few = min(channels, WARMUP_CHANNELS)
            timed(fn, h[:few], order, args.device, **{k: v[:few] for k, v in kw.items()})
            row[name] = timed(fn, h, order, args.device, **kw)
            row[name]["source"] = sorted(kw)
            print(f"[{example} L={length} C={channels}] {name}: {row[name]['sec_per_channel']:.4f} s/ch "
                  f"median {row[name]['median']:.3e} max {row[name]['max']:.3e}", file=sys.stderr, flush=True)
        if "baseline" in row:
            row["speedup"] = row["baseline"]["seconds"] / row["current"]["seconds"]
        out["rows"].append(row)
    if args.big_channels:
        length = 300 if args.quick else 8192
        channels = 8 if args.quick else args.big_channels
        h = example_kernels("hyenadna", length, channels)
        order = min(args.order, length - 1)
        big: dict = {"channels": channels, "length": length, "order": order, "runs": []}
        jobs = [("current", w) for w in args.workers]
        if args.big_baseline and baseline is not None:
            jobs.insert(0, ("baseline", 1))
        for name, workers in jobs:
            if name == "baseline":
                assert baseline is not None
                stats = timed(baseline.fit_modal, h, order, args.device)
            else:
                stats = timed(current.fit_modal, h, order, args.device, workers=workers)
            stats.update({"fitter": name, "workers": workers})
            big["runs"].append(stats)
            print(f"[big {channels} x {length}] {name} workers={workers}: {stats['seconds']:.1f} s "
                  f"median {stats['median']:.3e} max {stats['max']:.3e}", file=sys.stderr, flush=True)
        out["big"] = big
    return out


def _current_only_rows(rows: list[dict]) -> list[str]:
    """The table of the current fitter alone (--no-baseline), with the Evo-1 projection."""
    lines = ["| kernels | L | C | N | s/ch | ch/s | rel_l2 median / max |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["current"]
        lines.append(f"| {r['kernels']} | {r['length']:,} | {r['channels']} | {r['order']} | "
                     f"{c['sec_per_channel']:.4f} | {c['channels_per_sec']:.1f} | "
                     f"{c['median']:.2e} / {c['max']:.2e} |")
        if r["length"] == 8192 and r["kernels"] == KERNELS["hyenadna"]:
            minutes = EVO1_CHANNELS / c["channels_per_sec"] / 60
            lines.append(f"| projection: Evo-1-sized, {EVO1_CHANNELS:,} channels at L = 8192 | | | | "
                         f"| {minutes:.1f} min | |")
    return lines


def _side_by_side_rows(rows: list[dict]) -> list[str]:
    """The table of the baseline against the current fitter."""
    lines = ["| kernels | L | C | baseline s/ch | current s/ch | speed-up | baseline ch/s | current ch/s "
             "| baseline rel_l2 median / max | current rel_l2 median / max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b, c = r["baseline"], r["current"]
        lines.append(f"| {r['kernels']} | {r['length']:,} | {r['channels']} | {b['sec_per_channel']:.4f} | "
                     f"{c['sec_per_channel']:.4f} | {r['speedup']:.2f}x | {b['channels_per_sec']:.1f} | "
                     f"{c['channels_per_sec']:.1f} | {b['median']:.2e} / {b['max']:.2e} | "
                     f"{c['median']:.2e} / {c['max']:.2e} |")
    return lines


def markdown(results: dict) -> str:
    rows = results["rows"]
    with_baseline = not rows or "baseline" in rows[0]
    lines = _side_by_side_rows(rows) if with_baseline else _current_only_rows(rows)
    big = results.get("big")
    if big:
        lines += ["", f"Large job: {big['channels']} HyenaDNA-like channels, L = {big['length']}, "
                  f"N = {big['order']}.", "",
                  "| fitter | workers | wall s | ch/s | rel_l2 median / max |", "|---|---:|---:|---:|---:|"]
        for r in big["runs"]:
            lines.append(f"| {r['fitter']} | {r['workers']} | {r['seconds']:.1f} | "
                         f"{r['channels_per_sec']:.1f} | {r['median']:.2e} / {r['max']:.2e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--order", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--no-baseline", action="store_true",
                    help="the current fitter only (e.g. on a GPU, with the Evo-1 projection)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (fit_modal's device)")
    ap.add_argument("--rows", nargs="+", default=None, metavar="EXAMPLE:L",
                    help="only these rows, e.g. hyenadna:8192 stripedhyena:1024")
    ap.add_argument("--channels", type=int, default=None,
                    help="channels of every row (default: the table's 64, or 32 at L = 1M)")
    ap.add_argument("--big-channels", type=int, default=1024, help="0 skips the large job")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="worker counts of the large job (1 = in-process)")
    ap.add_argument("--big-baseline", action="store_true", help="the baseline on the large job too")
    ap.add_argument("--source", choices=["realization", "poles", "none"], default="realization",
                    help="what SSM-parameterised sources (the StripedHyena rows) hand the fit: "
                         "their own poles and residues, as `lcd distill` does (a fitter without "
                         "`source_residues` gets the poles only), the poles only (the tables of "
                         "2026-12-02), or nothing (the tables before)")
    ap.add_argument("--no-source", action="store_true", help="the same as --source none")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    # As `lcd distill` runs (its CLI and its workers); LCD_MALLOC=system keeps glibc's defaults
    # here and in the workers (they inherit the environment).
    malloc = "lcd" if keep_freed_memory() else "system"
    results = run(args)
    results["config"] = {
        "order": args.order, "threads": args.threads, "baseline_rev": args.baseline_rev,
        "device": args.device,
        "malloc": malloc,
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(),
    }
    print(markdown(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
