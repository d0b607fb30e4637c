"""The two-sided layer kind (non-causal: M2-BERT, safari bidirectional long conv, TNN): each
layer's causal and anti-causal halves fitted separately (lcd_cli.numerics.two_sided).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lcd_cli.numerics.modal import from_pairs, to_pairs
from lcd_cli.numerics.ssm import DiagonalSSM
from lcd_cli.numerics.two_sided import BidirectionalSSM, two_sided_conv, two_sided_errors

if TYPE_CHECKING:
    from lcd_cli.distill import DistillPlan, LayerResult, PlannedLayer
    from lcd_cli.families.layers import Layer
    from lcd_cli.io.checkpoint import Checkpoint

SSM_REV_POLES = "ssm_rev.poles"
SSM_REV_RESIDUES = "ssm_rev.residues"



def fit_two_sided_layer(ckpt: Checkpoint, planned: PlannedLayer, plan: DistillPlan, *,
                        device: str | None, seed: int) -> LayerResult:
    """Materialize both halves of a non-causal layer, fit each (same order, or each half's own
    --tol search), score the float32 parameters as written."""
    from lcd_cli.distill import LayerResult
    from lcd_cli.families.layers import materialize_two_sided
    from lcd_cli.numerics.fit import fit_modal, fit_modal_to_tolerance

    start = time.perf_counter()
    k_fwd, k_rev, _ = materialize_two_sided(ckpt, planned.layer)  # (C, L) each
    fits = []
    for h in (k_fwd, k_rev):
        if plan.order is not None:
            fits.append(fit_modal(h, plan.order, device=device, seed=seed))
        else:
            assert plan.tol is not None
            fits.append(fit_modal_to_tolerance(h, plan.tol, plan.max_order, device=device,
                                               seed=seed))
    order = max(f.order for f in fits)
    pairs = [(to_pairs(f.poles), to_pairs(f.residues)) for f in fits]  # (C, N, 2) float32
    pairs = [_pad_pairs(p, r, order) for p, r in pairs]
    stats = two_sided_errors(k_fwd, k_rev, (from_pairs(pairs[0][0]), from_pairs(pairs[0][1])),
                             (from_pairs(pairs[1][0]), from_pairs(pairs[1][1])), order=order)
    stats |= {"name": planned.name, "family": planned.layer.config.name,
              "channels": planned.channels, "length": planned.length, "order": order,
              "state_modes": 2 * order, "method": fits[0].method,
              "seconds": round(time.perf_counter() - start, 3)}
    if plan.tol is not None:
        stats["tol_met"] = bool(max(stats["halves"][h]["rel_l2"]["max"]
                                    for h in ("fwd", "rev")) <= plan.tol)
    return LayerResult(planned.name, pairs[0][0], pairs[0][1], stats, rev=pairs[1])


def _pad_pairs(poles: Tensor, residues: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """Pad a half fitted at a lower order (--tol) to ``order`` modes with zero-residue,
    zero poles, so both halves are stored with the same N."""
    extra = order - poles.shape[1]
    if extra <= 0:
        return poles, residues
    pad = poles.new_zeros(poles.shape[0], extra, 2)  # (C, extra, 2)
    return torch.cat([poles, pad], 1), torch.cat([residues, pad], 1)


# ---- verification -----------------------------------------------------------------------------


def verify_two_sided_layer(distilled: Checkpoint, ref: Checkpoint, layer: Layer, *, tol: float,
                           length: int | None, seed: int, channels: int | None,
                           reported: dict[str, Any] | None) -> dict[str, Any]:
    """`lcd verify` row of a non-causal layer.

    Each half is checked as a causal layer (its three runtime paths against its own
    convolution, see verify_core); the combined output (forward scan + backward scan, and the
    closed-form prefill of both) is compared with :func:`two_sided_conv` of the original halves
    on the same seeded inputs, over t < min(T, L). Fails on an unstable pole in either half,
    NaN/Inf, or an error above tol.
    """
    from lcd_cli.distill import SSM_POLES, SSM_RESIDUES
    from lcd_cli.families.layers import materialize_two_sided
    from lcd_cli.numerics.checks import INPUT_KINDS, even_channels, make_inputs, verify_layer
    from lcd_cli.verify import load_ssm

    k_fwd, k_rev, D_ref = materialize_two_sided(ref, layer)  # (C, L) each
    D = (distilled.get(layer.skip_key, torch.float64).reshape(-1)
         if layer.skip_key and layer.skip_key in distilled else D_ref)
    n_ch, kernel_len = k_fwd.shape
    hint = "a non-causal layer needs both ssm.* and ssm_rev.* tensors"
    fwd = load_ssm(distilled, layer.prefix, D, n_ch, (SSM_POLES, SSM_RESIDUES), hint)
    rev = load_ssm(distilled, layer.prefix, None, n_ch, (SSM_REV_POLES, SSM_REV_RESIDUES), hint)
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
    row: dict[str, Any] = {
        "name": layer.prefix, "causal": False, "max_pole_abs": bssm.max_pole_abs,
        "finite": finite, "errors": errors, "worst": worst, "two_sided_worst": max(
            errors.values()) if all(math.isfinite(v) for v in errors.values()) else math.inf,
        "beyond_length": checks["fwd"].beyond_length, "length": T,
        "kernel_length": kernel_len, "window": window,
        "checked_channels": None if channels is None else idx.tolist(), "seed": seed,
        "halves": {h: c.to_dict() for h, c in checks.items()},
    }
    reasons = []
    if not finite:
        reasons.append("NaN/Inf")
    for h, name in (("fwd", "forward"), ("rev", "reverse")):
        if checks[h].max_pole_abs >= 1:
            reasons.append(f"unstable pole in the {name} half |p|={checks[h].max_pole_abs:.6f}")
    if not worst <= tol:
        reasons.append(f"error {worst:.2e} > {tol:.1e}")
    if reported and (reported["channels"] != n_ch or reported["order"] != fwd.order
                     or reported["order"] != rev.order):
        reasons.append(f"shape differs from the report (C={reported['channels']}, "
                       f"N={reported['order']})")
    row["passed"] = not reasons
    row["reason"] = "; ".join(reasons)
    return row


# ---- inspection -------------------------------------------------------------------------------


def two_sided_compressibility(k_fwd: Tensor, k_rev: Tensor, *, channels: int = 16
                              ) -> dict[str, Any]:
    """Compressibility of both halves (lcd_cli.inspection.compressibility) and the worse of the
    two in the same fields: per order the larger floor, per tolerance the larger order."""
    from lcd_cli.inspection import compressibility

    halves = {"fwd": compressibility(k_fwd, channels=channels),
              "rev": compressibility(k_rev, channels=channels)}
    f, r = halves["fwd"], halves["rev"]
    floors = {}
    for n, a in f["floor_median"].items():
        b = r["floor_median"][n]
        floors[n] = None if a is None or b is None else max(a, b)
    order_for = {}
    for tol, a in f["order_for"].items():
        b = r["order_for"][tol]
        order_for[tol] = None if a is None or b is None else max(a, b)
    return {
        "channels_sampled": f["channels_sampled"],
        "svd": f["svd"] if f["svd"] == r["svd"] else "randomized (floors are estimates)",
        "floor_median": floors,
        "order_for": order_for,
        "max_order_searched": min(f["max_order_searched"], r["max_order_searched"]),
        "halves": halves,
    }
