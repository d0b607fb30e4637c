"""What a family config is, as data (layer 3, families; imports nothing of lcd): the parsed form
of one ``configs/*.yaml`` (parsing and validation: lcd_cli.families.config)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DimSpec = int | tuple[int | None, int | None] | None  # one dim of a match_shapes entry


@dataclass(frozen=True)
class ConfigKey:
    """Where a model's own config (config.json, a training config) states an option.

    Attributes:
        path: dotted key path into the config document (``model.layer.modulate``).
        values: upstream value -> option value (e.g. ``{true: fixed}`` for TNN ``use_decay``);
            None: the upstream value is the option's value. A value not in the map says nothing.
    """

    path: str
    values: dict[Any, Any] | None = None


@dataclass(frozen=True)
class Ambiguity:
    """An option that upstream variants set differently, with nothing in the keys to tell.

    Attributes:
        variants: option value -> the upstream code or config that uses it (file, commit).
        when: only while these other options have these values (e.g. TNN ``gamma`` matters
            only with ``decay: learned``); empty: always.
    """

    variants: dict[Any, str]
    when: dict[str, Any] = field(default_factory=dict)


def shape_matches(shape: tuple[int, ...], spec: tuple[DimSpec, ...]) -> bool:
    """Whether a tensor shape fits a match_shapes entry (same rank, every dim within spec)."""
    if len(shape) != len(spec):
        return False
    for size, d in zip(shape, spec, strict=True):
        if isinstance(d, int) and size != d:
            return False
        if isinstance(d, tuple) and not ((d[0] is None or size >= d[0])
                                         and (d[1] is None or size <= d[1])):
            return False
    return True


@dataclass(frozen=True)
class FamilyConfig:
    """One checkpoint layout of one long-conv family.

    Attributes:
        name: id used by ``--family`` (e.g. ``hyenadna-hf``).
        family: kernel family (``hyena``, ``modal``, ``explicit``...).
        layer: regex that must fully match a layer's key prefix; named groups (``layer`` for
            the index, others such as ``parent``) may be used in ``skip``.
        required: keys relative to the prefix that every layer has (used to find layers).
        optional: keys relative to the prefix that a layer may have.
        generator: globs relative to the prefix: the kernel generator, replaced on distillation.
        skip: template of the full key of the skip term D (``{prefix}``, regex groups), or None.
        materializer: name of the kernel materializer (see ``lcd_cli.families.kernels``).
        options: materializer options (validated by the materializer).
        causal: False for bidirectional kernels.
        distill: False for layers that are recognised but left alone (e.g. short filters).
        match_shapes: per relative key, the shape it must have for a prefix to be a layer of
            this config: one entry per dim, None (any size), an int (exact) or (lo, hi)
            (inclusive; None = open end). Tells apart layouts that share key names.
        model_config: option -> where the model's own config states it, first found wins.
        ambiguous: options that upstream variants disagree on: unless the command line, the
            model's config or tensor evidence decides, lcd stops and names the variants.
        identify: (path, values) pairs of a model config that name this layout, to choose
            between configs whose keys are the same (any pair matching identifies it).
    """

    name: str
    family: str
    layer: re.Pattern[str]
    required: tuple[str, ...]
    generator: tuple[str, ...]
    materializer: str
    description: str = ""
    source: str = ""
    optional: tuple[str, ...] = ()
    skip: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    causal: bool = True
    distill: bool = True
    match_shapes: dict[str, tuple[DimSpec, ...]] = field(default_factory=dict)
    model_config: dict[str, tuple[ConfigKey, ...]] = field(default_factory=dict)
    ambiguous: dict[str, Ambiguity] = field(default_factory=dict)
    identify: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    path: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
