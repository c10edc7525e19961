# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The authors' training augmentations of each image and its mask, in torchvision v2.

Bayes-PFL (github xiaozhen228/Bayes-PFL) passes every training image, normal or anomalous, mosaics included, through
an albumentations 1.3.1 (``requirements.txt:2``) pipeline before resizing it (``datasets.py:102-112``, applied at
``datasets.py:309-310``, resized at ``datasets.py:313-315``). anomalib does the same with a datamodule's
``train_augmentations``: they get the image at its file's resolution (RGB float in [0, 1]) with its mask as a
``tv_tensors.Mask``, and the model's resize comes after them. :class:`AuthorsAugmentations` is that pipeline
(the 2x2 mosaic the authors add when MVTec AD is the auxiliary set is ``mosaic.py``'s).

Where the translation is not exact:

- the authors' images are 8-bit BGR (``datasets.py:265``) and each albumentations step rounds to 8 bits; here they
  stay RGB floats, so the 8-bit truncations (about -0.5/255 on average after brightness/contrast and noise) are gone;
- albumentations' ``ColorJitter`` takes the image for RGB, so on the authors' BGR array its contrast mean and
  saturation grey weight blue by 0.299 and red by 0.114; torchvision weights the true channels. Its hue shift runs the
  other way round on BGR, which changes nothing since the shift is drawn from a symmetric range; OpenCV's 8-bit hue
  has 180 steps, torchvision's is continuous;
- OpenCV 4.9 (``requirements.txt:1``) rotates 8-bit images with bilinear weights quantised to 1/32 pixel;
  torchvision's are exact.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn import functional as torch_functional
from torchvision import tv_tensors
from torchvision.transforms.v2 import (
    ColorJitter,
    Compose,
    InterpolationMode,
    RandomApply,
    RandomChoice,
    RandomRotation,
    Transform,
)
from torchvision.transforms.v2 import functional as F  # noqa: N812

# Probability of each of the five steps (datasets.py:103-111).
STEP_PROBABILITY = 0.5
# A.Rotate(limit=30): an angle uniform in [-30, 30] degrees (datasets.py:103; albumentations rotate.py:174).
ROTATION_LIMIT = 30.0
# A.RandomBrightnessContrast defaults: both limits 0.2 (albumentations transforms.py:1215-1235).
BRIGHTNESS_LIMIT = 0.2
CONTRAST_LIMIT = 0.2
# A.GaussNoise default var_limit (10, 50), in 8-bit units (albumentations transforms.py:1311, 1337-1341).
NOISE_VARIANCE_8BIT = (10.0, 50.0)
# A.ColorJitter defaults: brightness, contrast, saturation and hue all 0.2, applied in a random order as torchvision's
# ColorJitter does (albumentations transforms.py:1941-1946, 1980-1987).
COLOR_JITTER = 0.2
# A.Blur(blur_limit=3): always a 3x3 box filter (datasets.py:108; albumentations blur/transforms.py:38, 44).
BOX_BLUR_TAPS = (1 / 3, 1 / 3, 1 / 3)
# A.GaussianBlur defaults, blur_limit (3, 7) and sigma 0 (albumentations blur/transforms.py:173-174, 198-202): the
# size is drawn from 3..7 and an even draw moves up, so 3, 5 and 7 come with weights 1, 2 and 2; with sigma 0,
# cv2.GaussianBlur uses OpenCV's fixed kernels of these sizes (getGaussianKernel's small_gaussian_tab), not a sampled
# Gaussian, which is why torchvision's GaussianBlur cannot reproduce it.
OPENCV_GAUSSIAN_TAPS = {
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}
OPENCV_GAUSSIAN_SIZE_WEIGHTS = {3: 1.0, 5: 2.0, 7: 2.0}
# Images, not masks or boxes: what the photometric steps change.
IMAGE_TYPES = (tv_tensors.Image, tv_tensors.Video, F.is_pure_tensor)


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _rewrap(output: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Give ``output`` the tv_tensor type of ``like`` (torch operations return plain tensors)."""
    return tv_tensors.wrap(output, like=like) if isinstance(like, tv_tensors.TVTensor) else output


def _on_float_image(image: torch.Tensor, operation: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``operation`` on the image as floats in [0, 1], and return it in the image's own dtype and type."""
    output = operation(F.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor))
    return _rewrap(F.to_dtype(output, image.dtype, scale=True), like=image)


def _reflect_pad(inpt: Any, pad_x: int, pad_y: int) -> Any:
    """Mirror the borders as OpenCV's BORDER_REFLECT_101 does, to any width.

    torch reflects at most ``size - 1`` at once; each such step ends on an axis of the infinite reflection, so
    repeating it extends the same reflection.
    """
    while pad_x > 0 or pad_y > 0:
        height, width = F.get_size(inpt)
        step_x, step_y = min(pad_x, width - 1), min(pad_y, height - 1)
        inpt = F.pad(inpt, [step_x, step_y, step_x, step_y], padding_mode="reflect")
        pad_x, pad_y = pad_x - step_x, pad_y - step_y
    return inpt


class ReflectedRotation(RandomRotation):
    """Rotate by an angle drawn uniformly from ``[-degrees, degrees]`` with the borders mirrored, as ``A.Rotate``.

    albumentations rotates about the image centre, bilinearly, and fills the corners with the mirrored image
    (``cv2.BORDER_REFLECT_101``), the mask too but with nearest neighbours (albumentations rotate.py:83-116,
    geometric/functional.py:136-151). torchvision only fills with a constant, so the image is mirror-padded first,
    rotated, and cropped back to its size; masks follow with nearest neighbours.

    Args:
        degrees: Largest rotation, in degrees (the authors': 30, datasets.py:103).

    Raises:
        ValueError: For an image or mask thinner than 2 pixels, which has nothing to mirror.
    """

    def __init__(self, degrees: float = ROTATION_LIMIT) -> None:
        super().__init__(degrees=degrees, interpolation=InterpolationMode.BILINEAR)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Mirror-pad just enough, rotate by ``params["angle"]``, crop back to the input's size."""
        height, width = F.get_size(inpt)
        if min(height, width) < 2:
            msg = f"cannot rotate with mirrored borders an input of {height}x{width} pixels."
            raise ValueError(msg)
        angle = math.radians(params["angle"])
        cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
        half_width, half_height = (width - 1) / 2, (height - 1) / 2
        # Every source pixel of the rotated image, and the neighbour it is interpolated with, lies in the padding.
        pad_x = max(math.ceil(half_width * cos + half_height * sin - half_width), 0) + 1
        pad_y = max(math.ceil(half_width * sin + half_height * cos - half_height), 0) + 1
        rotated = super().transform(_reflect_pad(inpt, pad_x, pad_y), params)
        return F.center_crop(rotated, [height, width])


class RandomRotate90(Transform):
    """Rotate images and masks by 0, 90, 180 or 270 degrees counter-clockwise, each as likely, as ``A.RandomRotate90``.

    As albumentations (rotate.py:39-43, ``np.rot90`` with a factor drawn from 0..3), a quarter of the draws leave the
    input as it is, and a non-square input changes shape.
    """

    _transformed_types = (*IMAGE_TYPES, tv_tensors.Mask)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """One draw for the image and its mask."""
        del flat_inputs
        return {"quarter_turns": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Rotate the last two axes as ``np.rot90`` does."""
        return _rewrap(torch.rot90(inpt, params["quarter_turns"], dims=(-2, -1)), like=inpt)


class RandomBrightnessContrast(Transform):
    """``clip(alpha * x + beta)`` with ``alpha - 1`` and ``beta`` uniform, as ``A.RandomBrightnessContrast``.

    albumentations' defaults (transforms.py:1215-1235, functional.py:853-870): contrast scales the values about 0 (not
    about their mean, as torchvision's ``ColorJitter`` does) and brightness adds a fraction of the maximum value, so
    no built-in matches. Masks are left alone.

    Args:
        brightness_limit: ``beta`` is drawn from ``[-brightness_limit, brightness_limit]``.
        contrast_limit: ``alpha`` is drawn from ``[1 - contrast_limit, 1 + contrast_limit]``.
    """

    _transformed_types = IMAGE_TYPES

    def __init__(self, brightness_limit: float = BRIGHTNESS_LIMIT, contrast_limit: float = CONTRAST_LIMIT) -> None:
        super().__init__()
        self.brightness_limit = brightness_limit
        self.contrast_limit = contrast_limit

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """Draw ``alpha`` and ``beta`` as albumentations does (transforms.py:1231-1235)."""
        del flat_inputs
        return {
            "alpha": 1.0 + _uniform(-self.contrast_limit, self.contrast_limit),
            "beta": _uniform(-self.brightness_limit, self.brightness_limit),
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Apply the affine map to the image's values in [0, 1]."""
        return _on_float_image(inpt, lambda image: (params["alpha"] * image + params["beta"]).clamp(0.0, 1.0))


class GaussNoise(Transform):
    """Add Gaussian noise of a random variance, independent per pixel and channel, as ``A.GaussNoise``.

    albumentations draws the variance uniformly from ``var_limit`` (10, 50) in 8-bit units (transforms.py:1311,
    1337-1341, on the authors' 8-bit images): a standard deviation of 3.2 to 7.1 levels out of 255. torchvision's
    ``GaussianNoise`` has a fixed one. Values are clipped to [0, 1]; masks are left alone.

    Args:
        variance_limit_8bit: Range of the noise variance, in squared 8-bit levels.
    """

    _transformed_types = IMAGE_TYPES

    def __init__(self, variance_limit_8bit: tuple[float, float] = NOISE_VARIANCE_8BIT) -> None:
        super().__init__()
        self.variance_limit_8bit = tuple(variance_limit_8bit)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """Draw the variance in 8-bit units; return the standard deviation in [0, 1] units."""
        del flat_inputs
        return {"sigma": math.sqrt(_uniform(*self.variance_limit_8bit)) / 255.0}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Add the noise with torchvision's ``gaussian_noise``, clipped to [0, 1]."""
        return _on_float_image(inpt, lambda image: F.gaussian_noise(image, sigma=params["sigma"]))


class SeparableBlur(Transform):
    """Convolve with a fixed separable kernel, borders mirrored as OpenCV's default ``BORDER_REFLECT_101``.

    The two blurs of the authors' ``OneOf``: ``A.Blur(3)`` is OpenCV's 3x3 box filter (``BOX_BLUR_TAPS``), and
    ``A.GaussianBlur`` one of OpenCV's fixed Gaussian kernels (``OPENCV_GAUSSIAN_TAPS``), neither of which torchvision
    has. Masks are left alone.

    Args:
        taps: The 1-D kernel, applied along both axes; an odd number of weights summing to 1.

    Raises:
        ValueError: If ``taps`` has an even length.
    """

    _transformed_types = IMAGE_TYPES

    def __init__(self, taps: Sequence[float]) -> None:
        super().__init__()
        if len(taps) % 2 == 0:
            msg = f"a blur kernel needs an odd number of taps, got {len(taps)}."
            raise ValueError(msg)
        self.taps = tuple(taps)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Blur each channel of the image."""
        del params
        return _on_float_image(inpt, self._blur)

    def _blur(self, image: torch.Tensor) -> torch.Tensor:
        kernel = torch.tensor(self.taps, dtype=image.dtype)
        radius = len(self.taps) // 2
        planes = image.reshape(-1, 1, *image.shape[-2:])
        planes = torch_functional.pad(planes, [radius] * 4, mode="reflect")
        planes = torch_functional.conv2d(planes, kernel.view(1, 1, 1, -1))
        planes = torch_functional.conv2d(planes, kernel.view(1, 1, -1, 1))
        return planes.reshape(image.shape)


def opencv_gaussian_blur() -> RandomChoice:
    """``A.GaussianBlur()`` with its defaults: OpenCV's 3-, 5- or 7-tap kernel, with weights 1, 2, 2."""
    return RandomChoice(
        [SeparableBlur(OPENCV_GAUSSIAN_TAPS[size]) for size in OPENCV_GAUSSIAN_TAPS],
        p=[OPENCV_GAUSSIAN_SIZE_WEIGHTS[size] for size in OPENCV_GAUSSIAN_TAPS],
    )


class AuthorsAugmentations(Compose):
    """The authors' training augmentations (Bayes-PFL datasets.py:102-112), in their order, each with p 0.5.

    1. rotation by up to 30 degrees either way, borders mirrored (:class:`ReflectedRotation`);
    2. rotation by a random multiple of 90 degrees (:class:`RandomRotate90`);
    3. brightness and contrast, both limits 0.2 (:class:`RandomBrightnessContrast`);
    4. Gaussian noise of variance 10 to 50 in 8-bit units (:class:`GaussNoise`);
    5. one of, equally likely (``A.OneOf``, which normalises its members' equal p and forces the one it picks,
       albumentations core/composition.py:315-326): a 3x3 box blur, ``ColorJitter(0.2, 0.2, 0.2, 0.2)``, or OpenCV's
       Gaussian blur (:func:`opencv_gaussian_blur`).

    The geometric steps move masks with the image (nearest neighbours); the others leave masks alone. Set it as the
    datamodule's ``train_augmentations``; anomalib appends the model's resize.

    Example:
        >>> import torch
        >>> from torchvision import tv_tensors
        >>> image, mask = tv_tensors.Image(torch.rand(3, 32, 48)), tv_tensors.Mask(torch.zeros(32, 48))
        >>> image, mask = AuthorsAugmentations()(image, mask)
        >>> image.shape[-2:] == mask.shape[-2:]
        True
    """

    def __init__(self) -> None:
        steps = [
            ReflectedRotation(ROTATION_LIMIT),
            RandomRotate90(),
            RandomBrightnessContrast(),
            GaussNoise(),
            RandomChoice(
                [
                    SeparableBlur(BOX_BLUR_TAPS),
                    ColorJitter(
                        brightness=COLOR_JITTER, contrast=COLOR_JITTER, saturation=COLOR_JITTER, hue=COLOR_JITTER
                    ),
                    opencv_gaussian_blur(),
                ]
            ),
        ]
        super().__init__([RandomApply([step], p=STEP_PROBABILITY) for step in steps])
