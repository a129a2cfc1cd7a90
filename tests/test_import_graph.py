"""The package's layers point one way: no import cycle between modules or between subpackages, counting every
import (inside functions and under `if TYPE_CHECKING:` too: neither may hide a cycle), every import goes to the
same or a lower layer, no `"module:attribute"` string of the family registry names a higher layer, and no data
module imports another's private names (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "retvlp"

# Lowest first. A module belongs to the layer of its top-level subpackage (or its own name at the top level).
LAYERS = [
    ("foundation", {"common", "runtime", "prompts", "tokenization", "lazy", "artifact_hooks"}),
    ("data", {"data", "synthetic"}),
    ("models", {"families", "family_specs", "maskedclip", "keepfit", "ibq", "registration", "lora"}),
    ("training", {"training"}),
    ("evaluation", {"evaluation", "run", "export", "benchmarks"}),
    ("hub and cards", {"hub", "model_card", "model_cards"}),
    ("cli", {"cli"}),
    ("package", {""}),  # retvlp/__init__.py
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every retvlp module `path` imports, anywhere in the file (functions included)."""
    name = module_name(path)
    package = name if is_package(path) else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from .x import y` may import the submodule x.y or a name of x.
            targets = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted((SRC / PACKAGE).rglob("*.py"))
    modules = {module_name(path) for path in files}
    # A module's own package __init__ importing it back is how packages work, not a cycle: parent packages
    # are not edges.
    return {module_name(path): imported_modules(path, modules) for path in files}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for module, targets in graph.items():
        units.setdefault(unit_of(module), set()).update(
            unit_of(t) for t in targets if unit_of(t) != unit_of(module)
        )
    return units


def test_no_module_level_cycle():
    assert cycles(import_graph()) == []


def test_no_subpackage_cycle():
    # The package root names everything (its lazy exports and the registration); nothing imports it back.
    assert cycles(package_graph(import_graph())) == []


def test_imports_point_down_the_layers():
    rank = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}
    graph = import_graph()
    unknown = sorted({unit_of(m) for m in graph} - set(rank))
    assert not unknown, (
        f"modules outside every layer (add them to LAYERS and docs/architecture.md): {unknown}"
    )
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if rank[unit_of(target)] > rank[unit_of(module)]
    )
    assert upward == []


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path, monkeypatch):
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (package / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    monkeypatch.setattr(f"{__name__}.SRC", tmp_path)
    assert cycles(import_graph()) == [["retvlp.a", "retvlp.b"]]


@pytest.mark.parametrize("name", ["common", "families", "lazy", "artifact_hooks"])
def test_foundation_imports_nothing_of_the_package(name):
    graph = import_graph()
    members = [m for m in graph if unit_of(m) == name]
    assert members, name
    outside = sorted(t for m in members for t in graph[m] if unit_of(t) != name)
    assert outside == []


def test_the_checker_sees_a_cycle_hidden_under_type_checking(tmp_path, monkeypatch):
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import g\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .a import g\n"
    )
    monkeypatch.setattr(f"{__name__}.SRC", tmp_path)
    assert cycles(import_graph()) == [["retvlp.a", "retvlp.b"]]


def test_the_family_registry_names_nothing_above_its_layer():
    """The registry (`families.py` and the built-in entries of `family_specs/`) names classes by
    "module:attribute" strings, which no import check sees: each must name a module of its own layer or below
    (the training and card parts register themselves in their layers)."""
    rank = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}
    files = [SRC / PACKAGE / "families.py", *sorted((SRC / PACKAGE / "family_specs").glob("*.py"))]
    named = {
        node.value.partition(":")[0]
        for path in files
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if node.value.startswith(PACKAGE + ".") and ":" in node.value
    }
    assert named, "the registry names its classes by 'module:attribute'"
    above = sorted(m for m in named if rank[unit_of(m)] > rank["families"])
    assert above == []


def test_no_data_module_imports_another_ones_private_names():
    found = []
    for path in sorted((SRC / PACKAGE / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGE)):
                private = [
                    a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                ]
                if private:
                    found.append(f"{path.name}: from {'.' * node.level}{node.module or ''} import {private}")
    assert found == []
