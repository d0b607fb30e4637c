"""Digests of `lcd distill` outputs on every bundled example (the refactoring guard).

For each example (small sizes, seed 0) the checkpoint is written, distilled at a fixed order
and seed, and the output reduced to one sha256 over its tensors (name, dtype, shape and raw
bytes, in key order) plus the recorded orders. One torch thread: the thread count changes
rounding. Metadata that legitimately changes with lcd's version (configs echoed, option
sources) is left out, so the digest says "same tensors, same bytes".

    python scripts/golden_outputs.py            # print the digests
    python scripts/golden_outputs.py --write    # rewrite tests/data/golden_outputs.json

The digests are of torch's AVX2 CPU kernels (ATEN_CPU_CAPABILITY=avx2, set here), so that they
hold on AVX512 machines too.

Rewrite the file only when a change is *meant* to alter fitted values (a fitter change), and
say so in the commit; `tests/test_golden.py` fails on any other difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# torch picks its CPU kernels by the instruction set (AVX2 or AVX512), and they round
# differently: the TNN examples' fits came out with other bits on an AVX512 machine. The digests
# are those of the AVX2 kernels, which every x86-64 machine of this project has; the variable
# must be set before torch is imported (as a script only: imported, it would leak into the
# importer's child processes).
CAPABILITY = "AVX2"
ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    os.environ.setdefault("ATEN_CPU_CAPABILITY", CAPABILITY.lower())
    sys.path.insert(0, str(ROOT))  # this checkout's lcd_cli, whatever else is installed

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from lcd_cli.cli import app  # noqa: E402
from lcd_cli.examples import make_example, write_example  # noqa: E402
from lcd_cli.io.checkpoint import open_checkpoint  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden_outputs.json"
# (example, example sizes, distill arguments, shards): every layer kind and materializer, a
# --tol run and a sharded input, at sizes that keep the whole set to well under a minute.
Case = tuple[str, dict[str, int], tuple[str, ...], int]
CASES: list[Case] = [
    ("hyenadna", {"d_model": 6, "n_layers": 2, "l_max": 203}, ("--order", "4"), 1),
    ("hyenadna", {"d_model": 6, "n_layers": 2, "l_max": 203},
     ("--tol", "0.2", "--max-order", "6"), 1),
    ("stripedhyena", {"d_model": 6, "n_blocks": 3, "modes": 4}, ("--order", "3"), 1),
    ("long-conv", {"d_model": 5, "n_layers": 2, "length": 157, "channels": 2},
     ("--order", "4", "--set", "squash_lambda=0.001"), 1),
    ("evo2", {"d_model": 12, "groups": 4, "heads": 2}, ("--order", "4", "--length", "300"), 1),
    ("evo2", {"d_model": 12, "groups": 4, "heads": 2}, ("--order", "4", "--length", "300"), 3),
    ("m2", {"d_model": 3, "n_layers": 1, "l_max": 67, "width": 16}, ("--order", "4"), 1),
    ("long-conv-bidir", {"d_model": 3, "n_layers": 1, "length": 141, "channels": 2},
     ("--order", "4", "--set", "squash_lambda=0.001"), 1),
    ("tnn", {"embed_dim": 8, "n_layers": 1, "heads": 2, "rpe_dim": 6, "rpe_layers": 2},
     ("--order", "4", "--length", "90", "--family", "tnn", "--set", "gamma=0.99"), 1),
    ("tnn-bidir", {"embed_dim": 8, "n_layers": 1, "heads": 2, "rpe_dim": 6, "rpe_layers": 2},
     ("--order", "4", "--length", "90", "--family", "tnn-bidir", "--set", "gamma=0.99"), 1),
    ("s4d", {"d_model": 4, "n_layers": 2, "d_state": 16}, ("--order", "4", "--length", "120"), 1),
    ("s4-diag", {"d_model": 4, "n_layers": 2, "d_state": 16, "l_max": 100},
     ("--order", "4", "--set", "dt_transform=exp"), 1),
    ("s4-dplr", {"d_model": 3, "n_layers": 2, "d_state": 16, "l_max": 100},
     ("--order", "4", "--set", "dt_transform=exp", "--length", "1024"), 1),
    ("h3", {"d_model": 4, "n_layers": 3, "d_state": 16}, ("--order", "4", "--length", "120"), 1),
    ("stu", {"d_model": 4, "n_layers": 3, "seq_len": 150, "k": 6}, ("--order", "4"), 1),
    ("stu-approx", {"d_model": 4, "n_layers": 3, "seq_len": 150, "k": 6}, ("--order", "4"), 1),
]


def case_id(example: str, sizes: dict[str, int], args: tuple[str, ...], shards: int) -> str:
    return f"{example} {' '.join(args)}" + (f" shards={shards}" if shards > 1 else "")


# The STU shared-basis fit is ill-conditioned enough that MKL's alignment-dependent rounding
# changes its result from run to run within one process (seen: 3 digests in 6 identical
# calls of fit_shared). Its tensors are digested by name, dtype and shape only.
UNSTABLE_VALUES = ("stu_basis.poles", "stu_basis.residues")


def output_digest(path: Path) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) of a checkpoint, plus lcd_order."""
    digest = hashlib.sha256()
    with open_checkpoint(path) as ckpt:
        for name in sorted(ckpt.tensors):
            info = ckpt.tensors[name]
            digest.update(f"{name}|{info.dtype}|{list(info.shape)}|".encode())
            if name.endswith(UNSTABLE_VALUES):
                continue
            with info.shard.open("rb") as f:
                f.seek(info.begin)
                digest.update(f.read(info.nbytes))
        digest.update(json.dumps(json.loads(ckpt.metadata["lcd_order"]),
                                 sort_keys=True).encode())
    return digest.hexdigest()


