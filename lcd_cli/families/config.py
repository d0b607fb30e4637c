"""Family configs: architecture knowledge as data.

A config (``configs/*.yaml``, shipped as package data ``lcd_cli.configs``) says how to find the
long-convolution layers of one checkpoint layout and how to compute their kernels. The schema
is documented in ``docs/config-schema.md``; :func:`load_config` checks every field and lists
every problem at once.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels import MATERIALIZERS, Materializer
from lcd_cli.families.safe_yaml import parse_yaml, read_text
from lcd_cli.families.spec import Ambiguity, ConfigKey, FamilyConfig
from lcd_cli.io.checkpoint import Checkpoint

_FIELDS = {
    "name": str, "family": str, "description": str, "source": str, "layer": str,
    "required": list, "optional": list, "generator": list, "skip": (str, type(None)),
    "materializer": str, "options": dict, "causal": bool, "distill": bool,
    "match_shapes": dict, "model_config": dict, "ambiguous": dict, "identify": dict,
}
_REQUIRED = ("name", "family", "layer", "required", "generator", "materializer")


def _check_match_shapes(value: dict[str, Any]) -> list[str]:
    """Problems with a ``match_shapes`` mapping (key -> list of dim specs)."""
    problems = []
    for key, dims in value.items():
        if not isinstance(dims, list) or not dims:
            problems.append(f"match_shapes['{key}'] must be a non-empty list of dims")
            continue
        for i, d in enumerate(dims):
            ok = d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
            if isinstance(d, list):
                ends = [e for e in d if e is not None]
                ok = (len(d) == 2 and all(isinstance(e, int) and not isinstance(e, bool)
                                          and e >= 0 for e in ends)
                      and (len(ends) < 2 or ends[0] <= ends[1]))
            if not ok:
                problems.append(f"match_shapes['{key}'][{i}] must be null, a size or "
                                f"[min, max] (null = open end), got {d!r}")
    return problems


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _check_values(materializer: Materializer, name: str, values: list[Any], where: str
                  ) -> list[str]:
    """Problems with option values written in the config (each as the option would get it)."""
    if name not in materializer.options:
        return [f"{where}: materializer '{materializer.name}' has no option '{name}' (options: "
                f"{', '.join(materializer.options) or 'none'})"]
    return [f"{where}: {p}" for v in values for p in materializer.check_options({name: v})]


def _parse_model_config(value: dict[str, Any], materializer: Materializer | None
                        ) -> tuple[dict[str, tuple[ConfigKey, ...]], list[str]]:
    """``model_config``: option -> list of dotted paths or {path, values} mappings."""
    out: dict[str, tuple[ConfigKey, ...]] = {}
    problems: list[str] = []
    for name, entries in value.items():
        where = f"model_config['{name}']"
        if not isinstance(entries, list) or not entries:
            problems.append(f"{where} must be a non-empty list of key paths")
            continue
        if materializer is not None and name not in materializer.options:
            problems += _check_values(materializer, name, [], where)
            continue
        keys = []
        for i, entry in enumerate(entries):
            if isinstance(entry, str) and entry:
                keys.append(ConfigKey(entry))
                continue
            ok = (isinstance(entry, dict) and set(entry) <= {"path", "values"}
                  and isinstance(entry.get("path"), str) and entry["path"]
                  and isinstance(entry.get("values", {}), dict)
                  and all(_is_scalar(k) and _is_scalar(v)
                          for k, v in (entry.get("values") or {}).items()))
            if not ok:
                problems.append(f"{where}[{i}] must be a dotted key path or {{path: PATH, values: "
                                f"{{UPSTREAM: VALUE}}}} of scalars, got {entry!r}")
                continue
            keys.append(ConfigKey(entry["path"], dict(entry["values"]) if "values" in entry
                                  else None))
            if materializer is not None and entry.get("values"):
                problems += _check_values(materializer, name, list(entry["values"].values()),
                                          f"{where}[{i}].values")
        out[name] = tuple(keys)
    return out, problems


def _parse_ambiguous(value: dict[str, Any], materializer: Materializer | None
                     ) -> tuple[dict[str, Ambiguity], list[str]]:
    """``ambiguous``: option -> {variants: {VALUE: where upstream uses it}, when: {...}}."""
    out: dict[str, Ambiguity] = {}
    problems: list[str] = []
    for name, spec in value.items():
        where = f"ambiguous['{name}']"
        variants = spec.get("variants") if isinstance(spec, dict) else None
        when = spec.get("when", {}) if isinstance(spec, dict) else None
        if (not isinstance(spec, dict) or set(spec) - {"variants", "when"}
                or not isinstance(variants, dict) or len(variants) < 2
                or not all(isinstance(v, str) and v for v in variants.values())
                or not isinstance(when, dict)):
            problems.append(f"{where} must be {{variants: {{VALUE: 'upstream file that uses it', "
                            "...}} (at least two), when: {OPTION: VALUE} (optional)}}")
            continue
        if materializer is not None:
            problems += _check_values(materializer, name, list(variants), f"{where}.variants")
            for other, v in when.items():
                problems += _check_values(materializer, other, [v], f"{where}.when")
        out[name] = Ambiguity(dict(variants), dict(when))
    return out, problems


def _parse_identify(value: dict[str, Any]) -> tuple[tuple[tuple[str, tuple[Any, ...]], ...],
                                                     list[str]]:
    """``identify``: dotted path -> a value (or list of values) that names this layout."""
    out = []
    problems = []
    for path, want in value.items():
        values = want if isinstance(want, list) else [want]
        if not isinstance(path, str) or not path or not values or not all(map(_is_scalar, values)):
            problems.append(f"identify['{path}'] must be a scalar or a list of scalars")
            continue
        out.append((path, tuple(values)))
    return tuple(out), problems


def builtin_config_names() -> list[str]:
    files = resources.files("lcd_cli.configs")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_builtin(name: str) -> FamilyConfig:
    known = builtin_config_names()
    if name not in known:
        raise LcdError(f"unknown family '{name}'",
                       hint=f"known families: {', '.join(known)}; or pass --config PATH")
    text = resources.files("lcd_cli.configs").joinpath(f"{name}.yaml").read_text()
    return parse_config(text, f"<builtin>/{name}.yaml")


def load_config(path: str | Path) -> FamilyConfig:
    path = Path(path)
    return parse_config(read_text(path, "config"), str(path))


def builtin_configs() -> list[FamilyConfig]:
    return [load_builtin(n) for n in builtin_config_names()]


def parse_config(text: str, origin: str) -> FamilyConfig:
    """Parse and validate a config; raise one LcdError listing every problem."""
    doc = parse_yaml(text, origin, "config")
    if not isinstance(doc, dict):
        raise LcdError("the config must be a YAML mapping", file=origin)
    problems: list[str] = []
    for key in doc:
        if key not in _FIELDS:
            problems.append(f"unknown field '{key}' (known: {', '.join(_FIELDS)})")
    for key in _REQUIRED:
        if key not in doc:
            problems.append(f"missing field '{key}'")
    for key, typ in _FIELDS.items():
        if key in doc and not isinstance(doc[key], typ):
            want = typ.__name__ if isinstance(typ, type) else "string or null"
            problems.append(f"field '{key}' must be {want}, got {type(doc[key]).__name__}")
    for key in ("required", "optional", "generator"):
        if isinstance(doc.get(key), list) and not all(isinstance(x, str) for x in doc[key]):
            problems.append(f"field '{key}' must be a list of strings")
    if isinstance(doc.get("required"), list) and not doc["required"]:
        problems.append("field 'required' must name at least one key")
    if isinstance(doc.get("match_shapes"), dict):
        problems += _check_match_shapes(doc["match_shapes"])
    layer = None
    if isinstance(doc.get("layer"), str):
        try:
            layer = re.compile(doc["layer"])
        except re.error as e:
            problems.append(f"field 'layer' is not a valid regex ({e})")
    materializer = MATERIALIZERS.get(doc.get("materializer", ""))
    if isinstance(doc.get("materializer"), str) and materializer is None:
        problems.append(f"unknown materializer '{doc['materializer']}' "
                        f"(known: {', '.join(sorted(MATERIALIZERS))})")
    options = doc.get("options") or {}
    if materializer is not None and isinstance(options, dict):
        problems += materializer.check_options(options)
    model_config, ambiguous, identify = {}, {}, ()
    if isinstance(doc.get("model_config"), dict):
        model_config, found = _parse_model_config(doc["model_config"], materializer)
        problems += found
    if isinstance(doc.get("ambiguous"), dict):
        ambiguous, found = _parse_ambiguous(doc["ambiguous"], materializer)
        problems += found
    if isinstance(doc.get("identify"), dict):
        identify, found = _parse_identify(doc["identify"])
        problems += found
    skip = doc.get("skip")
    if isinstance(skip, str) and layer is not None:
        names = set(layer.groupindex) | {"prefix"}
        used = set(re.findall(r"{(\w+)}", skip))
        if used - names:
            problems.append(f"field 'skip' uses {sorted(used - names)}, not groups of 'layer' "
                            f"nor 'prefix'")
    if problems:
        raise LcdError("invalid config: " + "; ".join(problems), file=origin,
                       hint="see docs/config-schema.md")
    assert layer is not None and materializer is not None
    return FamilyConfig(
        name=doc["name"], family=doc["family"], layer=layer,
        required=tuple(doc["required"]), generator=tuple(doc["generator"]),
        materializer=doc["materializer"], description=doc.get("description", ""),
        source=doc.get("source", ""), optional=tuple(doc.get("optional") or ()),
        skip=skip, options=materializer.resolve_options(options),
        causal=doc.get("causal", True), distill=doc.get("distill", True),
        match_shapes={k: tuple(tuple(d) if isinstance(d, list) else d for d in dims)
                      for k, dims in (doc.get("match_shapes") or {}).items()},
        model_config=model_config, ambiguous=ambiguous, identify=identify,
        path=origin, raw=doc,
    )


RECORDED_CONFIG_KEY = "__metadata__.lcd_config"


def recorded_configs(ckpt: Checkpoint) -> list[FamilyConfig]:
    """The family configs `lcd distill` recorded in a checkpoint's metadata ``lcd_config``
    (config name -> config mapping, JSON), parsed as the distill used them."""
    raw = ckpt.metadata.get("lcd_config")
    if raw is None:
        raise LcdError("no lcd_config metadata: this checkpoint was not written by `lcd distill`",
                       file=ckpt.source, hint="pass the output of `lcd distill`")
    try:
        docs = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LcdError(f"lcd_config metadata is not valid JSON ({e})", file=ckpt.source,
                       key=RECORDED_CONFIG_KEY) from e
    if not isinstance(docs, dict) or not all(isinstance(d, dict) for d in docs.values()):
        raise LcdError("lcd_config metadata must be a JSON object of config name -> config "
                       f"mapping, not {type(docs).__name__}", file=ckpt.source,
                       key=RECORDED_CONFIG_KEY, hint="pass a checkpoint written by `lcd distill`")
    return [parse_config(yaml.safe_dump(doc), f"{ckpt.source}:lcd_config[{name}]")
            for name, doc in docs.items()]
