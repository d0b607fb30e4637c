"""Finding long-conv layers in a checkpoint from family configs (a plan; no tensor is loaded).

A layer is identified by its key prefix (e.g. ``hyena.backbone.layers.0.mixer.filter_fn``): a
prefix that fully matches the config's ``layer`` regex and under which every ``required`` key
exists. Families are detected by which configs find layers; overlapping matches are ambiguous.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lcd_cli.errors import LcdError
from lcd_cli.families.config import builtin_configs, load_builtin, load_config
from lcd_cli.families.kernels import MATERIALIZERS
from lcd_cli.families.spec import FamilyConfig, shape_matches
from lcd_cli.families.view import Layer, LayerView
from lcd_cli.io.checkpoint import Checkpoint


def find_layers(ckpt: Checkpoint, config: FamilyConfig) -> list[Layer]:
    """All layers of ``config`` in ``ckpt``, sorted by layer index then prefix."""
    keys = ckpt.keys()
    prefixes: dict[str, dict[str, str]] = {}
    for key in keys:
        for req in config.required:
            if key.endswith("." + req):
                prefix = key[: -len(req) - 1]
                m = config.layer.fullmatch(prefix)
                if m and prefix not in prefixes:
                    prefixes[prefix] = {k: v for k, v in m.groupdict().items() if v is not None}
    by_prefix: dict[str, list[str]] = {p: [] for p in prefixes}
    for key in keys:
        # Attribute each key to the longest layer prefix it starts with.
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            cand = ".".join(parts[:cut])
            if cand in by_prefix:
                by_prefix[cand].append(key[len(cand) + 1 :])
                break
    layers = []
    for prefix, groups in prefixes.items():
        rel_keys = tuple(sorted(by_prefix[prefix]))
        if not all(r in rel_keys for r in config.required):
            continue
        # Layouts sharing key names (Evo 2 Hyena-MR and -SE both have filter.h) differ in shape.
        if not all(r in rel_keys and shape_matches(ckpt.info(f"{prefix}.{r}").shape, spec)
                   for r, spec in config.match_shapes.items()):
            continue
        gen = tuple(f"{prefix}.{r}" for r in rel_keys
                    if any(fnmatch.fnmatchcase(r, g) for g in config.generator))
        skip = None
        if config.skip:
            candidate = config.skip.format(prefix=prefix, **groups)
            skip = candidate if candidate in ckpt else None
        layer = Layer(prefix, config, groups, rel_keys, gen, skip)
        if _materializer(config).accepts(LayerView(ckpt, layer), config.options):
            layers.append(layer)
    return sorted(layers, key=lambda la: (la.index if la.index is not None else -1, la.prefix))


def select_configs(
    ckpt: Checkpoint,
    family: str | None = None,
    config_path: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> list[tuple[FamilyConfig, list[Layer]]]:
    """Configs to use and their layers: the one asked for, else every built-in that matches.

    ``options`` override materializer options of every chosen config (e.g. ``length``).

    Raises LcdError when nothing matches, or when two configs claim the same layer.
    """
    if config_path is not None:
        chosen = [load_config(config_path)]
    elif family is not None:
        chosen = [load_builtin(name.strip()) for name in family.split(",")]
    else:
        chosen = builtin_configs()
    if options:
        chosen = [replace(c, options={**c.options, **options}) for c in chosen]
    found = [(cfg, layers) for cfg in chosen if (layers := find_layers(ckpt, cfg))]
    if not found:
        tried = ", ".join(c.name for c in chosen)
        hint = ("pass --family NAME or --config PATH for this layout"
                if family is None and config_path is None
                else "check the config's 'layer' regex and 'required' keys against `lcd inspect "
                "--keys`")
        raise LcdError(f"no long-conv layer found (configs tried: {tried}); the checkpoint has "
                       f"{len(ckpt.keys())} tensors, e.g. {', '.join(ckpt.keys()[:3])}",
                       file=ckpt.source, hint=hint)
    owner: dict[str, FamilyConfig] = {}
    clashes: list[str] = []
    two_sided = False  # a causal and a non-causal config claim the same layer
    for cfg, layers in found:
        for layer in layers:
            if layer.prefix in owner:
                clashes.append(f"'{layer.prefix}' ({owner[layer.prefix].name} and {cfg.name})")
                two_sided |= owner[layer.prefix].causal != cfg.causal
            owner[layer.prefix] = cfg
    if clashes:
        hint = "choose one with --family NAME (they differ in kernel options)"
        if two_sided:
            hint = ("the keys cannot tell the causal variant from the bidirectional (non-causal) "
                    "one; " + hint)
        raise LcdError(f"several family configs match the same layers: {', '.join(clashes[:3])}",
                       file=ckpt.source, hint=hint)
    return found


def layer_summary(ckpt: Checkpoint, layer: Layer) -> dict[str, Any]:
    """Channels, length and generator size of a layer, from headers only."""
    view = LayerView(ckpt, layer)
    channels, length = MATERIALIZERS[layer.config.materializer].shape(view, layer.config.options)
    dtypes = sorted({ckpt.info(k).dtype for k in layer.generator_keys})
    return {
        "name": layer.prefix,
        "family": layer.config.name,
        "channels": channels,
        "length": length,
        "dtype": ",".join(dtypes),
        "generator_params": sum(ckpt.info(k).numel for k in layer.generator_keys),
        "distill": layer.config.distill,
    }


def _materializer(config: FamilyConfig) -> Any:
    return MATERIALIZERS[config.materializer]


def materialize_two_sided(
    ckpt: Checkpoint, layer: Layer
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A non-causal layer's halves k_fwd[tau] = h[tau], k_rev[j] = h[-(j+1)] (C, L) float64
    and its skip term D (C,) (None if absent)."""
    k_fwd, D = materialize(ckpt, layer)  # (C, L), (C,)
    k_rev = _materializer(layer.config).kernel_rev(LayerView(ckpt, layer),
                                                   layer.config.options)  # (C, L)
    if k_rev.shape != k_fwd.shape:
        raise LcdError(f"the reverse kernel is {tuple(k_rev.shape)}, the forward one "
                       f"{tuple(k_fwd.shape)}", file=ckpt.source, key=layer.prefix)
    if not torch.isfinite(k_rev).all():
        raise LcdError("the materialized reverse kernel holds NaN or Inf", file=ckpt.source,
                       key=layer.prefix)
    return k_fwd, k_rev, D


