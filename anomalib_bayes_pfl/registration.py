# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Make the plugin's classes reachable by their short names wherever anomalib looks them up.

The CLI resolves ``--model BayesPFL`` through the subclasses of ``AnomalibModule`` that are already imported; the
autoload hook imports this package right after ``anomalib.models``. ``anomalib.models.get_model`` and the
benchmark pipeline look names up as attributes of ``anomalib.models``, which :func:`register` provides.
"""

import importlib
import logging

logger = logging.getLogger(__name__)


def register(name: str, cls: type) -> None:
    """Expose ``cls`` as ``anomalib.models.<name>``; idempotent, and never replaces another class."""
    # import_module, not ``import anomalib.models``: during autoload the submodule is not yet an attribute of
    # its parent package.
    models = importlib.import_module("anomalib.models")
    existing = getattr(models, name, None)
    if existing is None:
        setattr(models, name, cls)
    elif existing is not cls:
        logger.warning(
            "anomalib.models.%s is already %s.%s; use the full class path %s.%s for the plugin's model.",
            name,
            existing.__module__,
            existing.__qualname__,
            cls.__module__,
            cls.__qualname__,
        )
