# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The report pages' galleries: which images they keep while a run scores, and how each entry is drawn.

Each entry shows the image, its anomaly map and its uncertainty map (on the visualizer's log scale) side by side,
with the scores and the path, as one embedded JPEG. A gallery keeps at most ``GALLERY_SIZE`` entries; while the run
scores, only the candidates that could still enter are kept, with their maps reduced to ``MAP_SIDE`` pixels a side.
"""

import base64
import heapq
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from matplotlib import colormaps
from PIL import Image

from anomalib_bayes_pfl.model.uncertainty import UNCERTAINTY_MAXIMUM, UNCERTAINTY_UNITS

from .visualization import uncertainty_scale_position

GALLERY_SIZE = 12
MAP_SIDE = 64
THUMBNAIL_SIDE = 160
JPEG_QUALITY = 80


@dataclass
class Entry:
    """One image a gallery may show: its scores, labels and reduced maps."""

    path: str
    dataset: str
    category: str
    score: float
    threshold: float
    uncertainty: float | None
    label: int | None
    pred_label: int | None
    needs_review: bool | None
    anomaly_map: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None
    key: tuple[int, int] = (0, 0)  # the process that scored it and its place there: paths and names may repeat


@dataclass
class Gallery:
    """The ``size`` entries with the largest ``rank`` among those offered, kept per group as they come."""

    title: str
    explanation: str
    rank: Callable[[Entry], float]
    size: int = GALLERY_SIZE
    heaps: dict[Any, list[tuple[float, str, int, Entry]]] = field(default_factory=dict)
    offered: int = 0

    def wants(self, rank: float, group: Any = None) -> bool:
        """Whether an entry of this rank would enter now."""
        heap = self.heaps.get(group, [])
        return len(heap) < self.size or rank >= heap[0][0]

    def offer(self, entry: Entry, group: Any = None) -> None:
        """Keep ``entry`` if it is among the ``size`` largest of its group so far (ties: by path)."""
        heap = self.heaps.setdefault(group, [])
        item = (self.rank(entry), entry.path, self.offered, entry)
        self.offered += 1
        if len(heap) < self.size:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def entries(self, keep: Callable[[Entry], bool]) -> list[Entry]:
        """The ``size`` largest entries over all groups that ``keep`` accepts, largest first."""
        items = sorted((item for heap in self.heaps.values() for item in heap), key=lambda item: item[:2], reverse=True)
        return [entry for _, _, _, entry in items if keep(entry)][: self.size]


def reduced_map(values: torch.Tensor | None, index: int) -> torch.Tensor | None:
    """Map ``index`` of ``values`` reduced to ``MAP_SIDE`` pixels a side, in half precision: what a gallery keeps."""
    if values is None:
        return None
    plane = values[index].detach().float().cpu().reshape(1, 1, *values.shape[-2:])
    return F.interpolate(plane, size=(MAP_SIDE, MAP_SIDE), mode="area")[0, 0].half()


def _coloured(values: np.ndarray, colour_map: str) -> Image.Image:
    picture = Image.fromarray((colormaps[colour_map](values)[..., :3] * 255).astype(np.uint8))
    return picture.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)


def entry_picture(entry: Entry, measure: str) -> Image.Image:
    """The image, its anomaly map (0 to 1, ``jet``) and its uncertainty map (log scale, ``inferno``), side by side."""
    size = (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    try:
        with Image.open(entry.path) as opened:
            part = opened.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    except OSError:
        part = Image.new("RGB", size, (128, 128, 128))
    panels = [part]
    if entry.anomaly_map is not None:
        anomaly = _coloured(entry.anomaly_map.float().clamp(0, 1).numpy(), "jet")
        panels.append(Image.blend(part, anomaly, 0.5))
    if entry.uncertainty_map is not None:
        position = uncertainty_scale_position(entry.uncertainty_map.float().numpy(), UNCERTAINTY_MAXIMUM[measure])
        panels.append(Image.blend(part.convert("L").convert("RGB"), _coloured(position, "inferno"), 0.5))
    canvas = Image.new("RGB", (THUMBNAIL_SIDE * len(panels), THUMBNAIL_SIDE))
    for position, panel in enumerate(panels):
        canvas.paste(panel, (THUMBNAIL_SIDE * position, 0))
    return canvas


def _embedded(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _caption(entry: Entry, measure: str) -> str:
    facts = [f"probability {entry.score:.3f} (threshold {entry.threshold:.3f})"]
    if entry.uncertainty is not None:
        facts.append(f"uncertainty {entry.uncertainty:.3g} {UNCERTAINTY_UNITS[measure]}")
    if entry.label is not None:
        facts.append("truth: " + ("anomalous" if entry.label else "normal"))
    if entry.pred_label is not None:
        facts.append("labelled " + ("anomalous" if entry.pred_label else "normal"))
    if entry.needs_review:
        facts.append("needs review")
    category = f"{entry.dataset}/{entry.category}" if entry.dataset else entry.category
    return f"<b>{html.escape(category)}</b>: " + "; ".join(facts) + f"<br><code>{html.escape(entry.path)}</code>"


def gallery_html(gallery: Gallery, entries: list[Entry], total: int, measure: str) -> str:
    """The gallery's entries as figures, how many of the run's ``total`` they are, or a line saying there are none."""
    if not entries:
        return "<p>None in this run.</p>"
    figures = [
        f'<figure class="entry"><img src="{_embedded(entry_picture(entry, measure))}" alt="{html.escape(entry.path)}">'
        f"<figcaption>{_caption(entry, measure)}</figcaption></figure>"
        for entry in entries
    ]
    shown = f"<p>{len(entries)} of {total} shown (at most {gallery.size}).</p>"
    return shown + '<div class="gallery">' + "".join(figures) + "</div>"
