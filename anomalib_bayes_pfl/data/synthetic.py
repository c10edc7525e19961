# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Seeded writers of small dataset trees in the MVTec AD, VisA and folder layouts (tests, demo, documentation).

Each category is a smooth random texture of its own colour; anomalous images carry a Perlin-noise defect from
anomalib's ``PerlinAnomalyGenerator``, and its mask is written where anomalib's parsers expect it: per defect in
``ground_truth/<defect>/``, or, in the layout of anomalib's ``Folder`` datamodule, flat in ``masks/``.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from PIL import Image

DEFECT_BLEND = 0.7


def _texture(rng: np.random.Generator, size: int, base_colour: np.ndarray) -> np.ndarray:
    coarse = rng.normal(0.0, 1.0, (size // 8 + 1, size // 8 + 1, 3))
    smooth = np.kron(coarse, np.ones((8, 8, 1)))[:size, :size]
    image = base_colour + 25.0 * smooth + rng.normal(0.0, 4.0, (size, size, 3))
    return np.clip(image, 0, 255)


def _defects(size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(perturbation (H, W, 3) in [0, 255], mask (H, W) bool)`` pairs; the global RNG is left untouched.

    The generator is built under the seed too: it draws its solarisation threshold when it is constructed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = PerlinAnomalyGenerator()
        while True:
            perturbation, mask = generator.generate_perturbation(size, size)
            mask = mask[..., 0].numpy() > 0
            if 0.01 < mask.mean() < 0.5:
                yield perturbation.numpy() * 255.0, mask


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _write_tree(
    layout: dict[str, str],
    root: Path,
    categories: Sequence[str],
    *,
    image_size: int,
    num_train: int,
    num_test_good: int,
    num_test_defect: int,
    seed: int,
) -> Path:
    rng = np.random.default_rng(seed)
    defects = _defects(image_size, seed)
    for category in categories:
        base_colour = rng.uniform(60, 190, 3)
        folder = root / layout["prefix"] / category
        counts = ((layout["train"], num_train), (layout["test_good"], num_test_good))
        for subfolder, count in counts:
            for index in range(count if subfolder else 0):
                _save(_texture(rng, image_size, base_colour), folder / subfolder / f"{index:03d}.png")
        for index in range(num_test_defect):
            image = _texture(rng, image_size, base_colour)
            perturbation, mask = next(defects)
            stain = 255.0 - base_colour  # a contrasting stain, textured by the Perlin perturbation
            image[mask] = (1 - DEFECT_BLEND) * image[mask] + DEFECT_BLEND * (0.7 * stain + 0.3 * perturbation[mask])
            _save(image, folder / layout["defect"] / f"{index:03d}.png")
            if layout["mask"]:
                _save(mask * 255, folder / layout["mask"] / f"{index:03d}{layout['mask_suffix']}.png")
    return root


LAYOUTS = {
    "mvtec": {
        "prefix": "",
        "train": "train/good",
        "test_good": "test/good",
        "defect": "test/defect",
        "mask": "ground_truth/defect",
        "mask_suffix": "_mask",
    },
    "visa": {
        "prefix": "visa_pytorch",
        "train": "train/good",
        "test_good": "test/good",
        "defect": "test/bad",
        "mask": "ground_truth/bad",
        "mask_suffix": "",
    },
    "folder": {
        "prefix": "",
        "train": "",
        "test_good": "good",
        "defect": "defect",
        "mask": "ground_truth/defect",
        "mask_suffix": "",
    },
    "anomalib_folder": {
        "prefix": "",
        "train": "",
        "test_good": "good",
        "defect": "bad",
        "mask": "masks",
        "mask_suffix": "",
    },
}
# Layouts whose masks are optional.
MASKLESS_LAYOUTS = ("folder", "anomalib_folder")


def write_tree(
    root: str | Path,
    categories: Sequence[str] = ("tile_a", "tile_b"),
    *,
    layout: str = "mvtec",
    masks: bool = True,
    image_size: int = 64,
    num_train: int = 4,
    num_test_good: int = 3,
    num_test_defect: int = 3,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset tree and return its root.

    Args:
        root: Output folder (created).
        categories: Category folder names.
        layout: ``mvtec`` (MVTec AD), ``visa`` (anomalib's processed VisA), ``folder`` (``good`` and ``defect``
            folders per category, masks in ``ground_truth/defect``) or ``anomalib_folder`` (anomalib's ``Folder``
            layout: ``good``, ``bad`` and a flat ``masks`` folder per category).
        masks: Write masks (optional in the folder layouts only; the other layouts always have them).
        image_size: Side of the square RGB images.
        num_train: Normal training images per category (not in the folder layouts).
        num_test_good: Normal test images per category.
        num_test_defect: Anomalous images per category.
        seed: Seed of the textures and defects.

    Example:
        >>> import tempfile
        >>> tree = write_tree(tempfile.mkdtemp(), ["cat"], num_train=1, num_test_good=1, num_test_defect=1)
        >>> for path in sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png")):
        ...     print(path)
        cat/ground_truth/defect/000_mask.png
        cat/test/defect/000.png
        cat/test/good/000.png
        cat/train/good/000.png
    """
    if layout not in LAYOUTS:
        msg = f"layout must be one of {sorted(LAYOUTS)}, got '{layout}'."
        raise ValueError(msg)
    spec = dict(LAYOUTS[layout])
    if not masks:
        if layout not in MASKLESS_LAYOUTS:
            msg = f"the {layout} layout always has masks; use one of {MASKLESS_LAYOUTS} for data without them."
            raise ValueError(msg)
        spec["mask"] = ""
    return _write_tree(
        spec,
        Path(root),
        categories,
        image_size=image_size,
        num_train=num_train,
        num_test_good=num_test_good,
        num_test_defect=num_test_defect,
        seed=seed,
    )
