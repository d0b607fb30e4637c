#!/usr/bin/env python
"""Outlier-restart policies replayed exactly (issue 18): how many restart rows each costs and
what error it reaches, from one pass that refines every restart for every channel.

    python scripts/restart_policy.py --example hyenadna --length 8192 --channels 256
    python scripts/restart_policy.py --quick     # a small run that checks the replay
    python scripts/restart_policy.py --seed 1 --compare 20134   # another draw of the example,
                                                 # with one given order of the restarts too

`fit_modal` runs as `lcd distill` calls it (N = --order, 64-channel chunks). At each chunk's
restart step this script records the chunk's fits so far and refines all five restarts of
`_RESTARTS` for every channel (`fit._restart_fits`). A restart's fit does not depend on which
channels share its LM batch, so the sequential rule of `_restart_outliers` (restart k for the
channels still above factor x the chunk's median, kept where it scores better) can be
replayed for any order and threshold without fitting again. The replay of the current policy
must give the errors the fitter returned, bit for bit: the script checks that first. The
float32 guard, which runs after the restarts, is left out of every row.

"rows" counts the (channel, restart) fits that the rule uses, the restarts' LM work without
the batching's waste.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_throughput import ROOT, example_kernels

sys.path.insert(0, str(ROOT))
from lcd_cli.numerics import fit
from lcd_cli.numerics.allocator import keep_freed_memory

# One chunk: h (C, L), errors before the restarts (C,), every restart's errors (R, C), errors after.
Chunk = tuple[Tensor, Tensor, Tensor, Tensor]


def record(h: Tensor, order: int) -> list[Chunk]:
    """Fit h as `fit_modal` does, keeping every chunk's restart inputs and all its restarts."""
    chunks: list[Chunk] = []
    original = fit._restart_outliers

    def spy(hc: Tensor, order_: int, seed: int, refine_iters: int, float32: bool,
            basis: Tensor | None, best: tuple[Tensor, Tensor, Tensor]
            ) -> tuple[Tensor, Tensor, Tensor]:
        every = torch.arange(hc.shape[0], device=hc.device)  # (C,)
        tail = fit._tail_basis(hc, order_, seed)  # (C, m', r') or None
        fits = fit._restart_fits(hc, every, list(range(len(fit._RESTARTS))), order_, seed,
                                 refine_iters, float32, basis, tail)
        before = best[2].clone()  # (C,)
        out = original(hc, order_, seed, refine_iters, float32, basis, best)
        chunks.append((hc, before, torch.stack([f[2] for f in fits]), out[2].clone()))
        return out

    fit._restart_outliers = spy
    try:
        fit.fit_modal(h, order)
    finally:
        fit._restart_outliers = original
    return chunks


def replay(chunks: list[Chunk], order: tuple[int, ...], factor: float) -> tuple[Tensor, int]:
    """The sequential restart rule with restarts `order` (indices into _RESTARTS) and outlier
    threshold `factor`: the errors after it, relative (all channels), and the rows it uses."""
    rel, rows = [], 0
    for h, before, fits, _ in chunks:
        err = before.clone()  # (C,)
        for k in order:
            bad = fit._outliers(err, h, factor)  # (C,)
            if not bool(bad.any()):
                break
            rows += int(bad.sum())
            err = torch.where(bad & (fits[k] < err), fits[k], err)
        rel.append(fit._relative(err, h))
    return torch.cat(rel), rows


def row(name: str, rel: Tensor, rows: int) -> str:
    q = [float(x) for x in (rel.median(), rel.mean(), rel.quantile(0.9), rel.max())]
    return f"| {name} | {rows} | " + " | ".join(f"{x:.3e}" for x in q) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--example", default="hyenadna", choices=["hyenadna", "stripedhyena"])
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--order", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="seed of the example's weights")
    ap.add_argument("--compare", nargs="+", default=[], metavar="ORDER",
                    help="orders of the restarts to replay as well, as digits (e.g. 20134: "
                         "_RESTARTS[2] first)")
    ap.add_argument("--quick", action="store_true", help="64 channels at L = 1000, N = 8")
    args = ap.parse_args()
    if args.quick:
        args.length, args.channels, args.order = 1000, 64, 8
    torch.set_num_threads(1)
    keep_freed_memory()
    count = len(fit._RESTARTS)
    compare = []
    for text in args.compare:
        o = tuple(int(ch) for ch in text if ch.isdigit())
        if sorted(o) != list(range(count)):
            ap.error(f"--compare {text}: an order must use each of the digits 0..{count - 1} once")
        compare.append(o)
    h = example_kernels(args.example, args.length, args.channels, args.seed).to(torch.float64)
    t0 = time.perf_counter()
    chunks = record(h, args.order)
    print(f"{args.example} L={args.length} C={args.channels} N={args.order} seed={args.seed}: "
          f"{len(chunks)} chunks recorded in {time.perf_counter() - t0:.1f} s")
    current = tuple(range(count))
    rel, rows = replay(chunks, current, fit._RESTART_FACTOR)
    fitted = torch.cat([fit._relative(after, h) for h, _, _, after in chunks])
    if not torch.equal(rel, fitted):
        raise SystemExit("the replay of the current policy differs from the fitter's result")
    print("replay of the current policy: equal to the fitter's errors, bit for bit\n")
    print("| policy | rows | rel_l2 median | mean | p90 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row(f"current (factor {fit._RESTART_FACTOR:g})", rel, rows))
    for o in compare:
        print(row(f"given order {o}", *replay(chunks, o, fit._RESTART_FACTOR)))
    for factor in (1.5, 2.5, 3.0, 4.0):
        print(row(f"factor {factor:g}", *replay(chunks, current, factor)))
    orders = sorted(itertools.permutations(current),
                    key=lambda o: float(replay(chunks, o, fit._RESTART_FACTOR)[0].mean()))
    for o in orders[:3]:
        print(row(f"order {o}", *replay(chunks, o, fit._RESTART_FACTOR)))
    for n in range(1, len(current)):
        print(row(f"the first {n} restart(s) only", *replay(chunks, current[:n],
                                                             fit._RESTART_FACTOR)))


if __name__ == "__main__":
    main()
