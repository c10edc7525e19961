# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The authors' augmentations and MVTec AD mosaic: firing rates, parameters against OpenCV, masks kept aligned.

Rates are checked on seeded draws, within four binomial standard deviations of the expected count.
"""

import math

import cv2
import numpy as np
import pytest
import torch
from anomalib import TaskType
from anomalib.data.utils.image import read_image, read_mask
from torchvision import tv_tensors
from torchvision.transforms.v2 import ColorJitter, Compose, RandomApply, RandomChoice, RandomHorizontalFlip, Resize
from torchvision.transforms.v2 import functional as F

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.data.augmentation import (
    BOX_BLUR_TAPS,
    OPENCV_GAUSSIAN_TAPS,
    AuthorsAugmentations,
    GaussNoise,
    RandomBrightnessContrast,
    RandomRotate90,
    ReflectedRotation,
    SeparableBlur,
    opencv_gaussian_blur,
)
from anomalib_bayes_pfl.data.mosaic import MosaicDataset
from anomalib_bayes_pfl.data.synthetic import write_tree

DRAWS = 400
SIZE = 32


def assert_binomial(count: int, trials: int, probability: float) -> None:
    tolerance = 4 * math.sqrt(trials * probability * (1 - probability))
    assert abs(count - trials * probability) <= tolerance, (count, trials, probability)


class Recorder(torch.nn.Module):
    """Stands in for a transform, counting the calls it passes on."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *inputs):
        self.calls += 1
        return self.inner(*inputs)


def record(container) -> list[Recorder]:
    """Replace the members of a RandomApply or RandomChoice by recorders of them."""
    container.transforms = [Recorder(member) for member in container.transforms]
    return container.transforms


def smooth_image(height: int, width: int, seed: int = 0) -> tv_tensors.Image:
    coarse = torch.rand(1, 3, 6, 9, generator=torch.Generator().manual_seed(seed))
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return tv_tensors.Image(fine[0].clamp(0, 1))


def as_array(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy().astype(np.float32))


def blob_mask(height: int = 48, width: int = 64) -> tv_tensors.Mask:
    """An L-shaped, off-centre mask: no rotation or flip maps it onto itself."""
    mask = torch.zeros(height, width, dtype=torch.uint8)
    mask[8:30, 10:20] = 1
    mask[22:30, 20:44] = 1
    return tv_tensors.Mask(mask)


def image_of(mask: torch.Tensor) -> tv_tensors.Image:
    return tv_tensors.Image(mask.float().expand(3, -1, -1).clone())


# The five steps


def test_the_steps_come_in_the_authors_order_each_with_p_one_half():
    steps = AuthorsAugmentations().transforms
    assert all(isinstance(step, RandomApply) and step.p == 0.5 for step in steps)
    assert [type(step.transforms[0]) for step in steps] == [
        ReflectedRotation,
        RandomRotate90,
        RandomBrightnessContrast,
        GaussNoise,
        RandomChoice,
    ]
    one_of = steps[4].transforms[0]
    assert one_of.p == pytest.approx([1 / 3] * 3)
    box, jitter, gaussian = one_of.transforms
    assert box.taps == BOX_BLUR_TAPS
    assert isinstance(jitter, ColorJitter)
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
        (0.8, 1.2),
        (0.8, 1.2),
        (0.8, 1.2),
        (-0.2, 0.2),
    )
    assert [blur.taps for blur in gaussian.transforms] == list(OPENCV_GAUSSIAN_TAPS.values())


def test_each_step_fires_about_half_the_time_and_the_one_of_picks_evenly():
    augmentations = AuthorsAugmentations()
    steps = [record(step)[0] for step in augmentations.transforms]
    options = record(steps[4].inner)
    image, mask = smooth_image(SIZE, SIZE), blob_mask(SIZE, SIZE)
    torch.manual_seed(0)
    for _ in range(DRAWS):
        augmentations(image, mask)
    for step in steps:
        assert_binomial(step.calls, DRAWS, 0.5)
    assert sum(option.calls for option in options) == steps[4].calls
    for option in options:
        assert_binomial(option.calls, steps[4].calls, 1 / 3)


@pytest.mark.parametrize(
    ("make_choice", "weights"),
    [
        (lambda: AuthorsAugmentations().transforms[4].transforms[0], [1 / 3] * 3),
        (opencv_gaussian_blur, [0.2, 0.4, 0.4]),  # kernel sizes 3, 5, 7
    ],
    ids=["one_of", "gaussian_kernel_size"],
)
def test_choices_are_drawn_with_the_authors_weights(make_choice, weights):
    choice, draws = make_choice(), 3 * DRAWS // 2
    options = record(choice)
    image = smooth_image(8, 8)
    torch.manual_seed(1)
    for _ in range(draws):
        choice(image)
    for option, weight in zip(options, weights, strict=True):
        assert_binomial(option.calls, draws, weight)


