"""The import directions of megatiny's packages (docs: /DESIGN.md's layout), read from the source.

Every `import` and `from ... import` statement counts, wherever it is: at module level, inside a
function, or under `if TYPE_CHECKING:`, so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "megatiny"
SHARED_HELPERS = ("megatiny.precision", "megatiny.fileio", "megatiny.parsing", "megatiny.process_env")

# package -> the megatiny modules it must not import (prefix match on the dotted name).
FORBIDDEN = {
    "parallel": ("megatiny.model", "megatiny.training", "megatiny.checkpoint", "megatiny.eval",
                 "megatiny.data", "megatiny.cli"),
    "model": ("megatiny.training", "megatiny.checkpoint", "megatiny.eval", "megatiny.data",
              "megatiny.cli"),
}
# package -> the only megatiny modules it may import.
ALLOWED_ONLY = {"data": ("megatiny.data", *SHARED_HELPERS)}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE_ROOT) -> list[tuple[int, list[str]]]:
    """(line, absolute dotted names) of each import statement in `path`: the modules it names, and
    for `from M import x` also M.x (x may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, [name] + [f"{name}.{alias.name}" for alias in node.names]))
    return found


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _against_direction(package: str, name: str) -> bool:
    if not _matches(name, ("megatiny",)) or name == "megatiny":
        return False
    if package in FORBIDDEN:
        return _matches(name, FORBIDDEN[package])
    return not _matches(name, ALLOWED_ONLY[package])


def violations(package: str, root: Path = PACKAGE_ROOT) -> list[str]:
    """`file:line imports name` for every import of `package` against its direction."""
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for line, names in imported_modules(path, root):
            bad = [name for name in names if _against_direction(package, name)]
            if bad:
                out.append(f"{path.relative_to(root.parent)}:{line} imports {bad[0]}")
    return out


@pytest.mark.parametrize("package", ["parallel", "model", "data"])
def test_package_imports_follow_the_directions(package):
    assert violations(package) == []


def test_a_lazy_import_against_the_direction_is_found(tmp_path):
    """The check sees imports inside functions, under TYPE_CHECKING and relative ones."""
    root = tmp_path / "megatiny"
    (root / "parallel").mkdir(parents=True)
    (root / "parallel" / "__init__.py").write_text("")
    (root / "parallel" / "ok.py").write_text("import torch\nfrom megatiny.precision import Precision\n"
                                             "from megatiny.parallel import state\n")
    (root / "parallel" / "lazy.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from megatiny.model.config import ModelConfig\n"
        "def build():\n    from ..training import config\n    import megatiny.checkpoint.io\n")
    found = violations("parallel", root)
    assert found == ["megatiny/parallel/lazy.py:3 imports megatiny.model.config",
                     "megatiny/parallel/lazy.py:5 imports megatiny.training",
                     "megatiny/parallel/lazy.py:6 imports megatiny.checkpoint.io"], found
