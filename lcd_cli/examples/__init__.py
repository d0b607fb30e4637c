"""Small, deterministic example checkpoints in the real key layouts of each family.

They hold the long-conv generators plus the surrounding tensors a real model has (embeddings,
projections, norms, an attention block), so pass-through and detection are exercised too.
Weights are drawn from a seeded generator with upstream-like initialisation; the kernels look
like trained ones (smooth, decaying) rather than pure noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from lcd_cli.errors import LcdError
from lcd_cli.examples.causal import evo2, hyenadna, long_conv, stripedhyena
from lcd_cli.examples.noncausal import long_conv_bidir, m2, tnn, tnn_bidir
from lcd_cli.examples.ssm import h3, s4, s4_diag, s4d
from lcd_cli.examples.stu import stu, stu_approx
from lcd_cli.examples.weights import Tensors
from lcd_cli.io.checkpoint import OutEntry, atomic_output, write_index, write_safetensors

EXAMPLES: dict[str, Callable[..., Tensors]] = {
    "hyenadna": hyenadna,
    "stripedhyena": stripedhyena,
    "long-conv": long_conv,
    "evo2": evo2,
}
EXAMPLES |= {"m2": m2, "long-conv-bidir": long_conv_bidir, "tnn": tnn, "tnn-bidir": tnn_bidir}
EXAMPLES |= {"s4d": s4d, "s4-diag": s4_diag, "s4-dplr": s4, "h3": h3}  # SSM-parameterised
EXAMPLES |= {"stu": stu, "stu-approx": stu_approx}  # Flash-STU (exact / approx mode)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
           "fp64": torch.float64}


def make_example(name: str, seed: int = 0, dtype: str = "fp32", **sizes: int) -> Tensors:
    if name not in EXAMPLES:
        raise LcdError(f"unknown example '{name}'", hint=f"choose one of {', '.join(EXAMPLES)}")
    if dtype not in _DTYPES:
        raise LcdError(f"unknown dtype '{dtype}'", hint=f"choose one of {', '.join(_DTYPES)}")
    g = torch.Generator().manual_seed(seed)
    tensors = EXAMPLES[name](g, **sizes)
    # Modal parameters stay float32 (upstream keeps them in fp32 whatever the model dtype).
    keep = ("filter.poles", "filter.residues", "filter.log_poles")
    # Integer buffers (e.g. S4's l_kernel) keep their dtype.
    return {k: v if not v.is_floating_point() else
            v.to(torch.float32 if k.endswith(keep) and dtype != "fp64" else _DTYPES[dtype])
            for k, v in tensors.items()}


def write_example(tensors: Tensors, output: Path, *, shards: int = 1, force: bool = False,
                  metadata: dict[str, str] | None = None) -> list[Path]:
    """Write one file, or ``shards`` shards plus an index in the folder ``output``."""
    meta = {"format": "pt", **(metadata or {})}
    if shards <= 1:
        with atomic_output(output, force=force) as tmp:
            write_safetensors(tmp, [OutEntry.tensor(k, v) for k, v in tensors.items()], meta)
        return [output]
    names = list(tensors)
    per = math.ceil(len(names) / shards)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    with atomic_output(output, force=force, directory=True) as tmp:
        weight_map = {}
        for i, fname in enumerate(files):
            chunk = names[i * per : (i + 1) * per]
            write_safetensors(tmp / fname, [OutEntry.tensor(k, tensors[k]) for k in chunk], meta)
            weight_map |= dict.fromkeys(chunk, fname)
        total = sum(v.numel() * v.element_size() for v in tensors.values())
        write_index(tmp / "model.safetensors.index.json", weight_map, total, {})
    return [output / "model.safetensors.index.json"] + [output / f for f in files]
