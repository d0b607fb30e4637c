"""Is lcd really installed for this checkout?  Used by scripts/_install.sh (run it from `/`).

    python scripts/_install_check.py ROOT [--test]

Checks, against ROOT/pyproject.toml (so a dependency listed there is a dependency checked here):
the distribution `lcd-cli` is installed at the checkout's version with the checkout's console
scripts; `lcd_cli` (and `lcd_cli.configs`, mapped from `configs/`) import from ROOT, i.e. the
install is an editable one of this checkout; every runtime dependency (with --test also every
`test` extra) is installed at a version the requirement allows and imports from outside ROOT.

Exit 0 when all holds, else 1 with one `[lcd]   - ...` line per problem on stderr. Prints
`torch` on stdout when torch is missing or too old, so that the caller can install a pinned
build first (a plain `pip install -e .` would pull an unpinned, multi-GB one).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.metadata as md
import operator
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Never import from the checkout by accident: drop this script's folder (sys.path[0]); the
# caller runs us from `/`, so the working directory does not add the checkout either.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

# Distribution name -> module name, where they differ (a new one is caught by test_packaging).
IMPORT_NAMES = {"pyyaml": "yaml"}
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
        ">": operator.gt, "<": operator.lt}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def import_name(dist: str) -> str:
    return IMPORT_NAMES.get(norm(dist), norm(dist).replace("-", "_"))


def release(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version: '2.13.0+cpu' -> (2, 13, 0)."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def satisfies(version: str, spec: str) -> bool:
    """`spec` like '>=2.4' or '>=1,<3' (release numbers only; enough for this pyproject)."""
    have = release(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.fullmatch(r"(~=|>=|<=|==|!=|>|<)\s*([^\s]+)", clause)
        if not m:
            continue
        op, want = m.group(1), release(m.group(2).rstrip(".*"))
        n = max(len(have), len(want))
        a, b = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
        if op == "~=":
            if not (a >= b and a[: len(want) - 1] == want[:-1]):
                return False
        elif not _OPS[op](a, b):
            return False
    return True


def parse_requirement(req: str) -> tuple[str, str]:
    """'torch>=2.4' -> ('torch', '>=2.4'); extras and environment markers are dropped."""
    req = req.split(";", 1)[0].strip()
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", req)
    if not m:
        raise ValueError(f"cannot read the requirement {req!r}")
    return m.group(1), m.group(3).strip().strip("()")


def read_pyproject(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:
        return _mini_toml(text)
    return tomllib.loads(text)


def _mini_toml(text: str) -> dict:
    """Tables, and `key = value` where value is a string or a (multi-line) list of strings:
    all that is read from pyproject.toml here (Python 3.10 has no tomllib)."""
    data: dict = {}
    table = data
    lines = iter(text.splitlines())
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if line.startswith("["):
            table = data
            for part in line.strip("[]").split("."):
                table = table.setdefault(part.strip().strip('"'), {})
        elif "=" in line and not line.startswith("#"):
            key, value = (s.strip() for s in line.split("=", 1))
            while value.startswith("[") and value.count("[") > value.count("]"):
                value += next(lines).split(" #", 1)[0].strip()
            with contextlib.suppress(ValueError, SyntaxError):  # inline tables, booleans: unused
                table[key.strip('"')] = ast.literal_eval(value)
    return data


def under(path: str | None, root: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(root)


def module_file(mod: object) -> str | None:
    file = getattr(mod, "__file__", None)
    if file is None and getattr(mod, "__path__", None):
        file = next(iter(mod.__path__), None)  # namespace package
    return file


def check(root: Path, with_test: bool) -> tuple[list[str], bool]:
    """Problems found, and whether torch must be installed first."""
    project = read_pyproject(root / "pyproject.toml")["project"]
    problems: list[str] = []
    found: list[str] = []
    need_torch = False

    # lcd-cli itself: this checkout's version, console scripts, and code.
    want = project["version"]
    init = (root / "lcd_cli" / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", init, re.M)
    if not m or m.group(1) != want:
        problems.append(f"lcd_cli/__init__.py __version__ {m.group(1) if m else '(none)'} "
                        f"differs from pyproject.toml's {want}: fix the checkout")
    try:
        dist = md.distribution(project["name"])
    except md.PackageNotFoundError:
        problems.append(f"{project['name']}: not installed")
    else:
        if dist.version != want:
            problems.append(f"{project['name']}: {dist.version} installed, the checkout is {want}")
        have = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
        for name, target in project.get("scripts", {}).items():
            if have.get(name) != target:
                problems.append(f"{project['name']}: console script `{name}` is not {target}")
        for mod_name, folder in (("lcd_cli", "lcd_cli"), ("lcd_cli.configs", "configs")):
            try:
                mod = importlib.import_module(mod_name)
            except Exception as e:
                problems.append(f"{mod_name}: import fails outside the checkout ({type(e).__name__}: {e})")
                break
            where = Path(module_file(mod) or "").resolve().parent
            if where != (root / folder).resolve():
                problems.append(f"{mod_name}: imports from {where}, not from this checkout "
                                f"({root / folder}); not an editable install of it")
                break

    # Dependencies, straight from pyproject.toml.
    reqs = list(project.get("dependencies", []))
    if with_test:
        reqs += project.get("optional-dependencies", {}).get("test", [])
    for req in reqs:
        name, spec = parse_requirement(req)
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name}: not installed (needs {req})")
            need_torch |= norm(name) == "torch"
            continue
        if not satisfies(version, spec):
            problems.append(f"{name}: {version} installed, needs {req}")
            need_torch |= norm(name) == "torch"
            continue
        try:
            mod = importlib.import_module(import_name(name))
        except Exception as e:
            problems.append(f"{name}: `import {import_name(name)}` fails ({type(e).__name__}: {e})")
            continue
        if under(module_file(mod), root):
            problems.append(f"{name}: imports from inside the checkout ({module_file(mod)})")
        found.append(f"{name} {version}")
    if not problems:
        print(f"[lcd] ok: {project['name']} {want} installed editable from {root} in "
              f"{sys.executable}; {', '.join(found)}", file=sys.stderr)
    return problems, need_torch


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 1 or set(argv) - {*args, "--test"}:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    root = Path(args[0]).resolve()
    problems, need_torch = check(root, "--test" in argv)
    if need_torch:
        print("torch")
    if problems:
        print(f"[lcd] not ready ({sys.executable}):", file=sys.stderr)
    for p in problems:
        print(f"[lcd]   - {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
