"""Shared fixtures: small example checkpoints written to a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lcd_cli.cli import app
from lcd_cli.examples import make_example, write_example

# Sizes small enough for fast tests, with awkward lengths.
SMALL = {
    "hyenadna": {"d_model": 8, "n_layers": 2, "l_max": 203},
    "stripedhyena": {"d_model": 6, "n_blocks": 3, "modes": 4},
    "long-conv": {"d_model": 5, "n_layers": 2, "length": 157, "channels": 2},
}


@pytest.fixture
def write_ckpt(tmp_path: Path) -> Callable[..., Path]:
    """write_ckpt(tensors | example name, name=..., shards=1) -> path of the checkpoint."""

    def write(source: dict[str, torch.Tensor] | str, name: str = "model.safetensors",
              shards: int = 1, seed: int = 0, dtype: str = "fp32") -> Path:
        tensors = (make_example(source, seed=seed, dtype=dtype, **SMALL[source])
                   if isinstance(source, str) else source)
        files = write_example(tensors, tmp_path / name, shards=shards)
        return files[0]

    return write


@pytest.fixture
def scoring_worker_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The worker count of every `run_jobs` call of lcd_cli.numerics.metrics, in order (a spy
    that still runs the jobs)."""
    import lcd_cli.numerics.metrics as metrics

    counts: list[int] = []
    real_run = metrics.run_jobs

    def spy(fn, jobs, workers):  # type: ignore[no-untyped-def]
        counts.append(workers)
        return real_run(fn, jobs, workers)

    monkeypatch.setattr(metrics, "run_jobs", spy)
    return counts


def lcd(*args: object) -> object:
    """Run the CLI in-process; a traceback in the output is always a test failure."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Relative l2 error ||a - b|| / ||b|| of real arrays, computed in float64."""
    a_t = torch.as_tensor(a, dtype=torch.float64)
    b_t = torch.as_tensor(b, dtype=torch.float64)
    return float((a_t - b_t).norm() / b_t.norm().clamp_min(1e-300))


def naive_modal(poles: np.ndarray, residues: np.ndarray, length: int) -> np.ndarray:
    """Reference modal kernel h[c, t] = Re sum_n R p^t by repeated multiplication, from complex
    (C, N) arrays."""
    out = np.zeros((poles.shape[0], length))
    power = np.ones_like(poles)
    for t in range(length):
        out[:, t] = (residues * power).sum(-1).real
        power = power * poles
    return out
