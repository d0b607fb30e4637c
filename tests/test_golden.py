"""Refactoring guard: `lcd distill` writes the same tensors, byte for byte, on every bundled
example at a fixed seed and order (digests in tests/data/golden_outputs.json, written by
scripts/golden_outputs.py; regenerate only for a change meant to alter fitted values).

The bytes depend on the machine's numerical libraries, so the file records the digests of each
machine kind they were checked on, all from one golden revision. On a machine that matches none,
the golden revision's outputs are rebuilt here from git and compared byte for byte."""

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
ENVIRONMENTS = golden.environments()


def test_golden_covers_every_example() -> None:
    from lcd_cli.examples import EXAMPLES

    assert {case[0] for case in golden.CASES} == set(EXAMPLES)
    assert ENVIRONMENTS
    for env in ENVIRONMENTS:
        assert set(env["digests"]) == {golden.case_id(*c) for c in golden.CASES}, env["machine"]


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


@pytest.fixture(scope="module")
def expected(digests: dict[str, str]) -> tuple[dict[str, str], str]:
    """The digests this machine must reproduce, and where they come from: a recorded
    environment equal on every case; else the golden revision rebuilt on this machine (a new
    machine kind, or a changed output: only the rebuild tells the two apart); else, where git
    cannot rebuild it, the nearest recorded environment, with the reason."""
    match = golden.matching_environment(digests, ENVIRONMENTS)
    if match is not None:
        return match["digests"], f"the digests recorded for {match['machine']}"
    try:
        return golden.reference_digests(), "the golden revision's outputs, rebuilt on this machine"
    except golden.ReferenceUnavailable as why:
        nearest = golden.nearest_environment(digests, ENVIRONMENTS)
        return nearest["digests"], (
            f"the digests recorded for {nearest['machine']}; no recorded environment matches this machine "
            f"on every case, and the golden revision could not be rebuilt here ({why}). Run "
            "`python scripts/golden_outputs.py --add` on this machine in a full git checkout")


@pytest.mark.parametrize("case", golden.CASES, ids=[golden.case_id(*c) for c in golden.CASES])
def test_distill_output_is_byte_identical(case: tuple, digests: dict[str, str],
                                          expected: tuple[dict[str, str], str]) -> None:
    reference, source = expected
    name = golden.case_id(*case)
    assert digests[name] == reference[name], f"{name}: not the bytes of {source}"


def test_environment_matching_needs_every_case() -> None:
    envs = [{"machine": "a", "digests": {"x": "1", "y": "2"}},
            {"machine": "b", "digests": {"x": "1", "y": "3"}}]
    assert golden.matching_environment({"x": "1", "y": "3"}, envs)["machine"] == "b"
    assert golden.matching_environment({"x": "1", "y": "4"}, envs) is None
    assert golden.nearest_environment({"x": "0", "y": "3"}, envs)["machine"] == "b"


def test_golden_revision_wrote_this_golden_file() -> None:
    """The revision the fallback rebuilds holds this very golden file (skipped outside git)."""
    try:
        rev = golden.golden_revision()
    except golden.ReferenceUnavailable as why:
        pytest.skip(str(why))
    shown = subprocess.run(["git", "-C", str(ROOT), "show",
                            f"{rev}:{golden.GOLDEN.relative_to(ROOT)}"],
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(shown) == json.loads(golden.GOLDEN.read_text())
