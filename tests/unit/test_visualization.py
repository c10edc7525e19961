# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The uncertainty image: the map over the part, under a title that cannot be read as the score."""

import numpy as np
import torch
from PIL import Image

from anomalib_bayes_pfl.reporting.visualization import HEADER_HEIGHT, render_uncertainty, uncertainty_title


def test_the_uncertainty_map_is_drawn_over_the_image(tmp_path):
    """Under a uniform map the part shows through: its dark half stays darker than its bright half."""
    part = np.zeros((40, 40), dtype=np.uint8)
    part[:, 20:] = 255
    path = tmp_path / "part.png"
    Image.fromarray(part).save(path)
    uniform = torch.full((8, 8), 1e-2)
    over_part = np.asarray(render_uncertainty(uniform, 0.1, 0.7, "std", (40, 40), str(path))).astype(float)
    alone = np.asarray(render_uncertainty(uniform, 0.1, 0.7, "std", (40, 40))).astype(float)
    panel = over_part[HEADER_HEIGHT:, :40]
    assert panel[:, :20].mean() + 60 < panel[:, 20:].mean()
    assert np.ptp(alone[HEADER_HEIGHT:, :40].mean(axis=2)) < 1  # without the image: one colour


def test_the_title_names_the_score_apart_from_its_uncertainty():
    measure, values = uncertainty_title("mutual_information", 0.72, 0.15, 0.31)
    assert measure == "Uncertainty (mutual information (bits))"
    assert values == "of anomaly score 0.720: 0.15; map max 0.31"
