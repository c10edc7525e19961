# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The on-disk layouts a side can be read in: where their categories are, and which layout a misread tree has.

Formats (``--data.auxiliary_format`` / ``--data.target_format``):

- ``mvtec``: the MVTec AD layout, ``<root>/<category>/{train/good,test/good,test/<defect>,ground_truth/<defect>}``;
- ``visa``: anomalib's processed VisA layout, ``<root>/visa_pytorch/<category>/...`` (the same shape);
- ``folder``: one's own data, one folder per category, ``<root>/<category>/good/*`` for normal images and
  ``<root>/<category>/<defect>/*`` for anomalous ones (several defect folders allowed), with optional masks
  (``masks.py``). ``--data.*_normal_dir`` renames ``good``.
"""

from pathlib import Path
from typing import Literal, get_args

DatasetFormat = Literal["mvtec", "visa", "folder"]
NORMAL_FOLDER = "good"
EXPECTED_LAYOUTS: dict[str, str] = {
    "mvtec": "<root>/<category>/test/{good,<defect>}/ with masks in <root>/<category>/ground_truth/<defect>/",
    "visa": "<root>/visa_pytorch/<category>/test/{good,<defect>}/ with masks in .../<category>/ground_truth/<defect>/",
    "folder": "<root>/<category>/{good,<defect>}/ with optional masks in <root>/<category>/{ground_truth,masks,mask}/",
}


def category_root(root: Path, dataset_format: DatasetFormat) -> Path:
    """The folder holding the category folders of a tree in ``dataset_format``."""
    return root / "visa_pytorch" if dataset_format == "visa" else root


def discover_categories(root: str | Path, dataset_format: DatasetFormat, normal_dir: str = NORMAL_FOLDER) -> list[str]:
    """Return the sorted category folders of a dataset tree (those with a ``test`` or, for folders, a ``good``)."""
    base = category_root(Path(root), dataset_format)
    if not base.is_dir():
        return []
    marker = normal_dir if dataset_format == "folder" else "test"
    return sorted(folder.name for folder in base.iterdir() if (folder / marker).is_dir())


def layout_hint(root: Path, dataset_format: DatasetFormat, normal_folder: str, option: str) -> str:
    """Point to the root or format that would read a tree without categories, when it has another supported layout.

    ``option`` is the prefix of the side's CLI options (``--data.target``), which the hint names.
    """
    for fmt in ("visa", "mvtec", "folder"):  # the most specific first: a VisA category is MVTec-shaped too
        parent = root.parent.parent if fmt == "visa" else root.parent
        if category_root(parent, fmt) == root.parent and root.name in discover_categories(parent, fmt, normal_folder):
            change = "" if fmt == dataset_format else f" {option}_format {fmt}"
            return (
                f"{root} looks like a single {fmt} category: pass {option}_root {parent} "
                f"{option}_categories [{root.name}]{change}."
            )
    for fmt in get_args(DatasetFormat):
        if fmt != dataset_format and discover_categories(root, fmt, normal_folder):
            article = "an" if fmt == "mvtec" else "a"
            return f"{root} looks like {article} {fmt} layout: pass {option}_format {fmt}."
    if dataset_format == "folder":
        return f"Check {option}_root: each category folder needs a '{normal_folder}' folder."
    return f"Check {option}_root, or pass --data.download true to let anomalib download MVTec AD or VisA."
