# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Which mask belongs to which anomalous image of a category: matched by file stem, not by sorted position.

In the ``mvtec`` and ``visa`` layouts the masks of ``test/<defect>/`` sit in ``ground_truth/<defect>/``. In the
``folder`` layout masks are optional and sit in a mask folder of the category, either with a subfolder per defect
(``ground_truth/<defect>/``, as in MVTec AD) or flat (``masks/``, as anomalib's ``Folder`` datamodule expects:
``good/``, ``bad/`` and ``masks/`` side by side). The mask folder is found by name (``ground_truth``, ``masks`` or
``mask``) or named with ``--data.*_mask_dir``. A mask matches the anomalous image with its file stem (``<stem>`` or
``<stem>_mask``), and a category with a mask folder needs a mask for every anomalous image. Without masks the pixel
losses are skipped and the head learns from image labels alone.
"""

from pathlib import Path

from .image_lists import image_files
from .layouts import NORMAL_FOLDER, DatasetFormat

MASK_FOLDER = "ground_truth"
MASK_FOLDER_NAMES = (MASK_FOLDER, "masks", "mask")


def mask_folder(folder: Path, mask_dir: str | None, option: str) -> Path | None:
    """The mask folder of the ``folder`` category ``folder``: the named one, else the one with a mask folder name.

    ``option`` is the prefix of the side's CLI options, which the errors name.

    Raises:
        FileNotFoundError: If the named mask folder is missing.
        ValueError: If the category has several folders with mask folder names.
    """
    if mask_dir is not None:
        if not (folder / mask_dir).is_dir():
            msg = f"mask folder {folder / mask_dir} ({option}_mask_dir) not found."
            raise FileNotFoundError(msg)
        return folder / mask_dir
    present = [folder / name for name in MASK_FOLDER_NAMES if (folder / name).is_dir()]
    if len(present) > 1:
        msg = f"category '{folder.name}' has several mask folders {present}; name one with {option}_mask_dir."
        raise ValueError(msg)
    return present[0] if present else None


def defect_folders(
    folder: Path, dataset_format: DatasetFormat, normal_folder: str, mask_dir: str | None, option: str
) -> list[tuple[Path, Path | None]]:
    """(anomalous image folder, folder of its masks or ``None``) pairs of the category ``folder``.

    Folders with a mask folder name are never image folders, so masks are never scored as anomalous images.
    ``normal_folder``, ``mask_dir`` and ``option`` are the side's, as :func:`mask_folder` takes them.
    """
    resolved = folder.resolve()
    if dataset_format != "folder":
        images = resolved / "test"
        defects = sorted(path for path in images.iterdir() if path.is_dir()) if images.is_dir() else []
        return [(defect, resolved / MASK_FOLDER / defect.name) for defect in defects if defect.name != NORMAL_FOLDER]
    masks = mask_folder(folder, mask_dir, option)
    masks = masks.resolve() if masks is not None else None
    skipped = {Path(normal_folder).parts[0], *MASK_FOLDER_NAMES}
    if masks is not None and masks.is_relative_to(resolved):
        skipped.add(masks.relative_to(resolved).parts[0])
    defects = sorted(
        path
        for path in resolved.iterdir()
        if path.is_dir() and path.name not in skipped and not path.name.startswith(".")
    )
    if masks is None:
        return [(defect, None) for defect in defects]
    return [(defect, masks / defect.name if (masks / defect.name).is_dir() else masks) for defect in defects]


def match_masks(category: str, defects: list[tuple[Path, Path | None]]) -> dict[str, str]:
    """Map each anomalous image of ``defects`` (:func:`defect_folders`) to the mask with its file stem.

    anomalib pairs masks with images by sorted position, which mis-pairs or fails obscurely when a mask is missing or
    extra; matching by stem names the images without one instead. A ``folder`` category without a mask folder has no
    masks (an empty map).

    Raises:
        FileNotFoundError: If some anomalous images have no mask.
    """
    matched, missing = {}, []
    for images, masks in defects:
        if masks is None:
            return {}
        # Directly in the folder: a flat mask folder's subfolders hold other defects' masks.
        by_stem = {path.stem.removesuffix("_mask"): path for path in image_files(masks, "*")}
        for image in image_files(images):
            if image.stem in by_stem:
                matched[str(image)] = str(by_stem[image.stem])
            else:
                missing.append(str(image))
    if missing:
        msg = (
            f"{len(missing)} anomalous image(s) of category '{category}' have no mask: {missing[:5]}; add the "
            f"masks (same file stem, optionally with '_mask'), or, for a folder dataset, remove its mask folder to "
            f"train on image labels alone."
        )
        raise FileNotFoundError(msg)
    return matched
