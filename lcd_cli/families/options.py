"""Where each materializer option of a layer comes from (layer 3, families).

Every option of a layer gets a value and a recorded source, from the first of:
  1. the command line: ``--set NAME=VALUE`` (and ``--length``),
  2. the model's own config: ``config.json`` beside the checkpoint or ``--model-config FILE``,
     at the key paths the family config declares (``model_config``),
  3. evidence in the tensors (:meth:`Materializer.evidence`, e.g. a TNN ``gamma`` that is one
     constant in (0, 1) is the fixed-decay buffer),
  4. the upstream default (the family config's ``options``).
An option that upstream variants set differently (the family config's ``ambiguous``) never
falls through to 4: lcd stops, names the variants and the flag that chooses.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels import MATERIALIZERS
from lcd_cli.families.model_config import MISSING, ModelConfig, show
from lcd_cli.families.spec import FamilyConfig
from lcd_cli.families.view import Layer, LayerView
from lcd_cli.io.checkpoint import Checkpoint

DEFAULT = "default"
NOT_STORED = "default, not stored: pass --length"
STORED = "stored in the checkpoint"
Chosen = dict[str, tuple[Any, str]]  # option -> (value, source)


def from_model_config(config: FamilyConfig, model: ModelConfig | None) -> Chosen:
    """The options the model config states, at the paths ``config.model_config`` declares
    (the first path found wins); values are checked like config options."""
    if model is None:
        return {}
    materializer = MATERIALIZERS[config.materializer]
    chosen: Chosen = {}
    for name, keys in config.model_config.items():
        for key in keys:
            raw = model.lookup(key.path)
            if raw is MISSING:
                continue
            if key.values is not None:
                hits = [v for k, v in key.values.items() if k == raw and type(k) is type(raw)]
                if not hits:
                    continue  # a value the map does not name says nothing about the option
                value = hits[0]
            else:
                value = raw
            problems = materializer.check_options({name: value})
            if problems:
                raise LcdError(f"{key.path} = {show(raw)} cannot set option '{name}' of family "
                               f"config '{config.name}': {'; '.join(problems)}", file=model.path,
                               key=key.path, hint=f"fix the model config, or override it with "
                               f"--set {name}=VALUE")
            chosen[name] = (value, f"{model.label}: {key.path} {show(raw)}")
            break
    return chosen


def resolve_layer(ckpt: Checkpoint, layer: Layer, cli: Chosen, model: ModelConfig | None,
                  defaults: dict[str, Any]) -> Layer:
    """``layer`` with a config copy holding its resolved options, and their sources.

    Args:
        cli: options from the command line (value, source), already validated.
        model: the model config, if any.
        defaults: the family config's own options (the upstream defaults).
    """
    config = layer.config
    materializer = MATERIALIZERS[config.materializer]
    chosen: Chosen = {**from_model_config(config, model), **cli}
    options = {**defaults, **{k: v for k, (v, _) in chosen.items()}}
    view = LayerView(ckpt, replace(layer, config=replace(config, options=options)))
    for name, (value, reason) in materializer.evidence(view, options).items():
        if name not in chosen:
            chosen[name] = (value, f"tensor evidence: {reason}")
            options[name] = value
    undecided = [name for name, amb in config.ambiguous.items()
                 if name not in chosen and all(options.get(k) == v for k, v in amb.when.items())]
    if undecided:
        raise _ambiguous(ckpt, layer, undecided)
    sources = {}
    for name in materializer.options:
        if name in chosen:
            sources[name] = chosen[name][1]
        elif name == "length":
            sources[name] = STORED if options[name] is None else NOT_STORED
        else:
            sources[name] = DEFAULT
    return replace(layer, config=replace(config, options=options), sources=sources)


def _ambiguous(ckpt: Checkpoint, layer: Layer, names: list[str]) -> LcdError:
    config = layer.config
    parts, flags = [], []
    for name in names:
        amb = config.ambiguous[name]
        variants = "; ".join(f"{name}={show(v)} in {where}" for v, where in amb.variants.items())
        paths = ", ".join(k.path for k in config.model_config.get(name, ()))
        read = f" (lcd reads it from the model config at {paths})" if paths else ""
        parts.append(f"option '{name}' is not stored in the checkpoint and the upstream "
                     f"variants disagree: {variants}{read}")
        flags.append(" or ".join(f"--set {name}={show(v)}" for v in amb.variants))
    return LcdError(f"family config '{config.name}': " + "; ".join(parts) + "; lcd will not "
                    "guess", file=ckpt.source, key=layer.prefix,
                    hint=f"choose with {'; and '.join(flags)}, or pass the model's training "
                    "config with --model-config FILE")


def check_cli_options(configs: list[FamilyConfig], sets: dict[str, Any]) -> None:
    """Every ``--set`` name is an option of at least one config, and a valid value for each
    config that has it."""
    problems = []
    for name, value in sets.items():
        having = [c for c in configs if name in MATERIALIZERS[c.materializer].options]
        if not having:
            known = sorted({o for c in configs for o in MATERIALIZERS[c.materializer].options})
            problems.append(f"--set {name}: no family config in use has this option (options: "
                            f"{', '.join(known)})")
        for c in having:
            problems += [f"--set {name} for '{c.name}': {p}"
                         for p in MATERIALIZERS[c.materializer].check_options({name: value})]
    if problems:
        raise LcdError("; ".join(dict.fromkeys(problems)),
                       hint="see docs/config-schema.md for each materializer's options")


def identifies(config: FamilyConfig, model: ModelConfig | None) -> bool:
    """Whether the model config names ``config``'s layout (one of its ``identify`` pairs; a
    list in the model config, such as ``architectures``, matches when one element does)."""
    if model is None:
        return False
    for path, values in config.identify:
        raw = model.lookup(path)
        found = raw if isinstance(raw, list) else [raw]  # e.g. HF "architectures": [...]
        if raw is not MISSING and any(r == v and type(r) is type(v) for r in found for v in values):
            return True
    return False
