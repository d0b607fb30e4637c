"""scripts/restart_policy.py replays the outlier-restart rule offline: its replay of the
current policy must be the fitter's own result, bit for bit (the script checks this and exits
non-zero otherwise), or its policy table would describe another fitter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _policy(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "restart_policy.py"), "--quick",
                           *args], capture_output=True, text=True, env=env, timeout=600)


def test_replay_of_the_current_policy_is_the_fitters_result() -> None:
    run = _policy()
    assert run.returncode == 0, run.stderr
    assert "equal to the fitter's errors, bit for bit" in run.stdout
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert len(table) >= 10  # header, the current policy, thresholds, orders, subsets


def test_a_given_order_replays_like_the_policy_it_names() -> None:
    # Another draw of the example, and the current order given by hand: its row (rows used and
    # every error statistic) must be the current policy's row.
    run = _policy("--seed", "1", "--compare", "01234")
    assert run.returncode == 0, run.stderr
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in run.stdout.splitlines()
            if line.startswith("| ")}
    assert rows["| given order (0, 1, 2, 3, 4)"] == rows["| current (factor 2)"]


def test_an_order_that_is_not_a_permutation_is_refused() -> None:
    run = _policy("--compare", "0123")
    assert run.returncode == 2
    assert "--compare 0123: an order must use each of the digits 0..4 once" in run.stderr
