# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The package's import graph: no cycle, and nothing below the Lightning module imports it.

Edges are the imports a module runs when it is imported (module-level ``import`` and ``from`` statements, not those
inside functions), with the ``__init__`` of every other sub-package on the way (a module's own packages are already
imported when it runs). The root package's ``__init__`` is the package's face, which re-exports ``BayesPFL`` for
``--model BayesPFL``: importing any module runs it first, so it is left out.
"""

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).parents[2] / "anomalib_bayes_pfl"
PACKAGE = "anomalib_bayes_pfl"
LIGHTNING_MODULE = f"{PACKAGE}.model.lightning_model"
# Entry points above the Lightning module: they may use it.
ABOVE = {PACKAGE, f"{PACKAGE}.demo", f"{PACKAGE}.benchmark", f"{PACKAGE}.benchmark.__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.parse(path.read_text()).body:  # module level only: imports in functions run later
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        edges = set()
        for target in targets:
            if target.split(".")[0] != PACKAGE:
                continue
            parts = target.split(".")
            edges |= {".".join(parts[:end]) for end in range(2, len(parts) + 1)}  # sub-packages on the way
        own_packages = {".".join(name.split(".")[:end]) for end in range(1, len(name.split(".")) + 1)}
        graph[name] = {edge for edge in edges if edge in modules and edge not in own_packages}
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    circles = sorted(name for name in graph if name in _reaches(graph, name))
    assert not circles, f"modules on an import cycle: {circles}"


def test_nothing_below_the_lightning_module_imports_it():
    graph = _graph()
    importers = {name for name in graph if LIGHTNING_MODULE in _reaches(graph, name)}
    assert importers <= ABOVE, f"import the Lightning module: {sorted(importers - ABOVE)}"


def test_the_check_sees_imports():
    """The graph is not empty: the check would catch a cycle (the torch model imports its layers)."""
    graph = _graph()
    assert f"{PACKAGE}.model.flows" in graph[f"{PACKAGE}.model.torch_model"]
    assert LIGHTNING_MODULE in graph[PACKAGE]
