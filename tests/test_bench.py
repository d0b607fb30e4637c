"""`lcd bench`: smoke run, input validation, and correctness of the decoders it times.

No timing assertions: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from lcd_cli.bench import (
    DirectDecoder,
    FftDecoder,
    RecurrentDecoder,
    decode_layer,
    plot_bench,
    recurrent_bytes_per_token,
    run_bench,
    settings_for,
    synthetic_kernels,
)
from lcd_cli.cli import app
from lcd_cli.errors import LcdError
from lcd_cli.numerics.fit import fit_modal
from lcd_cli.numerics.ssm import fft_conv

DECODE_KEYS = {"length", "recurrent_ms_per_token", "fft_ms_per_token", "direct_ms_per_token",
               "prefill_ms", "fft_over_recurrent", "direct_over_recurrent",
               "recurrent_bytes_per_token", "recurrent_gbps"}
FIT_KEYS = {"length", "channels_per_s", "peak_mem_mb", "rel_l2_median"}
# float32 layer (complex64 state) against a float64 FFT reference, relative to max |y|.
DECODE_RTOL = 1e-4


def _check_result(result: dict[str, Any], lengths: list[int]) -> None:
    assert {"settings", "environment", "decode", "fit"} <= set(result)
    assert [r["length"] for r in result["decode"]] == lengths
    assert [r["length"] for r in result["fit"]] == lengths
    for row in result["decode"]:
        assert set(row) >= DECODE_KEYS
        for key in DECODE_KEYS:
            assert row[key] > 0, key
        for path in ("recurrent", "fft", "direct", "prefill"):
            spread = row["spread_ms"][path]
            assert 0 < spread["min"] <= spread["median"] <= spread["max"]
        # the three timed decoders agree on the last token they all produced
        assert max(row["max_rel_diff"].values()) < 1e-3
    for row in result["fit"]:
        assert set(row) >= FIT_KEYS
        assert row["channels_per_s"] > 0 and row["peak_mem_mb"] >= 0
        assert 0 <= row["rel_l2_median"] < 1
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["device_name"] and env["date"]


def test_cli_quick_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    res = CliRunner().invoke(app, ["bench", "--quick", "--device", "cpu", "--threads", "1",
                                   "--output", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    _check_result(result, [1024, 4096])
    assert result["settings"]["quick"] is True and result["settings"]["channels"] == 64
    assert "recurrent" in res.output and "1024" in res.output  # the table (stderr is mixed in)


def test_cli_json_stdout() -> None:
    res = CliRunner().invoke(app, ["bench", "--device", "cpu", "--quick", "--lengths", "64",
                                   "--width", "3", "--order", "2", "--tokens", "4",
                                   "--repeats", "2", "--fit-channels", "2", "--json"])
    assert res.exit_code == 0, res.output
    start = res.stdout.index("{")
    result = json.loads(res.stdout[start:res.stdout.rindex("}") + 1])
    _check_result(result, [64])
    assert result["fit"][0]["channels"] == 2 and result["decode"][0]["tokens"] == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--lengths", "1"], "every length must be >= 2"),
    (["--lengths", "64,abc"], "comma-separated integers"),
    (["--lengths", "64", "--order", "64"], "order 64 is out of range"),
    (["--order", "0"], "order 0 is out of range"),
    (["--width", "0"], "--width must be >= 1"),
    (["--tokens", "0"], "--tokens must be >= 1"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_cli_bad_input(args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["bench", "--quick", *args])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())


def test_settings_for() -> None:
    s = settings_for(True, channels=None, order=4)
    assert s["channels"] == 64 and s["order"] == 4 and s["lengths"] == [1024, 4096]
    assert settings_for(False, channels=8)["fit_channels"] == 8
    assert settings_for(False)["lengths"] == [1024, 8192, 65536]


def test_bytes_per_token() -> None:
    # state (2, 3, 4) complex64 read + written, poles/residues (3, 4), u/y (2, 3), D (3,)
    assert recurrent_bytes_per_token(2, 3, 4) == 2 * 24 * 8 + 2 * 12 * 8 + 2 * 6 * 4 + 3 * 4


def test_synthetic_kernels_deterministic() -> None:
    a, b = synthetic_kernels(3, 500, 1), synthetic_kernels(3, 500, 1)
    assert a.shape == (3, 500) and a.dtype == torch.float64 and torch.equal(a, b)
    assert not torch.equal(a, synthetic_kernels(3, 500, 2))


def test_timed_decoders_match_fft_reference() -> None:
    """The recurrent, FFT and direct decoders, as timed, reproduce the layer's output: a float64
    FFT convolution of the whole sequence with the layer's modal kernel (+ D u)."""
    length, channels, batch, order, tokens = 300, 5, 2, 6, 40
    fit = fit_modal(synthetic_kernels(2, length, 0), order, seed=0)
    ssm = decode_layer(fit.poles, fit.residues, channels, seed=0)
    h = ssm.kernel(length)  # (C, L) float32, what the bench uses
    gen = torch.Generator().manual_seed(3)
    prompt_len = length - tokens
    seq = torch.randn(batch, channels, length, generator=gen)  # (B, C, L)
    prompt, u = seq[..., :prompt_len], seq[..., prompt_len:].permute(2, 0, 1)  # (T, B, C)

    ssm64 = ssm.to(dtype=torch.float64)
    ref = fft_conv(seq.double(), ssm64.kernel(length), ssm64.D)[..., prompt_len:]  # (B, C, T)
    scale = ref.abs().max()
    decoders = (RecurrentDecoder(ssm, prompt), FftDecoder(h, ssm.D, prompt),
                DirectDecoder(h, ssm.D, prompt))
    for dec in decoders:
        for _ in range(2):  # reset() must restore the prompt state exactly
            dec.reset()
            y = torch.stack([dec.step(u[i]) for i in range(tokens)], -1)  # (B, C, T)
            err = float((y.double() - ref).abs().max() / scale)
            assert err < DECODE_RTOL, (dec.name, err)


