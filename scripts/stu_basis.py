"""Shared-pole fit of the STU spectral basis: error and time against the SpectraLDS anchor.

Recomputes phi (L, K) by float64 eigh (upstream get_spectral_filters), then fits the K filters
with one shared pole set at each total state (both sign branches: state = 2 x real states of
one branch) with real poles and with complex modes, and reports per fit: MSE over K x L (the
SpectraLDS measure), max per-filter relative l2, the same for float32-rounded stored
parameters, the float32 step-by-step recurrence error (float32 parameters), the float64
recurrence error of the float64 parameters, the largest |residue|, and fit seconds (float64 fit).

Usage: OMP_NUM_THREADS=1 python scripts/stu_basis.py [--length 8192] [--k 24]
       [--states 40 80 160] [--json out.json] [--phi-cache phi.pt]
Anchor (SpectraLDS, arXiv 2505.17868): MSE ~7.7e-19 at state 160 (80 per branch), float64.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lcd_cli.numerics.fit_shared import (
    fit_shared,
    float32_recurrence_error,
    recurrence_impulse,
    rel_l2,
)
from lcd_cli.numerics.stu_filters import spectral_filters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--states", type=int, nargs="+", default=[40, 80, 160])
    ap.add_argument("--json", default=None)
    ap.add_argument("--normalize", action="store_true",
                    help="fit relative errors (lcd distill's default) instead of the MSE")
    ap.add_argument("--phi-cache", default=None, help="save / reuse phi (eigh is slow at 8192)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cache = Path(args.phi_cache) if args.phi_cache else None
    if cache is not None and cache.exists():
        phi = torch.load(cache)  # (L, K) from an earlier run of this script
    else:
        phi = spectral_filters(args.length, args.k)  # (L, K)
        if cache is not None:
            torch.save(phi, cache)
    if tuple(phi.shape) != (args.length, args.k):
        raise SystemExit(f"cached phi has shape {tuple(phi.shape)}")
    h = phi.T.contiguous()  # (K, L)
    print(f"phi: L={args.length} K={args.k} eigh {time.perf_counter() - t0:.1f}s "
          f"filter norms {float(h.norm(dim=1).min()):.2e}..{float(h.norm(dim=1).max()):.2e}",
          flush=True)
    rows = []
    head = (f"{'state':>5} {'poles':>7} {'N':>3} {'mse f64':>9} {'max rel f64':>11} "
            f"{'mse f32':>9} {'max rel f32':>11} {'rec f32':>9} {'rec f64':>9} {'|R| f64':>8} "
            f"{'|R| f32':>8} {'s':>6}")
    print(head)
    for state in args.states:
        per_branch = state // 2
        for real in (True, False):
            n = per_branch if real else per_branch // 2
            f64 = fit_shared(h, n, real=real, float32=False, normalize=args.normalize)
            f32 = fit_shared(h, n, real=real, float32=True, normalize=args.normalize)
            rec = float(float32_recurrence_error(h, f32).max())
            rec64 = float(rel_l2(h, recurrence_impulse(f64.poles, f64.residues, h.shape[1],
                                                       torch.float64)).max())
            row = {"state": state, "poles": "real" if real else "complex", "order": n,
                   "mse_f64": f64.mse, "max_rel_f64": float(f64.rel_l2.max()),
                   "median_rel_f64": float(f64.rel_l2.median()),
                   "mse_f32": f32.mse, "max_rel_f32": float(f32.rel_l2.max()),
                   "recurrence_f32_max_rel": rec, "recurrence_f64_max_rel": rec64,
                   "max_abs_residue_f64": float(f64.residues.abs().max()),
                   "max_abs_residue_f32": float(f32.residues.abs().max()),
                   "seconds_f64": f64.seconds,
                   "seconds_f32": f32.seconds}
            rows.append(row)
            print(f"{state:>5} {row['poles']:>7} {n:>3} {row['mse_f64']:9.2e} "
                  f"{row['max_rel_f64']:11.2e} {row['mse_f32']:9.2e} {row['max_rel_f32']:11.2e} "
                  f"{rec:9.2e} {rec64:9.2e} {row['max_abs_residue_f64']:8.1e} "
                  f"{row['max_abs_residue_f32']:8.1e} {f64.seconds:6.1f}", flush=True)
    print("anchor SpectraLDS: state 160 (real poles), MSE 7.7e-19 in float64")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"length": args.length, "k": args.k, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
