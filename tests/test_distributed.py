"""torchrun: two processes (gloo, CPU) fit their shares of the layers and rank 0 writes one
output, byte-identical to a single-process run (both with one torch thread per process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcd_cli.examples import make_example, write_example


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_torchrun_output_is_byte_identical_to_one_process(tmp_path: Path) -> None:
    src = write_example(make_example("hyenadna", d_model=4, n_layers=3, l_max=150),
                        tmp_path / "hy.safetensors")[0]
    single = run([sys.executable, "-m", "lcd_cli", "distill", str(src), "--order", "3",
                  "--device", "cpu", "-o", str(tmp_path / "one.safetensors")], tmp_path)
    assert single.returncode == 0, single.stderr
    multi = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                 "--master-port", "29517", "-m", "lcd_cli", "distill", str(src), "--order", "3",
                 "--device", "cpu", "-o", str(tmp_path / "two.safetensors")], tmp_path)
    assert multi.returncode == 0, multi.stdout + multi.stderr
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*lcd-resume"))