def test_validation_in_library() -> None:
    kw = {"device": "cpu", "channels": 2, "order": 2, "tokens": 2, "batch": 1, "quick": True,
          "seed": 0, "repeats": 1}
    with pytest.raises(LcdError, match="out of range"):
        run_bench(lengths=[3], **{**kw, "order": 3})
    with pytest.raises(LcdError, match="too large"):
        run_bench(lengths=[1 << 20], **{**kw, "channels": 4096})


def _fake_result() -> dict[str, Any]:
    rows = []
    for length, rec in ((1024, 0.05), (4096, 0.05)):
        spread = {k: {"median": v, "min": v * 0.9, "max": v * 1.2, "q1": v, "q3": v}
                  for k, v in (("recurrent", rec), ("fft", length / 500), ("direct", length / 5000))}
        rows.append({"length": length, "recurrent_ms_per_token": rec,
                     "fft_ms_per_token": length / 500, "direct_ms_per_token": length / 5000,
                     "spread_ms": spread})
    return {"settings": {"channels": 8, "order": 4, "batch": 1},
            "environment": {"device_name": "test cpu"}, "decode": rows, "fit": []}


def test_plot_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    plot_bench(_fake_result(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(LcdError, match=r"pip install '\.\[plot\]'"):
        plot_bench(_fake_result(), tmp_path / "bench.png")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_cuda() -> None:
    result = run_bench(device="cuda", channels=16, order=4, lengths=[256, 1024], tokens=8,
                       batch=2, quick=True, seed=0, repeats=2, progress=None)
    _check_result(result, [256, 1024])
    assert result["environment"]["device_name"] == torch.cuda.get_device_name()
    assert "max_memory_allocated" in result["settings"]["peak_mem_method"]


def test_cli_plot_without_matplotlib_fails_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    res = CliRunner().invoke(app, ["bench", "--quick", "--plot", "x.png"])
    assert res.exit_code == 2 and ".[plot]" in res.output
