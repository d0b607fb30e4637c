"""`lcd bench`: fitting throughput, per-token decoding latency and prefill time of one layer.

Dimensions:
    B  batch (sequences decoded together)
    C  channels of the layer
    N  modes per channel (complex poles)
    T  tokens decoded per timed run
    L  kernel length = context length the decoders run at
    P  prompt length before decoding (P = L - T, so the last token sees a prefix of length L)
    F  channels actually fitted (<= C; the decode layer tiles their modes to C channels)

Three decoders produce the same outputs for the same layer (the distilled SSM and its modal
kernel h = ssm.kernel(L), float32), token by token after a prompt of P tokens:
    recurrent  DiagonalSSM.step, state from DiagonalSSM.prefill(prompt)      O(N) per token
    fft        fft_conv of the whole growing prefix each step, last output     O(t log t)
    direct     cached input history dotted with the flipped kernel             O(t)
Timing: warm-up, then `repeats` timed runs (each from a fresh prompt state), synchronised on
CUDA; medians with min/max/quartiles. Slow paths (fft, direct at long L) time fewer tokens per
run, chosen from the warm-up so that a run lasts about `_RUN_BUDGET_S`; a prefill slower than
that gets fewer timed runs (at least 2). Both counts are reported.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.numerics.fit import fit_modal
from lcd_cli.numerics.ssm import DiagonalSSM, fft_conv

Progress = Callable[[str], None]

DEFAULTS: dict[str, Any] = {
    "channels": 256, "order": 16, "lengths": [1024, 8192, 65536], "tokens": 64, "batch": 1,
    "repeats": 5, "fit_channels": 32,
}
QUICK: dict[str, Any] = {
    "channels": 64, "order": 8, "lengths": [1024, 4096], "tokens": 16, "batch": 1,
    "repeats": 3, "fit_channels": 4,
}
# Largest buffer (B * C * L elements) the decoders may allocate.
_MAX_ELEMENTS = 1 << 30
# Target seconds per timed run of a slow decoder (fewer tokens per run at long L).
_RUN_BUDGET_S = {True: 0.25, False: 1.5}
_SYNTH_MODES = 24  # damped oscillations per synthetic kernel
_NOISE = 1e-3  # white noise relative to max |h|
_RSS_POLL_S = 0.002


# ----------------------------------------------------------------------------- settings


def settings_for(quick: bool, **given: Any) -> dict[str, Any]:
    """Defaults (or the --quick ones) overridden by the options that were given (not None)."""
    out = dict(QUICK if quick else DEFAULTS)
    out.update({k: v for k, v in given.items() if v is not None})
    if given.get("channels") is not None and given.get("fit_channels") is None:
        out["fit_channels"] = min(out["fit_channels"], out["channels"])
    return out


def parse_lengths(text: str) -> list[int]:
    """'1024,8192,65536' (k/K suffix allowed: '64k') -> [1024, 8192, 65536]."""
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            continue
        scale = 1024 if p.endswith("k") else 1
        try:
            out.append(int(p[:-1] if scale > 1 else p) * scale)
        except ValueError:
            raise LcdError(f"--lengths must be comma-separated integers, got '{text}'",
                           key="lengths", hint="e.g. --lengths 1024,8192,65536") from None
    if not out:
        raise LcdError("--lengths is empty", key="lengths", hint="e.g. --lengths 1024,8192,65536")
    return out


def _validate(device: str, channels: int, order: int, lengths: list[int], tokens: int,
              batch: int, repeats: int, fit_channels: int) -> tuple[str, list[int]]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise LcdError(f"unknown device '{device}'", key="device", hint="choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise LcdError("--device cuda was asked for but torch sees no CUDA device",
                       hint="use --device cpu, or install a CUDA build of torch")
    for name, value in (("width", channels), ("tokens", tokens), ("batch", batch),
                        ("repeats", repeats), ("fit-channels", fit_channels)):
        if value < 1:
            raise LcdError(f"--{name} must be >= 1, got {value}", key=name)
    if not lengths:
        raise LcdError("no lengths given", key="lengths", hint="e.g. --lengths 1024,8192,65536")
    bad = [n for n in lengths if n < 2]
    if bad:
        raise LcdError(f"every length must be >= 2, got {bad[0]}", key="lengths")
    shortest = min(lengths)
    if not 1 <= order <= shortest - 1:
        raise LcdError(f"order {order} is out of range: valid orders are 1 to {shortest - 1} "
                       f"for the shortest length {shortest}", key="order",
                       hint=f"choose --order between 1 and {shortest - 1}")
    if batch * channels * max(lengths) > _MAX_ELEMENTS:
        raise LcdError(f"batch x channels x length = {batch * channels * max(lengths):,} is too "
                       f"large for the decoders' buffers (limit {_MAX_ELEMENTS:,})",
                       hint="lower --batch, --width or the longest --lengths")
    return device, sorted(set(lengths))


# ----------------------------------------------------------------------------- inputs


def synthetic_kernels(channels: int, length: int, seed: int) -> Tensor:
    """Damped oscillatory modal kernels plus white noise, (C, L) float64, deterministic.

    Each channel sums _SYNTH_MODES terms a e^(-t/tau) cos(w t + phi): decay times log-uniform
    in [L/200, L/2], frequencies log-uniform in [1e-3, 1] * pi with amplitudes falling as
    1/sqrt(w), then 1e-3 * max|h| white noise (so no finite order fits exactly).
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + length)
    f64 = torch.float64

    def draw(lo: float, hi: float) -> Tensor:  # (C, 1), log-uniform in [lo, hi]
        r = torch.rand(channels, 1, generator=gen, dtype=f64)
        return lo * (hi / lo) ** r

    t = torch.arange(length, dtype=f64)  # (L,)
    h = torch.zeros(channels, length, dtype=f64)  # (C, L)
    for _ in range(_SYNTH_MODES):
        tau = draw(length / 200, length / 2)  # (C, 1)
        w = math.pi * draw(1e-3, 1.0)  # (C, 1)
        phi = 2 * math.pi * torch.rand(channels, 1, generator=gen, dtype=f64)  # (C, 1)
        amp = torch.randn(channels, 1, generator=gen, dtype=f64) / w.sqrt()  # (C, 1)
        h += amp * torch.exp(-t / tau) * torch.cos(w * t + phi)  # (C, L)
    noise = torch.randn(channels, length, generator=gen, dtype=f64)  # (C, L)
    return h + _NOISE * h.abs().amax(-1, keepdim=True) * noise  # (C, L)


