# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Import ``anomalib_bayes_pfl`` right after ``anomalib.models``, so ``--model BayesPFL`` resolves by name.

anomalib has no plugin entry points: its CLI finds models among the already imported subclasses of
``AnomalibModule``. A ``.pth`` file runs :func:`install` at interpreter start; it only adds a meta-path finder
(standard library only, nothing heavy is imported), which imports the plugin once ``anomalib.models`` has executed.
Set ``ANOMALIB_BAYES_PFL_NO_AUTOLOAD=1`` to switch it off.
"""

import importlib.abc
import importlib.machinery
import os
import sys

TARGET = "anomalib.models"
PLUGIN = "anomalib_bayes_pfl"
DISABLE_VARIABLE = "ANOMALIB_BAYES_PFL_NO_AUTOLOAD"


class _ImportAfterAnomalibModels(importlib.abc.MetaPathFinder):
    """Wrap the loader of ``anomalib.models`` so that executing it also imports the plugin."""

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        finally:
            self._searching = False
        if spec is None or spec.loader is None:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _import_plugin()

        spec.loader.exec_module = exec_module
        return spec


def _import_plugin() -> None:
    try:
        __import__(PLUGIN)
    except Exception as error:
        sys.stderr.write(f"[{PLUGIN}] autoload failed: {error!r}; use --model {PLUGIN}.BayesPFL instead.\n")


def install() -> None:
    """Install the finder once (site-packages can be processed twice); also the PEP 829 ``.start`` entry point."""
    if os.environ.get(DISABLE_VARIABLE):
        return
    if TARGET in sys.modules:
        _import_plugin()
        return
    if not any(isinstance(finder, _ImportAfterAnomalibModels) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ImportAfterAnomalibModels())
