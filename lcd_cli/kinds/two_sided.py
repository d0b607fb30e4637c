"""The two-sided layer kind: a non-causal long convolution as a forward and a backward SSM.

Layer 4. Dimensions: C channels, L kernel length (of each half), N modes per half, T check
length, B batch, W check window.

Claims the family configs marked ``causal: false`` (M2-BERT ``implicit_filter_rev``, safari
bidirectional long conv, non-causal TNN). Each layer's causal half k_fwd[tau] = h[tau] and
anti-causal half k_rev[j] = h[-(j+1)] are fitted separately (same order, or each half's own
--tol search, padded to the larger), and stored as two parts: ``ssm`` (forward, with D) and
``ssm_rev`` (backward). The math, runtime and reference convolution: lcd_cli.numerics.two_sided.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from lcd_cli.families.layers import materialize_two_sided
from lcd_cli.families.spec import FamilyConfig
from lcd_cli.families.view import Layer
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.kinds.base import (
    FitSettings,
    LayerKind,
    OnStep,
    PhaseClock,
    PlannedLayer,
    VerifyOptions,
    judge,
)
from lcd_cli.kinds.causal import F32_EVAL_WINDOW, fit_kernel, skip_term
from lcd_cli.layouts.base import LayerResult, Layout
from lcd_cli.numerics.checks import INPUT_KINDS, even_channels, make_inputs, verify_layer
from lcd_cli.numerics.compressibility import two_sided_compressibility
from lcd_cli.numerics.modal import from_pairs, to_pairs
from lcd_cli.numerics.ssm import DiagonalSSM
from lcd_cli.numerics.two_sided import (
    BidirectionalSSM,
    two_sided_conv,
    two_sided_errors,
    two_sided_f32eval,
)

FWD, REV = "ssm", "ssm_rev"


class TwoSidedKind(LayerKind):
    name: ClassVar[str] = "two-sided"

    def claims(self, config: FamilyConfig) -> bool:
        return not config.causal

    def parts(self, layer: Layer) -> list[str]:
        return [FWD, REV]

    def _fit_layer(self, ckpt: Checkpoint, planned: PlannedLayer, settings: FitSettings,
                   on_step: OnStep | None = None) -> LayerResult:
        """Materialize both halves, fit each, score the float32 parameters as written (in
        float64, and in complex64 as engines evaluate them: ``rel_l2_f32eval``)."""
        clock = PhaseClock()
        if on_step:
            on_step("materializing both halves")
        k_fwd, k_rev, _ = materialize_two_sided(ckpt, planned.layer)  # (C, L) each
        clock.lap("materialize")
        fits = [fit_kernel(h, settings, on_step=on_step, what=f"{half} half, ")
                for half, h in (("forward", k_fwd), ("reverse", k_rev))]
        clock.lap("fit")
        order = max(f.order for f in fits)
        pairs = [(to_pairs(f.poles), to_pairs(f.residues)) for f in fits]  # (C, N, 2) float32
        pairs = [_pad_pairs(p, r, order) for p, r in pairs]
        stats = two_sided_errors(k_fwd, k_rev,
                                 (from_pairs(pairs[0][0]), from_pairs(pairs[0][1])),
                                 (from_pairs(pairs[1][0]), from_pairs(pairs[1][1])), order=order,
                                 workers=settings.workers)
        f32 = two_sided_f32eval(k_fwd, k_rev, pairs[0], pairs[1], F32_EVAL_WINDOW,
                                settings.workers)
        for half in ("fwd", "rev"):  # as complex64 engines see each half
            stats["halves"][half]["rel_l2_f32eval"] = f32["halves"][half] | {
                "window": f32["window"]}
        stats["rel_l2_f32eval"] = {k: f32[k] for k in ("median", "max", "window")}
        stats |= {"name": planned.name, "family": planned.layer.config.name,
                  "channels": planned.channels, "length": planned.length, "order": order,
                  "state_modes": 2 * order, "method": fits[0].method}
        clock.lap("score")
        stats |= {"seconds": clock.total(), "phases": clock.laps}
        if settings.tol is not None:
            stats["tol_met"] = bool(max(stats["halves"][h]["rel_l2"]["max"]
                                        for h in ("fwd", "rev")) <= settings.tol)
        return LayerResult(planned.name, {FWD: pairs[0], REV: pairs[1]}, stats)

    def verify(self, distilled: Checkpoint, ref: Checkpoint, layers: list[Layer],
               layout: Layout, options: VerifyOptions) -> list[dict[str, Any]]:
        return [self._verify_layer(distilled, ref, layer, layout, options) for layer in layers]

    def _verify_layer(self, distilled: Checkpoint, ref: Checkpoint, layer: Layer,
                      layout: Layout, options: VerifyOptions) -> dict[str, Any]:
        """Each half checked as a causal layer (its three runtime paths against its own
        convolution); the combined output (forward scan + backward scan, and the closed-form
        prefill of both) against :func:`two_sided_conv` of the original halves on the same
        seeded inputs, over t < min(T, L)."""
        length, seed, channels = options.length, options.seed, options.channels
        k_fwd, k_rev, D_ref = materialize_two_sided(ref, layer)  # (C, L) each
        D = skip_term(distilled, layer, D_ref)
        n_ch, kernel_len = k_fwd.shape
        hint = "a non-causal layer needs both ssm.* and ssm_rev.* tensors"
        fwd = layout.read_part(distilled, layer.prefix, FWD, D, n_ch, hint)
        rev = layout.read_part(distilled, layer.prefix, REV, None, n_ch, hint)
        T = length or kernel_len
        checks = {"fwd": verify_layer(k_fwd, D, fwd, length=T, seed=seed, max_channels=channels),
                  "rev": verify_layer(k_rev, None, rev, length=T, seed=seed, max_channels=channels)}

        idx = even_channels(n_ch, channels) if channels is not None else torch.arange(n_ch)
        bssm = BidirectionalSSM(
            DiagonalSSM(fwd.poles[idx], fwd.residues[idx], None if D is None else D[idx]),
            DiagonalSSM(rev.poles[idx], rev.residues[idx]))
        window = min(T, kernel_len)
        batch = 2
        inputs = make_inputs(batch, int(idx.numel()), window, window, seed + 1)
        u = torch.cat([inputs[k] for k in INPUT_KINDS])  # (3B, C', W)
        y_ref = two_sided_conv(u, k_fwd[idx], k_rev[idx], None if D is None else D[idx])  # (3B,C',W)
        outputs = {"scan": bssm.scan(u), "prefill": bssm.prefill(u)}  # (3B, C', W) each
        errors: dict[str, float] = {}
        for i, kind in enumerate(INPUT_KINDS):
            rows = slice(i * batch, (i + 1) * batch)
            for path, y in outputs.items():
                num = torch.linalg.vector_norm(y[rows] - y_ref[rows]).item()
                den = torch.linalg.vector_norm(y_ref[rows]).item()
                errors[f"{kind}/{path}"] = num / den if den > 0 else num
        finite = (checks["fwd"].finite and checks["rev"].finite
                  and all(bool(torch.isfinite(y).all()) for y in outputs.values()))
        values = [*errors.values(), checks["fwd"].worst, checks["rev"].worst]
        worst = max(values) if all(math.isfinite(v) for v in values) else math.inf
        # Float32 (complex64) paths of each half; the layer's output is their sum.
        halves_f32 = [checks["fwd"].worst_f32, checks["rev"].worst_f32]
        worst_f32 = max(halves_f32) if all(math.isfinite(v) for v in halves_f32) else math.inf
        row: dict[str, Any] = {
            "name": layer.prefix, "causal": False, "max_pole_abs": bssm.max_pole_abs,
            "finite": finite, "errors": errors, "worst": worst, "worst_f32": worst_f32,
            "two_sided_worst": max(
                errors.values()) if all(math.isfinite(v) for v in errors.values()) else math.inf,
            "beyond_length": checks["fwd"].beyond_length, "length": T,
            "kernel_length": kernel_len, "window": window,
            "checked_channels": None if channels is None else idx.tolist(), "seed": seed,
            "halves": {h: c.to_dict() for h, c in checks.items()},
        }
        pole_abs = {" in the forward half": checks["fwd"].max_pole_abs,
                    " in the reverse half": checks["rev"].max_pole_abs}
        return judge(row, finite=finite, pole_abs=pole_abs, worst=worst, tol=options.tol,
                     reported=options.reported.get(layer.prefix), channels=n_ch,
                     orders=[fwd.order, rev.order], worst_f32=worst_f32)

    def compressibility(self, ckpt: Checkpoint, layer: Layer, channels: int) -> dict[str, Any]:
        k_fwd, k_rev, _ = materialize_two_sided(ckpt, layer)  # (C, L) each
        return two_sided_compressibility(k_fwd, k_rev, channels=channels)


def _pad_pairs(poles: Tensor, residues: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """Pad a half fitted at a lower order (--tol) to ``order`` modes with zero-residue,
    zero poles, so both halves are stored with the same N."""
    extra = order - poles.shape[1]
    if extra <= 0:
        return poles, residues
    pad = poles.new_zeros(poles.shape[0], extra, 2)  # (C, extra, 2)
    return torch.cat([poles, pad], 1), torch.cat([residues, pad], 1)