def decode_layer(poles: Tensor, residues: Tensor, channels: int, seed: int,
                 device: str | torch.device = "cpu") -> DiagonalSSM:
    """The benchmarked layer: fitted modes (F, N) tiled to C channels, random D, float32."""
    idx = torch.arange(channels) % poles.shape[0]  # (C,)
    gen = torch.Generator().manual_seed(seed + 7)
    d = torch.randn(channels, generator=gen, dtype=torch.float32)  # (C,)
    return DiagonalSSM(poles[idx].to(torch.complex64), residues[idx].to(torch.complex64),
                       d).to(device)


# ----------------------------------------------------------------------------- decoders


class RecurrentDecoder:
    """DiagonalSSM.step from the state after the prompt."""

    name = "recurrent"

    def __init__(self, ssm: DiagonalSSM, prompt: Tensor) -> None:
        self.ssm = ssm
        self.x0 = ssm.prefill(prompt)[1]  # (B, C, N)
        self.x = self.x0

    def reset(self) -> None:
        self.x = self.x0  # step returns a new state, so x0 is never modified

    def step(self, u_t: Tensor) -> Tensor:
        y, self.x = self.ssm.step(u_t, self.x)  # (B, C), (B, C, N)
        return y


class FftDecoder:
    """No cache: fft_conv of the whole prefix (prompt + tokens so far) for every token."""

    name = "fft"

    def __init__(self, h: Tensor, d: Tensor | None, prompt: Tensor) -> None:
        batch, channels, self.p = prompt.shape
        length = h.shape[-1]
        self.h, self.d = h, d  # (C, L), (C,)
        self.buf = torch.zeros(batch, channels, length, dtype=h.dtype, device=h.device)  # (B,C,L)
        self.buf[..., : self.p] = prompt
        self.t = self.p

    def reset(self) -> None:
        self.t = self.p  # positions >= t are overwritten before they are read

    def step(self, u_t: Tensor) -> Tensor:
        self.buf[..., self.t] = u_t  # (B, C)
        self.t += 1
        return fft_conv(self.buf[..., : self.t], self.h, self.d)[..., -1]  # (B, C)


