#!/usr/bin/env python
"""Benchmark of the fitting engine (issue "fitting engine").

For each kernel set and order N, reports the median and worst relative l2 error over channels
and the fit time per channel of lcd's fit_modal, each baseline, and the Eckart-Young floor.
Prints a Markdown table to stdout; --json PATH writes the raw numbers.

    python scripts/bench_fit.py --channels 16 --length 4096 --orders 8 16 32 64

Kernel sets come from `kernel_sets(length, channels, seed)`: synthetic sets (damped modes plus
noise, a chirp, Hyena-like, random smooth) and kernels materialized from lcd's example
checkpoints of each family (`checkpoint_kernel_sets`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcd_cli.examples import make_example, write_example
from lcd_cli.families.layers import materialize, select_configs
from lcd_cli.io.checkpoint import open_checkpoint
from lcd_cli.numerics.baselines import (
    fit_dft_truncation,
    fit_matrix_pencil,
    fit_modal_adam,
    fit_real_pole_bank,
)
from lcd_cli.numerics.fit import FitResult, fit_modal
from lcd_cli.numerics.hankel import hankel_floor

# ----------------------------------------------------------------------------- kernel sets


def _damped_modal(length: int, channels: int, gen: torch.Generator) -> Tensor:
    """20 random conjugate pole pairs (radius 0.95..0.999) + 1e-3 * max|h| white noise."""
    pairs = 20
    t = torch.arange(length, dtype=torch.float64)  # (L,)
    radius = 0.95 + 0.049 * torch.rand(channels, pairs, 1, generator=gen, dtype=torch.float64)
    theta = math.pi * torch.rand(channels, pairs, 1, generator=gen, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(channels, pairs, 1, generator=gen, dtype=torch.float64)
    amp = torch.randn(channels, pairs, 1, generator=gen, dtype=torch.float64)
    h = (amp * radius**t * torch.cos(theta * t + phase)).sum(1)  # (C, L)
    noise = torch.randn(channels, length, generator=gen, dtype=torch.float64)
    return h + 1e-3 * h.abs().amax(-1, keepdim=True) * noise


def _chirp(length: int, channels: int, gen: torch.Generator) -> Tensor:
    """Slowly decaying linear chirps (0.01 -> 0.2..0.45 cycles/sample): many modes needed."""
    t = torch.arange(length, dtype=torch.float64)  # (L,)
    f0 = 0.005 + 0.02 * torch.rand(channels, 1, generator=gen, dtype=torch.float64)
    f1 = 0.2 + 0.25 * torch.rand(channels, 1, generator=gen, dtype=torch.float64)
    tau = length * (0.3 + 0.7 * torch.rand(channels, 1, generator=gen, dtype=torch.float64))
    phase = f0 * t + 0.5 * (f1 - f0) * t * t / length  # (C, L) cycles
    return torch.exp(-t / tau) * torch.cos(2 * math.pi * phase)


def _hyena_like(length: int, channels: int, gen: torch.Generator) -> Tensor:
    """Hyena implicit filter at init: Sin-MLP of positional features times exp modulation.

    z_t = [t/(L-1), cos(f w_t), -sin(f w_t)] (E = 33), 3 Sin layers of width 64 (freq 10),
    output linear, times exp(-t_norm |delta_c|) with delta from -3.07 to -15.35 (safari init).
    """
    emb, width, freq = 33, 64, 10.0
    bands = (emb - 1) // 2
    t = torch.arange(length, dtype=torch.float64)[:, None]  # (L, 1)
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)[None]  # (1, B)
    w = 2 * math.pi * t / length  # (L, 1)
    z = torch.cat([t / max(length - 1, 1), torch.cos(f * w), -torch.sin(f * w)], -1)  # (L, E)

    def linear(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
        bound = 1 / math.sqrt(n_in)
        wt = (2 * torch.rand(n_out, n_in, generator=gen, dtype=torch.float64) - 1) * bound
        b = (2 * torch.rand(n_out, generator=gen, dtype=torch.float64) - 1) * bound
        return wt, b

    a = z
    for n_in in (emb, width, width):
        wt, b = linear(n_in, width)
        a = torch.sin(freq * (a @ wt.T + b))  # (L, W)
    w_out, _ = linear(width, channels)
    h = (a @ w_out.T).T  # (C, L)
    t_norm = torch.linspace(0, 1, length, dtype=torch.float64)[None]  # (1, L)
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, channels)
    return h * torch.exp(-t_norm * deltas.abs().to(torch.float64)[:, None])


def _random_smooth(length: int, channels: int, gen: torch.Generator) -> Tensor:
    """Explicit long-conv-like kernels: Gaussian-smoothed white noise times a slow decay."""
    noise = torch.randn(channels, length, generator=gen, dtype=torch.float64)
    width = 8.0
    k = torch.arange(-32, 33, dtype=torch.float64)
    g = torch.exp(-0.5 * (k / width) ** 2)
    g = g / g.sum()
    smooth = torch.nn.functional.conv1d(noise[:, None], g[None, None], padding=32)[:, 0]
    t = torch.arange(length, dtype=torch.float64)
    tau = length * (0.05 + 0.25 * torch.rand(channels, 1, generator=gen, dtype=torch.float64))
    return smooth * torch.exp(-t / tau)


def checkpoint_kernel_sets(length: int, channels: int, seed: int) -> dict[str, Tensor]:
    """Kernels materialized from lcd's example checkpoints (real key layouts and upstream math):
    layer 0 of each family, `channels` channels, length `length`."""
    sizes = {"hyenadna": {"d_model": channels, "n_layers": 1, "l_max": length},
             "stripedhyena": {"d_model": channels, "n_blocks": 1},
             "long-conv": {"d_model": channels, "n_layers": 1, "length": length}}
    out: dict[str, Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in sizes.items():
            path = write_example(make_example(name, seed=seed, **kw), Path(tmp) / f"{name}.safetensors")[0]
            with open_checkpoint(path) as ckpt:
                # The long-conv example's squash lambda (not stored; safari's configs differ).
                (_, layers), = select_configs(ckpt, options={"length": length},
                                              sets={"squash_lambda": 0.001})
                out[f"example:{name}"] = materialize(ckpt, layers[0])[0]
    return out


def kernel_sets(length: int, channels: int, seed: int) -> dict[str, Tensor]:
    """{name: (channels, length) float64 kernels}, deterministic per seed."""
    builders: dict[str, Callable[[int, int, torch.Generator], Tensor]] = {
        "damped-modal+noise": _damped_modal,
        "chirp": _chirp,
        "hyena-like": _hyena_like,
        "random-smooth": _random_smooth,
    }
    out: dict[str, Tensor] = {}
    for i, (name, build) in enumerate(builders.items()):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        out[name] = build(length, channels, gen)
    out.update(checkpoint_kernel_sets(length, channels, seed))
    return out


# ----------------------------------------------------------------------------- runner


def _methods(args: argparse.Namespace) -> dict[str, Callable[[Tensor, int], FitResult]]:
    dev = args.device
    methods: dict[str, Callable[[Tensor, int], FitResult]] = {
        "lcd": lambda h, n: fit_modal(h, n, device=dev, seed=args.seed),
        "matrix-pencil": fit_matrix_pencil,
        "dft-truncation": fit_dft_truncation,
        "real-pole-bank": fit_real_pole_bank,
    }
    if not args.no_adam:
        methods["adam"] = lambda h, n: fit_modal_adam(
            h, n, steps=args.adam_steps, seed=args.seed, device=dev
        )
    return methods


def _sync(device: str | None) -> None:
    if device is not None and device.startswith("cuda"):
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> dict:
    sets = kernel_sets(args.length, args.channels, args.seed)
    methods = _methods(args)
    results: dict = {"sets": {}}
    for name, h in sets.items():
        floor = hankel_floor(h, args.orders, exact_max_rows=args.exact_rows, seed=args.seed)
        per_set: dict = {"floor_rigorous": floor.rigorous, "orders": {}}
        for j, order in enumerate(args.orders):
            row: dict = {
                "floor": {
                    "median": float(floor.values[:, j].median()),
                    "worst": float(floor.values[:, j].max()),
                }
            }
            for mname, fn in methods.items():
                hm = h
                if mname == "adam" and args.adam_channels is not None:
                    hm = h[: args.adam_channels]
                channels = hm.shape[0]
                _sync(args.device)
                t0 = time.perf_counter()
                res = fn(hm, order)
                _sync(args.device)
                dt = time.perf_counter() - t0
                row[mname] = {
                    "median": float(res.rel_l2.median()),
                    "worst": float(res.rel_l2.max()),
                    "sec_per_channel": dt / channels,
                    "per_channel": [float(e) for e in res.rel_l2],
                }
                print(
                    f"[{name} N={order}] {mname}: median {row[mname]['median']:.3e} "
                    f"worst {row[mname]['worst']:.3e} {dt / channels:.3f} s/ch",
                    file=sys.stderr,
                )
            if "adam" in row and "lcd" in row:
                # Adam may run on the first K channels only: lcd on those same channels.
                same = torch.tensor(row["lcd"]["per_channel"][: len(row["adam"]["per_channel"])])
                row["lcd (adam ch.)"] = {"median": float(same.median()), "worst": float(same.max()),
                                         "sec_per_channel": row["lcd"]["sec_per_channel"]}
            per_set["orders"][str(order)] = row
        results["sets"][name] = per_set
    return results


def markdown(results: dict, methods: list[str]) -> str:
    lines = []
    adam_cols = any("lcd (adam ch.)" in row for per_set in results["sets"].values()
                    for row in per_set["orders"].values())
    head = ["set", "N", "floor", *methods] + (["lcd on Adam's channels"] if adam_cols else [])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name, per_set in results["sets"].items():
        tag = "" if per_set["floor_rigorous"] else " (est.)"
        for order, row in per_set["orders"].items():
            cells = [name, order, f"{row['floor']['median']:.2e} / {row['floor']['worst']:.2e}{tag}"]
            for mname in methods:
                cells.append(f"{row[mname]['median']:.2e} / {row[mname]['worst']:.2e}")
            if "lcd (adam ch.)" in row:
                cells.append(f"{row['lcd (adam ch.)']['median']:.2e} / "
                             f"{row['lcd (adam ch.)']['worst']:.2e}")
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Cells: median / worst relative l2 error over channels. floor: Eckart-Young lower bound "
        "(max over Hankel shapes, dense SVDs; (est.) = randomized estimate)."
    )
    lines.append("")
    head = ["set", "N"] + [f"{m} s/ch" for m in methods] + (["adam / lcd"] if adam_cols else [])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name, per_set in results["sets"].items():
        for order, row in per_set["orders"].items():
            cells = [name, order] + [f"{row[m]['sec_per_channel']:.4f}" for m in methods]
            if adam_cols and "adam" in row:
                ratio = row["adam"]["sec_per_channel"] / row["lcd"]["sec_per_channel"]
                cells.append(f"{ratio:.0f}x")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--orders", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--device", default=None, help="device for lcd and Adam (default: CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adam-steps", type=int, default=2000)
    ap.add_argument("--no-adam", action="store_true", help="skip the (slow) Adam baseline")
    ap.add_argument("--adam-channels", type=int, default=None,
                    help="run Adam on the first K channels only (it is ~100x slower)")
    ap.add_argument("--exact-rows", type=int, default=1024,
                    help="largest Hankel row count used (dense SVD) for the rigorous floor")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--quick", action="store_true",
                    help="small run: 4 channels, L=1024, orders 8 16, 300 Adam steps")
    ap.add_argument("--json", type=Path, default=None, help="write raw results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.channels, args.length, args.orders, args.adam_steps = 4, 1024, [8, 16], 300
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = run(args)
    results["config"] = {
        "channels": args.channels,
        "length": args.length,
        "orders": args.orders,
        "device": args.device or "cpu",
        "seed": args.seed,
        "adam_steps": args.adam_steps,
        "adam_channels": args.adam_channels,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    methods = list(_methods(args))
    print(markdown(results, methods))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
