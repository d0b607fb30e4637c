"""Digests of `lcd distill` outputs on every bundled example (the refactoring guard).

For each example (small sizes, seed 0) the checkpoint is written, distilled at a fixed order
and seed, and the output reduced to one sha256 over its tensors (name, dtype, shape and raw
bytes, in key order) plus the recorded orders. One torch thread: the thread count changes
rounding. Metadata that legitimately changes with lcd's version (configs echoed, option
sources) is left out, so the digest says "same tensors, same bytes".

The bytes also depend on the machine's numerical libraries: MKL takes other code paths on
Intel and AMD processors (no MKL_CBWR branch reproduces one on the other), and torch picks its
kernels by instruction set. So the golden file records the digests of every machine kind they
were checked on ("environments"), all of them outputs of the same code: the *golden revision*,
the last commit that wrote the file. A machine that matches no recorded environment rebuilds the
golden revision's outputs itself (`git archive` of that commit into a temporary folder) and
compares bytes on the spot.

    python scripts/golden_outputs.py              # this machine's digests, and what they match
    python scripts/golden_outputs.py --reference  # the golden revision's digests, built here
    python scripts/golden_outputs.py --add        # record this machine kind (checked against
                                                  #   --reference first)
    python scripts/golden_outputs.py --write      # a fitter change: this machine's digests
                                                  #   become the only environment

Use `--write` only when a change is *meant* to alter fitted values (a fitter change), and say
so in the commit; then `--add` on the other machine kinds once it is committed.
`tests/test_golden.py` fails on any other difference.

The digests are of torch's AVX2 CPU kernels (ATEN_CPU_CAPABILITY=avx2, set here), so that they
hold on AVX512 machines too.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
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


# ---- recorded environments and the golden revision ---------------------------------------------

Digests = dict[str, str]
REFERENCE_TIMEOUT_S = 1200  # the golden revision's whole run, as the test's own run


class ReferenceUnavailable(Exception):
    """The golden revision cannot be rebuilt here (no git, a shallow clone, an edited file)."""


def machine_label() -> str:
    """CPU vendor and model, torch and MKL versions: what an environment's digests came from."""
    cpu: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpu.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    vendor = cpu.get("vendor_id") or platform.machine()
    model = cpu.get("model name") or platform.processor() or "unknown CPU"
    mkl = next((line.strip(" -") for line in torch.__config__.show().splitlines()
                if "Math Kernel Library" in line), "no MKL")
    mkl = re.sub(r".*Library Version ([0-9.]+).*", r"MKL \1", mkl)
    return f"{model} ({vendor}), torch {torch.__version__}, {mkl}"


def environments() -> list[dict]:
    """The recorded environments: [{"machine": label, "digests": {case id: sha256}}]."""
    return json.loads(GOLDEN.read_text())["environments"]


def matching_environment(digests: Digests, envs: list[dict]) -> dict | None:
    """The recorded environment whose digests equal these on every case, if any."""
    return next((env for env in envs if env["digests"] == digests), None)


def nearest_environment(digests: Digests, envs: list[dict]) -> dict:
    """The recorded environment that agrees with these digests on the most cases."""
    return max(envs, key=lambda env: sum(env["digests"].get(k) == v for k, v in digests.items()))


def _git_bytes(*args: str) -> bytes:
    """Output of `git -C ROOT ARGS`; ReferenceUnavailable when git fails or is missing."""
    try:
        run = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=False)
    except FileNotFoundError as exc:  # no git program
        raise ReferenceUnavailable("git is not installed") from exc
    if run.returncode != 0:
        err = run.stderr.decode(errors="replace").strip() or "failed"
        raise ReferenceUnavailable(f"git {' '.join(args[:2])}: {err}")
    return run.stdout


def _git(*args: str) -> str:
    return _git_bytes(*args).decode()


