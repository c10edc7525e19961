# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Make the plugin's classes reachable by their short names wherever anomalib looks them up.

The CLI resolves ``--model BayesPFL`` through the subclasses of ``AnomalibModule`` that are already imported; the
autoload hook imports this package right after ``anomalib.models``. ``anomalib.models.get_model`` and the
benchmark pipeline look names up as attributes of ``anomalib.models`` (``get_datamodule``: of ``anomalib.data``),
which :func:`register` provides.
"""

import importlib
import logging

logger = logging.getLogger(__name__)


def register(name: str, cls: type, *, namespace: str = "anomalib.models") -> None:
    """Expose ``cls`` as ``<namespace>.<name>``; idempotent, and never replaces another class.

    Args:
        name: Short name, e.g. ``"BayesPFL"``.
        cls: The class.
        namespace: ``anomalib.models`` for models, ``anomalib.data`` for datamodules.
    """
    # import_module, not ``import anomalib.models``: during autoload the submodule is not yet an attribute of
    # its parent package.
    module = importlib.import_module(namespace)
    existing = getattr(module, name, None)
    if existing is None:
        setattr(module, name, cls)
    elif existing is not cls:
        logger.warning(
            "%s.%s is already %s.%s; use the full class path %s.%s instead.",
            namespace,
            name,
            existing.__module__,
            existing.__qualname__,
            cls.__module__,
            cls.__qualname__,
        )
