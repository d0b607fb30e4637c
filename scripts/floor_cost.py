#!/usr/bin/env python
"""Time and value of the report's Hankel floor (`metrics.hankel_floor`) by kernel length.

    python scripts/floor_cost.py                               # L = 1000 ... 65536
    python scripts/floor_cost.py --lengths 4096 8192 --examples hyenadna

For each length and bundled example (layer 0 of `lcd example`, 64 channels), the median floor
at order N over the 64 sampled channels, as `lcd distill` reports it, and the CPU seconds it
took on one torch thread. To compare revisions, run the script from each checkout in turn
(docs/benchmarks.md, 6f).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from fit_throughput import example_kernels  # noqa: E402

from lcd_cli.numerics import metrics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 4096, 8192, 16384, 65536])
    ap.add_argument("--examples", nargs="+", default=["hyenadna", "stripedhyena"],
                    choices=["hyenadna", "stripedhyena"])
    ap.add_argument("--order", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.node()} torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), 1 thread; lcd from {ROOT}")
    print("| kernels | L | s (CPU) | floor (median) | rigorous |")
    print("|---|---:|---:|---:|---|")
    for length in args.lengths:
        for example in args.examples:
            h = example_kernels(example, length, metrics.FLOOR_CHANNELS).double()  # (64, L)
            start = time.process_time()
            floor, rigorous, _ = metrics.hankel_floor(h, args.order)
            spent = time.process_time() - start
            print(f"| {example} | {length:,} | {spent:.1f} | {floor:.3e} | {rigorous} |",
                  flush=True)


if __name__ == "__main__":
    main()
