"""scripts/restart_policy.py replays the outlier-restart rule offline: its replay of the
current policy must be the fitter's own result, bit for bit (the script checks this and exits
non-zero otherwise), or its policy table would describe another fitter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_replay_of_the_current_policy_is_the_fitters_result() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "restart_policy.py"), "--quick"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "equal to the fitter's errors, bit for bit" in run.stdout
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert len(table) >= 10  # header, the current policy, thresholds, orders, subsets
