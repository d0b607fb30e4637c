"""Example names as ``--family`` aliases: `lcd example hyenadna` writes what `--family hyenadna`
reads. One table; `lcd families` lists it.

Layer 5 (pipeline).
"""

from __future__ import annotations

from lcd_cli.errors import LcdError
from lcd_cli.families.config import builtin_configs

# example name -> the built-in config(s) its checkpoint is read with (comma-separated).
FAMILY_ALIASES: dict[str, str] = {
    "hyenadna": "hyenadna-hf",
    "long-conv": "safari-long-conv",
    "long-conv-bidir": "safari-long-conv-bidir",
    "evo2": "evo2-se,evo2-mr,evo2-li",
    "m2": "m2-bert",
    "s4-diag": "s4",
    "s4-dplr": "s4",
    "stu": "flash-stu",
    "stu-approx": "flash-stu-approx",
}


def resolve_family(family: str | None) -> str | None:
    """``--family`` with aliases expanded; an unknown name is an LcdError listing the choices."""
    if family is None:
        return None
    names = {c.name for c in builtin_configs()}
    out: list[str] = []
    for item in (s.strip() for s in family.split(",")):
        if item in names:
            out.append(item)
        elif item in FAMILY_ALIASES:
            out += FAMILY_ALIASES[item].split(",")
        else:
            raise LcdError(f"unknown family '{item}'", key="--family",
                           hint=f"choose one of {', '.join(sorted(names))} (configs) or "
                           f"{', '.join(FAMILY_ALIASES)} (example names); see `lcd families`")
    return ",".join(dict.fromkeys(out))


def aliases_of(config: str) -> list[str]:
    """The example names that stand for ``config``."""
    return [a for a, target in FAMILY_ALIASES.items() if config in target.split(",")]
