"""The shared-basis layer kind (STU / Flash-STU): one basis of poles fitted for every layer.

Layer 4. Claims the family configs whose materializer is ``stu``.

Dimensions: L filter length, K filters, N basis modes, I/O features, C approx channels, T check
length, B batch.

Distilled layout ("stu-shared-basis-v1", recorded in the metadata key ``lcd_basis_layout``):
  - the phi buffer (option ``phi_key``) is removed when the checkpoint stores it;
  - ``<basis>.poles`` (N, 2) float32 [real, imag] and ``<basis>.residues`` (K, N, 2) float32 are
    added once, ``<basis>`` = the phi key's parent + ``stu_basis`` (``stu_basis`` for ``phi``):
    phi_k[s] ~ Re sum_n R[k, n] p_n^s, and (-1)^s phi_k[s] ~ Re sum_n R[k, n] (-p_n)^s;
  - every layer's M matrices are kept byte for byte (the runtime precomputes
    W = sum_k R[k, n] M[k, ...], lcd_cli.numerics.stu_runtime).
Metadata: ``lcd_stu_basis`` (the basis prefix), ``lcd_stu_phi`` (stored | recomputed),
``lcd_stu_basis_poles`` (complex | real), plus the usual ``lcd_config`` / ``lcd_order``.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels.stu import (
    basis_prefix,
    clean_target,
    layer_params_shape,
    load_layer,
    load_phi,
    modal_form,
    reference_forward,
    runtime,
)
from lcd_cli.families.layers import materialize
from lcd_cli.families.spec import FamilyConfig
from lcd_cli.families.view import Layer, LayerView
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.kinds.base import (
    FitSettings,
    KindOutput,
    LayerKind,
    OnLayer,
    OnStep,
    PlannedLayer,
    VerifyOptions,
    f32_reason,
)
from lcd_cli.layouts.base import LayerResult, Layout, SharedResult
from lcd_cli.numerics.checks import make_inputs
from lcd_cli.numerics.compressibility import compressibility
from lcd_cli.numerics.fit_shared import SharedFit, fit_shared
from lcd_cli.numerics.metrics import kernel_errors
from lcd_cli.numerics.modal import from_pairs, to_pairs

LAYOUT = "stu-shared-basis-v1"
BASIS_POLES = "poles"
BASIS_RESIDUES = "residues"
STEP_CAP = 1024  # tokens run one by one in verify (the rest by prefill + scan)


class SharedBasisKind(LayerKind):
    name: ClassVar[str] = "shared-basis"
    independent_layers: ClassVar[bool] = False  # one basis for every layer

    def claims(self, config: FamilyConfig) -> bool:
        return config.materializer == "stu"

    def removed_keys(self, layer: Layer) -> list[str]:
        return []  # every layer's M matrices are kept byte for byte

    def shared_keys(self, planned: list[PlannedLayer], layout: Layout) -> tuple[list[str],
                                                                                  list[str]]:
        """The phi buffer (where stored) goes; the basis comes, next to it."""
        options = planned[0].layer.config.options
        prefix = basis_prefix(options["phi_key"])
        return ([options["phi_key"]], [f"{prefix}.{BASIS_POLES}", f"{prefix}.{BASIS_RESIDUES}"])

    def check_plan(self, ckpt: Checkpoint, planned: list[PlannedLayer],
                   others: list[PlannedLayer]) -> None:
        """What an STU distillation cannot do, found from headers (before any fitting)."""
        if others:
            raise LcdError(f"STU layers cannot be distilled together with other families "
                           f"({', '.join(p.name for p in others[:3])})", file=ckpt.source,
                           hint="choose the STU config with --family")
        keys = {(o["phi_key"], o["use_hankel_l"], o["basis"])
                for o in (p.layer.config.options for p in planned)}
        if len(keys) != 1:
            raise LcdError("the STU layers use different phi buffers or basis options",
                           file=ckpt.source, hint="distill one STU config at a time (--family)")
        if ckpt.sharded:
            raise LcdError("sharded STU checkpoints are not supported yet", file=ckpt.source,
                           hint="merge the shards into one .safetensors file first")

    def fit(self, ckpt: Checkpoint, planned: list[PlannedLayer], settings: FitSettings,
            on_layer: OnLayer | None = None, on_step: OnStep | None = None) -> KindOutput:
        """Fit the shared basis once, then score every layer on it."""
        opts = planned[0].layer.config.options
        phi_key, hankel_l, basis_kind = opts["phi_key"], opts["use_hankel_l"], opts["basis"]
        first = LayerView(ckpt, planned[0].layer)
        info = layer_params_shape(first, opts)
        start = time.perf_counter()
        if on_step:
            on_step(f"fitting one basis for {len(planned)} layer(s)")
        phi, stored = load_phi(first, opts, info["k"], info["length"])  # (L, K)
        target = clean_target(phi, hankel_l) if stored else None  # (L, K)
        fit = _fit(phi, settings, basis_kind == "real", settings.seed, target)
        fit_seconds = time.perf_counter() - start
        poles = from_pairs(to_pairs(fit.poles))  # (N,) as stored
        residues = from_pairs(to_pairs(fit.residues))  # (K, N) as stored
        results = []
        for p in planned:
            t0 = time.perf_counter()
            view = LayerView(ckpt, p.layer)
            shape = layer_params_shape(view, p.layer.config.options)
            if shape["k"] != info["k"] or shape["length"] != info["length"]:
                raise LcdError(f"layer K={shape['k']}, L={shape['length']} differs from the "
                               f"first STU layer's K={info['k']}, L={info['length']}",
                               file=ckpt.source, key=p.name)
            params = load_layer(view, p.layer.config.options, phi)
            h, pl, rs = modal_form(params, poles, residues)
            stats = kernel_errors(h, pl, rs, order=fit.order)
            stats |= {"name": p.name, "family": p.layer.config.name, "channels": p.channels,
                      "length": p.length, "order": fit.order,
                      "method": f"shared-basis ({basis_kind} poles) era+vp-lm",
                      "seconds": round(time.perf_counter() - t0 + fit_seconds / len(planned), 3)}
            if settings.tol is not None:
                stats["tol_met"] = bool(stats["rel_l2"]["max"] <= settings.tol)
            res = LayerResult(p.name, {}, stats)
            results.append(res)
            if on_layer:
                on_layer(res)
        prefix = basis_prefix(phi_key)
        phi_state = "stored" if stored else "recomputed"
        report: dict[str, Any] = {"basis": {
            "layout": LAYOUT, "prefix": prefix, "phi": phi_state, "poles": basis_kind,
            "modes": fit.order, "states_per_branch": fit.states, "filters": phi.shape[1],
            "length": phi.shape[0], "mse": fit.mse, "rel_l2_max": float(fit.rel_l2.max()),
            "rel_l2_median": float(fit.rel_l2.median()),
            "poles_fitted_on": "float64 recomputation (signs aligned)" if target is not None
            else "the filters themselves", "seconds": round(fit_seconds, 3)}}
        if not stored:
            report["basis"]["caveat"] = (
                "phi was recomputed (no stored buffer): eigenvector signs depend on the LAPACK "
                "build, and the trained M matrices assume the training machine's signs")
        shared = SharedResult(
            prefix, {BASIS_POLES: to_pairs(fit.poles), BASIS_RESIDUES: to_pairs(fit.residues)},
            metadata={"lcd_basis_layout": LAYOUT, "lcd_stu_basis": prefix,
                      "lcd_stu_phi": phi_state, "lcd_stu_basis_poles": basis_kind},
            report=report, ssm_params=2 * fit.order * (1 + phi.shape[1]))
        return KindOutput(results, [shared])

    def verify(self, distilled: Checkpoint, ref: Checkpoint, layers: list[Layer],
               layout: Layout, options: VerifyOptions) -> list[dict[str, Any]]:
        return verify_stu_layers(distilled, ref, layers, tol=options.tol, length=options.length,
                                 seed=options.seed)

    def compressibility(self, ckpt: Checkpoint, layer: Layer, channels: int) -> dict[str, Any]:
        h, _ = materialize(ckpt, layer)  # (2K | K | C, L): the basis filters or approx kernels
        return compressibility(h, channels=channels)


def _fit(phi: Tensor, plan: FitSettings, real: bool, seed: int,
         target: Tensor | None) -> SharedFit:
    h = phi.T.contiguous()  # (K, L)
    tgt = None if target is None else target.T.contiguous()  # (K, L)
    if plan.order is not None:
        return fit_shared(h, plan.order, real=real, seed=seed, pole_target=tgt)
    assert plan.tol is not None
    best = fit_shared(h, plan.max_order, real=real, seed=seed, pole_target=tgt)
    if float(best.rel_l2.max()) > plan.tol:
        return best
    lo, hi = 0, plan.max_order
    while hi - lo > 1:
        mid = (lo + hi) // 2
        res = fit_shared(h, mid, real=real, seed=seed, pole_target=tgt)
        if float(res.rel_l2.max()) <= plan.tol:
            hi, best = mid, res
        else:
            lo = mid
    return best


def read_basis(distilled: Checkpoint, k: int) -> tuple[Tensor, Tensor]:
    """The stored basis: poles (N,) and residues (K, N) complex128; LcdError when mis-shaped."""
    prefix = distilled.metadata.get("lcd_stu_basis", "stu_basis")
    pk, rk = f"{prefix}.{BASIS_POLES}", f"{prefix}.{BASIS_RESIDUES}"
    for key in (pk, rk):
        if key not in distilled:
            raise LcdError("the shared STU basis is missing", file=distilled.source, key=key)
    ps, rs = distilled.info(pk).shape, distilled.info(rk).shape
    if len(ps) != 2 or ps[1] != 2:
        raise LcdError(f"expected basis poles of shape (N, 2), got {list(ps)}",
                       file=distilled.source, key=pk)
    if len(rs) != 3 or rs[0] != k or rs[1] != ps[0] or rs[2] != 2:
        raise LcdError(f"expected basis residues of shape ({k}, {ps[0]}, 2), got {list(rs)}",
                       file=distilled.source, key=rk)
    poles = from_pairs(distilled.get(pk, torch.float64, finite=False))  # (N,)
    residues = from_pairs(distilled.get(rk, torch.float64, finite=False))  # (K, N)
    return poles, residues


def _rel(y: Tensor, ref: Tensor) -> float:
    num = float(torch.linalg.vector_norm(y.to(torch.float64) - ref))
    den = float(torch.linalg.vector_norm(ref))
    return num / den if den > 0 else num


def verify_stu_layers(distilled: Checkpoint, ref: Checkpoint, layers: list[Layer], *, tol: float,
                      length: int | None, seed: int, step_cap: int = STEP_CAP
                      ) -> list[dict[str, Any]]:
    """Per layer: the float64 recurrence (step, prefill + step, scan) against the checkpoint's
    convolution on seeded noise / smooth / step inputs; the float32 runtime (complex64 state:
    scan, and token by token over the same tokens) is judged against tol too (``worst_f32``)."""
    rows = []
    phi = None
    for layer in layers:
        view = LayerView(ref, layer)
        params = load_layer(view, layer.config.options, phi)
        phi = params.phi
        poles, residues = read_basis(distilled, phi.shape[1])
        full = phi.shape[0]
        t = min(length or full, full)
        d_in = (params.m_plus.shape[1] if params.m_plus is not None
                else params.m_inputs.shape[0])  # type: ignore[union-attr]
        inputs = make_inputs(1, d_in, t, t, seed)  # kind -> (B, I, T)
        u = torch.cat([x.transpose(1, 2) for x in inputs.values()])  # (3B, T, I)
        y_ref = reference_forward(params, u)  # (3B, T, O)
        finite = bool(torch.isfinite(poles).all() and torch.isfinite(residues).all())
        errors: dict[str, float] = {}
        if finite:
            layer64 = runtime(params, poles, residues, torch.float64)
            n_step = min(t, step_cap)
            x = None
            ys = []
            for i in range(n_step):
                y_t, x = layer64.step(u[:, i], x)
                ys.append(y_t)
            errors["step"] = _rel(torch.stack(ys, 1), y_ref[:, :n_step])
            cut = t // 2
            y_pre, x = layer64.prefill(u[:, :cut])
            y_rest, _ = layer64.scan(u[:, cut:], x)
            errors["prefill+scan"] = _rel(torch.cat([y_pre, y_rest], 1), y_ref)
            errors["scan"] = _rel(layer64.scan(u)[0], y_ref)
            # What a float32 engine runs: the complex64 state, by scan and token by token.
            layer32 = runtime(params, poles, residues, torch.float32)
            x, ys = None, []
            for i in range(n_step):
                y_t, x = layer32.step(u[:, i], x)
                ys.append(y_t)
            errors_f32 = {"scan": _rel(layer32.scan(u)[0], y_ref),
                          "recurrence": _rel(torch.stack(ys, 1), y_ref[:, :n_step])}
        else:
            errors["scan"] = float("inf")
            errors_f32 = {"scan": float("inf"), "recurrence": float("inf")}
        f32 = errors_f32["scan"]
        worst_f32 = (max(errors_f32.values()) if all(math.isfinite(v) for v in errors_f32.values())
                     else math.inf)
        worst = max(errors.values()) if all(v == v for v in errors.values()) else float("inf")
        pole_abs = float(poles.abs().max())
        reasons = []
        if not finite or not all(torch.isfinite(torch.tensor(list(errors.values())))):
            reasons.append("NaN/Inf")
        if pole_abs >= 1:
            reasons.append(f"unstable pole |p|={pole_abs:.6f}")
        if not worst <= tol:
            reasons.append(f"error {worst:.2e} > {tol:.1e}")
        if why := f32_reason(worst_f32, worst, tol):
            reasons.append(why)
        rows.append({"name": layer.prefix, "errors": errors, "worst": worst,
                     "float32_scan": f32, "errors_f32": errors_f32, "worst_f32": worst_f32,
                     "max_pole_abs": pole_abs, "finite": finite,
                     "beyond_length": None, "length": t, "kernel_length": full,
                     "step_tokens": min(t, step_cap), "seed": seed, "dtype": "float64",
                     "passed": not reasons, "reason": "; ".join(reasons)})
    return rows
