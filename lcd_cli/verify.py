"""`lcd verify`: check a distilled checkpoint's recurrent path against the original convolution.

The distilled file's metadata names the family configs it was made with (echoed in full), so
the reference kernels are materialized exactly as at distillation time. Per layer the result
holds the worst relative output error, the pole radius, finiteness and, for inputs longer
than the kernel, the deviation from the truncated convolution (reported, not judged).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from lcd_cli.distill import SSM_POLES, SSM_RESIDUES
from lcd_cli.errors import LcdError
from lcd_cli.families.config import parse_config
from lcd_cli.families.layers import find_layers, materialize
from lcd_cli.families.view import join_key
from lcd_cli.io.checkpoint import Checkpoint, open_checkpoint
from lcd_cli.numerics.checks import verify_layer
from lcd_cli.numerics.ssm import DiagonalSSM

DEFAULT_TOL = 1e-2


def _configs(distilled: Checkpoint) -> list[Any]:
    raw = distilled.metadata.get("lcd_config")
    if raw is None:
        raise LcdError("no lcd_config metadata: this checkpoint was not written by `lcd distill`",
                       file=distilled.source, hint="pass the output of `lcd distill`")
    try:
        docs = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LcdError(f"lcd_config metadata is not valid JSON ({e})", file=distilled.source,
                       key="__metadata__.lcd_config") from e
    return [parse_config(yaml.safe_dump(doc), f"{distilled.source}:lcd_config[{name}]")
            for name, doc in docs.items()]


def _load_report(distilled: Checkpoint, report: Path | None) -> dict[str, Any] | None:
    path = report
    if path is None:
        # Beside the distilled output, as `lcd distill` names it by default.
        if distilled.sharded:
            path = distilled.source.parent.with_name(distilled.source.parent.name + ".report.yaml")
        else:
            path = distilled.source.with_name(
                distilled.source.name.removesuffix(".safetensors") + ".report.yaml")
        if not path.exists():
            return None
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise LcdError(f"cannot read the report ({e})", file=path) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise LcdError("not an lcd distill report (no 'layers' list)", file=path)
    return doc


def load_ssm(distilled: Checkpoint, prefix: str, D: torch.Tensor | None, channels: int,
             names: tuple[str, str] = (SSM_POLES, SSM_RESIDUES),
             hint: str | None = None) -> DiagonalSSM:
    """A distilled layer's ``<prefix>.<names>`` poles / residues as a float64 DiagonalSSM,
    shapes checked against the reference's channel count."""
    keys = (join_key(prefix, names[0]), join_key(prefix, names[1]))
    for key in keys:
        if key not in distilled:
            raise LcdError("the distilled layer is missing", file=distilled.source, key=key,
                           hint=hint)
        shape = distilled.info(key).shape
        if len(shape) != 3 or shape[0] != channels or shape[2] != 2:
            raise LcdError(f"expected shape ({channels}, N, 2), got {list(shape)}",
                           file=distilled.source, key=key)
    if distilled.info(keys[0]).shape != distilled.info(keys[1]).shape:
        raise LcdError("poles and residues have different shapes", file=distilled.source,
                       key=keys[1])
    # NaN/Inf are judged by the check (a failing layer), not rejected as unreadable input.
    poles = distilled.get(keys[0], torch.float64, finite=False)  # (C, N, 2)
    residues = distilled.get(keys[1], torch.float64, finite=False)  # (C, N, 2)
    return DiagonalSSM.from_pairs(poles, residues, D, dtype=torch.float64)


def verify_checkpoint(
    distilled_path: Path,
    reference_path: Path,
    *,
    tol: float | None = None,
    report: Path | None = None,
    length: int | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> dict[str, Any]:
    if tol is not None and not tol > 0:
        raise LcdError(f"--tol {tol} must be positive")
    if length is not None and length < 1:
        raise LcdError(f"--length {length} must be at least 1")
    with open_checkpoint(distilled_path) as distilled, open_checkpoint(reference_path) as ref:
        rep = _load_report(distilled, report)
        if tol is None:
            tol = float(rep["tolerance"]) if rep and rep.get("tolerance") else DEFAULT_TOL
        reported = {row["name"]: row for row in rep["layers"]} if rep else {}
        rows = []
        for cfg in _configs(distilled):
            if cfg.materializer == "stu" and cfg.distill:  # one shared basis for all layers
                from lcd_cli.kinds.shared_basis import verify_stu_layers

                rows += verify_stu_layers(distilled, ref, find_layers(ref, cfg), tol=tol,
                                          length=length, seed=seed)
                continue
            for layer in find_layers(ref, cfg):
                if not cfg.distill:
                    continue
                if not cfg.causal:
                    from lcd_cli.kinds.two_sided import verify_two_sided_layer

                    rows.append(verify_two_sided_layer(
                        distilled, ref, layer, tol=tol, length=length, seed=seed,
                        channels=channels, reported=reported.get(layer.prefix)))
                    continue
                h, D_ref = materialize(ref, layer)  # (C, L)
                D = (distilled.get(layer.skip_key, torch.float64).reshape(-1)
                     if layer.skip_key and layer.skip_key in distilled else D_ref)
                ssm = load_ssm(distilled, layer.prefix, D, h.shape[0])
                T = length or h.shape[1]
                check = verify_layer(h, D, ssm, length=T, seed=seed, max_channels=channels)
                row = {"name": layer.prefix, **check.to_dict()}
                reasons = []
                if not check.finite:
                    reasons.append("NaN/Inf")
                if check.max_pole_abs >= 1:
                    reasons.append(f"unstable pole |p|={check.max_pole_abs:.6f}")
                if not check.worst <= tol:
                    reasons.append(f"error {check.worst:.2e} > {tol:.1e}")
                rec = reported.get(layer.prefix)
                if rec and (rec["channels"] != h.shape[0] or rec["order"] != ssm.order):
                    reasons.append(f"shape differs from the report (C={rec['channels']}, "
                                   f"N={rec['order']})")
                row["passed"] = not reasons
                row["reason"] = "; ".join(reasons)
                rows.append(row)
        if not rows:
            raise LcdError("no distilled layer of the recorded families is in the reference",
                           file=reference_path, hint="is --reference the original checkpoint?")
    return {"distilled": str(distilled_path), "reference": str(reference_path), "tol": tol,
            "length": length or max(r.get("length", 0) for r in rows) or None, "seed": seed,
            "passed": all(r["passed"] for r in rows), "layers": rows}
