"""Refactoring guard: `lcd distill` writes the same tensors, byte for byte, on every bundled
example at a fixed seed and order (digests in tests/data/golden_outputs.json, written by
scripts/golden_outputs.py; regenerate only for a change meant to alter fitted values)."""

from __future__ import annotations

import importlib.util
import json
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


@pytest.mark.parametrize("case", golden.CASES, ids=[golden.case_id(*c) for c in golden.CASES])
def test_distill_output_is_byte_identical(case: tuple, tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        digest = golden.distill_digest(*case, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert digest == EXPECTED[golden.case_id(*case)]
