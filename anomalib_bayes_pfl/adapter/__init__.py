# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The anomalib adapter: ``BayesPFL``, the Lightning module that composes the floors below for anomalib.

``lightning_model.py`` holds the hooks, ``options.py`` the options as given and resolved, ``building.py`` what they
build (pre-processor, torch model, callbacks), ``evaluation.py`` the evaluation step, and ``command_line.py``
what a command-line user is told and where a run writes.
"""

from .lightning_model import BayesPFL

__all__ = ["BayesPFL"]
