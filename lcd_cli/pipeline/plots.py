"""PNG plots of a distillation (`lcd distill --plot DIR`) and of compressibility (`lcd inspect
--plot DIR`). matplotlib is an optional dependency (``pip install .[plot]``), imported inside
the functions only.

Layer 5 (pipeline). Dimensions: C channels, S sampled channels, L kernel length, N order.

distill, per layer ``<layer>.fit.png``: the kernel h_c[t] of the worst channel (largest rel_l2)
against the fitted modal kernel sum_n Re(r_n p_n^t) and their difference; below, rel_l2 per
channel (log scale). Two-part layers (a forward and a reverse SSM) show the two-sided kernel
on lags -L..L-1. A layer without per-layer parts (a shared basis) gets the error panel only.

inspect, per layer ``<layer>.hankel.png``: the Hankel singular values sigma_k / sigma_1 of the
sampled channels, and the Eckart-Young floor (median and worst sampled channel) against the
order N, with the 1e-2 and 1e-3 lines.

The reference kernel is materialized again for the plot (the fit does not keep it): this costs
one more materialization per layer, and only with --plot.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.layers import materialize, materialize_two_sided, select_configs
from lcd_cli.families.view import Layer
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.kinds import kind_for
from lcd_cli.layouts import LayerResult
from lcd_cli.numerics.compressibility import TOLERANCES
from lcd_cli.numerics.hankel import hankel_floor, hankel_svd
from lcd_cli.numerics.metrics import sample_channels
from lcd_cli.numerics.modal import from_pairs, modal_kernel
from lcd_cli.pipeline.plan import DistillPlan

DPI = 110  # PNG resolution
FIGSIZE = (7.0, 6.0)  # inches: two stacked panels
MAX_ORDER_PLOTTED = 64  # orders on the floor curve
SIGMA_CHANNELS = 4  # sampled channels whose singular values are drawn
ONE_SIDED = ["ssm"]  # parts of a layer fitted as one causal SSM
TWO_SIDED = ["ssm", "ssm_rev"]  # a forward and a reverse SSM


def plots_available() -> None:
    """LcdError unless matplotlib imports (checked before any work)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise LcdError("--plot needs matplotlib, which is not installed",
                       hint="pip install '.[plot]' (or pip install matplotlib)") from None


