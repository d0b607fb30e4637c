"""Kernel approximation error of a distilled layer, as written in the report.

Dimensions: C channels, N modes, L kernel length.
  rel_l2[c]  = ||h_c - h_hat_c||_2 / ||h_c||_2           (denominator floored, see below)
  max_abs    = max_{c,t} |h - h_hat|
  hinf_rel   = max_c max_w |H_c(w) - H_hat_c(w)| / max_w |H_c(w)|   (DFT on >= 2L points)
  rel_l2_f32eval[c] = rel_l2 of the stored float32 parameters evaluated in complex64, as
               engines do (exp(t log p), and the recurrence); see rel_l2_f32eval
  rel_l2_channels = rel_l2[c] for every channel, in channel order (the report keeps the worst)
  floor      = median over sampled channels of the Eckart-Young lower bound on rel_l2 at order N
               (the tightest over several Hankel shapes; rigorous when every SVD is dense);
               0 without any SVD on a channel whose rel_l2 <= _FLOOR_RESOLVED (counted in
               floor_resolved): a fit that close leaves nothing for a floor to bound
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lcd_cli.numerics.hankel import fft_size, floor_work
from lcd_cli.numerics.hankel import hankel_floor as floors_over_shapes
from lcd_cli.numerics.modal import modal_kernel
from lcd_cli.numerics.parallel import resolve_workers, run_jobs

FLOOR_CHANNELS = 64  # channels sampled (evenly) for the Hankel floor
_F32_CHUNK = 4096  # time steps per block of the complex64 exp(t log p) evaluation
# Elements of one block of the scoring's elementwise passes: the (Cb, N, l) complex64 terms of
# the exp(t log p) evaluation and the (Cb, nfft / 2 + 1) spectra of the errors (4-8 MiB, in the
# last-level cache). Blocks of channels give the same bits as one pass (every value depends on
# its own channel only) and are 2-3.6x faster than one (C, ...) pass at C = 1024, L = 8192
# (exp path 5.1 -> 1.4 s, errors 2.4 -> 0.8 s, one thread, 2-core EPYC guest).
_CACHE_ELEMENTS = 1 << 19
# complex64 states of one block of the recurrence (2 MiB, in cache: 5x faster than 32 MiB
# blocks at 1024 channels x 8 modes, the same bits)
_REC_BUDGET = 1 << 18
_SCORE_BUDGET = 1 << 25  # float64 words of one channel block of kernel_errors (256 MiB)
_FLOOR_GROUP = 8  # sampled channels per job of the Hankel floor
# Layers of at least this many float64 samples are scored by the worker processes (16 M: e.g.
# 2048 channels at L = 8192, 16 at L = 1M); the full-length passes of smaller ones take a few
# seconds at most here.
_PARALLEL_SCORE_WORDS = 1 << 24
# ... and so is the floor of any layer whose sampled channels take at least this much of its
# work (`hankel.floor_work`, ~3 s on one core here: e.g. L >= 2000 at N = 16; L = 1000 is 1.3e10).
_PARALLEL_FLOOR_WORK = 1 << 34
# ... and so is the complex64 evaluation of the stored parameters where it computes at least
# this many (channel, step, mode) terms (3.7 s for 256 channels x 8192 steps x 16 modes here).
_PARALLEL_F32_TERMS = 1 << 25
# Its jobs hold at most _F32_BLOCK channels and _F32_JOB_WORDS samples (64 MiB per float64
# copy of the window). Large jobs, because the recurrence takes one Python step per sample for
# the whole job, ~10-20 us whatever its width: a 4096-channel layer at L = 8192, N = 8 took
# 13.1 s on one core (8.9 s on 2 workers) in jobs of 64 channels, 8.2 s (4.3 s) in jobs of 512.
_F32_BLOCK = 512
_F32_JOB_WORDS = 1 << 23
# A sampled channel whose fit is within this relative error of its kernel gets floor 0 without
# its Hankel SVDs: the floor bounds every N-mode fit from below, this one's error included, so
# it lies in [0, rel_l2] there, under the SVDs' own rounding (~1e-14 relative) give or take a
# factor of 100. The case is a source that is its own fit (a StripedHyena / Evo 1 layer at
# N >= its modes scores rel_l2 0), where the floor was 14 s of one core per layer at Evo-1
# width and the fit 1 s.
_FLOOR_RESOLVED = 1e-12


def relative_l2(h: Tensor, h_hat: Tensor) -> Tensor:
    """(C,) relative l2 error per channel; the norm is floored at 1e-12 * the largest norm."""
    return relative_to_norm(torch.linalg.vector_norm(h - h_hat, dim=-1), h)  # (C,)


def relative_to_norm(err: Tensor, h: Tensor) -> Tensor:
    """err (C,) / ||h_c||, the norm floored at 1e-12 * the largest channel norm."""
    norms = torch.linalg.vector_norm(h, dim=-1)  # (C,)
    return err / norms.clamp_min(1e-12 * norms.max().clamp_min(1e-300))  # (C,)


def sample_channels(channels: int, most: int) -> Tensor:
    """Evenly spaced channel indices, at most ``most``."""
    if channels <= most:
        return torch.arange(channels)
    return torch.linspace(0, channels - 1, most).round().long()


def hankel_floor(h: Tensor, order: int, workers: int | None = None) -> tuple[float, bool, int]:
    """Median Eckart-Young floor at ``order`` over sampled channels; (floor, rigorous, channels).
    ``workers``: processes sharing the sampled channels (`_score_jobs`)."""
    jobs = _floor_jobs(h, order)
    words = sum(job[1].numel() for job in jobs)  # the sampled channels' samples
    return _floor_summary(_score_jobs(jobs, workers, _heavy(h, order, words)))


def _heavy(h: Tensor, order: int, words: int) -> bool:
    """Whether scoring `words` float64 samples and the floor of h at ``order`` is worth the
    workers: the layer is large (_PARALLEL_SCORE_WORDS) or its floor is (_PARALLEL_FLOOR_WORK)."""
    sampled = min(h.shape[0], FLOOR_CHANNELS)
    return (words >= _PARALLEL_SCORE_WORDS
            or sampled * floor_work(h.shape[1], [order]) >= _PARALLEL_FLOOR_WORK)


def _floor_jobs(h: Tensor, order: int, idx: Tensor | None = None) -> list[tuple[Any, ...]]:
    """`_score_job`s of the floor: the channels ``idx`` (default: the sampled ones) in groups of
    _FLOOR_GROUP."""
    idx = sample_channels(h.shape[0], FLOOR_CHANNELS) if idx is None else idx  # (S,)
    return [("floor", h[idx[i : i + _FLOOR_GROUP]], order)
            for i in range(0, idx.numel(), _FLOOR_GROUP)]


def _floor_summary(parts: list[tuple[Tensor, bool]]) -> tuple[float, bool, int]:
    """(median floor, rigorous, channels) of the floor jobs' results."""
    values = torch.cat([v for v, _ in parts])  # (S,)
    return float(values.quantile(0.5)), all(r for _, r in parts), int(values.numel())


