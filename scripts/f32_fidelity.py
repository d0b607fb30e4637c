"""Float32 fidelity of reduced-order fits (issues 14 and 17): is a fit that is accurate in
float64 also accurate when an engine evaluates its stored parameters in complex64?

Dimensions: C channels, M source modes, N fitted modes, L kernel length, B batch, T input length.

Per case: random modal kernels h = Re sum_m R_m p_m^t (C, L), fitted at order N with
`fit_modal` (float32 parameters, the default), then per channel

  f64       rel_l2 of the stored parameters evaluated in float64 (what the report's rel_l2 shows)
  f32eval   rel_l2 of the stored parameters evaluated in complex64 (exp(t log p) and the
            impulse response of the recurrence; `rel_l2_f32eval`)
  rec c64   relative output error of the complex64 step-by-step recurrence (DiagonalSSM.step)
            on white noise (B, C, T = min(L, --steps)), against the float64 convolution with h
  rec c128  the same recurrence in complex128 (the float64 runtime, for comparison)
  gap       ||h_c64 - h_c128|| / ||h||: the complex64 kernel (worse of exp and recurrence)
            against the same parameters in float64, i.e. what float32 evaluation alone costs
  f32/f64   max over channels of f32eval / f64
  sum|R|/max|h|  max over channels: how much the residues cancel

Every column but the last is the worst channel. Cases:
  sh         StripedHyena-like random modes, |p| in (0.7, 0.999), angle in (0, pi)
  near-real  as sh with a third of the modes near the real axis (angle < 1e-3 or near pi)
  clustered  modes in two tight clusters per channel (radius and angle within 1e-3)
  slow       modes close to the unit circle, |p| in (0.999, 0.99999) (long memory)

    python scripts/f32_fidelity.py                  # C = 64, M = 16, N = 8, L = 2048
    python scripts/f32_fidelity.py --no-guard       # the same without the fitter's float32 guard
    python scripts/f32_fidelity.py --length 8192 --cases sh,slow
Use OMP_NUM_THREADS=1: the figures are deterministic per seed and thread count.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import lcd_cli.numerics.fit as fit_module
from lcd_cli.numerics.fit import fit_modal
from lcd_cli.numerics.metrics import f32_kernels, rel_l2_f32eval, relative_l2
from lcd_cli.numerics.modal import from_pairs, modal_kernel, to_pairs
from lcd_cli.numerics.ssm import DiagonalSSM, fft_conv

F64 = torch.float64


def _modes(case: str, channels: int, modes: int, g: torch.Generator) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """Source poles and residues (C, M) complex128 of one case."""
    shape = (channels, modes)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(shape, dtype=F64).uniform_(lo, hi, generator=g)

    radius = 1 - torch.exp(uniform(math.log(1e-3), math.log(0.3)))  # (C, M) in (0.7, 0.999)
    angle = uniform(0.0, math.pi)  # (C, M)
    if case == "near-real":
        third = modes // 3
        angle[:, :third] = uniform(0.0, 1e-3)[:, :third]
        angle[:, third : 2 * third] = math.pi - uniform(0.0, 1e-3)[:, third : 2 * third]
    elif case == "clustered":
        half = modes // 2
        centre_r = 1 - torch.exp(uniform(math.log(1e-2), math.log(0.3))[:, :2])  # (C, 2)
        centre_a = uniform(0.0, math.pi)[:, :2]  # (C, 2)
        which = torch.arange(modes) >= half  # (M,)
        radius = centre_r[:, which.long()] + uniform(-1e-3, 1e-3)  # (C, M)
        angle = centre_a[:, which.long()] + uniform(-1e-3, 1e-3)  # (C, M)
    elif case == "slow":
        radius = 1 - torch.exp(uniform(math.log(1e-5), math.log(1e-3)))  # (C, M)
    elif case != "sh":
        raise SystemExit(f"unknown case {case!r}")
    poles = torch.polar(radius.clamp(max=1 - 1e-6), angle)  # (C, M)
    res = torch.complex(torch.randn(shape, generator=g, dtype=F64),
                        torch.randn(shape, generator=g, dtype=F64)) * (1 - radius)  # (C, M)
    return poles, res


def _recurrence(poles_pairs: torch.Tensor, res_pairs: torch.Tensor, h: torch.Tensor,
                steps: int, batch: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """(C,) relative output error of the token-by-token recurrence in ``dtype`` on white noise
    (B, C, T) against the float64 FFT convolution with h[:, :T]."""
    ssm = DiagonalSSM.from_pairs(poles_pairs, res_pairs, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, h.shape[0], steps, generator=g, dtype=F64)  # (B, C, T)
    y_ref = fft_conv(u, h)  # (B, C, T)
    y = torch.empty(u.shape, dtype=dtype)  # (B, C, T)
    x = ssm.init_state(batch)  # (B, C, N)
    for t in range(steps):
        y[..., t], x = ssm.step(u[..., t], x)
    num = torch.linalg.vector_norm(y.to(F64) - y_ref, dim=(0, 2))  # (C,)
    return num / torch.linalg.vector_norm(y_ref, dim=(0, 2)).clamp_min(1e-300)  # (C,)


def run_case(case: str, channels: int, modes: int, order: int, length: int, steps: int,
             seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    poles, res = _modes(case, channels, modes, g)
    h = modal_kernel(poles, res, length)  # (C, L) float64
    start = time.perf_counter()
    fit = fit_modal(h, order, seed=seed)
    seconds = time.perf_counter() - start
    pp, rp = to_pairs(fit.poles), to_pairs(fit.residues)  # (C, N, 2) float32, as stored
    p64, r64 = from_pairs(pp), from_pairs(rp)  # (C, N) complex128, the stored values
    f64 = relative_l2(h, modal_kernel(p64, r64, length))  # (C,)
    f32 = rel_l2_f32eval(h, pp, rp)  # (C,)
    n = min(length, steps)
    rec32 = _recurrence(pp, rp, h, n, 2, torch.float32, seed)  # (C,)
    rec64 = _recurrence(pp, rp, h, n, 2, torch.float64, seed)  # (C,)
    h_exp, h_rec = f32_kernels(pp, rp, length)  # (C, L) each, complex64-evaluated
    h64 = modal_kernel(p64, r64, length)  # (C, L)
    gap = torch.maximum(relative_l2(h64, h_exp) , relative_l2(h64, h_rec))  # (C,)
    gap = gap * torch.linalg.vector_norm(h64, dim=-1) / torch.linalg.vector_norm(h, dim=-1)
    cancel = r64.abs().sum(-1) / h.abs().amax(-1)  # (C,)
    return {"f64": float(f64.max()), "f32eval": float(f32.max()), "gap": float(gap.max()),
            "rec_c64": float(rec32.max()), "rec_c128": float(rec64.max()),
            "cancel": float(cancel.max()), "ratio": float((f32 / f64.clamp_min(1e-300)).max()),
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="sh,near-real,clustered,slow")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--modes", type=int, default=16, help="source modes M per channel")
    ap.add_argument("--order", type=int, default=8, help="fitted modes N")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=2048, help="most recurrence steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-guard", action="store_true",
                    help="fit without the float32 guard (fit._f32_guard), as before issue 14")
    args = ap.parse_args()
    if args.no_guard:
        fit_module._f32_guard = lambda h, poles, res, err: (poles, res, err)
    head = (f"{'case':<10} {'f64 err':>9} {'f32eval':>9} {'gap':>9} {'rec c64':>9} "
            f"{'rec c128':>9} {'f32/f64':>9} {'sum|R|/max|h|':>13} {'fit s':>6}")
    print(f"C={args.channels} M={args.modes} N={args.order} L={args.length} "
          f"T={min(args.length, args.steps)} seed={args.seed} guard={not args.no_guard}  "
          "(worst channel per column)")
    print(head)
    for case in args.cases.split(","):
        r = run_case(case, args.channels, args.modes, args.order, args.length, args.steps,
                     args.seed)
        print(f"{case:<10} {r['f64']:9.2e} {r['f32eval']:9.2e} {r['gap']:9.2e} {r['rec_c64']:9.2e} "
              f"{r['rec_c128']:9.2e} {r['ratio']:9.1f} {r['cancel']:13.3g} {r['seconds']:6.1f}")


if __name__ == "__main__":
    main()