class DirectDecoder:
    """Cached inputs: y_t = sum_{k<=t} h[t-k] u_k as one batched dot product, O(t) per token."""

    name = "direct"

    def __init__(self, h: Tensor, d: Tensor | None, prompt: Tensor) -> None:
        batch, channels, self.p = prompt.shape
        self.length = h.shape[-1]
        self.h_flip = h.flip(-1).contiguous()  # (C, L): h_flip[j] = h[L-1-j]
        self.d = d  # (C,)
        self.hist = torch.zeros(batch, channels, self.length, dtype=h.dtype,
                                device=h.device)  # (B, C, L)
        self.hist[..., : self.p] = prompt
        self.t = self.p

    def reset(self) -> None:
        self.t = self.p

    def step(self, u_t: Tensor) -> Tensor:
        t = self.t
        self.hist[..., t] = u_t  # (B, C)
        self.t += 1
        # weight of u_k is h[t-k] = h_flip[L-1-t+k], k = 0..t; one (B, t+1) x (t+1,) per channel
        hist = self.hist[..., : t + 1].transpose(0, 1)  # (C, B, t+1)
        taps = self.h_flip[:, self.length - 1 - t :, None]  # (C, t+1, 1)
        y = torch.bmm(hist, taps)[..., 0].T  # (B, C)
        return y if self.d is None else y + self.d * u_t  # (B, C)


# ----------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _stats_ms(seconds: list[float]) -> dict[str, float]:
    """Median, min, max and quartiles of a list of durations, in ms."""
    ms = sorted(s * 1e3 for s in seconds)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {"median": statistics.median(ms), "min": ms[0], "max": ms[-1], "q1": q1, "q3": q3}


def _time_decoder(dec: Any, u: Tensor, tokens: int, repeats: int, device: str,
                  budget_s: float | None) -> tuple[dict[str, float], int]:
    """Per-token latency stats (ms) and the tokens timed per run.

    u: (T, B, C) token inputs. Warm-up runs a few tokens; with budget_s the tokens per run are
    cut to ~budget_s / (warm-up cost per token) (at least 1).
    """
    warm = min(tokens, 3 if budget_s is not None else 10)
    dec.reset()
    _sync(device)
    start = time.perf_counter()
    for i in range(warm):
        dec.step(u[i])
    _sync(device)
    per_token = (time.perf_counter() - start) / warm
    n = tokens
    if budget_s is not None:
        n = max(1, min(tokens, int(budget_s / max(per_token, 1e-9))))
    samples = []
    for _ in range(repeats):
        dec.reset()
        _sync(device)
        start = time.perf_counter()
        for i in range(n):
            dec.step(u[i])  # (B, C)
        _sync(device)
        samples.append((time.perf_counter() - start) / n)
    return _stats_ms(samples), n