def _score_job(what: str, h: Tensor | np.ndarray, *args: Any) -> Any:
    """One job of `kernel_errors` on a block of channels (module level: workers import it).

    ("errors", h, poles, residues, nfft) -> (||h - h_hat|| (Cb,), H-infinity ratio (Cb,),
    max |h - h_hat|); ("floor", h, order) -> (floor per channel (Cb,), rigorous);
    ("f32eval", h, poles_pairs, residues_pairs) -> ||h - h_hat|| of the two complex64 paths of
    `f32_kernels`, exp(t log p) and the recurrence (2, Cb)."""
    h = torch.as_tensor(h)  # (Cb, L): a tensor here, an array in a worker
    if what == "f32eval":
        h_exp, h_rec = f32_kernels(torch.as_tensor(args[0]), torch.as_tensor(args[1]), h.shape[1])
        h64 = h.to(torch.float64)  # (Cb, L)
        return torch.stack([torch.linalg.vector_norm(h64 - h_exp, dim=-1),
                            torch.linalg.vector_norm(h64 - h_rec, dim=-1)]).cpu()  # (2, Cb)
    if what == "floor":
        (order,) = args
        floor = floors_over_shapes(h, [order])
        return floor.values[:, 0].cpu(), floor.rigorous
    poles, residues, nfft = (torch.as_tensor(args[0]), torch.as_tensor(args[1]), args[2])
    step = max(1, _CACHE_ELEMENTS // (nfft // 2 + 1))  # channels whose spectra stay in cache
    norms, ratios, max_abs = [], [], 0.0
    for i in range(0, h.shape[0], step):
        part = h[i : i + step]  # (Cs, L)
        diff = part - modal_kernel(poles[i : i + step], residues[i : i + step], h.shape[1])
        H = torch.fft.rfft(part, n=nfft).abs().amax(-1)  # (Cs,)
        E = torch.fft.rfft(diff, n=nfft).abs().amax(-1)  # (Cs,)
        norms.append(torch.linalg.vector_norm(diff, dim=-1).cpu())  # (Cs,)
        ratios.append((E / H.clamp_min(1e-300)).cpu())  # (Cs,)
        max_abs = max(max_abs, float(diff.abs().max()) if diff.numel() else 0.0)
    return torch.cat(norms), torch.cat(ratios), max_abs  # jobs hold >= 1 channel


def _score_jobs(jobs: list[tuple[Any, ...]], workers: int | None, heavy: bool) -> list[Any]:
    """`_score_job` over jobs, in worker processes when ``workers`` > 1 and the work is
    ``heavy`` (`_heavy`: below, the transfer and a pool's start cost more than the scoring),
    else here. Every job's result depends on its own channels only, so the report is the same
    for any worker count. Workers get the tensors as CPU arrays (pickled by value: a block's
    data only, not its parent's)."""
    on_cpu = all(a.device.type == "cpu" for job in jobs for a in job if isinstance(a, Tensor))
    count = resolve_workers(workers) if heavy and on_cpu else 1
    if count > 1:
        jobs = [tuple(a.cpu().numpy() if isinstance(a, Tensor) else a for a in job)
                for job in jobs]
    return run_jobs(_score_job, jobs, count)


def kernel_errors(h: Tensor, poles: Tensor, residues: Tensor, *, order: int,
                  workers: int | None = None) -> dict[str, Any]:
    """Error statistics of the modal kernel (poles, residues: (C, N) complex) against h (C, L).

    Channels go in blocks of _SCORE_BUDGET words (a 1M-long layer of 256 channels peaked at
    16.6 GB in one piece), the blocks and the floor's sampled channels shared by ``workers``
    processes (`_score_jobs`); the spectra use the next fast FFT size >= 2L (a 5-smooth n; 2L
    itself can be a large prime factor's slow transform: 4.8 s for 32 channels at L = 1M)."""
    return kernel_errors_and_floors(h, poles, residues, order=order, workers=workers)[0]


def kernel_errors_and_floors(h: Tensor, poles: Tensor, residues: Tensor, *, order: int,
                             workers: int | None = None) -> tuple[dict[str, Any], Tensor]:
    """`kernel_errors`, and the floor of each sampled channel (S,), in the order of
    `sample_channels` (C, FLOOR_CHANNELS): for reports that combine floors (the two-sided kind)."""
    c, length = h.shape
    nfft = fft_size(2 * length)
    step = max(1, _SCORE_BUDGET // max(1, 2 * nfft))  # channels per block
    blocks = [slice(i, i + step) for i in range(0, c, step)]
    jobs = [("errors", h[b], poles[b], residues[b], nfft) for b in blocks]
    heavy = _heavy(h, order, h.numel())
    errors = _score_jobs(jobs, workers, heavy)
    dnorm = torch.cat([e[0] for e in errors]).to(h.device)  # (C,) ||h - h_hat||
    hinf = torch.cat([e[1] for e in errors])  # (C,)
    max_abs = max(e[2] for e in errors)
    rel = relative_to_norm(dnorm, h)  # (C,)
    idx = sample_channels(c, FLOOR_CHANNELS)  # (S,)
    pending = (~(rel[idx] <= _FLOOR_RESOLVED)).cpu()  # (S,) not settled by the fit (NaN: open)
    jobs = _floor_jobs(h, order, idx[pending])
    computed = _score_jobs(jobs, workers, heavy) if jobs else []
    values = torch.zeros(idx.numel(), dtype=torch.float64)  # (S,) 0 where resolved
    if computed:
        values[pending] = torch.cat([v for v, _ in computed]).to(torch.float64)
    stats = {
        "rel_l2": {"median": float(rel.quantile(0.5)), "mean": float(rel.mean()),
                   "max": float(rel.max())},
        "max_abs": max_abs,
        "hinf_rel": float(hinf.max()),
        "floor": float(values.quantile(0.5)),
        "floor_exact": all(rigorous for _, rigorous in computed),
        "floor_channels": int(idx.numel()),
        "floor_resolved": int(idx.numel() - int(pending.sum())),  # of them, by rel_l2 alone
        "max_pole_abs": float(poles.abs().max()),
        "rel_l2_channels": rel.tolist(),  # (C,) per channel, appended last
    }
    return stats, values


# ---- float32-faithful scoring: the stored parameters as an engine evaluates them --------------


def _complex64_modes(pairs: Tensor) -> Tensor:
    """Stored float32 [real, imag] pairs (C, N, 2) or the engine's (C, N, 1, 2) -> (C, N)
    complex64, exactly as stored (no float64 detour)."""
    if pairs.dim() == 4 and pairs.shape[2] == 1:
        pairs = pairs[:, :, 0]  # (C, N, 2)
    if pairs.dim() != 3 or pairs.shape[-1] != 2:
        raise ValueError(f"expected [real, imag] pairs (C, N, 2), got {tuple(pairs.shape)}")
    return torch.view_as_complex(pairs.to(torch.float32).contiguous())  # (C, N)


def exp_kernel_c64(p: Tensor, r: Tensor, length: int) -> Tensor:
    """h[t] = sum_n Re(R_n exp(t log p_n)) in complex64 throughout, as StripedHyena's parallel
    path (``compute_filter``) computes it: p, r (C, N) complex64 -> (C, L) float32. A pole
    p = 0 (the two-sided kind's padding) counts as 0^0 = 1, 0^t = 0, as in `modal.pole_powers`
    (exp(0 * log 0) would be NaN)."""
    t = torch.arange(length, dtype=torch.float32, device=p.device)  # (L,)
    h = torch.empty(p.shape[0], length, dtype=torch.float32, device=p.device)  # (C, L)
    log_p = torch.log(p)  # (C, N) complex64
    zero = (p == 0)[..., None]  # (C, N, 1)
    chunk = max(1, min(length, _F32_CHUNK))
    rows = max(1, _CACHE_ELEMENTS // max(1, p.shape[1] * chunk))  # channels per block
    for c0 in range(0, p.shape[0], rows):  # bounded (Cb, N, chunk) temporaries
        lp, rr, zz = log_p[c0 : c0 + rows], r[c0 : c0 + rows], zero[c0 : c0 + rows]
        for start in range(0, length, chunk):
            tt = t[start : start + chunk]  # (l,)
            arg = lp[..., None] * tt  # (Cb, N, l) complex64 t log p
            # exp(a + ib) = e^a (cos b + i sin b) from float32 exp, cos and sin: the rounding of
            # a complex64 exp (an engine's libm differs from torch's CPU one anyway), 3.8x
            # faster on CPU than torch's complex64 exp, which is not vectorized.
            powers = torch.polar(torch.exp(arg.real), arg.imag)  # (Cb, N, l) complex64
            if bool(zz.any()):
                powers = torch.where(zz, (tt == 0).to(powers.dtype), powers)
            terms = rr[..., None] * powers  # (Cb, N, l) complex64
            h[c0 : c0 + rows, start : start + tt.numel()] = terms.real.sum(1)  # (Cb, l)
    return h


def f32_kernels(poles_pairs: Tensor, residues_pairs: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The modal kernel of stored float32 parameters as float32 engines compute it, (C, L) each:

      exp   h[t] = sum_n Re(R_n exp(t log p_n)), complex64 throughout (StripedHyena's parallel
            path, ``compute_filter``);
      rec   the impulse response of the complex64 recurrence x_t = p x_{t-1} + delta_t,
            y_t = sum_n Re(R_n x_t[n]) (its step path), one multiplication per step.
    Returned in float64 (the values are float32's)."""
    p = _complex64_modes(poles_pairs)  # (C, N)
    r = _complex64_modes(residues_pairs)  # (C, N)
    h_exp = exp_kernel_c64(p, r, length)  # (C, L) float32
    h_rec = torch.empty_like(h_exp)  # (C, L)
    # The states of a block of steps are kept, so the sequential part is one multiplication
    # per step and the readout one product per block (bounded (B, C, N) states).
    block = max(1, min(length, _REC_BUDGET // max(1, p.numel())))
    xs = torch.empty(block, *p.shape, dtype=p.dtype, device=p.device)  # (B, C, N)
    x = torch.ones_like(p)  # (C, N): state after the impulse, x_0 = 1
    for start in range(0, length, block):
        steps = min(block, length - start)
        xs[0] = x
        for j in range(1, steps):
            torch.mul(p, xs[j - 1], out=xs[j])  # (C, N) complex64, x_t = p x_{t-1}
        x = p * xs[steps - 1]  # (C, N) the next block's first state
        h_rec[:, start : start + steps] = (r * xs[:steps]).real.sum(-1).T  # (C, B)
    return h_exp.double(), h_rec.double()


def f32eval_errors(h: Tensor, poles_pairs: Tensor, residues_pairs: Tensor,
                   workers: int | None = None) -> Tensor:
    """(2, C) float64 ||h - h_c64|| per channel of the stored float32 parameters evaluated in
    complex64 (:func:`f32_kernels`): row 0 the exp(t log p) path, row 1 the recurrence.
    Channels go in jobs of at most _F32_BLOCK channels and _F32_JOB_WORDS samples, shared by
    ``workers`` processes where the evaluation is large (_PARALLEL_F32_TERMS); the blocks are
    fixed, so the result is the same for any worker count."""
    step = max(1, min(_F32_BLOCK, _F32_JOB_WORDS // max(1, h.shape[1])))  # channels per job
    jobs = [("f32eval", h[i : i + step], poles_pairs[i : i + step], residues_pairs[i : i + step])
            for i in range(0, h.shape[0], step)]
    heavy = h.numel() * poles_pairs.shape[1] >= _PARALLEL_F32_TERMS
    err = torch.cat(_score_jobs(jobs, workers, heavy), dim=1) if jobs else h.new_zeros(2, 0)
    return err.to(device=h.device, dtype=torch.float64)  # (2, C)


def rel_l2_f32eval(h: Tensor, poles_pairs: Tensor, residues_pairs: Tensor,
                   workers: int | None = None) -> Tensor:
    """(C,) relative l2 error against h (C, L) of the stored float32 parameters evaluated in
    complex64 (:func:`f32_kernels`), the worse of the exp(t log p) and recurrence paths
    (`f32eval_errors`, by ``workers`` processes where large).

    Scoring in float64 hides fits whose modes cancel only in float64 (a near-real pole with
    a huge imaginary residue); an engine running complex64 sees this error instead."""
    err = f32eval_errors(h, poles_pairs, residues_pairs, workers).amax(0)  # (C,)
    return relative_to_norm(err, h.to(torch.float64))  # (C,)
