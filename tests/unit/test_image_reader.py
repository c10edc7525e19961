# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The one image reader: files read as anomalib reads them, arrays as their files, everything else refused by name."""

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from PIL import Image

from anomalib_bayes_pfl.data.image_reader import as_image_batch, check_image_file, read_image_file


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """A ``(H, W, 3)`` uint8 image with every channel different."""
    return np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1500x1000 JPEG (VisA's size) with detail, so that its entropy-coded data is long."""
    path = tmp_path_factory.mktemp("jpeg") / "part.jpg"
    noise = np.random.default_rng(1).integers(0, 256, (1000, 1500, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    return path


@pytest.mark.parametrize(("share", "progressive"), [(None, False), (0.6, False), (0.6, True)])
def test_a_truncated_jpeg_is_named_as_a_full_decode_names_it(big_jpeg, tmp_path, share, progressive):
    """PIL's verify() passes the cut files; the 1/8-scale decode of the check catches them, as anomalib's read does."""
    whole = tmp_path / "progressive.jpg" if progressive else big_jpeg
    if progressive:
        Image.open(big_jpeg).save(whole, progressive=True, quality=90)
    data = whole.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: 2000 if share is None else int(len(data) * share)])
    with Image.open(cut) as image:
        image.verify()
    with pytest.raises(OSError, match="truncated"):
        read_image(cut)
    size, problem = check_image_file(cut)
    assert size is None
    assert problem.startswith(f"image {cut} cannot be read (image file is truncated")
    assert problem.endswith("copy it again from its source, or remove it from the data")
    with pytest.raises(ValueError, match=f"image {cut} cannot be read"):
        read_image_file(cut)
    assert check_image_file(whole) == ((1500, 1000), None)


def test_a_truncated_png_is_named(pixels, tmp_path):
    whole, cut = tmp_path / "whole.png", tmp_path / "cut.png"
    Image.fromarray(pixels).save(whole)
    cut.write_bytes(whole.read_bytes()[:-20])
    assert check_image_file(whole) == ((20, 24), None)
    assert check_image_file(cut, "mask").problem.startswith(f"mask {cut} cannot be read")


def test_16_bit_and_float_files_are_refused_alike_by_the_check_and_the_reader(tmp_path):
    deep, floating = tmp_path / "deep.png", tmp_path / "float.tiff"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(deep)
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(floating)
    for path, mode, fix in ((deep, "I;16", "divide 16-bit values by 256"), (floating, "F", "scale float values")):
        problem = check_image_file(path).problem
        assert problem.startswith(f"image {path} has {mode} pixels, which anomalib's loader clips to 8 bits")
        assert fix in problem
        for read in (read_image_file, as_image_batch):
            with pytest.raises(ValueError, match="convert it to an 8-bit image") as error:
                read(path)
            assert str(error.value) == problem


MODES = [("1", "png"), ("L", "png"), ("P", "png"), ("RGBA", "png"), ("LA", "png"), ("CMYK", "jpg"), ("L", "jpg")]


@pytest.mark.parametrize(("mode", "suffix"), [*MODES, ("RGB", "bmp")])
def test_every_8_bit_mode_reads_as_anomalib_reads_it(pixels, tmp_path, mode, suffix):
    path = tmp_path / f"image.{suffix}"
    Image.fromarray(pixels).convert(mode).save(path)
    assert check_image_file(path) == ((20, 24), None)
    expected = read_image(path, as_tensor=True)
    assert torch.equal(read_image_file(path), expected)
    assert torch.equal(as_image_batch(path), expected.unsqueeze(0))
    with Image.open(path) as opened:
        assert torch.equal(as_image_batch(opened), expected.unsqueeze(0))  # a PIL image, as a user may hold one


def test_a_16_bit_pil_image_is_refused_as_its_file():
    with pytest.raises(ValueError, match=r"image \(a PIL image\) has I;16 pixels.*divide 16-bit values by 256"):
        as_image_batch(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)))


def test_a_float_image_just_above_one_shows_the_digits_that_exceed_it():
    with pytest.raises(ValueError, match=r"values in \[0, 1\.00000012\]"):
        as_image_batch(np.array([[0.0, np.nextafter(np.float32(1), np.float32(2))]], dtype=np.float32))