def _time_call(fn: Callable[[], object], repeats: int, device: str,
               budget_s: float) -> tuple[dict[str, float], int]:
    """Stats (ms) of one warm-up then timed calls, and the number of timed calls: `repeats`,
    or fewer (at least 2) when they would take more than ~10 * budget_s in all."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    warm = time.perf_counter() - start
    runs = repeats if warm * repeats <= 10 * budget_s else max(2, min(repeats, int(10 * budget_s / warm)))
    samples = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
    return _stats_ms(samples), runs


class _PeakMemory:
    """Peak memory growth over a block: CUDA max_memory_allocated, or on the CPU the resident
    set size sampled every _RSS_POLL_S from /proc/self/statm (ru_maxrss growth elsewhere)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._statm = Path("/proc/self/statm")
        self.method = (
            "cuda: torch.cuda.max_memory_allocated minus memory allocated before the fit"
            if device == "cuda" else
            "cpu: peak resident-set growth over the fit, /proc/self/statm sampled every 2 ms"
            if self._statm.exists() else "cpu: growth of getrusage ru_maxrss over the fit")

    def _rss(self) -> int:
        pages = int(self._statm.read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.wait(_RSS_POLL_S):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> _PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        elif self._statm.exists():
            self._base = self._peak = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
        elif self._statm.exists():
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._peak, self._rss()) - self._base
        else:
            unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB else
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._base
            self.peak_bytes = grown * unit


# ----------------------------------------------------------------------------- environment


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _peak_bandwidth_gbps(device: str) -> float | None:
    """Theoretical DRAM bandwidth from the device properties (CUDA, when torch exposes them)."""
    if device != "cuda":
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "cpu_name": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device == "cuda":
        env["cuda"] = torch.version.cuda
        env["peak_bandwidth_gbps"] = _peak_bandwidth_gbps(device)
    return env


# ----------------------------------------------------------------------------- the bench


def recurrent_bytes_per_token(batch: int, channels: int, order: int, complex_bytes: int = 8,
                              real_bytes: int = 4) -> int:
    """Minimum memory traffic of one recurrent step: state (B, C, N) read and written, poles
    and residues (C, N) read, u_t read and y_t written (B, C), D (C,) read."""
    state = 2 * batch * channels * order * complex_bytes
    params = 2 * channels * order * complex_bytes
    io = 2 * batch * channels * real_bytes + channels * real_bytes
    return state + params + io


def _rel_diff(a: Tensor, ref: Tensor) -> float:
    a64, r64 = a.double(), ref.double()
    return float((a64 - r64).abs().max() / r64.abs().max().clamp_min(1e-30))