def distill_digest(example: str, sizes: dict[str, int], args: tuple[str, ...], shards: int,
                   workdir: Path) -> str:
    """Write the example, run `lcd distill` on it in-process, digest the output."""
    case = f"{example}-{len(list(workdir.iterdir()))}"
    src = workdir / (case if shards > 1 else f"{case}.safetensors")
    files = write_example(make_example(example, seed=0, **sizes), src, shards=shards)
    out = workdir / f"{case}-out"
    argv = ["distill", str(files[0]), *args, "--seed", "0", "-o", str(out),
            "--report", str(workdir / f"{case}.report.yaml"), "--device", "cpu"]
    result = CliRunner().invoke(app, argv)
    if result.exit_code != 0:
        raise RuntimeError(f"lcd {' '.join(argv)} failed:\n{result.output}")
    return output_digest(out)


def all_digests() -> dict[str, str]:
    digests = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions split across threads round differently
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            start = time.perf_counter()
            digests[case_id(*case)] = distill_digest(*case, Path(tmp))
            print(f"{time.perf_counter() - start:6.1f} s  {case_id(*case)}", file=sys.stderr)
    torch.set_num_threads(threads)
    return digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN}")
    parser.add_argument("--json", action="store_true",
                        help="print {capability, digests} as JSON only (tests/test_golden.py)")
    args = parser.parse_args()
    capability = torch.backends.cpu.get_cpu_capability()
    if args.json:
        print(json.dumps({"capability": capability, "digests": all_digests()}))
        return 0
    if capability != CAPABILITY:
        print(f"torch runs its {capability} kernels here (ATEN_CPU_CAPABILITY="
              f"{os.environ.get('ATEN_CPU_CAPABILITY')!r}); the digests are those of {CAPABILITY}'s",
              file=sys.stderr)
        if args.write:
            return 1
    digests = all_digests()
    for name, value in digests.items():
        print(f"{value}  {name}")
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(digests, indent=2) + "\n")
        print(f"wrote {GOLDEN}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