def _file_name(layer: str, what: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", layer) + f".{what}.png"


def _save(fig: Any, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    except OSError as e:
        raise LcdError(f"cannot write the plot: {e.strerror}", file=path) from None
    return path


def _reference(ckpt: Checkpoint, layer: Layer, parts: dict[str, tuple[Tensor, Tensor]]
               ) -> tuple[Tensor, Tensor, int] | None:
    """(h, h_hat, lag0) over the plotted lags, or None where no per-layer kernel exists.

    h, h_hat: (C, L) for one causal SSM, (C, 2L) = [reversed reverse half; forward half] for
    a forward + reverse pair (lag 0 at index L)."""
    names = list(parts)
    if names == ONE_SIDED:
        h, _ = materialize(ckpt, layer)  # (C, L)
        p, r = parts["ssm"]
        return h, modal_kernel(from_pairs(p), from_pairs(r), h.shape[1]), 0  # (C, L) each
    if names == TWO_SIDED:
        k_fwd, k_rev, _ = materialize_two_sided(ckpt, layer)  # (C, L) each
        length = k_fwd.shape[1]
        fwd = modal_kernel(*(from_pairs(t) for t in parts["ssm"]), length)  # (C, L)
        rev = modal_kernel(*(from_pairs(t) for t in parts["ssm_rev"]), length)  # (C, L)
        return (torch.cat([k_rev.flip(1), k_fwd], 1), torch.cat([rev.flip(1), fwd], 1),
                length)  # (C, 2L) each
    return None


def plot_fit(path: Path, name: str, per_channel: list[float],
             kernels: tuple[Tensor, Tensor, int] | None) -> Path:
    """The worst channel's kernel against its fit (if given), and rel_l2 per channel."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax_k, ax_e = fig.subplots(2, 1)
    errs = torch.tensor(per_channel, dtype=torch.float64)  # (C,)
    worst = int(errs.argmax()) if errs.numel() else 0
    if kernels is not None:
        h, h_hat, lag0 = kernels
        lags = torch.arange(h.shape[1]) - lag0  # (L,) or (2L,)
        ax_k.plot(lags, h[worst], label="kernel h", lw=1.4)
        ax_k.plot(lags, h_hat[worst], "--", label="fit", lw=1.2)
        ax_k.plot(lags, h[worst] - h_hat[worst], label="h - fit", lw=0.8, alpha=0.8)
        ax_k.set_xlabel("lag t")
        ax_k.legend(fontsize=8)
        ax_k.set_title(f"{name}: worst channel {worst} (rel_l2 {errs[worst]:.2e})", fontsize=9)
    else:
        ax_k.set_axis_off()
        ax_k.text(0.5, 0.5, f"{name}: no per-layer kernel (shared basis)", ha="center")
    ax_e.semilogy(range(errs.numel()), errs.clamp_min(1e-300), ".", ms=3)
    ax_e.set_xlabel("channel")
    ax_e.set_ylabel("rel_l2")
    ax_e.grid(True, which="both", alpha=0.3)
    ax_e.set_title(f"relative l2 error per channel (median {errs.quantile(0.5):.2e})", fontsize=9)
    return _save(fig, path)


class DistillPlotter:
    """An ``on_layer`` hook: one ``<layer>.fit.png`` per finished layer, into ``directory``."""

    def __init__(self, ckpt: Checkpoint, plan: DistillPlan, directory: Path) -> None:
        plots_available()
        self.ckpt = ckpt
        self.layers = {p.name: p.layer for p in plan.layers}
        self.directory = Path(directory)
        self.written: list[Path] = []

    def __call__(self, result: LayerResult) -> None:
        per_channel = result.stats.get("rel_l2_channels", [])
        kernels = _reference(self.ckpt, self.layers[result.name], result.parts)
        self.written.append(plot_fit(self.directory / _file_name(result.name, "fit"), result.name,
                                     per_channel, kernels))


def _halves(ckpt: Checkpoint, layer: Layer) -> dict[str, Tensor]:
    """The kernels whose Hankel matrices `lcd inspect` analyses: one, or a layer's two halves."""
    if kind_for(layer.config).parts(layer) == TWO_SIDED:
        k_fwd, k_rev, _ = materialize_two_sided(ckpt, layer)  # (C, L) each
        return {"forward": k_fwd, "reverse": k_rev}
    return {"kernel": materialize(ckpt, layer)[0]}  # (C, L)


def plot_hankel(path: Path, name: str, kernels: dict[str, Tensor], channels: int) -> Path:
    """Hankel singular values and the Eckart-Young floor against the order."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax_s, ax_f = fig.subplots(2, 1)
    for label, h in kernels.items():
        sub = h[sample_channels(h.shape[0], channels)]  # (S, L)
        top = max(1, min(MAX_ORDER_PLOTTED, (sub.shape[1] - 1) // 2))
        _, sigma, exact, _ = hankel_svd(sub[:SIGMA_CHANNELS], top + 1, want_vectors=False)
        for s in sigma:  # (top + 1,) per drawn channel
            ax_s.semilogy(range(1, s.numel() + 1), (s / s[0].clamp_min(1e-300)).clamp_min(1e-300),
                          lw=0.9, alpha=0.8)
        orders = list(range(1, top + 1))
        floors = hankel_floor(sub, orders).values  # (S, top)
        ax_f.semilogy(orders, floors.median(0).values.clamp_min(1e-300), label=f"{label} median")
        ax_f.semilogy(orders, floors.amax(0).clamp_min(1e-300), "--", label=f"{label} worst")
        svd = "exact" if exact else "randomized"
    for tol in TOLERANCES:
        ax_f.axhline(tol, color="gray", lw=0.7, ls=":")
    ax_s.set_title(f"{name}: Hankel singular values sigma_k / sigma_1 ({svd} SVD)", fontsize=9)
    ax_s.set_xlabel("k")
    ax_s.grid(True, which="both", alpha=0.3)
    ax_f.set_title("Eckart-Young floor on rel_l2 against the order N", fontsize=9)
    ax_f.set_xlabel("order N")
    ax_f.grid(True, which="both", alpha=0.3)
    ax_f.legend(fontsize=8)
    return _save(fig, path)


def plot_inspect(ckpt: Checkpoint, directory: Path, *, family: str | None = None,
                 config: Path | None = None, length: int | None = None, channels: int = 16
                 ) -> list[Path]:
    """One ``<layer>.hankel.png`` per distillable layer that `lcd inspect` finds."""
    plots_available()
    options = {"length": length} if length is not None else None
    written = []
    for cfg, layers in select_configs(ckpt, family, config, options):
        if not cfg.distill:
            continue
        for layer in layers:
            written.append(plot_hankel(Path(directory) / _file_name(layer.prefix, "hankel"),
                                       layer.prefix, _halves(ckpt, layer), channels))
    return written
