# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""anomalib's image visualizer, with the uncertainty map beside each image and a banner on those to review.

For each visualised image ``<name>``, ``<stem>_uncertainty.png`` is written beside it: the uncertainty map over the
image in grey, with its colour bar, and a title that gives the anomaly score, its uncertainty and the map's maximum.
The colour scale is the same for every image and run: a log scale over the top four decades of the measure's range
(5e-5 to 0.5 for the standard deviation, 1e-4 to 1 bit for the mutual information), since uncertainties are usually
orders of magnitude below their maximum; lower values take the bottom colour. The colour map (``inferno``) differs
from the anomaly map's, so the two are not confused.

Both images of each image marked ``needs_review`` get a red banner: with ``review_rate`` when they are written (the
mark is the image's own), with ``review_fraction`` once the run has scored every image (the marks are ranks within a
category over every process's images, ``review.py``; the first process stamps them all).
"""

import logging
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed
from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer, visualize_image_item
from lightning.pytorch import LightningModule, Trainer
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.model.uncertainty import UNCERTAINTY_MAXIMUM
from anomalib_bayes_pfl.settings import BayesPFLSettings

from .review import grouped_review_flags

logger = logging.getLogger(__name__)

COLOUR_MAP = "inferno"
DECADES = 4
COLOUR_BAR_WIDTH = 84
HEADER_HEIGHT = 34
OVERLAY_OPACITY = 0.5  # of the uncertainty colours over the grey image
REVIEW_BANNER = "NEEDS REVIEW"
BANNER_COLOUR = (200, 0, 0)
PNG_COMPRESSION = 1  # zlib level: about 4 times faster to write than the default 6, files about 20 % larger
MEASURE_TITLES = {"std": "std of the probability", "mutual_information": "mutual information (bits)"}


def uncertainty_scale_position(values: np.ndarray, maximum: float) -> np.ndarray:
    """Position in [0, 1] of each value on the log colour scale that ends at ``maximum``.

    The one scale of every uncertainty picture: the visualiser's maps and colour bar, and the report's thumbnails.
    """
    floor = maximum * 10.0**-DECADES
    return (np.log10(np.clip(values, floor, maximum) / floor) / DECADES).astype(np.float32)


def render_uncertainty(
    uncertainty_map: torch.Tensor,
    uncertainty: float,
    score: float,
    measure: str,
    size: tuple[int, int],
    image_path: str | None = None,
) -> Image.Image:
    """The map ``(H, W)`` in colour over the image at ``size``, with a labelled colour bar and an unambiguous title.

    The image (in grey, from ``image_path``) shows where on the part the samples disagree. The title names the anomaly
    score and its uncertainty (of the image head's probability, not a statistic of the map) apart from the map's
    maximum, so that neither reads as the score.
    """
    maximum = UNCERTAINTY_MAXIMUM[measure]
    colours = colormaps[COLOUR_MAP]
    values = uncertainty_map.detach().float().cpu().numpy()
    positions = uncertainty_scale_position(values, maximum)
    panel = Image.fromarray((colours(positions)[..., :3] * 255).astype(np.uint8)).resize(
        size, Image.Resampling.BILINEAR
    )
    if image_path is not None and Path(image_path).is_file():
        with Image.open(image_path) as opened:
            part = opened.convert("L").resize(size, Image.Resampling.BILINEAR).convert("RGB")
        panel = Image.blend(part, panel, OVERLAY_OPACITY)
    width, height = size
    bar_top, bar_height = HEADER_HEIGHT + 8, height - 16
    ramp = np.linspace(1, 0, bar_height, dtype=np.float32)[:, None].repeat(16, axis=1)
    canvas = Image.new("RGB", (width + COLOUR_BAR_WIDTH, HEADER_HEIGHT + height), "white")
    canvas.paste(panel, (0, HEADER_HEIGHT))
    canvas.paste(Image.fromarray((colours(ramp)[..., :3] * 255).astype(np.uint8)), (width + 8, bar_top))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)
    for decade in range(DECADES + 1):
        value = maximum * 10.0**-decade
        y = bar_top + round((1 - float(uncertainty_scale_position(np.array(value), maximum))) * (bar_height - 1))
        draw.line([(width + 24, y), (width + 28, y)], fill="black")
        draw.text((width + 30, y - 6), f"{value:.0e}" if decade else f"{value:g}", fill="black", font=font)
    title_font = ImageFont.load_default(size=12)
    for line, text in enumerate(uncertainty_title(measure, score, uncertainty, float(values.max()))):
        draw.text((6, 3 + 15 * line), text, fill="black", font=title_font)
    return canvas


def uncertainty_title(measure: str, score: float, uncertainty: float, map_maximum: float) -> tuple[str, str]:
    """The two title lines of an uncertainty image: the measure, then the score, its uncertainty and the map's maximum.

    Example:
        >>> uncertainty_title("std", 0.72, 0.15, 0.2)
        ('Uncertainty (std of the probability)', 'of anomaly score 0.720: 0.15; map max 0.2')
    """
    return (
        f"Uncertainty ({MEASURE_TITLES[measure]})",
        f"of anomaly score {score:.3f}: {uncertainty:.3g}; map max {map_maximum:.3g}",
    )


def stamp_review_banner(path: Path) -> None:
    """Add the review banner as a strip below the image file at ``path``, so that it hides nothing of the image."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    height = max(18, image.height // 12)
    stamped = Image.new("RGB", (image.width, image.height + height), BANNER_COLOUR)
    stamped.paste(image, (0, 0))
    draw = ImageDraw.Draw(stamped)
    font = ImageFont.load_default(size=int(height * 0.7))
    draw.text((8, image.height + height * 0.1), REVIEW_BANNER, fill="white", font=font)
    stamped.save(path, compress_level=PNG_COMPRESSION)


class UncertaintyVisualizer(ImageVisualizer):
    """anomalib's image visualizer, plus each image's uncertainty map and, with review, the review banners."""

    def __init__(self, *args: Any, settings: Callable[[], BayesPFLSettings] = BayesPFLSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings  # the run's options when it is used: the uncertainty measure and the review share
        # Each visualised image's category, uncertainty and files, for the review marks at the end of the run.
        self.written: list[tuple[Hashable, float, list[Path]]] = []
        self.marked = 0  # images marked on their own (review_rate), banners stamped as they are written

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the images of an earlier run; say so when its files are still where this run writes."""
        del pl_module
        self.written, self.marked = [], 0
        folder = Path(self.output_dir or Path(trainer.default_root_dir) / "images")
        if folder.is_dir() and next(folder.rglob("*.png"), None) is not None:
            logger.warning(
                "%s already holds images of an earlier run; this run overwrites those of the images it scores, and "
                "the others (review banners included) stay as that run left them. Give a new --default_root_dir "
                "for a clean folder.",
                folder,
            )

    on_predict_start = on_test_start

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: BayesPFLBatch,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write anomalib's visualisation of each image, where anomalib writes it, then its uncertainty image beside it.

        The files are anomalib's pixels, compressed at ``PNG_COMPRESSION``: zlib's default level 6 took a third of a
        test run's time.
        """
        del pl_module, batch, batch_idx, dataloader_idx
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "images"
        datamodule = getattr(trainer, "datamodule", None)
        measure = self.settings().uncertainty
        keys = list(zip(outputs.dataset, outputs.category, strict=True))
        for item, key in zip(outputs, keys, strict=True):
            visualisation = generate_output_filename(
                input_path=item.image_path or "",
                output_path=self.output_dir,
                dataset_name=getattr(datamodule, "name", None),
                category=getattr(datamodule, "category", None),
            )
            image = visualize_image_item(
                item,
                fields=self.fields,
                overlay_fields=self.overlay_fields,
                field_size=self.field_size,
                fields_config=self.fields_config,
                overlay_fields_config=self.overlay_fields_config,
                text_config=self.text_config,
            )
            if image is not None:
                image.save(visualisation, compress_level=PNG_COMPRESSION)
            if item.uncertainty_map is None or not item.image_path:
                continue
            uncertainty_file = visualisation.with_name(f"{visualisation.stem}_uncertainty.png")
            render_uncertainty(
                item.uncertainty_map,
                float(item.uncertainty),
                float(item.pred_score),
                measure,
                self.field_size,
                item.image_path,
            ).save(uncertainty_file, compress_level=PNG_COMPRESSION)
            files = [file for file in (visualisation, uncertainty_file) if file.is_file()]
            if item.needs_review is not None:
                self.marked += int(item.needs_review)
                for path in files if item.needs_review else []:
                    stamp_review_banner(path)
            self.written.append((key, float(item.uncertainty), files))

    def _stamp_marked(self, trainer: Trainer) -> int:
        """Put the review banner on the images marked ``needs_review``; return how many images got one."""
        fraction = self.settings().review_fraction
        if not fraction:
            return self.marked
        written = self.written
        if trainer.world_size > 1:  # ranks over every process's images, as one process would make them
            shares: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, written)
            if not trainer.is_global_zero:
                return 0
            # Each image comes from one process (the test's padded repeats are cut before scoring): two images whose
            # visualisations share a file name are still two images.
            written = [image for share in shares for image in share]
        if not written:
            return 0
        keys, uncertainties, files = zip(*written, strict=True)
        flags = grouped_review_flags(keys, torch.tensor(uncertainties), fraction)
        for flagged, paths in zip(flags.tolist(), files, strict=True):
            for path in paths if flagged else []:
                stamp_review_banner(path)
        return int(flags.sum())

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Mark the images to review, now that every image is scored, and say where (test writes no table of them)."""
        del pl_module
        marked = self._stamp_marked(trainer)
        if marked:
            print(
                f"{marked} images marked needs_review: their visualisations under {self.output_dir} have a red banner"
            )

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Mark the images to review (predictions.csv lists them)."""
        del pl_module
        self._stamp_marked(trainer)
