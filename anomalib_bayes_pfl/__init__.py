# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""anomalib-bayes-pfl: Bayes-PFL (CVPR 2025) as an anomalib 2.x model.

After ``pip install anomalib-bayes-pfl``, ``anomalib train --model BayesPFL ...`` works like any built-in model;
``anomalib_bayes_pfl.BayesPFL`` is the full class path that needs no autoload hook.
"""

from .adapter import BayesPFL
from .data import ZeroShotCrossDataset
from .deploy import BayesPFLInferencer
from .model import BayesPFLConfig, BayesPFLModel, load_clip
from .parser_errors import install as install_parser_summaries
from .registration import register

__version__ = "0.1.0"

register("BayesPFL", BayesPFL)
register("ZeroShotCrossDataset", ZeroShotCrossDataset, namespace="anomalib.data")
install_parser_summaries()

__all__ = [
    "BayesPFL",
    "BayesPFLConfig",
    "BayesPFLInferencer",
    "BayesPFLModel",
    "ZeroShotCrossDataset",
    "__version__",
    "load_clip",
]
