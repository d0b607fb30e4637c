"""The package list in pyproject.toml covers every subpackage (a non-editable install ships
only what is listed)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "lcd_cli").rglob("__init__.py")}
    assert found - listed == set(), f"add {sorted(found - listed)} to [tool.setuptools] packages"


def _install_check():  # scripts/_install_check.py, the install check of scripts/_install.sh
    import importlib.util

    spec = importlib.util.spec_from_file_location("_install_check", ROOT / "scripts" / "_install_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_dependency_imports_under_the_name_the_install_check_uses() -> None:
    import importlib.util

    check = _install_check()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        name, _ = check.parse_requirement(req)
        assert importlib.util.find_spec(check.import_name(name)) is not None, (
            f"{req}: no module {check.import_name(name)!r}; add it to IMPORT_NAMES in "
            "scripts/_install_check.py")
    assert check._mini_toml((ROOT / "pyproject.toml").read_text())["project"] == {
        k: v for k, v in project.items() if k != "license"}  # the Python 3.10 fallback


def test_install_check_rejects_what_is_missing(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "lcd_cli").mkdir()
    (tmp_path / "lcd_cli" / "__init__.py").write_text((ROOT / "lcd_cli" / "__init__.py").read_text())
    text = (ROOT / "pyproject.toml").read_text()
    start = text.index("dependencies = [")
    end = text.index("]", start) + 1
    for deps, needle, torch_first in [
        ('["no-such-dist-lcd>=1", "numpy>=99"]', "no-such-dist-lcd: not installed", False),
        ('["torch>=99"]', "needs torch>=99", True),
    ]:
        (tmp_path / "pyproject.toml").write_text(text[:start] + f"dependencies = {deps}" + text[end:])
        run = subprocess.run([sys.executable, ROOT / "scripts" / "_install_check.py", tmp_path],
                             cwd="/", capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, run.stderr
        assert needle in run.stderr, run.stderr
        assert ("not from this checkout" in run.stderr  # lcd installed, but from ROOT
                or "lcd-cli: not installed" in run.stderr), run.stderr
        assert (run.stdout.split() == ["torch"]) == torch_first, run.stdout


# Real inference engines, used by lcd_cli/engines and their client tests: installed with
# `pip install --no-deps` as docs/engines.md says (their declared CUDA-only dependencies, such
# as flash-attn, do not build on CPU), so no pip extra can name them.
ENGINE_PACKAGES = ("stripedhyena", "flash_attn", "vortex")


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """What the fresh-machine CI run cannot see: a dependency dropped from pyproject.toml that
    is still installed through another one (rich comes with typer) or by the image (numpy)."""
    import ast
    import sys

    check = _install_check()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(reqs: list[str]) -> set[str]:
        return {check.import_name(check.parse_requirement(r)[0]) for r in reqs}

    runtime = names(project["dependencies"])
    allowed = {  # folder: what its code may import besides the standard library and itself
        "lcd_cli": runtime | names([r for k, v in extras.items() if k != "test" for r in v]),
        "tests": runtime | names([r for v in extras.values() for r in v]),
    }
    undeclared = set()
    for folder, ok in allowed.items():
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                        [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                        and node.module else [])
                for top in {m.split(".")[0] for m in mods} - ok - set(sys.stdlib_module_names):
                    if top not in ("lcd_cli", "tests", *ENGINE_PACKAGES):
                        undeclared.add(f"{path.relative_to(ROOT)}: {top}")
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"