def generator_info(ckpt: Checkpoint, layer: Layer) -> dict[str, Any]:
    """The materializer's facts about the layer's generator (may load tensors)."""
    return _materializer(layer.config).info(LayerView(ckpt, layer), layer.config.options)


def source_modes(ckpt: Checkpoint, layer: Layer) -> torch.Tensor | None:
    """Poles (C, M) of the layer's own diagonal realization, for SSM-parameterised sources
    (an extra start of the order-reduction fit); None for other generators."""
    modes = _materializer(layer.config).modes(LayerView(ckpt, layer), layer.config.options)
    return None if modes is None else modes[0]


def materialize(ckpt: Checkpoint, layer: Layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's kernel h (C, L) float64 and skip term D (C,) float64 (None if absent)."""
    view = LayerView(ckpt, layer)
    h = MATERIALIZERS[layer.config.materializer].kernel(view, layer.config.options)  # (C, L)
    if not torch.isfinite(h).all():
        raise LcdError("the materialized kernel holds NaN or Inf (overflow in the generator?)",
                       file=ckpt.source, key=layer.prefix)
    D = None
    if layer.skip_key is not None:
        D = ckpt.get(layer.skip_key, torch.float64).reshape(-1)  # (C,)
        if D.numel() != h.shape[0]:
            raise LcdError(f"the skip term has {D.numel()} values but the kernel has "
                           f"{h.shape[0]} channels", file=ckpt.source, key=layer.skip_key)
    return h, D
