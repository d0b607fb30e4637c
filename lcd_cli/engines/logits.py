"""Model-level logits comparison shared by the engine clients (`lcd verify --engine`).

Dimensions: B batch, T tokens, V vocabulary.

A client supplies how its engine loads a model folder and how it runs one recurrently (prefill
plus one step per token); :func:`compare_models` draws seeded token batches, runs the reference
in parallel mode and the distilled model in parallel and recurrent modes, and reports the
relative l2 error of all logits and the top-1 agreement with the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lcd_cli.errors import LcdError


def logit_stats(z: torch.Tensor, ref: torch.Tensor) -> tuple[float, int, int]:
    """(||z - ref||^2, argmax matches, positions) of logits (B, T, V), in float64."""
    d = (z.double() - ref.double()).square().sum()
    same = (z.argmax(-1) == ref.argmax(-1)).sum()
    return float(d), int(same), int(ref.shape[0] * ref.shape[1])


@torch.no_grad()
def prefill_then_steps(model: Any, tokens: torch.Tensor, prompt: int, params: Any,
                       before_step: Callable[[Any, int], None] | None = None) -> torch.Tensor:
    """Logits (B, T, V) of an engine run with inference state ``params``: one prefill call on
    tokens[:, :prompt], then one call per remaining token; ``before_step(params, t)`` readies
    the state for token t where the engine needs it (e.g. sequence offsets)."""
    out, params = model(tokens[:, :prompt], inference_params_dict=params)  # (B, P, V)
    steps = [out]
    for t in range(prompt, tokens.shape[1]):
        if before_step is not None:
            before_step(params, t)
        z, params = model(tokens[:, t : t + 1], inference_params_dict=params)  # (B, 1, V)
        steps.append(z)
    return torch.cat(steps, dim=1)  # (B, T, V)


@torch.no_grad()
def compare_models(load: Callable[[Path], Any],
                   recurrent: Callable[[Any, torch.Tensor, int], torch.Tensor],
                   reference_folder: Path, distilled_folder: Path, *, batches: int, length: int,
                   seed: int, batch_size: int, first_token: int = 0) -> dict[str, Any]:
    """Logits of the distilled model against the reference's, parallel and recurrent.

    ``load(folder)`` returns the engine's model, called as ``model(tokens) -> (logits, _)``
    with ``model.config.vocab_size`` and ``.state_size``; ``recurrent(model, tokens, prompt)``
    its logits (B, T, V) from a prefill of ``prompt`` tokens and single steps. Tokens are drawn
    from [first_token, vocab).

    Returns {"parallel": {"rel_err", "top1"}, "recurrent": {"rel_err", "top1"}, "tokens",
    "batches", "length", "seed", "state_size"}; rel_err over all logits, top1 the fraction
    of positions whose argmax agrees with the reference's parallel logits.
    """
    if batches < 1 or batch_size < 1 or length < 2:
        raise LcdError(f"need batches >= 1, batch_size >= 1 and length >= 2, got {batches}, "
                       f"{batch_size}, {length}")
    ref, dist = load(reference_folder), load(distilled_folder)
    vocab = int(ref.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    norm2 = 0.0
    totals = {"parallel": [0.0, 0, 0], "recurrent": [0.0, 0, 0]}
    for _ in range(batches):
        tokens = torch.randint(first_token, vocab, (batch_size, length), generator=g)  # (B, T)
        z_ref, _ = ref(tokens)  # (B, T, V)
        norm2 += float(z_ref.double().square().sum())
        z_par, _ = dist(tokens)  # (B, T, V)
        z_rec = recurrent(dist, tokens, length // 2)  # (B, T, V)
        for name, z in (("parallel", z_par), ("recurrent", z_rec)):
            for i, v in enumerate(logit_stats(z, z_ref)):
                totals[name][i] += v
    out: dict[str, Any] = {
        name: {"rel_err": (d / max(norm2, 1e-300)) ** 0.5, "top1": same / n}
        for name, (d, same, n) in totals.items()
    }
    out |= {"tokens": batches * batch_size * length, "batches": batches, "length": length,
            "seed": seed, "state_size": int(dist.config.state_size)}
    return out
