# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Seeded writers of small dataset trees in the on-disk layouts that anomalib's datamodules read (tests, demo, docs).

Layouts: MVTec AD, VisA (anomalib's processed split), anomalib's ``Folder``, BTech, MPDD, KolektorSDD, MVTec AD 2
and BMAD. Each category is a smooth random texture of its own colour; anomalous images carry a Perlin-noise defect
from anomalib's ``PerlinAnomalyGenerator``, and its mask is written where anomalib's parser looks for it.
"""

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

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


class _Images(NamedTuple):
    """A group of images of a category, as many as the sum of the ``write_tree`` counts named in ``counts``.

    ``masks`` is the folder of their masks (``""``: beside the images), ``None`` where the dataset has none for them.
    """

    folder: str
    counts: tuple[str, ...]
    anomalous: bool = False
    masks: str | None = None


@dataclass(frozen=True)
class _Layout:
    """Where a dataset keeps the images and masks of a category, and how it names them."""

    groups: tuple[_Images, ...]
    prefix: str = ""
    stem: str = "{:03d}"
    image_suffix: str = ".png"
    mask_suffix: str = ".png"
    grey: bool = False  # the real images have one channel (anomalib reads them as RGB)


TRAIN, GOOD, DEFECT = ("num_train",), ("num_test_good",), ("num_test_defect",)
# KolektorSDD names its images Part0.jpg to Part7.jpg; anomalib pairs them with their masks by sorted path, and
# Part10_label.bmp would sort before Part1_label.bmp.
KOLEKTOR_MAX_PARTS = 10


def _mvtec_like(good: str, defect: str, mask_suffix: str = ".png", **layout: str) -> _Layout:
    """MVTec AD's layout under a dataset's own folder names; masks in ``ground_truth/<defect>``."""
    return _Layout(
        (
            _Images(f"train/{good}", TRAIN),
            _Images(f"test/{good}", GOOD),
            _Images(f"test/{defect}", DEFECT, anomalous=True, masks=f"ground_truth/{defect}"),
        ),
        mask_suffix=mask_suffix,
        **layout,
    )


def _bmad(pixel_level: bool) -> _Layout:
    """BMAD's layout: ``train/good``, then ``good`` and ``Ungood`` in ``valid`` and in ``test``.

    Pixel-level categories (such as Brain) keep the images in ``img`` folders and the anomalies' masks, named as their
    images, in ``label``; image-level ones (such as Histopathology, in BMAD's README) are flat, without masks.
    """
    images = "/img" if pixel_level else ""
    groups = [_Images(f"train/good{images}", TRAIN)]
    for split in ("valid", "test"):
        masks = f"{split}/Ungood/label" if pixel_level else None
        groups += [
            _Images(f"{split}/good{images}", GOOD),
            _Images(f"{split}/Ungood{images}", DEFECT, anomalous=True, masks=masks),
        ]
    return _Layout(tuple(groups), grey=True)


def _without_masks(layout: _Layout) -> _Layout:
    return replace(layout, groups=tuple(group._replace(masks=None) for group in layout.groups))


LAYOUTS = {
    "mvtec": _mvtec_like("good", "defect", "_mask.png"),
    "visa": _mvtec_like("good", "bad", prefix="visa_pytorch"),
    "folder": _Layout((_Images("good", GOOD), _Images("defect", DEFECT, anomalous=True, masks="ground_truth/defect"))),
    "anomalib_folder": _Layout((_Images("good", GOOD), _Images("bad", DEFECT, anomalous=True, masks="masks"))),
    "btech": _mvtec_like("ok", "ko", image_suffix=".bmp"),
    "mpdd": _mvtec_like("good", "defect", "_mask.png"),
    # Categories are the items (kos01, ...); every image has a mask, and anomalib labels an image by its mask.
    "kolektor": _Layout(
        (_Images("", TRAIN + GOOD, masks=""), _Images("", DEFECT, anomalous=True, masks="")),
        stem="Part{}",
        image_suffix=".jpg",
        mask_suffix="_label.bmp",
        grey=True,
    ),
    "mvtec_ad2": _Layout(
        (
            _Images("train/good", TRAIN),
            _Images("validation/good", GOOD),
            _Images("test_public/good", GOOD),
            _Images("test_public/bad", DEFECT, anomalous=True, masks="test_public/ground_truth/bad"),
            # The private test sets are unlabelled: normal and anomalous images in one folder, without masks.
            _Images("test_private", GOOD),
            _Images("test_private", DEFECT, anomalous=True),
            _Images("test_private_mixed", GOOD),
            _Images("test_private_mixed", DEFECT, anomalous=True),
        ),
        stem="{:03d}_regular",
        mask_suffix="_mask.png",
    ),
    "bmad": _bmad(pixel_level=True),
}
# Layouts of data without masks, written with ``masks=False``.
_MASKLESS = {
    "folder": _without_masks(LAYOUTS["folder"]),
    "anomalib_folder": _without_masks(LAYOUTS["anomalib_folder"]),
    "bmad": _bmad(pixel_level=False),
}
MASKLESS_LAYOUTS = tuple(_MASKLESS)


def _write_tree(
    layout: _Layout, root: Path, categories: Sequence[str], counts: dict[str, int], *, image_size: int, seed: int
) -> Path:
    rng = np.random.default_rng(seed)
    defects = _defects(image_size, seed)
    for category in categories:
        base_colour = rng.uniform(60, 190, 3)
        folder = root / layout.prefix / category
        written = Counter()  # per folder: a Kolektor item or a private test set holds two groups
        for group in layout.groups:
            for _ in range(sum(counts[name] for name in group.counts)):
                stem = layout.stem.format(written[group.folder])
                written[group.folder] += 1
                image = _texture(rng, image_size, base_colour)
                mask = np.zeros((image_size, image_size), dtype=bool)
                if group.anomalous:
                    perturbation, mask = next(defects)
                    stain = 255.0 - base_colour  # a contrasting stain, textured by the Perlin perturbation
                    blend = 0.7 * stain + 0.3 * perturbation[mask]
                    image[mask] = (1 - DEFECT_BLEND) * image[mask] + DEFECT_BLEND * blend
                image_path = folder / group.folder / f"{stem}{layout.image_suffix}"
                _save(image.mean(axis=2) if layout.grey else image, image_path)
                if group.masks is not None:
                    _save(mask * 255, folder / group.masks / f"{stem}{layout.mask_suffix}")
    return root


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

    Every layout but ``folder`` is the one that anomalib's datamodule of the dataset reads, as it is, with ``root``
    the tree and ``category`` one of ``categories``: MVTecAD, Visa (its processed split), BTech, MPDD, Kolektor (no
    category), MVTecAD2 and BMAD. anomalib 2.7 finds no test images in BMAD's image-level layout (``masks=False``).

    Args:
        root: Output folder (created).
        categories: Category folder names; for ``kolektor``, item folder names (``kos01``, ``kos02``, ...).
        layout: ``mvtec`` (MVTec AD), ``visa`` (anomalib's processed VisA), ``folder`` (``good`` and ``defect``
            folders per category, masks in ``ground_truth/defect``), ``anomalib_folder`` (anomalib's ``Folder``
            layout: ``good``, ``bad`` and a flat ``masks`` folder per category), ``btech`` (``ok`` and ``ko``, BMP
            images, PNG masks), ``mpdd`` (MVTec AD's layout), ``kolektor`` (KolektorSDD: ``PartN.jpg`` and
            ``PartN_label.bmp`` per item, split by anomalib), ``mvtec_ad2`` (``validation``, ``test_public`` with
            masks, unlabelled ``test_private`` and ``test_private_mixed``) or ``bmad`` (a pixel-level BMAD category
            such as Brain; with ``masks=False``, an image-level one such as Chest).
        masks: Write masks (optional in the ``folder``, ``anomalib_folder`` and ``bmad`` layouts only; the other
            layouts always have them).
        image_size: Side of the square images.
        num_train: Normal training images per category (not in the folder layouts; for ``kolektor``, added to
            ``num_test_good``: anomalib draws its own split).
        num_test_good: Normal test images per category (and per validation or private test set).
        num_test_defect: Anomalous images per category (and per validation or private test set).
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
    if not masks and layout not in MASKLESS_LAYOUTS:
        msg = f"the {layout} layout always has masks; use one of {MASKLESS_LAYOUTS} for data without them."
        raise ValueError(msg)
    counts = {"num_train": num_train, "num_test_good": num_test_good, "num_test_defect": num_test_defect}
    if layout == "kolektor" and sum(counts.values()) > KOLEKTOR_MAX_PARTS:
        msg = f"a kolektor item holds at most {KOLEKTOR_MAX_PARTS} images (Part0 to Part9), got {sum(counts.values())}."
        raise ValueError(msg)
    spec = LAYOUTS[layout] if masks else _MASKLESS[layout]
    return _write_tree(spec, Path(root), categories, counts, image_size=image_size, seed=seed)
