"""The package's import structure: layers that import only downwards, no import cycle, no report reaching
into training code. (The feedback layers themselves, core/layers.py, are tested in test_models.py.)

Layers, bottom to top: core (config, data, network, rules, the training loop,
the run folder), sweeps (sweep files, the run ledger, executors, reading a
results folder), reports (table, plot, status, estimates), and the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qagrel_cli"
LAYERS = {"core": 0, "sweeps": 1, "reports": 2}
TOP = 3  # cli.py and __main__.py


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # qagrel_cli/__init__.py: the version, below everything
        return -1
    return LAYERS.get(parts[1], TOP)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from qagrel_cli.core import training` imports the module qagrel_cli.core.training
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {i}" for m, imported in graph.items() for i in imported
                  if not i.startswith(m) and layer_of(i) > layer_of(m))


def cycle(graph: dict[str, set[str]], package: Path = PACKAGE) -> list[str] | None:
    """One import cycle (its modules in order), or None. Package __init__ modules are left out:
    importing `qagrel_cli.core.x` names the package `qagrel_cli.core` without depending on its siblings."""
    packages = {module_name(p.parent / "__init__.py", package) for p in package.rglob("__init__.py")}
    edges = {m: {i for i in imported if i in graph and i not in packages} for m, imported in graph.items()
             if m not in packages}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_every_module_sits_in_a_layer_subpackage_or_is_the_cli():
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top_level == ["__init__.py", "__main__.py", "cli.py"]


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(import_graph()) == []


def test_the_import_graph_has_no_cycle():
    assert cycle(import_graph()) is None


# The modules that build and train networks. Reports read results; what a step costs they take from
# core.timing, the one module that measures it.
TRAINING_CODE = {f"qagrel_cli.core.{name}" for name in ("trainer", "training", "packs", "rules", "models", "layers",
                                                          "allocator")}


def test_no_report_imports_training_code():
    graph = import_graph()
    reaching = sorted(f"{m} -> {i}" for m, imported in graph.items() if m.startswith("qagrel_cli.reports")
                      for i in imported & TRAINING_CODE)
    assert reaching == []


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "qagrel_cli"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in ("", "core", "sweeps", "reports"):
        (package / folder).mkdir(parents=True, exist_ok=True)
        (package / folder / "__init__.py").touch()
    return package


def test_the_layer_check_catches_a_back_import(tmp_path):
    package = write_package(tmp_path, {
        "core/training.py": "def train():\n    from qagrel_cli.sweeps.ledger import run_status\n",
        "sweeps/ledger.py": "from qagrel_cli.core import training\n",
    })
    assert upward_imports(import_graph(package)) == ["qagrel_cli.core.training -> qagrel_cli.sweeps.ledger"]


@pytest.mark.parametrize("how", ["from qagrel_cli.sweeps.a import x\n", "import qagrel_cli.sweeps.a\n",
                                 "from qagrel_cli.sweeps import a\n"])
def test_the_cycle_check_catches_a_cycle_however_it_is_imported(tmp_path, how):
    package = write_package(tmp_path, {"sweeps/a.py": "from qagrel_cli.sweeps.b import y\n", "sweeps/b.py": how})
    assert cycle(import_graph(package), package) == ["qagrel_cli.sweeps.a", "qagrel_cli.sweeps.b",
                                                     "qagrel_cli.sweeps.a"]