# Geometric steps: same as OpenCV, masks aligned


@pytest.mark.parametrize(("height", "width"), [(40, 40), (40, 64), (6, 64)])
@pytest.mark.parametrize("angle", [17.0, -29.5, 30.0])
def test_rotation_matches_opencv_with_mirrored_borders(height, width, angle):
    image = smooth_image(height, width)
    rotated = ReflectedRotation().transform(image, {"angle": angle})
    matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, 1.0)
    expected = cv2.warpAffine(
        as_array(image), matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    assert isinstance(rotated, tv_tensors.Image)
    np.testing.assert_allclose(as_array(rotated), expected, atol=1e-4)


def test_rotation_angles_cover_thirty_degrees_either_way():
    rotation = ReflectedRotation()
    torch.manual_seed(2)
    angles = torch.tensor([rotation.make_params([])["angle"] for _ in range(DRAWS)])
    assert angles.min() >= -30
    assert angles.max() <= 30
    assert angles.min() < -28
    assert angles.max() > 28
    assert_binomial(int((angles > 0).sum()), DRAWS, 0.5)


def test_rotation_moves_the_mask_with_the_image():
    mask = blob_mask()
    torch.manual_seed(3)
    for _ in range(10):
        image, rotated_mask = ReflectedRotation()(image_of(mask), mask)
        assert isinstance(rotated_mask, tv_tensors.Mask)
        assert rotated_mask.dtype == torch.uint8
        assert set(rotated_mask.unique().tolist()) <= {0, 1}
        assert not torch.equal(rotated_mask, mask)
        # Bilinear image, nearest-neighbour mask: they may differ only where the image is between 0 and 1.
        disagree = (image[0] > 0.5) != rotated_mask.bool()
        assert not (disagree & ((image[0] == 0) | (image[0] == 1))).any()
        assert disagree.float().mean() < 0.02


def test_quarter_turns_match_numpy_and_are_equally_likely():
    mask = blob_mask()
    for turns in range(4):
        image, rotated_mask = (RandomRotate90().transform(x, {"quarter_turns": turns}) for x in (image_of(mask), mask))
        expected = torch.from_numpy(np.rot90(mask.numpy(), turns).copy())
        assert isinstance(rotated_mask, tv_tensors.Mask)
        assert torch.equal(rotated_mask, expected)
        assert isinstance(image, tv_tensors.Image)
        assert torch.equal(image[0], expected.float())
    torch.manual_seed(4)
    turns = [RandomRotate90().make_params([])["quarter_turns"] for _ in range(DRAWS)]
    for value in range(4):
        assert_binomial(turns.count(value), DRAWS, 1 / 4)


def test_the_whole_pipeline_keeps_masks_aligned():
    mask = blob_mask()
    torch.manual_seed(5)
    for _ in range(40):
        image, augmented_mask = AuthorsAugmentations()(image_of(mask), mask)
        assert image.shape[-2:] == augmented_mask.shape
        assert set(augmented_mask.unique().tolist()) <= {0, 1}
        # Photometric steps shift and blur the image's levels; the blob still sits where the mask says.
        inside, outside = image[0][augmented_mask.bool()], image[0][~augmented_mask.bool()]
        assert inside.mean() - outside.mean() > 0.4


# Photometric steps: the authors' parameters, masks untouched


PHOTOMETRIC = {
    "brightness_contrast": RandomBrightnessContrast(),
    "noise": GaussNoise(),
    "box_blur": SeparableBlur(BOX_BLUR_TAPS),
    "colour_jitter": ColorJitter(0.2, 0.2, 0.2, 0.2),
    "gaussian_blur": opencv_gaussian_blur(),
}


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_steps_leave_masks_alone(name):
    image, mask = image_of(blob_mask()) * 0.6 + 0.2, blob_mask()
    torch.manual_seed(6)
    changed = 0
    for _ in range(10):
        new_image, new_mask = PHOTOMETRIC[name](tv_tensors.Image(image), mask)
        assert isinstance(new_mask, tv_tensors.Mask)
        assert torch.equal(new_mask, mask)
        changed += not torch.equal(new_image, image)
    assert changed >= 8


def test_brightness_and_contrast_are_an_affine_map_within_the_limits():
    image = tv_tensors.Image(torch.full((3, 4, 8), 0.4))
    image[..., 4:] = 0.6
    step = RandomBrightnessContrast()
    torch.manual_seed(7)
    alphas, betas = [], []
    for _ in range(DRAWS // 2):
        output = step(image)
        low, high = output[0, 0, 0].item(), output[0, 0, 7].item()
        alphas.append((high - low) / 0.2)
        betas.append(low - 0.4 * alphas[-1])
        assert torch.allclose(output, alphas[-1] * image + betas[-1], atol=1e-5)
    assert 0.8 - 1e-4 <= min(alphas) < 0.82
    assert 1.18 < max(alphas) <= 1.2 + 1e-4
    assert -0.2 - 1e-4 <= min(betas) < -0.18
    assert 0.18 < max(betas) <= 0.2 + 1e-4


def test_noise_variance_is_ten_to_fifty_eight_bit_levels_per_channel():
    image = tv_tensors.Image(torch.full((3, 64, 64), 0.5))
    torch.manual_seed(8)
    variances = []
    for _ in range(DRAWS // 4):
        noise = (GaussNoise()(image) - image) * 255
        variances.append(noise.var().item())
        correlation = torch.corrcoef(noise.flatten(1))[0, 1]
        assert abs(correlation) < 0.1
    assert 10 * 0.9 < min(variances) < 13
    assert 47 < max(variances) < 50 * 1.1


@pytest.mark.parametrize(
    ("taps", "opencv"),
    [
        (BOX_BLUR_TAPS, lambda array: cv2.blur(array, (3, 3))),
        *[
            (taps, lambda array, size=size: cv2.GaussianBlur(array, (size, size), 0))
            for size, taps in OPENCV_GAUSSIAN_TAPS.items()
        ],
    ],
    ids=["box_3", *(f"gaussian_{size}" for size in OPENCV_GAUSSIAN_TAPS)],
)
def test_blurs_match_opencv(taps, opencv):
    image = tv_tensors.Image(torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(9)))
    np.testing.assert_allclose(as_array(SeparableBlur(taps)(image)), opencv(as_array(image)), atol=1e-5)


def test_eight_bit_images_stay_eight_bit():
    image = tv_tensors.Image((smooth_image(SIZE, SIZE) * 255).to(torch.uint8))
    torch.manual_seed(10)
    for _ in range(20):
        output, _ = AuthorsAugmentations()(image, blob_mask(SIZE, SIZE))
        assert output.dtype == torch.uint8


# The mosaic


@pytest.fixture(scope="module")
def mosaic_data(tmp_path_factory):
    root = write_tree(
        tmp_path_factory.mktemp("mosaic"),
        ["alpha", "beta", "gamma"],
        image_size=SIZE,
        num_test_good=2,
        num_test_defect=4,
    )
    data = ZeroShotCrossDataset(
        auxiliary_root=str(root),
        auxiliary_format="mvtec",
        auxiliary_categories=["alpha", "beta"],
        target_root=str(root),
        target_format="mvtec",
        target_categories=["gamma"],
        num_workers=0,
        mosaic_probability=0.4,
    )
    data.setup()
    return data


def is_mosaic(item) -> bool:
    return item.image.shape[-2:] == (2 * SIZE, 2 * SIZE)


def test_the_mosaic_replaces_items_at_its_probability(mosaic_data):
    train = mosaic_data.train_data
    assert isinstance(train, MosaicDataset)
    torch.manual_seed(11)
    fired = sum(is_mosaic(train[index % len(train)]) for index in range(DRAWS))
    assert_binomial(fired, DRAWS, 0.4)


def test_mosaic_quadrants_are_anomalous_images_of_the_items_category_with_their_masks(mosaic_data):
    train = mosaic_data.train_data
    samples = train.samples
    torch.manual_seed(12)
    mosaics, sources = 0, set()
    for index in range(60):
        item = train[index % len(train)]
        if not is_mosaic(item):
            continue
        mosaics += 1
        category = mosaic_data.class_name_of(item.image_path)
        assert category == mosaic_data.class_name_of(samples.image_path.iloc[index % len(train)])
        assert item.gt_label == 1
        assert isinstance(item.gt_mask, tv_tensors.Mask)
        candidates = samples[
            (samples.label_index == 1) & (samples.image_path.map(mosaic_data.class_name_of) == category)
        ]
        for row, column in ((0, 0), (0, 1), (1, 0), (1, 1)):
            rows, columns = slice(row * SIZE, (row + 1) * SIZE), slice(column * SIZE, (column + 1) * SIZE)
            quadrant, quadrant_mask = item.image[:, rows, columns], item.gt_mask[rows, columns]
            matches = [
                source
                for source in candidates.itertuples()
                if torch.equal(read_image(source.image_path, True), quadrant)
            ]
            assert len(matches) == 1, "each quadrant is one anomalous image of the item's category"
            assert torch.equal(read_mask(matches[0].mask_path, True), quadrant_mask)
            assert quadrant_mask.any()
            sources.add(matches[0].image_path)
    assert mosaics >= 10
    assert len(sources) == 8  # over many mosaics, every anomalous image of both categories shows up


def test_the_mosaic_goes_through_the_augmentations(mosaic_data):
    train = mosaic_data.train_data
    torch.manual_seed(13)
    plain = train[0]
    torch.manual_seed(13)
    train.augmentations = RandomHorizontalFlip(p=1.0)
    try:
        flipped = train[0]
    finally:
        train.augmentations = None
    assert is_mosaic(plain)
    assert torch.equal(flipped.image, F.horizontal_flip(plain.image))
    assert torch.equal(flipped.gt_mask, F.horizontal_flip(plain.gt_mask))


def test_mosaics_and_plain_items_collate_after_the_model_resize(mosaic_data):
    train = mosaic_data.train_data
    train.augmentations = Compose([AuthorsAugmentations(), Resize((SIZE, SIZE))])  # as anomalib sets it
    try:
        torch.manual_seed(14)
        items = [train[index] for index in range(len(train))]
    finally:
        train.augmentations = None
    batch = train.collate_fn(items)
    assert batch.image.shape == (len(train), 3, SIZE, SIZE)
    assert batch.gt_mask.shape == (len(train), SIZE, SIZE)
    assert batch.gt_label.tolist().count(1) >= (train.samples.label_index == 1).sum()


def test_the_mosaic_is_seeded_by_torch(mosaic_data):
    train = mosaic_data.train_data
    draws = []
    for _ in range(2):
        torch.manual_seed(15)
        draws.append(torch.cat([train[index].image.flatten() for index in range(len(train))]))
    assert torch.equal(*draws)


def test_the_mosaic_keeps_the_datasets_identity(mosaic_data):
    train = mosaic_data.train_data
    assert train.name == "MVTecAD"
    assert train.task == TaskType.SEGMENTATION
    assert len(train) == 2 * 6
    without = ZeroShotCrossDataset(
        auxiliary_root=mosaic_data.auxiliary_root,
        auxiliary_format="mvtec",
        auxiliary_categories=["alpha"],
        target_root=mosaic_data.target_root,
        target_format="mvtec",
        target_categories=["gamma"],
        num_workers=0,
    )
    without.setup()
    assert not isinstance(without.train_data, MosaicDataset)  # off by default: nothing changes


@pytest.mark.parametrize("probability", [-0.1, 1.5])
def test_the_mosaic_probability_is_checked(mosaic_data, probability):
    with pytest.raises(ValueError, match="mosaic_probability must be in"):
        ZeroShotCrossDataset(mosaic_probability=probability)
    with pytest.raises(ValueError, match="mosaic probability must be in"):
        MosaicDataset(mosaic_data.test_data, probability, mosaic_data.class_name_of)


def test_categories_without_anomalous_images_get_no_mosaic(mosaic_data):
    test = mosaic_data.test_data
    normal = test.subsample(np.flatnonzero(test.samples.label_index == 0).tolist())  # gamma's normal images
    dataset = MosaicDataset(normal, 1.0, mosaic_data.class_name_of)
    assert not any(is_mosaic(dataset[index]) for index in range(len(dataset)))


def test_a_dataset_without_masks_gets_mosaics_without_masks(tmp_path):
    root = write_tree(tmp_path, ["gear", "nut"], layout="folder", masks=False, image_size=SIZE)
    data = ZeroShotCrossDataset(
        auxiliary_root=str(root),
        auxiliary_format="folder",
        auxiliary_categories=["gear"],
        target_root=str(root),
        target_format="folder",
        target_categories=["nut"],
        num_workers=0,
        mosaic_probability=1.0,
    )
    data.setup()
    assert data.train_data.task == TaskType.CLASSIFICATION
    items = [data.train_data[index] for index in range(len(data.train_data))]
    assert all(is_mosaic(item) and item.gt_mask is None and item.gt_label == 1 for item in items)


def test_training_batches_do_not_depend_on_the_number_of_workers(mosaic_data):
    """Each item is drawn with its own seed from the main process: 0 or 2 workers give the same batches."""
    train = mosaic_data.train_data
    train.augmentations = Compose([AuthorsAugmentations(), Resize((SIZE, SIZE))])  # as anomalib sets it
    batches = {}
    try:
        for workers in (0, 2):
            mosaic_data.num_workers = workers
            torch.manual_seed(16)
            loader = mosaic_data.train_dataloader()
            batches[workers] = [(batch.image, batch.gt_mask, batch.gt_label) for batch in loader]
    finally:
        train.augmentations, mosaic_data.num_workers = None, 0
    assert len(batches[0]) == len(batches[2]) > 1
    for plain, parallel in zip(batches[0], batches[2], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(plain, parallel, strict=True))
    assert any(label.any() for _, _, label in batches[0])
