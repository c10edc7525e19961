# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The package's floors: each room imports only rooms on lower floors, by any kind of import, and nothing circles.

A room is a folder of the package, or a module at its top. Every import counts, wherever it stands: at module
level, inside a function (a lazy import, ``__getattr__``'s included), under ``TYPE_CHECKING``, relative or absolute,
and ``importlib.import_module`` / ``__import__`` of a literal name. The package's face (its ``__init__``) re-exports
``BayesPFL`` for ``--model BayesPFL``; importing any module of the package runs it first, which is Python's doing,
not an import of the face. The planted-violation tests show that the check fails on each kind.
"""

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).parents[2] / "anomalib_bayes_pfl"
PACKAGE = "anomalib_bayes_pfl"
FACE = "__init__"
# Floor by floor, from the ground up: a room may import its own modules and any room on a floor below.
FLOORS = (
    {"assets", "batch", "data", "parser_errors", "registration"},  # contracts, files and data, no method
    {"model"},  # the Bayes-PFL method in torch
    {"settings"},  # the options that decide the scores, resolved
    {"calibration", "reporting"},  # references and thresholds that label; what a run reports
    {"deploy"},  # exports and the inferencer that reads them
    {"adapter"},  # the anomalib module that composes the floors below
    {"benchmark", "demo", FACE},  # entry points and the package's face
)
IMPORTERS = ("import_module", "__import__")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _nearest_module(name: str, modules: set[str]) -> str | None:
    """``name`` if it is a module of the package, else the nearest package above it that is (``None``: none)."""
    parts = name.split(".")
    return next((".".join(parts[:end]) for end in range(len(parts), 0, -1) if ".".join(parts[:end]) in modules), None)


def _absolute(name: str, level: int, package: str) -> str:
    """The absolute module name of a relative import of ``level`` dots from ``package``."""
    if not level:
        return name
    parts = package.split(".")
    anchor = parts[: len(parts) - (level - 1)]
    return ".".join([*anchor, name] if name else anchor)


def _import_module_calls(tree: ast.Module, package: str) -> set[str]:
    """The literal names given to ``importlib.import_module`` / ``__import__``, under any name they are bound to."""
    bound = set(IMPORTERS)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "importlib":
            bound |= {alias.asname or alias.name for alias in node.names if alias.name in IMPORTERS}
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        arguments = [*node.args[:1], *(keyword.value for keyword in node.keywords if keyword.arg == "name")]
        if function not in bound or not arguments or not isinstance(arguments[0], ast.Constant):
            continue
        name = str(arguments[0].value)
        level = len(name) - len(name.lstrip("."))
        names.add(_absolute(name[level:], level, package))  # relative: from the module's own package
    return names


def _imported_modules(tree: ast.Module, package: str, modules: set[str]) -> set[str]:
    """Every module of the package that ``tree`` imports, anywhere in it; ``package`` anchors relative imports.

    ``from package import name`` imports the module ``package.name`` where there is one, else the package itself.
    """
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module or "", node.level, package)
            names |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    names |= _import_module_calls(tree, package)
    return {found for found in (_nearest_module(name, modules) for name in names) if found}


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Each module of the package under ``root``, and the package's modules it imports (in any way)."""
    paths = {_module_name(path, root): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imported_modules(ast.parse(path.read_text()), package, set(paths)) - {name}
    return graph


def room_of(module: str) -> str:
    """The room a module stands in: its folder under the package, or itself at the top; the face is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACE


def floor_of(room: str) -> int:
    """The floor of ``room``, counted from 1 at the ground."""
    return next(level for level, rooms in enumerate(FLOORS, start=1) if room in rooms)


def unplaced_rooms(graph: dict[str, set[str]]) -> list[str]:
    """Rooms on no floor: a new folder or top-level module must be given one."""
    placed = set().union(*FLOORS)
    return sorted({room_of(module) for module in graph} - placed)


def imports_up_or_across(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a room on the same floor or a higher one, as ``importer -> imported``."""
    found = []
    for module, targets in graph.items():
        for target in targets:
            room, other = room_of(module), room_of(target)
            if room != other and floor_of(other) >= floor_of(room):
                found.append(f"{module} -> {target}")
    return sorted(found)


def circles(graph: dict[str, set[str]]) -> list[str]:
    """The modules that reach themselves through their imports."""

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    return sorted(module for module in graph if module in reaches(module))


def test_every_room_stands_on_a_floor_and_says_its_job():
    graph = import_graph()
    assert not unplaced_rooms(graph), f"rooms on no floor (add them to FLOORS): {unplaced_rooms(graph)}"
    for folder in (path.parent for path in PACKAGE_ROOT.glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert docstring, f"{folder.name}/__init__.py says nothing of its job"


def test_every_import_runs_down_the_floors():
    assert imports_up_or_across(import_graph()) == []


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_the_check_reads_the_house():
    """Not empty: the method's own imports, the adapter's composition and the face's re-export are all seen."""
    graph = import_graph()
    assert f"{PACKAGE}.model.flows" in graph[f"{PACKAGE}.model.torch_model"]
    assert f"{PACKAGE}.deploy" in graph[f"{PACKAGE}.adapter.lightning_model"]
    assert f"{PACKAGE}.adapter" in graph[PACKAGE]


PLANTED = {
    "module level": "from anomalib_bayes_pfl.calibration.thresholds import thresholds_of\n",
    "inside a function": "def _late():\n    from anomalib_bayes_pfl.deploy import export\n    return export\n",
    "lazy __getattr__": (
        "def __getattr__(name):\n    from ..adapter.lightning_model import BayesPFL\n\n    return BayesPFL\n"
    ),
    "under TYPE_CHECKING": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import reporting\n",
    "import_module": "import importlib\n_settings = importlib.import_module('anomalib_bayes_pfl.settings')\n",
    "plain import": "import anomalib_bayes_pfl.reporting.table\n",
    "the package's face": "from anomalib_bayes_pfl import BayesPFL\n",
    "the face beside a room below": "from anomalib_bayes_pfl import BayesPFL, assets\n",
    "import_module by keyword": "import importlib\n_m = importlib.import_module(name='anomalib_bayes_pfl.deploy')\n",
    "import_module under another name": (
        "from importlib import import_module as load\n_report = load('anomalib_bayes_pfl.reporting.report')\n"
    ),
    "relative import_module": "import importlib\n_adapter = importlib.import_module('..adapter', __package__)\n",
}
EXPECTED = {
    "module level": "calibration.thresholds",
    "inside a function": "deploy.export",
    "lazy __getattr__": "adapter.lightning_model",
    "under TYPE_CHECKING": "reporting",
    "import_module": "settings",
    "plain import": "reporting.table",
    "the package's face": "",
    "the face beside a room below": "",
    "import_module by keyword": "deploy",
    "import_module under another name": "reporting.report",
    "relative import_module": "adapter",
}


@pytest.mark.parametrize("kind", PLANTED)
def test_a_planted_import_up_is_caught(kind, tmp_path):
    """Each kind of import, planted in the torch method (``model/scoring.py``) of a copy of the package, fails."""
    copy = tmp_path / PACKAGE
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.md"))
    scoring = copy / "model" / "scoring.py"
    scoring.write_text(scoring.read_text() + "\n\n" + PLANTED[kind])
    graph = import_graph(copy)
    expected = f"{PACKAGE}.{EXPECTED[kind]}".rstrip(".")
    assert imports_up_or_across(graph) == [f"{PACKAGE}.model.scoring -> {expected}"]


def test_a_planted_import_across_a_floor_and_a_circle_are_caught(tmp_path):
    """Two rooms of one floor may not lean on each other; two modules of one room may not import each other."""
    copy = tmp_path / PACKAGE
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.md"))
    table = copy / "reporting" / "table.py"
    table.write_text(table.read_text() + "\nfrom anomalib_bayes_pfl.calibration import conformal\n")
    flows = copy / "model" / "flows.py"
    flows.write_text(flows.read_text() + "\ndef _late():\n    from . import torch_model\n")
    graph = import_graph(copy)
    assert imports_up_or_across(graph) == [f"{PACKAGE}.reporting.table -> {PACKAGE}.calibration.conformal"]
    assert {f"{PACKAGE}.model.flows", f"{PACKAGE}.model.torch_model"} <= set(circles(graph))


def test_a_new_room_must_be_given_a_floor(tmp_path):
    copy = tmp_path / PACKAGE
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.md"))
    (copy / "service").mkdir()
    (copy / "service" / "__init__.py").write_text('"""Serves exports over HTTP."""\n')
    assert unplaced_rooms(import_graph(copy)) == ["service"]
