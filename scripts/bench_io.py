"""Checkpoint I/O before/after the hardening of issue 15: load, header parse, write + commit.

Loads the old ``lcd_cli/io/checkpoint.py`` from a git revision as a separate module and times
it against the current one, interleaved (old, new, old, new, ...) so that machine noise hits
both alike; prints the median seconds of each and their ratio new / old.

    python scripts/bench_io.py --rev 4abaab1 --mib 256 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from lcd_cli.io import checkpoint as new
from lcd_cli.io.transaction import OutputTransaction, Target

ROOT = Path(__file__).resolve().parents[1]


def old_module(rev: str) -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{rev}:lcd_cli/io/checkpoint.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("old_checkpoint", loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    exec(compile(src, f"{rev}:checkpoint.py", "exec"), mod.__dict__)  # our own file, an older version
    return mod


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="4abaab1", help="git revision of the old checkpoint.py")
    ap.add_argument("--mib", type=int, default=256, help="size of the big tensor (MiB)")
    ap.add_argument("--small", type=int, default=2000, help="number of small tensors")
    ap.add_argument("--header-entries", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args()
    old = old_module(args.rev)
    work = Path(tempfile.mkdtemp(prefix="lcd-bench-io-"))
    big = torch.randn(args.mib << 18)  # (mib * 2^18,) float32 = mib MiB
    small = {f"s{i}": torch.randn(64) for i in range(args.small)}
    many = {f"layers.{i}.w": torch.zeros(1) for i in range(args.header_entries)}
    files = {}
    for name, tensors in (("big", {"big": big}), ("small", small), ("many", many)):
        files[name] = work / f"{name}.safetensors"
        new.write_safetensors(files[name], [new.OutEntry.tensor(k, v) for k, v in tensors.items()], {})

    def load_big(mod: types.ModuleType) -> Callable[[], object]:
        return lambda: mod.open_checkpoint(files["big"]).get("big", torch.float64)

    def load_small(mod: types.ModuleType) -> Callable[[], object]:
        def run() -> None:
            ckpt = mod.open_checkpoint(files["small"])
            for k in small:
                ckpt.get(k)
        return run

    def header(mod: types.ModuleType) -> Callable[[], object]:
        return lambda: mod.open_checkpoint(files["many"])

    def write_old() -> None:
        entries = [old.OutEntry.copy(i) for i in old.open_checkpoint(files["big"]).tensors.values()]
        with old.atomic_output(work / "w_old.safetensors", force=True) as tmp:
            old.write_safetensors(tmp, entries, {})

    def write_new() -> None:
        entries = [new.OutEntry.copy(i) for i in new.open_checkpoint(files["big"]).tensors.values()]
        out = work / "w_new.safetensors"
        txn = OutputTransaction([Target(out, nbytes=new.safetensors_size(entries, {}))], force=True)
        with txn:
            new.write_safetensors(txn.path(out), entries, {})
            txn.commit()

    cases = {
        f"get one {args.mib} MiB F32 tensor as float64": (load_big(old), load_big(new)),
        f"get {args.small} tensors of 64 F32": (load_small(old), load_small(new)),
        f"open a header of {args.header_entries} entries": (header(old), header(new)),
        f"copy a {args.mib} MiB checkpoint (write + commit)": (write_old, write_new),
    }
    rows = []
    for label, (f_old, f_new) in cases.items():
        f_old(), f_new()  # warm the page cache and imports
        t_old, t_new = [], []
        for _ in range(args.repeats):
            t_old.append(timed(f_old))
            t_new.append(timed(f_new))
        m_old, m_new = statistics.median(t_old), statistics.median(t_new)
        rows.append({"case": label, "old_s": round(m_old, 4), "new_s": round(m_new, 4),
                     "ratio": round(m_new / m_old, 2)})
        print(f"{label:50s} old {m_old:8.4f} s   new {m_new:8.4f} s   new/old {m_new / m_old:5.2f}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    for p in work.iterdir():
        p.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
