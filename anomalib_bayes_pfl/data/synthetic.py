# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Seeded writer of small MVTec AD-layout trees, for tests, the demo and documentation.

Each category is a smooth random texture; anomalous images carry an elliptical blemish whose mask is written to
``ground_truth/<defect>/<stem>_mask.png`` exactly where anomalib's ``MVTecAD`` parser expects it.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _texture(rng: np.random.Generator, size: int, base_colour: np.ndarray) -> np.ndarray:
    coarse = rng.normal(0.0, 1.0, (size // 8 + 1, size // 8 + 1, 3))
    smooth = np.kron(coarse, np.ones((8, 8, 1)))[:size, :size]
    image = base_colour + 25.0 * smooth + rng.normal(0.0, 4.0, (size, size, 3))
    return np.clip(image, 0, 255)


def _blemish(rng: np.random.Generator, size: int) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    centre = rng.uniform(0.25 * size, 0.75 * size, 2)
    radii = rng.uniform(0.08 * size, 0.18 * size, 2)
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1.0


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def write_mvtec_tree(
    root: str | Path,
    categories: Sequence[str] = ("tile_a", "tile_b"),
    *,
    image_size: int = 64,
    num_train: int = 4,
    num_test_good: int = 3,
    num_test_defect: int = 3,
    seed: int = 0,
) -> Path:
    """Write an MVTec AD-layout tree and return its root.

    Args:
        root: Output folder (created).
        categories: Category folder names.
        image_size: Side of the square RGB images.
        num_train: Normal training images per category.
        num_test_good: Normal test images per category.
        num_test_defect: Anomalous test images (with masks) per category.
        seed: Seed of the images and blemishes.

    Example:
        >>> import tempfile
        >>> tree = write_mvtec_tree(tempfile.mkdtemp(), ["cat"], num_train=1, num_test_good=1, num_test_defect=1)
        >>> for path in sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png")):
        ...     print(path)
        cat/ground_truth/defect/000_mask.png
        cat/test/defect/000.png
        cat/test/good/000.png
        cat/train/good/000.png
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for category in categories:
        base_colour = rng.uniform(60, 190, 3)
        folder = root / category
        for split, count in (("train", num_train), ("test", num_test_good)):
            for index in range(count):
                _save(_texture(rng, image_size, base_colour), folder / split / "good" / f"{index:03d}.png")
        for index in range(num_test_defect):
            image = _texture(rng, image_size, base_colour)
            mask = _blemish(rng, image_size)
            image[mask] = 255.0 - image[mask]
            _save(image, folder / "test" / "defect" / f"{index:03d}.png")
            _save(mask * 255, folder / "ground_truth" / "defect" / f"{index:03d}_mask.png")
    return root