def golden_revision() -> str:
    """The last commit that wrote the golden file, whose code made every recorded digest."""
    rev = _git("log", "-1", "--format=%H", "--", str(GOLDEN.relative_to(ROOT))).strip()
    if not rev:
        raise ReferenceUnavailable(f"no commit in this checkout's history wrote {GOLDEN.name}")
    if _git("show", f"{rev}:{GOLDEN.relative_to(ROOT)}") != GOLDEN.read_text():
        raise ReferenceUnavailable(f"{GOLDEN.name} has changes not committed since {rev[:10]}")
    return rev


def reference_digests() -> Digests:
    """The golden revision's digests on this machine: its lcd_cli and this script, extracted
    with `git archive` into a temporary folder (the checkout is not touched) and run there in a
    fresh interpreter with torch's AVX2 kernels and one thread, as `--json` runs here."""
    rev = golden_revision()
    with tempfile.TemporaryDirectory(prefix="lcd-golden-") as tmp:
        archive = _git_bytes("archive", "--format=tar", rev, "lcd_cli",
                             "scripts/golden_outputs.py", str(GOLDEN.relative_to(ROOT)))
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse odd members
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)  # our own repository's commit
        env = os.environ | {"PYTHONPATH": tmp, "ATEN_CPU_CAPABILITY": CAPABILITY.lower(),
                            "OMP_NUM_THREADS": "1"}
        run = subprocess.run([sys.executable, str(Path(tmp) / "scripts" / "golden_outputs.py")],
                             cwd=tmp, env=env, capture_output=True, text=True,
                             timeout=REFERENCE_TIMEOUT_S, check=False)
    if run.returncode != 0:
        raise ReferenceUnavailable(f"the golden revision {rev[:10]} failed here:\n"
                                   f"{run.stderr[-2000:]}")
    # "<sha256>  <case id>" lines, the script's output format at every golden revision
    return dict(reversed(line.split("  ", 1)) for line in run.stdout.splitlines()
                if re.fullmatch(r"[0-9a-f]{64}  .+", line))


def _write_golden(envs: list[dict]) -> None:
    """Replace the golden file atomically (a temporary file beside it, then a rename)."""
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    tmp = GOLDEN.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"environments": envs}, indent=2) + "\n")
    os.replace(tmp, GOLDEN)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true",
                      help=f"a fitter change: this machine's digests become {GOLDEN.name}'s only "
                           "environment")
    mode.add_argument("--add", action="store_true",
                      help="record this machine kind's digests, once they equal the golden "
                           "revision's outputs built here")
    mode.add_argument("--reference", action="store_true",
                      help="print the golden revision's digests, built on this machine")
    mode.add_argument("--json", action="store_true",
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
        if args.write or args.add:
            return 1
    try:
        digests = reference_digests() if args.reference else all_digests()
    except ReferenceUnavailable as exc:
        print(f"golden_outputs: {exc}", file=sys.stderr)
        return 1
    for name, value in digests.items():
        print(f"{value}  {name}")
    if args.write:
        label = machine_label()
        _write_golden([{"machine": label, "digests": digests}])
        print(f"wrote {GOLDEN} (one environment: {label})", file=sys.stderr)
        return 0
    envs = environments()
    match = matching_environment(digests, envs)
    print(f"matches the digests recorded for {match['machine']}" if match else
          "matches no recorded environment", file=sys.stderr)
    if not args.add or match:
        return 0
    try:
        reference = reference_digests()
    except ReferenceUnavailable as exc:
        print(f"golden_outputs: not added: {exc}", file=sys.stderr)
        return 1
    differ = sorted(k for k in digests if reference.get(k) != digests[k])
    if differ:
        print("golden_outputs: not added: this checkout's outputs differ from the golden "
              f"revision's on this machine for {', '.join(differ)}", file=sys.stderr)
        return 1
    label = machine_label()
    _write_golden([*envs, {"machine": label, "digests": digests}])
    print(f"added {label} to {GOLDEN}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
