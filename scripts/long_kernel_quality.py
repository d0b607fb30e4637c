#!/usr/bin/env python
"""Fit quality and time on a long HyenaDNA kernel against its Hankel floor (issue 18).

    python scripts/long_kernel_quality.py                       # l_max 1,000,002, 32 of 256 ch
    python scripts/long_kernel_quality.py --l-max 200003 --channels 8 --orders 8 16

Builds the bundled HyenaDNA layout (`lcd example hyenadna` with d_model = 256, one layer, the
given l_max), materializes evenly spaced channels exactly as `lcd distill` does, fits each order
with `fit_modal` (float32 parameters, as stored) and prints per order: seconds per channel,
median / max rel_l2, the rigorous Hankel floor (median; dense SVD of the shortest shape) and
the energy share past the refinement window. --float64 adds the float64-parameter fit (is
storage the limit?).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcd_cli.examples import make_example, write_example  # noqa: E402
from lcd_cli.families.layers import materialize, select_configs  # noqa: E402
from lcd_cli.io.checkpoint import open_checkpoint  # noqa: E402
from lcd_cli.numerics import fit  # noqa: E402
from lcd_cli.numerics.hankel import hankel_floor  # noqa: E402
from lcd_cli.numerics.metrics import sample_channels  # noqa: E402

D_MODEL = 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--l-max", type=int, default=1_000_002)
    ap.add_argument("--channels", type=int, default=32, help="sampled channels of 256")
    ap.add_argument("--orders", type=int, nargs="+", default=[16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--float64", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        write_example(make_example("hyenadna", d_model=D_MODEL, n_layers=1, l_max=args.l_max),
                      path)
        with open_checkpoint(path) as ckpt:
            layer = select_configs(ckpt)[0][1][0]
            idx = sample_channels(D_MODEL, args.channels)
            h, _ = materialize(ckpt, layer, idx)  # (S, L)
    c, length = h.shape
    tail = float(((h[:, fit._REFINE_WINDOW:] ** 2).sum(-1) / (h ** 2).sum(-1)).median())
    print(f"# {platform.node()} torch {torch.__version__}, {args.threads} thread(s); HyenaDNA "
          f"l_max={length}, {c} of {D_MODEL} channels; median energy past t={fit._REFINE_WINDOW}:"
          f" {tail:.1%}")
    print("| N | params | s/channel | rel_l2 median | rel_l2 max | Hankel floor (median) |")
    print("|---|---|---|---|---|---|")
    # The shortest shape (2 Nmax + 1 rows) by a dense SVD, whatever it costs (QR of a 1M x 65
    # matrix: ~2 s per channel): the Gram route that distill's report takes at this length
    # cannot resolve floors below ~2e-7, so it gives 0 on these kernels.
    floors = hankel_floor(h, args.orders, exact_max_rows=2 * max(args.orders) + 1,
                          dense_cost=1 << 62).values  # (S, len(orders))
    for i, order in enumerate(args.orders):
        for f32 in (True, False) if args.float64 else (True,):
            start = time.perf_counter()
            res = fit.fit_modal(h, order, float32=f32)
            per = (time.perf_counter() - start) / c
            print(f"| {order} | {'float32' if f32 else 'float64'} | {per:.2f} | "
                  f"{float(res.rel_l2.median()):.2e} | {float(res.rel_l2.max()):.2e} | "
                  f"{float(floors[:, i].median()):.2e} |", flush=True)


if __name__ == "__main__":
    main()
