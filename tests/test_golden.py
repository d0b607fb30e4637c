"""Refactoring guard: `lcd distill` writes the same tensors, byte for byte, on every bundled
example at a fixed seed and order (digests in tests/data/golden_outputs.json, written by
scripts/golden_outputs.py; regenerate only for a change meant to alter fitted values)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("golden_outputs", ROOT / "scripts" / "golden_outputs.py")
assert _spec and _spec.loader
golden = importlib.util.module_from_spec(_spec)
sys.modules["golden_outputs"] = golden
_spec.loader.exec_module(golden)
EXPECTED = json.loads(golden.GOLDEN.read_text())


def test_golden_covers_every_example() -> None:
    from lcd_cli.examples import EXAMPLES

    assert {case[0] for case in golden.CASES} == set(EXAMPLES)
    assert set(EXPECTED) == {golden.case_id(*case) for case in golden.CASES}


@pytest.fixture(scope="module")
def digests() -> dict[str, str]:
    """Every case's digest, from one run of the script in a fresh interpreter: torch's AVX2
    kernels can be chosen only before torch is imported (the script sets
    ATEN_CPU_CAPABILITY=avx2), and the digests are theirs."""
    env = os.environ | {"ATEN_CPU_CAPABILITY": golden.CAPABILITY.lower(), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "golden_outputs.py"), "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    if result["capability"] != golden.CAPABILITY:
        pytest.skip(f"the digests are of torch's {golden.CAPABILITY} kernels; this CPU runs "
                    f"{result['capability']}")
    return result["digests"]


@pytest.mark.parametrize("case", golden.CASES, ids=[golden.case_id(*c) for c in golden.CASES])
def test_distill_output_is_byte_identical(case: tuple, digests: dict[str, str]) -> None:
    assert digests[golden.case_id(*case)] == EXPECTED[golden.case_id(*case)]
