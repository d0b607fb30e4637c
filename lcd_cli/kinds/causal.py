"""The causal layer kind: one diagonal SSM per channel in place of a causal long convolution.

Layer 4. Dimensions: C channels, L kernel length, N modes, T check length.

Each layer is materialized (C, L) float64, fitted with N modes per channel (fixed order, or
the smallest order meeting --tol), scored on the float32 parameters as written, and stored as
one part, ``ssm``. A source that already is a diagonal SSM hands the fitter its own poles as
an extra start (order reduction within the class).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch

from lcd_cli.families.layers import (
    channel_count,
    generator_info,
    generator_warnings,
    materialize,
    source_realization,
)
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
from lcd_cli.layouts.base import LayerResult, Layout
from lcd_cli.numerics.checks import verify_layer
from lcd_cli.numerics.compressibility import compressibility
from lcd_cli.numerics.fit import FitResult, fit_modal, fit_modal_to_tolerance
from lcd_cli.numerics.fit_real import fit_real_modal, fit_real_modal_to_tolerance
from lcd_cli.numerics.metrics import hankel_floor, kernel_errors, rel_l2_f32eval, sample_channels
from lcd_cli.numerics.modal import from_pairs, to_pairs

PART = "ssm"
# Samples over which the stored parameters are also scored in complex64 (the recurrence path
# is one step per sample): the whole kernel up to this length, its head beyond.
F32_EVAL_WINDOW = 16384


def fit_kernel(h: torch.Tensor, settings: FitSettings,
               source: tuple[torch.Tensor, torch.Tensor] | None = None,
               on_step: OnStep | None = None, what: str = "",
               start: torch.Tensor | None = None) -> FitResult:
    """Fit (C, L) kernels at the settings' order, or to its tolerance, with the settings' pole
    class (complex conjugate pairs, or real poles on (0, 1) with real residues; ``source``:
    the layer's own diagonal realization, poles and residues (C, M), or None; ``start``:
    (C, M) poles of another fit, one more start of a real fit at a fixed order). ``on_step``
    hears of each chunk of channels fitted (and each bisection step), ``what`` prefixes its
    messages."""
    poles, residues = (None, None) if source is None else source
    say = None if on_step is None else (lambda msg: on_step(f"{what}{msg}"))
    if settings.poles == "real":
        if say is not None:
            say(f"real poles, {'N=' + str(settings.order) if settings.order else '--tol'}")
        if settings.order is not None:
            return fit_real_modal(h, settings.order, device=settings.device, seed=settings.seed,
                                  source=poles, start=start)
        assert settings.tol is not None
        return fit_real_modal_to_tolerance(h, settings.tol, settings.max_order,
                                           device=settings.device, seed=settings.seed,
                                           source=poles)
    if settings.order is not None:
        order = settings.order
        chunks = None if say is None else (
            lambda done, total: say(f"N={order}: {done}/{total} channels fitted"))
        if chunks is not None:
            chunks(0, h.shape[0])  # the fit has begun (the first chunk takes a while at long L)
        return fit_modal(h, order, device=settings.device, seed=settings.seed,
                         source=poles, source_residues=residues, workers=settings.workers,
                         progress=chunks)
    assert settings.tol is not None
    return fit_modal_to_tolerance(h, settings.tol, settings.max_order, device=settings.device,
                                  seed=settings.seed, source=poles, source_residues=residues,
                                  workers=settings.workers, on_step=say)


def skip_term(distilled: Checkpoint, layer: Layer, D_ref: torch.Tensor | None
              ) -> torch.Tensor | None:
    """The distilled checkpoint's D (C,) float64 where it holds one, else the reference's."""
    if layer.skip_key and layer.skip_key in distilled:
        return distilled.get(layer.skip_key, torch.float64).reshape(-1)
    return D_ref


class CausalKind(LayerKind):
    name: ClassVar[str] = "causal"
    pole_classes: ClassVar[tuple[str, ...]] = ("complex", "real")

    def claims(self, config: FamilyConfig) -> bool:
        return config.causal

    def parts(self, layer: Layer) -> list[str]:
        return [PART]

    def _fit_layer(self, ckpt: Checkpoint, planned: PlannedLayer, settings: FitSettings,
                   on_step: OnStep | None = None) -> LayerResult:
        clock = PhaseClock()
        if on_step:
            on_step("materializing the kernels")
        h, _ = materialize(ckpt, planned.layer)  # (C, L) float64
        source = source_realization(ckpt, planned.layer)
        clock.lap("materialize")
        free = None
        if settings.poles == "real" and settings.order is not None:
            # The unconstrained fit at the same order: the constraint's cost in the report, and
            # its pole moduli a start of the real fit.
            free = fit_kernel(h, replace(settings, poles="complex"), source, on_step,
                              "complex start, ")
        fit = fit_kernel(h, settings, source, on_step, start=None if free is None else free.poles)
        clock.lap("fit")
        if on_step:
            on_step(f"N={fit.order}: scoring the stored parameters")
        poles, residues = to_pairs(fit.poles), to_pairs(fit.residues)  # (C, N, 2) float32
        stats = kernel_errors(h, from_pairs(poles), from_pairs(residues), order=fit.order,
                              workers=settings.workers)
        window = min(h.shape[1], F32_EVAL_WINDOW)
        f32 = rel_l2_f32eval(h[:, :window], poles, residues,  # (C,) as complex64 engines see it
                             settings.workers)
        stats["rel_l2_f32eval"] = {"median": float(f32.quantile(0.5)), "max": float(f32.max()),
                                   "window": window}
        clock.lap("score")
        stats |= {"name": planned.name, "family": planned.layer.config.name,
                  "channels": planned.channels, "length": planned.length, "order": fit.order,
                  "method": fit.method, "seconds": clock.total(), "phases": clock.laps}
        if settings.poles != "complex":
            # The constraint's cost: "floor" bounds any N-mode fit (Hankel rank 2N); a real-pole
            # fit has rank <= N <= 2 ceil(N / 2), so the floor at order ceil(N / 2) bounds it.
            stats["poles"] = settings.poles
            stats["floor_real"] = hankel_floor(h, (fit.order + 1) // 2, settings.workers)[0]
            if free is not None:
                stats["rel_l2_complex"] = {"median": float(free.rel_l2.quantile(0.5)),
                                           "max": float(free.rel_l2.max())}
        if settings.tol is not None:
            stats["tol_met"] = bool(stats["rel_l2"]["max"] <= settings.tol)
        if facts := generator_info(ckpt, planned.layer):  # e.g. SSM state size, cond(V)
            stats["generator_info"] = facts
        if notes := generator_warnings(ckpt, planned.layer):  # e.g. the engine's precision
            stats["warnings"] = notes
        return LayerResult(planned.name, {PART: (poles, residues)}, stats)

    def verify(self, distilled: Checkpoint, ref: Checkpoint, layers: list[Layer],
               layout: Layout, options: VerifyOptions) -> list[dict[str, Any]]:
        """Each layer's three runtime paths, and its complex64 recurrence and kernel, against
        its convolution (numerics.checks)."""
        rows = []
        for layer in layers:
            h, D_ref = materialize(ref, layer)  # (C, L)
            D = skip_term(distilled, layer, D_ref)
            ssm = layout.read_part(distilled, layer.prefix, PART, D, h.shape[0])
            check = verify_layer(h, D, ssm, length=options.length or h.shape[1],
                                 seed=options.seed, max_channels=options.channels)
            rows.append(judge({"name": layer.prefix, **check.to_dict()}, finite=check.finite,
                              pole_abs={"": check.max_pole_abs}, worst=check.worst,
                              tol=options.tol, reported=options.reported.get(layer.prefix),
                              channels=h.shape[0], orders=[ssm.order],
                              worst_f32=check.worst_f32))
        return rows

    def compressibility(self, ckpt: Checkpoint, layer: Layer, channels: int) -> dict[str, Any]:
        idx = sample_channels(channel_count(ckpt, layer), channels)  # (S,)
        h, _ = materialize(ckpt, layer, idx)  # (S, L): only the sampled channels
        return compressibility(h, channels=channels)
