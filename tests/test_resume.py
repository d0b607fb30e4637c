"""Resumable runs: a run interrupted midway keeps its finished layers, and the rerun reuses
them (and only them), writing the same tensors as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from lcd_cli.examples import make_example
from lcd_cli.io.checkpoint import open_checkpoint
from lcd_cli.kinds.causal import CausalKind
from lcd_cli.numerics.parallel import cpu_count
from lcd_cli.pipeline.naming import report_path_for
from lcd_cli.pipeline.plan import default_workers
from lcd_cli.pipeline.resume import store_for
from tests.conftest import lcd


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with open_checkpoint(path) as ckpt:
        return {k: ckpt.get(k) for k in ckpt.tensors}


def interrupt_second_layer(monkeypatch) -> list[str]:
    """Make CausalKind fit layers as usual but raise KeyboardInterrupt on the second; returns
    the names of the layers it was asked for (the list the caller may clear)."""
    real = CausalKind._fit_layer
    calls: list[str] = []

    def interrupt_second(self, ckpt, planned, settings, on_step=None):
        calls.append(planned.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, ckpt, planned, settings, on_step)

    monkeypatch.setattr(CausalKind, "_fit_layer", interrupt_second)
    return calls


def test_interrupted_run_resumes_from_its_finished_layers(write_ckpt, tmp_path: Path,
                                                          monkeypatch) -> None:
    src = write_ckpt("hyenadna")  # two layers
    fresh = tmp_path / "fresh.safetensors"
    assert lcd("distill", src, "--order", "3", "-o", fresh).exit_code == 0
    out = tmp_path / "out.safetensors"
    real = CausalKind._fit_layer
    calls = interrupt_second_layer(monkeypatch)
    result = lcd("distill", src, "--order", "3", "-o", out)
    assert result.exit_code == 130
    assert "interrupted with 1 of 2 layer(s) fitted" in result.output
    assert "run the same command again" in result.output
    assert not out.exists()
    assert len(list(store_for(out).iterdir())) == 1

    calls.clear()
    monkeypatch.setattr(CausalKind, "_fit_layer", lambda self, c, p, s, on_step=None: (
        calls.append(p.name), real(self, c, p, s))[1])
    result = lcd("distill", src, "--order", "3", "-o", out)
    assert result.exit_code == 0, result.output
    assert len(calls) == 1  # only the layer that had not finished
    assert not store_for(out).exists()  # the store goes once the outputs are written
    a, b = tensors(fresh), tensors(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_changed_settings_do_not_reuse_kept_layers(write_ckpt, tmp_path: Path,
                                                   monkeypatch) -> None:
    src = write_ckpt("hyenadna")
    out = tmp_path / "out.safetensors"
    real = CausalKind._fit_layer
    calls = interrupt_second_layer(monkeypatch)
    assert lcd("distill", src, "--order", "3", "-o", out).exit_code == 130
    calls.clear()
    monkeypatch.setattr(CausalKind, "_fit_layer", lambda self, c, p, s, on_step=None: (
        calls.append(p.name), real(self, c, p, s))[1])
    assert lcd("distill", src, "--order", "4", "-o", out).exit_code == 0
    assert len(calls) == 2  # another order: nothing reused


def test_workers_flag_writes_the_same_bytes(write_ckpt, tmp_path: Path) -> None:
    """`lcd distill --workers 2` (channels shared over two processes) and the default (one
    worker per core) write the tensors an in-process fit (--workers 1) writes. 80 channels
    are two chunks of 40, so two jobs really run in two processes."""
    src = write_ckpt(make_example("hyenadna", d_model=80, n_layers=1, l_max=130))
    outs = {w: tmp_path / f"w{w}.safetensors" for w in ("1", "2", "default")}
    for w, out in outs.items():
        flag = [] if w == "default" else ["--workers", w]
        res = lcd("distill", src, "--order", "3", "-o", out, *flag)
        assert res.exit_code == 0, res.output
    a = tensors(outs["1"])
    for w in ("2", "default"):
        b = tensors(outs[w])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), w
    report = yaml.safe_load(report_path_for(outs["default"]).read_text())
    assert report["settings"]["workers"] == (cpu_count() if cpu_count() > 1 else 1)
    assert lcd("distill", src, "--order", "3", "-o", tmp_path / "x.safetensors",
               "--workers", "0").exit_code == 2


def test_default_workers_one_per_core_on_the_cpu_only() -> None:
    assert default_workers("cuda") is None and default_workers("cuda:1") is None
    assert default_workers("cpu") == (cpu_count() if cpu_count() > 1 else None)
    assert default_workers(None) == default_workers("cpu")  # a dry run: no device chosen yet
