"""State size at equal error on TNN kernels: lcd's fit vs the ETSC exact conversion, truncated.

    OMP_NUM_THREADS=1 python scripts/tnn_etsc_ratio.py [--tols 1e-2 1e-3] [--max-order 64]

For every layer of the `tnn` and `tnn-bidir` examples (each half of the non-causal one), the
smallest N (complex modes per channel) whose worst channel meets rel_l2 <= tol, both by a scan
N = 1, 2, 3, ... (the truncation error need not fall monotonically, so no bisection): lcd
(fit_modal, up to --max-order) and ETSC (arXiv 2311.08756: poles gamma * (L+1)-th roots of unity
with the layer's own gamma, residues by one FFT, exact with floor((L+1)/2) modes; keep the N
modes of largest |residue|). Prints a markdown table and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from lcd_cli.examples import make_example
from lcd_cli.numerics.baselines import etsc_modes, fit_etsc
from lcd_cli.numerics.fit import fit_modal


def _kernels(name: str) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(label, kernel (C, L), gamma (C,)) per layer and half of an example."""
    import tempfile
    from pathlib import Path

    from lcd_cli.examples import write_example
    from lcd_cli.families.kernels import MATERIALIZERS
    from lcd_cli.families.layers import LayerView, select_configs
    from lcd_cli.io.checkpoint import open_checkpoint

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.safetensors"
        write_example(make_example(name), path)
        with open_checkpoint(path) as ckpt:
            # The examples' learned decay uses lambda 0.99 (upstream defaults differ).
            for cfg, layers in select_configs(ckpt, family=name, sets={"gamma": 0.99}):
                mat = MATERIALIZERS[cfg.materializer]
                for layer in layers:
                    view = LayerView(ckpt, layer)
                    channels, _ = mat.shape(view, cfg.options)
                    gamma = mat._gamma(view, cfg.options, channels)  # (C,)
                    halves = [("fwd", mat.kernel(view, cfg.options))]
                    if not cfg.causal:
                        halves.append(("rev", mat.kernel_rev(view, cfg.options)))
                    for half, h in halves:
                        out.append((f"{name} layer {layer.index} {half}", h, gamma))
    return out


def _etsc_order(h: torch.Tensor, gamma: torch.Tensor, tol: float) -> int | None:
    full = etsc_modes(h, gamma)[0].shape[1]
    for n in range(1, full + 1):
        if float(fit_etsc(h, n, gamma).rel_l2.max()) <= tol:
            return n
    return None


def _lcd_order(h: torch.Tensor, tol: float, max_order: int) -> int | None:
    """Scan from the Eckart-Young order (no N-mode fit, stable or not, can beat its floor)."""
    from lcd_cli.numerics.hankel import hankel_floor, order_for_tolerance

    floors = hankel_floor(h, list(range(1, max_order + 1))).values  # (C, max_order)
    start = order_for_tolerance(floors.amax(0), tol) or max_order
    for n in range(start, max_order + 1):
        if float(fit_modal(h, n, device="cpu").rel_l2.max()) <= tol:
            return n
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-3])
    ap.add_argument("--max-order", type=int, default=64)
    args = ap.parse_args()
    print("| kernel | C x L | tol | N lcd | N ETSC (truncated) | ETSC exact N | ratio | lcd s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in ("tnn", "tnn-bidir"):
        for label, h, gamma in _kernels(name):
            if name == "tnn-bidir" and label.endswith("fwd"):
                continue  # the examples share their weights: the same kernel as `tnn`
            exact = etsc_modes(h, gamma)[0].shape[1]
            for tol in args.tols:
                start = time.perf_counter()
                n_lcd = _lcd_order(h, tol, args.max_order)
                secs = time.perf_counter() - start
                n_etsc = _etsc_order(h, gamma, tol)
                ratio = f"{n_etsc / n_lcd:.1f}" if n_lcd and n_etsc else "-"
                print(f"| {label} | {h.shape[0]} x {h.shape[1]} | {tol:g} | "
                      f"{n_lcd or f'>{args.max_order}'} | {n_etsc or '-'} | {exact} | {ratio} | "
                      f"{secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