def test_a_missing_file_is_named(tmp_path):
    assert check_image_file(tmp_path / "gone.png", "mask") == (None, f"mask {tmp_path / 'gone.png'} does not exist")
    with pytest.raises(FileNotFoundError, match=r"gone\.png does not exist"):
        as_image_batch(tmp_path / "gone.png")


def test_arrays_read_as_their_files(pixels, tmp_path):
    """uint8 is divided by 255 as for a file; gray is repeated to three channels and alpha dropped, as PIL does."""
    rgb, gray, rgba = tmp_path / "rgb.png", tmp_path / "gray.png", tmp_path / "rgba.png"
    Image.fromarray(pixels).save(rgb)
    Image.fromarray(pixels).convert("L").save(gray)
    alpha = np.concatenate([pixels, pixels[..., :1]], axis=-1)
    Image.fromarray(alpha).save(rgba)
    gray_pixels = np.asarray(Image.open(gray))  # read-only, as PIL gives it
    cases = {
        rgb: [pixels, torch.from_numpy(pixels).permute(2, 0, 1), torch.from_numpy(pixels).permute(2, 0, 1)[None]],
        gray: [gray_pixels, gray_pixels[..., None], torch.from_numpy(gray_pixels.copy())],
        rgba: [alpha],
    }
    for path, images in cases.items():
        expected = read_image(path, as_tensor=True).unsqueeze(0)
        for image in images:
            assert torch.equal(as_image_batch(image), expected), (path, image.shape)
    bgr = np.ascontiguousarray(pixels[..., ::-1])
    assert torch.equal(as_image_batch(bgr[..., ::-1]), as_image_batch(pixels))  # negative strides are read


def test_float_inputs_keep_their_values():
    """The float paths of the first inferencer: ``(H, W, 3)`` permuted, tensors as they are, float64 to float32."""
    image = np.random.default_rng(2).random((6, 5, 3))
    expected = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
    assert torch.equal(as_image_batch(image), expected)
    assert torch.equal(as_image_batch(image.astype(np.float32)), expected)
    batch = torch.rand(2, 3, 6, 5)
    assert torch.equal(as_image_batch(batch), batch)
    assert torch.equal(as_image_batch(batch[0]), batch[:1])
    assert torch.equal(as_image_batch(batch.numpy()), batch)


def test_a_3_by_w_by_3_input_is_channels_last_as_an_array_and_channels_first_as_a_tensor():
    image = torch.rand(3, 5, 3)
    assert torch.equal(as_image_batch(image), image[None])
    assert torch.equal(as_image_batch(image.numpy()), image.permute(2, 0, 1)[None])


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8, 3), np.uint16), r"shape \(8, 8, 3\) and dtype uint16: only uint8 .* divide by 65535"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), r"shape \(3, 8, 8\) and dtype int64: only uint8"),
        (np.zeros((8, 8), bool), r"dtype bool: only uint8"),
        (np.full((8, 8, 3), 255.0, np.float32), r"values in \[255, 255\], but .* \[0, 1\]: divide 0-255 values by 255"),
        (torch.full((3, 8, 8), -0.5), r"values in \[-0.5, -0.5\], but .* \[0, 1\]: pass raw pixels, not normalised"),
        (np.full((8, 8, 3), np.nan), r"dtype float64 has NaN or Inf values"),
        (torch.full((3, 8, 8), float("inf")), r"NaN or Inf"),
        (np.zeros((8, 8, 2), np.uint8), r"shape \(8, 8, 2\) and dtype uint8 cannot be read as an image; accepted"),
        (torch.zeros(2, 4, 8, 8), r"shape \(2, 4, 8, 8\) .* accepted are \(H, W\) or \(H, W, 1\) gray"),
        (torch.zeros(1, 8, 8), r"shape \(1, 8, 8\)"),
        (np.zeros((1, 1, 3, 8, 8), np.float32), r"shape \(1, 1, 3, 8, 8\)"),
    ],
)
def test_other_arrays_are_refused_naming_shape_dtype_and_fix(image, match):
    with pytest.raises(ValueError, match=match):
        as_image_batch(image)


def test_other_types_are_refused():
    with pytest.raises(TypeError, match="cannot read an image from list: give a file path, a PIL image, a numpy array"):
        as_image_batch([[0.0]])
