"""Finding long-conv layers in a checkpoint from family configs (a plan; no kernel is
computed, and only small tensors are read: tensor evidence for options).

A layer is identified by its key prefix (e.g. ``hyena.backbone.layers.0.mixer.filter_fn``; ""
for a single-layer file such as a bare filter's state dict): a prefix that fully matches the
config's ``layer`` regex and under which every ``required`` key exists. Families are detected
by which configs find layers; overlapping matches are told apart by the model's config
(``identify``) or refused. Each layer found by :func:`select_configs` carries its resolved
options and their sources (lcd_cli.families.options) and has passed the structure checks.
"""

from __future__ import annotations

import fnmatch
import string
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lcd_cli.errors import LcdError
from lcd_cli.families.config import builtin_configs, load_builtin, load_config
from lcd_cli.families.kernels import MATERIALIZERS
from lcd_cli.families.model_config import ModelConfig, describe, load_model_config, parse_sets
from lcd_cli.families.options import Chosen, check_cli_options, identifies, resolve_layer
from lcd_cli.families.spec import FamilyConfig, shape_matches
from lcd_cli.families.view import Layer, LayerView, join_key
from lcd_cli.io.checkpoint import Checkpoint
from lcd_cli.numerics.finite import all_finite


class _Blank(dict[str, str]):
    """Template fields of a ``skip`` key: a regex group that did not take part is ""."""

    def __missing__(self, key: str) -> str:
        return ""


def _skip_key(template: str, prefix: str, groups: dict[str, str]) -> str:
    """``skip`` with its fields filled; an empty field drops its dot (``{parent}.D`` -> ``D``)."""
    filled = string.Formatter().vformat(template, (), _Blank(groups, prefix=prefix))
    return ".".join(part for part in filled.split(".") if part)


def find_layers(ckpt: Checkpoint, config: FamilyConfig) -> list[Layer]:
    """All layers of ``config`` in ``ckpt``, sorted by layer index then prefix."""
    keys = ckpt.keys()
    prefixes: dict[str, dict[str, str]] = {}
    for key in keys:
        for req in config.required:
            if key == req or key.endswith("." + req):
                prefix = key[: -len(req) - 1] if key != req else ""
                m = config.layer.fullmatch(prefix)
                if m and prefix not in prefixes:
                    prefixes[prefix] = {k: v for k, v in m.groupdict().items() if v is not None}
    by_prefix: dict[str, list[str]] = {p: [] for p in prefixes}
    for key in keys:
        # Attribute each key to the longest layer prefix it starts with.
        parts = key.split(".")
        for cut in range(len(parts) - 1, -1, -1):
            cand = ".".join(parts[:cut])  # "" last: a single-layer file's prefix
            if cand in by_prefix:
                by_prefix[cand].append(key[len(cand) + 1 :] if cand else key)
                break
    layers = []
    for prefix, groups in prefixes.items():
        rel_keys = tuple(sorted(by_prefix[prefix]))
        if not all(r in rel_keys for r in config.required):
            continue
        # Layouts sharing key names (Evo 2 Hyena-MR and -SE both have filter.h) differ in shape.
        if not all(r in rel_keys and shape_matches(ckpt.info(join_key(prefix, r)).shape, spec)
                   for r, spec in config.match_shapes.items()):
            continue
        gen = tuple(join_key(prefix, r) for r in rel_keys
                    if any(fnmatch.fnmatchcase(r, g) for g in config.generator))
        skip = None
        if config.skip:
            candidate = _skip_key(config.skip, prefix, groups)
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
    *,
    sets: Sequence[str] | Mapping[str, Any] | None = None,
    model_config: str | Path | None = None,
) -> list[tuple[FamilyConfig, list[Layer]]]:
    """Configs to use and their layers, each layer with its resolved options and sources.

    Args:
        family / config_path: the config(s) asked for; else every built-in that matches.
        options: options set by a command-line flag of their own (``{"length": N}`` from
            ``--length``), recorded as ``cli (--length)``.
        sets: ``--set NAME=VALUE`` items (or an already parsed mapping), recorded as
            ``cli (--set)``; each name must be an option of a config in use.
        model_config: ``--model-config FILE``; else the checkpoint folder's ``config.json``.

    Each returned config carries the options its layers resolved to (they must agree: the
    config is echoed into the distilled checkpoint for ``lcd verify``); each layer carries
    its own copy (``layer.config.options``) and ``layer.sources``.

    Raises LcdError when nothing matches, when two configs claim the same layer and the model
    config does not say which, when an ambiguous option is undecided, or when a layer's
    parameters do not have the structure its config declares.
    """
    if config_path is not None:
        chosen = [load_config(config_path)]
    elif family is not None:
        chosen = [load_builtin(name.strip()) for name in family.split(",")]
    else:
        chosen = builtin_configs()
    set_values = parse_sets(sets)
    check_cli_options(chosen, set_values)
    cli: Chosen = {k: (v, f"cli (--{k})") for k, v in (options or {}).items() if v is not None}
    cli |= {k: (v, "cli (--set)") for k, v in set_values.items()}
    model = load_model_config(ckpt.source, model_config)
    defaults = {c.name: c.options for c in chosen}
    searched = [replace(c, options={**c.options, **{k: v for k, (v, _) in cli.items()
                                                    if k in MATERIALIZERS[c.materializer].options
                                                    or k == "length"}})
                for c in chosen]
    found = [(cfg, layers) for cfg in searched if (layers := find_layers(ckpt, cfg))]
    if not found:
        tried = ", ".join(c.name for c in chosen)
        hint = ("pass --family NAME or --config PATH for this layout"
                if family is None and config_path is None
                else "check the config's 'layer' regex and 'required' keys against `lcd inspect "
                "--keys`")
        raise LcdError(f"no long-conv layer found (configs tried: {tried}); the checkpoint has "
                       f"{len(ckpt.keys())} tensors, e.g. {', '.join(ckpt.keys()[:3])}",
                       file=ckpt.source, hint=hint)
    found = _settle_clashes(ckpt, found, model)
    resolved = []
    for cfg, layers in found:
        mine = {k: v for k, v in cli.items()
                if k in MATERIALIZERS[cfg.materializer].options or k == "length"}
        cfg_layers = [resolve_layer(ckpt, layer, mine, model, defaults[cfg.name])
                      for layer in layers]
        for layer in cfg_layers:
            check_structure(ckpt, layer)
        resolved.append((_common(ckpt, cfg, cfg_layers), cfg_layers))
    return resolved


