"""The layers of docs/architecture.md, checked on every import of the tree.

A lower layer never imports a higher one, components of one layer never import each
other unless the table says so, and no package loads another by a name in a string.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMPONENTS = ("media", "devices", "sfu", "signalling", "web_client")

# Which top-level packages each package may import (itself always).
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    "core": frozenset({"config"}),
    "media": frozenset({"config", "core"}),
    "devices": frozenset({"config", "core", "media"}),
    "sfu": frozenset({"config", "core", "media"}),
    "signalling": frozenset({"config", "core", "media", "sfu"}),
    "web_client": frozenset({"config", "core"}),
    "interop": frozenset({"config", "core", "media", "signalling"}),
    "teleconsult": frozenset({"config", "core", *COMPONENTS, "interop"}),
    "bench": frozenset({"config", "core", *COMPONENTS, "interop", "teleconsult"}),
}
PACKAGES = frozenset(ALLOWED)


@dataclass(frozen=True)
class Edge:
    path: str
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module name imported anywhere in the file (functions and TYPE_CHECKING too)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _string_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("__import__", "import_module"):
                lines.append(node.lineno)
    return lines


def _package_files() -> list[tuple[str, Path]]:
    return [(package, path) for package in sorted(PACKAGES)
            for path in sorted((ROOT / package).rglob("*.py"))]


def test_every_package_is_in_the_table() -> None:
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert on_disk == PACKAGES, "add the new package to ALLOWED (and to docs/architecture.md)"


def test_no_layer_imports_upward() -> None:
    wrong = []
    for package, path in _package_files():
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(Edge(str(path.relative_to(ROOT)), line, package, module))
    assert not wrong, "imports against the layers:\n" + "\n".join(map(str, wrong))


def test_nothing_but_bench_and_tests_imports_the_assembly() -> None:
    importers = {package for package, allowed in ALLOWED.items() if "teleconsult" in allowed}
    assert importers == {"bench"}


def test_no_imports_by_name_string() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}" for _, path in _package_files() for line in _string_imports(path)]
    assert not found, "load modules with import statements, not strings: " + ", ".join(found)


def test_the_table_itself_has_no_cycle() -> None:
    seen: dict[str, int] = {}

    def depth(package: str, path: tuple[str, ...] = ()) -> int:
        assert package not in path, f"cycle: {' -> '.join(path + (package,))}"
        if package not in seen:
            seen[package] = 1 + max((depth(dep, path + (package,)) for dep in ALLOWED[package]), default=0)
        return seen[package]

    for package in ALLOWED:
        depth(package)