def run_bench(
    *,
    device: str,
    channels: int,
    order: int,
    lengths: list[int],
    tokens: int,
    batch: int,
    quick: bool,
    seed: int,
    repeats: int,
    progress: Progress | None = None,
    fit_channels: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Fit, decode and prefill benchmark of one layer at each length; a JSON-ready dict.

    fit_channels: channels actually fitted (default min(C, 4 quick / 32)); the decode layer
    tiles their modes to C channels. threads: torch CPU threads during the bench (restored
    afterwards; default: unchanged). Raises LcdError on bad sizes or an unavailable device.
    """
    if threads is not None and threads < 1:
        raise LcdError(f"--threads must be >= 1, got {threads}", key="threads")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(device=device, channels=channels, order=order, lengths=lengths,
                    tokens=tokens, batch=batch, quick=quick, seed=seed, repeats=repeats,
                    progress=progress, fit_channels=fit_channels)
    finally:
        torch.set_num_threads(before)


def _run(*, device: str, channels: int, order: int, lengths: list[int], tokens: int, batch: int,
         quick: bool, seed: int, repeats: int, progress: Progress | None,
         fit_channels: int | None) -> dict[str, Any]:
    if fit_channels is None:
        fit_channels = min(channels, (QUICK if quick else DEFAULTS)["fit_channels"])
    fit_channels = min(fit_channels, channels)
    device, lengths = _validate(device, channels, order, lengths, tokens, batch, repeats,
                                fit_channels)
    say = progress or (lambda _msg: None)
    fit_repeats = 1 if quick else 2
    budget = _RUN_BUDGET_S[quick]
    gen = torch.Generator().manual_seed(seed)
    mem_method = _PeakMemory(device).method

    # One small fit first: loads LAPACK / cuSOLVER / FFT plans outside the timed fits.
    say("warm-up fit")
    fit_modal(synthetic_kernels(1, min(lengths[0], 256), seed), min(order, 4), device=device,
              seed=seed)

    fit_rows, decode_rows = [], []
    for length in lengths:
        # ---- fitting
        h_true = synthetic_kernels(fit_channels, length, seed)  # (F, L) float64
        if device == "cuda":
            fit_modal(h_true[:1], order, device=device, seed=seed)  # per-size plans and kernels
        secs, peak, fit = [], 0, None
        for r in range(fit_repeats):
            say(f"L={length}: fitting {fit_channels} channel(s), N={order} ({r + 1}/{fit_repeats})")
            with _PeakMemory(device) as mem:
                _sync(device)
                start = time.perf_counter()
                fit = fit_modal(h_true, order, device=device, seed=seed)
                _sync(device)
                secs.append(time.perf_counter() - start)
            peak = max(peak, mem.peak_bytes)
        assert fit is not None
        sec = _stats_ms(secs)
        fit_rows.append({
            "length": length,
            "channels": fit_channels,
            "channels_per_s": fit_channels / (sec["median"] / 1e3),
            "seconds": sec["median"] / 1e3,
            "seconds_min": sec["min"] / 1e3,
            "seconds_max": sec["max"] / 1e3,
            "runs": fit_repeats,
            "peak_mem_mb": peak / 2**20,
            "rel_l2_median": float(fit.rel_l2.median()),
            "rel_l2_max": float(fit.rel_l2.max()),
        })

        # ---- decoding: one layer, prompt of P = L - T tokens, then T tokens
        ssm = decode_layer(fit.poles, fit.residues, channels, seed, device)
        h = ssm.kernel(length)  # (C, L) float32
        n_tok = max(1, min(tokens, length // 2))
        prompt_len = length - n_tok
        prompt = torch.randn(batch, channels, prompt_len, generator=gen).to(device)  # (B, C, P)
        u = torch.randn(n_tok, batch, channels, generator=gen).to(device)  # (T, B, C)

        say(f"L={length}: recurrent step x {n_tok}")
        rec = RecurrentDecoder(ssm, prompt)
        rec_ms, _ = _time_decoder(rec, u, n_tok, repeats, device, None)
        say(f"L={length}: direct convolution")
        direct = DirectDecoder(h, ssm.D, prompt)
        dir_ms, dir_n = _time_decoder(direct, u, n_tok, repeats, device, budget)
        del direct
        say(f"L={length}: FFT convolution of the prefix")
        fft = FftDecoder(h, ssm.D, prompt)
        fft_ms, fft_n = _time_decoder(fft, u, n_tok, repeats, device, budget)
        del fft
        # Compare at the last token all three timed; tokens differ when slow paths were cut.
        n_cmp = min(dir_n, fft_n)
        outs = {}
        for dec in (rec, DirectDecoder(h, ssm.D, prompt), FftDecoder(h, ssm.D, prompt)):
            dec.reset()
            for i in range(n_cmp):
                outs[dec.name] = dec.step(u[i])  # (B, C)

        say(f"L={length}: prefill of {length} tokens")
        u_prefill = torch.randn(batch, channels, length, generator=gen).to(device)  # (B, C, L)
        pre_ms, pre_runs = _time_call(functools.partial(ssm.prefill, u_prefill), repeats, device,
                                      budget)

        rec_bytes = recurrent_bytes_per_token(batch, channels, order)
        dir_bytes = (batch + 1) * channels * length * 4  # history and kernel read, float32
        rec_s = rec_ms["median"] / 1e3
        decode_rows.append({
            "length": length,
            "tokens": n_tok,
            "prompt": prompt_len,
            "recurrent_ms_per_token": rec_ms["median"],
            "fft_ms_per_token": fft_ms["median"],
            "direct_ms_per_token": dir_ms["median"],
            "prefill_ms": pre_ms["median"],
            "spread_ms": {"recurrent": rec_ms, "fft": fft_ms, "direct": dir_ms, "prefill": pre_ms},
            "tokens_timed": {"recurrent": n_tok, "fft": fft_n, "direct": dir_n},
            "prefill_runs": pre_runs,
            "tokens_per_s": {
                "recurrent": batch / rec_s,
                "fft": batch / (fft_ms["median"] / 1e3),
                "direct": batch / (dir_ms["median"] / 1e3),
                "prefill": batch * length / (pre_ms["median"] / 1e3),
            },
            "fft_over_recurrent": fft_ms["median"] / rec_ms["median"],
            "direct_over_recurrent": dir_ms["median"] / rec_ms["median"],
            "recurrent_bytes_per_token": rec_bytes,
            "recurrent_gbps": rec_bytes / rec_s / 1e9,
            "direct_bytes_per_token": dir_bytes,
            "direct_gbps": dir_bytes / (dir_ms["median"] / 1e3) / 1e9,
            "max_rel_diff": {
                "fft_vs_recurrent": _rel_diff(outs["fft"], outs["recurrent"]),
                "direct_vs_recurrent": _rel_diff(outs["direct"], outs["recurrent"]),
            },
        })
        del outs, rec, prompt, u_prefill
        if device == "cuda":
            torch.cuda.empty_cache()

    return {
        "settings": {
            "device": device, "channels": channels, "order": order, "lengths": lengths,
            "tokens": tokens, "batch": batch, "repeats": repeats, "quick": quick, "seed": seed,
            "fit_channels": fit_channels, "fit_repeats": fit_repeats,
            "dtype": "float32 (complex64 state)",
            "kernels": f"{_SYNTH_MODES} damped oscillations per channel, decay L/200..L/2, "
                       f"+{_NOISE:g} relative white noise",
            "decode_layer": "fitted modes of channel c mod fit_channels, random D",
            "slow_path_run_budget_s": budget,
            "peak_mem_method": mem_method,
            "recurrent_bytes_formula": "2*B*C*N*8 (state r+w) + 2*C*N*8 (poles, residues) "
                                       "+ 2*B*C*4 + C*4 (u, y, D)",
            "fft_path": "fft_conv of the whole prefix per token (kernel spectrum recomputed)",
            "direct_path": "bmm of the cached history with the flipped kernel",
        },
        "environment": environment(device),
        "fit": fit_rows,
        "decode": decode_rows,
    }


# ----------------------------------------------------------------------------- plot


def require_matplotlib() -> None:
    """LcdError unless matplotlib can be imported (checked before a long bench run)."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise LcdError("--plot needs matplotlib, which is not installed",
                       hint="pip install '.[plot]' in the lcd source folder, or pip install "
                       "matplotlib") from None


def plot_bench(result: dict[str, Any], path: str | Path) -> None:
    """Per-token latency vs length (log-log), one line per decoder with min/max bars, as PNG."""
    require_matplotlib()
    from matplotlib.figure import Figure
    rows = result["decode"]
    lengths = [r["length"] for r in rows]
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for key, label, marker in (("recurrent", "recurrent step (SSM)", "o"),
                               ("fft", "FFT conv of prefix", "s"),
                               ("direct", "cached direct conv", "^")):
        med = [r[f"{key}_ms_per_token"] for r in rows]
        lo = [m - r["spread_ms"][key]["min"] for m, r in zip(med, rows, strict=True)]
        hi = [r["spread_ms"][key]["max"] - m for m, r in zip(med, rows, strict=True)]
        ax.errorbar(lengths, med, yerr=[lo, hi], label=label, marker=marker, capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length L (tokens)")
    ax.set_ylabel("latency per token (ms)")
    s, env = result["settings"], result["environment"]
    ax.set_title(f"lcd bench: C={s['channels']}, N={s['order']}, B={s['batch']} on "
                 f"{env['device_name']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise LcdError(f"cannot write the plot: {e.strerror}", file=path) from None
