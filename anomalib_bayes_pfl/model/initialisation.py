# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The authors' initialisation of every linear layer of their head (VPB.py L202-250)."""

from torch import nn


def init_linear_layers(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases for every ``nn.Linear`` in ``module``, in module order."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