def _settle_clashes(ckpt: Checkpoint, found: list[tuple[FamilyConfig, list[Layer]]],
                    model: ModelConfig | None) -> list[tuple[FamilyConfig, list[Layer]]]:
    """Each layer prefix owned by one config: where several claim it, the ones the model
    config identifies keep it; without a model config that decides, refuse."""
    claims: dict[str, list[FamilyConfig]] = {}
    for cfg, layers in found:
        for layer in layers:
            claims.setdefault(layer.prefix, []).append(cfg)
    drop: set[tuple[str, str]] = set()  # (config name, prefix)
    clashes: list[str] = []
    two_sided = False  # a causal and a non-causal config claim the same layer
    for prefix, cfgs in claims.items():
        if len(cfgs) < 2:
            continue
        named = [c for c in cfgs if identifies(c, model)]
        if len(named) == 1:
            drop |= {(c.name, prefix) for c in cfgs if c is not named[0]}
            continue
        clashes.append(f"'{prefix}' ({' and '.join(c.name for c in cfgs)})")
        two_sided |= len({c.causal for c in cfgs}) > 1
    if clashes:
        hint = "choose one with --family NAME (they differ in kernel options)"
        if two_sided:
            hint = ("the keys cannot tell the causal variant from the bidirectional (non-causal) "
                    "one; " + hint)
        where = (f"; the model config {model.path} does not name one of them" if model is not None
                 else "; no config.json beside the checkpoint names the model, and no "
                 "--model-config was given")
        raise LcdError(f"several family configs match the same layers: {', '.join(clashes[:3])}"
                       + where, file=ckpt.source, hint=hint)
    out = []
    for cfg, layers in found:
        kept = [la for la in layers if (cfg.name, la.prefix) not in drop]
        if kept:
            out.append((cfg, kept))
    return out


def _common(ckpt: Checkpoint, cfg: FamilyConfig, layers: list[Layer]) -> FamilyConfig:
    """``cfg`` with the options its layers resolved to, which must be the same for all."""
    first = layers[0].config.options
    for layer in layers[1:]:
        differ = sorted(k for k in first if layer.config.options.get(k) != first[k])
        if differ:
            raise LcdError(f"layers of family config '{cfg.name}' resolve to different options "
                           f"({', '.join(differ)}): '{layers[0].prefix}' has "
                           f"{describe(first, {k: layers[0].sources[k] for k in differ})}, "
                           f"'{layer.prefix}' has "
                           f"{describe(layer.config.options, {k: layer.sources[k] for k in differ})}",
                           file=ckpt.source, hint="set them for every layer with --set NAME=VALUE")
    return replace(cfg, options=dict(first))


