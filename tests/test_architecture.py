"""The package's structure: imports flow one way (no cycle, lower layers never import higher
ones), and only a kind's own module knows which kind or family a layer is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lcd_cli"
# Bottom to top (docs/architecture.md). A module may import its own layer and those below.
LAYERS = {
    "lcd_cli": 0, "lcd_cli.errors": 0,
    "lcd_cli.numerics": 1,
    "lcd_cli.io": 2,
    "lcd_cli.families": 3,
    "lcd_cli.kinds": 4, "lcd_cli.layouts": 4,
    "lcd_cli.pipeline": 5, "lcd_cli.examples": 5, "lcd_cli.bench": 5, "lcd_cli.engines": 5,
    "lcd_cli.runtime": 5,
    "lcd_cli.cli": 6, "lcd_cli.__main__": 6,
}
# Optional heavy dependencies that may be imported inside a function.
DEFERRED_OK = {"matplotlib", "matplotlib.pyplot", "stripedhyena", "vortex", "psutil"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[best]


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported lcd_cli module, at module level?, line) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path}: relative import at line {node.lineno}; use absolute imports")
        for name in names:
            if name.split(".")[0] == "lcd_cli" or name in DEFERRED_OK:
                found.append((name, id(node) in top, node.lineno))
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The package module an import refers to (``from a.b import c`` may name a function)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for name, _, _ in imports(path):
            target = resolve(name)
            if target and target != mod and not mod.startswith(target + ".") and target != "lcd_cli":
                edges[mod].add(target)
    return edges


def test_every_module_has_a_layer() -> None:
    for mod in MODULES:
        layer_of(mod)  # raises ValueError (max of empty) for an unplaced module


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n):], n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_imports_flow_downwards_only() -> None:
    problems = []
    for mod, path in MODULES.items():
        for name, _, line in imports(path):
            target = resolve(name)
            if target and layer_of(target) > layer_of(mod):
                problems.append(f"{mod}:{line} imports {target} (layer {layer_of(target)} > "
                                f"{layer_of(mod)})")
    assert not problems, "\n".join(problems)


def test_function_level_imports_only_defer_optional_dependencies() -> None:
    problems = [f"{mod}:{line} imports {name} inside a function"
                for mod, path in MODULES.items() for name, top, line in imports(path)
                if not top and name.split(".")[0] == "lcd_cli"
                and not path.read_text().splitlines()[line - 1].strip().startswith("if TYPE")]
    # `if TYPE_CHECKING:` blocks are module-level statements: their imports count as top.
    assert not problems, "\n".join(problems)


# A test on a layer's family or kind belongs to that kind's module (or the family's
# materializer), never to the pipeline, the commands or the CLI.
SPECIAL_CASES = re.compile(r"materializer\s*==|\.causal\b|\bis_stu\b|== \"stu\"|causal:")


@pytest.mark.parametrize("package", ["lcd_cli/pipeline", "lcd_cli/cli.py", "lcd_cli/layouts"])
def test_no_family_or_kind_special_cases_outside_kinds(package: str) -> None:
    root = PACKAGE.parent / package
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    hits = [f"{f.relative_to(PACKAGE.parent)}:{i}: {line.strip()}" for f in files
            for i, line in enumerate(f.read_text().splitlines(), 1) if SPECIAL_CASES.search(line)]
    assert files and not hits, "\n".join(hits)
