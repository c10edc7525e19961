# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Pure scoring functions: pixel logits, the aggregated anomaly map, the image probability and the map's top-k score.

Text embeddings come in two halves, normal first: normal item ``i`` pairs with abnormal item ``i + M``, where
``M = B`` in training and ``M = B * R`` at evaluation (authors: VPB.py L168-187).

The anomaly map is the mean over layers and pairs of ``softmax(upsample(normal), upsample(abnormal))[abnormal]``
(authors: test.py L158-165). The two-way softmax equals ``sigmoid(abnormal - normal)`` and bilinear upsampling is
linear, so each pair is upsampled once, as a difference, instead of twice.

The map's top-k score is the authors' second image score: the mean of the k largest values of the unsmoothed map,
with k tuned per category by the authors (metric_and_visualization.py L161-189). ``reporting/paper_score.py`` fuses it
with the image probability over a category's test set, for comparison with published numbers only.

Shape legend: N images, M pairs, L patch tokens (a square grid g x g), D joint width, H x W output size.
"""

import torch
from torch.nn import functional as F  # noqa: N812


def pixel_logits(patches: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Scaled cosine similarities ``(N, 2M, g, g)`` between unit-norm ``patches`` (N, L, D) and ``text`` (N, 2M, D)."""
    num_images, num_patches, _ = patches.shape
    grid = round(num_patches**0.5)
    logits = logit_scale.exp() * patches @ text.transpose(1, 2)
    return logits.transpose(1, 2).reshape(num_images, -1, grid, grid)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling with ``align_corners=True``, as the authors (VPB.py L324-334)."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)


def sampled_anomaly_maps(
    layer_logits: list[torch.Tensor], size: tuple[int, int], *, keep_pairs: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean abnormal probability ``(N, H, W)`` over all layers and normal/abnormal pairs, and the pairs' own maps.

    With ``keep_pairs``, each pair's map ``(M, N, H, W)`` (mean over layers) comes too: the M samples that the mean
    averages.

    Args:
        layer_logits: One ``(N, 2M, g, g)`` tensor of pixel logits per tapped layer.
        size: Output size ``(H, W)``.
        keep_pairs: Also return the pairs' maps; the mean is summed in the same order either way, so keeping them
            never changes it by a bit.
    """
    total = pairs = None
    for logits in layer_logits:
        normal, abnormal = logits.chunk(2, dim=1)
        probabilities = torch.sigmoid(upsample(abnormal - normal, size))
        mean = probabilities.mean(dim=1)
        total = mean if total is None else total + mean
        if keep_pairs:  # in place: each of these tensors is M maps per image
            pairs = probabilities if pairs is None else pairs.add_(probabilities)
    pair_maps = pairs.div_(len(layer_logits)).transpose(0, 1) if pairs is not None else None
    return total / len(layer_logits), pair_maps


def image_probability(logits: torch.Tensor) -> torch.Tensor:
    """Mean abnormal probability ``(N,)`` over the M normal/abnormal pairs of image logits ``(N, 2M)``."""
    return pair_image_probabilities(logits).mean(dim=1)


def pair_image_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Abnormal probability ``(N, M)`` of each of the M normal/abnormal pairs of image logits ``(N, 2M)``."""
    normal, abnormal = logits.chunk(2, dim=1)
    return torch.sigmoid(abnormal - normal)


def _symmetric_indices(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a row padded by ``radius`` with SciPy's ``reflect`` rule (``d c b a | a b c d | d c b a``)."""
    positions = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(positions < size, positions, 2 * size - 1 - positions)


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-smooth maps ``(N, H, W)`` like ``scipy.ndimage.gaussian_filter`` (the authors' ``sigma=8``).

    Separable (a row pass and a column pass, 2k instead of k * k products per pixel, k = 65 at sigma 8), with SciPy's
    default kernel extent (4 sigma) and border rule (``reflect``, which repeats the edge pixel), for any map size.
    The kernel is derived from ``sigma`` on each call, so checkpoints carry no constants.
    """
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma).square())
    kernel = kernel / kernel.sum()
    height, width = maps.shape[-2:]
    rows = _symmetric_indices(height, radius, maps.device)
    columns = _symmetric_indices(width, radius, maps.device)
    x = maps[:, rows][:, :, columns].unsqueeze(1)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1)).squeeze(1)


# The authors' top-k for the map score: 20 for these categories, 2000 for all others.
PAPER_SMALL_TOP_K_CATEGORIES = frozenset(
    {"capsules", "macaroni1", "macaroni2", "pipe_fryum", "screw", "cashew", "chewinggum"}
)


def paper_top_k(category: str) -> int:
    """The authors' k for ``category`` (tuned on the test categories, so for comparison with their numbers only)."""
    return 20 if category in PAPER_SMALL_TOP_K_CATEGORIES else 2000


def top_k_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest values of each map ``(N, H, W)`` (all values when a map is smaller)."""
    flat = maps.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


def paper_map_scores(raw_maps: torch.Tensor, categories: list[str]) -> torch.Tensor:
    """Each unsmoothed map's top-k mean, with the authors' k for its category."""
    pairs = zip(raw_maps, categories, strict=True)
    return torch.cat([top_k_mean(raw_map.unsqueeze(0), paper_top_k(name)) for raw_map, name in pairs])