def check_structure(ckpt: Checkpoint, layer: Layer) -> None:
    """A layer's keys match the structure its config declares: no key under the prefix that
    the config does not name (required, optional, generator globs, skip term), and the
    materializer's own checks (e.g. contiguous MLP layers). Raises LcdError naming them."""
    config = layer.config
    known = set(config.required) | set(config.optional)
    skip = layer.skip_key
    skip_rel = (skip if not layer.prefix else skip[len(layer.prefix) + 1:]
                if skip and skip.startswith(layer.prefix + ".") else None)
    orphans = [k for k in layer.keys if k not in known and k != skip_rel
               and not any(fnmatch.fnmatchcase(k, g) for g in config.generator)]
    problems = [f"{', '.join(join_key(layer.prefix, k) for k in orphans)} "
                f"{'is' if len(orphans) == 1 else 'are'} under the layer but not part of the "
                f"'{config.name}' layout"] if orphans else []
    problems += MATERIALIZERS[config.materializer].check_structure(LayerView(ckpt, layer),
                                                                   config.options)
    if problems:
        raise LcdError("the layer's parameters do not have the structure of its family config: "
                       + "; ".join(problems), file=ckpt.source, key=layer.prefix or None,
                       hint="is the checkpoint complete and the --family right? A layout with "
                       "more keys needs its own config (--config PATH, docs/config-schema.md)")


def layer_summary(ckpt: Checkpoint, layer: Layer) -> dict[str, Any]:
    """Channels, length and generator size of a layer, from headers only, and its options
    with their sources (``options``, ``option_sources``; one line: model_config.describe)."""
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
        "options": dict(layer.config.options),
        "option_sources": dict(layer.sources),
    }


def echo_config(config: FamilyConfig) -> dict[str, Any]:
    """The config as a distilled checkpoint records it for ``lcd verify`` (JSON-safe): its
    fields with the options its layers resolved to; the resolution fields (``model_config``,
    ``ambiguous``, ``identify``) are left out, their work being done."""
    done = ("model_config", "ambiguous", "identify")
    return {**{k: v for k, v in config.raw.items() if k not in done},
            "options": dict(config.options)}


def layer_options(layer: Layer) -> dict[str, Any]:
    """A layer's resolved options and where each came from (for plans and reports)."""
    return {"options": dict(layer.config.options), "option_sources": dict(layer.sources)}



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
    if not all_finite(k_rev):
        raise LcdError("the materialized reverse kernel holds NaN or Inf", file=ckpt.source,
                       key=layer.prefix)
    return k_fwd, k_rev, D


def generator_info(ckpt: Checkpoint, layer: Layer) -> dict[str, Any]:
    """The materializer's facts about the layer's generator (may load tensors)."""
    return _materializer(layer.config).info(LayerView(ckpt, layer), layer.config.options)


def generator_warnings(ckpt: Checkpoint, layer: Layer) -> list[str]:
    """The materializer's warnings about the layer (may load small tensors)."""
    return list(_materializer(layer.config).warnings(LayerView(ckpt, layer), layer.config.options))


def source_realization(ckpt: Checkpoint, layer: Layer
                       ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Poles and residues (C, M) complex128 of the layer's own diagonal realization, for
    SSM-parameterised sources (kernel = Re sum R p^t exactly: an extra start of the
    order-reduction fit, and the fit itself at N >= M); None for other generators."""
    return _materializer(layer.config).modes(LayerView(ckpt, layer), layer.config.options)


def materialize(ckpt: Checkpoint, layer: Layer, channels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's kernel h (C, L) float64 and skip term D (C,) float64 (None if absent);
    with ``channels`` (indices), only those channels of both."""
    view = LayerView(ckpt, layer)
    mat = MATERIALIZERS[layer.config.materializer]
    if channels is None:
        h = mat.kernel(view, layer.config.options)  # (C, L)
    else:
        h = mat.kernel_channels(view, layer.config.options, channels)  # (S, L)
    if not all_finite(h):
        raise LcdError("the materialized kernel holds NaN or Inf (overflow in the generator?)",
                       file=ckpt.source, key=layer.prefix)
    D = None
    if layer.skip_key is not None:
        D = ckpt.get(layer.skip_key, torch.float64).reshape(-1)  # (C,)
        count = h.shape[0] if channels is None else channel_count(ckpt, layer)
        if D.numel() != count:
            raise LcdError(f"the skip term has {D.numel()} values but the kernel has "
                           f"{count} channels", file=ckpt.source, key=layer.skip_key)
        if channels is not None:
            D = D[channels]  # (S,)
    return h, D


def channel_count(ckpt: Checkpoint, layer: Layer) -> int:
    """C of the layer's kernel, from shapes alone."""
    view = LayerView(ckpt, layer)
    return int(MATERIALIZERS[layer.config.materializer].shape(view, layer.config.options)[0])
