# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Bad input either works correctly or stops with the file or value named, before anything is written."""

import numpy as np
import pytest
import torch
from anomalib.engine import Engine
from PIL import Image

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.data.synthetic import write_tree

from ..helpers import tiny_module

pytestmark = pytest.mark.slow  # end-to-end training through the Engine


def _tree(root):
    write_tree(root / "aux", ["tile_a", "tile_b"], num_train=0)
    write_tree(root / "target", ["tile_c"], num_train=0, seed=2)
    return root


def _data(root) -> ZeroShotCrossDataset:
    return ZeroShotCrossDataset(
        auxiliary_root=str(root / "aux"),
        auxiliary_format="mvtec",
        target_root=str(root / "target"),
        target_format="mvtec",
        train_batch_size=3,
        eval_batch_size=3,
        num_workers=0,
    )


def _train(tiny_clip_path, root):
    engine = Engine(default_root_dir=root / "results", accelerator="cpu", devices=1, logger=False)
    return engine.train(tiny_module(tiny_clip_path, stage_one_epochs=1, stage_two_epochs=0), datamodule=_data(root))


def _resave(path, convert):
    image = Image.open(path)
    convert(image).save(path)


def test_grayscale_rgba_palette_non_square_and_tiny_images_work(tiny_clip_path, tmp_path):
    root = _tree(tmp_path)
    images = sorted((root / "aux" / "tile_a" / "test").rglob("*.png"))
    _resave(images[0], lambda image: image.convert("L"))
    _resave(images[1], lambda image: image.convert("RGBA"))
    _resave(images[2], lambda image: image.convert("P"))
    target = sorted((root / "target" / "tile_c" / "test" / "good").glob("*.png"))
    _resave(target[0], lambda image: image.resize((96, 40)))
    _resave(target[1], lambda image: image.resize((6, 6)))
    results = _train(tiny_clip_path, root)
    assert all(np.isfinite(value) for value in results[0].values())


def test_sixteen_bit_images_are_named(tiny_clip_path, tmp_path):
    root = _tree(tmp_path)
    path = root / "target" / "tile_c" / "test" / "good" / "001.png"
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(path)
    with pytest.raises(ValueError, match=r"image .*tile_c/test/good/001\.png has I;16 pixels.*8-bit"):
        _train(tiny_clip_path, root)


def test_corrupt_and_truncated_files_are_named(tiny_clip_path, tmp_path):
    root = _tree(tmp_path)
    (root / "aux" / "tile_a" / "test" / "good" / "000.png").write_bytes(b"not an image")
    truncated = root / "aux" / "tile_b" / "test" / "defect" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(
        ValueError, match=r"(?s)2 problem\(s\).*tile_a/test/good/000\.png cannot be read.*tile_b/test/defect/001\.png"
    ):
        _train(tiny_clip_path, root)


def test_missing_and_mismatched_masks_are_named(tiny_clip_path, tmp_path):
    root = _tree(tmp_path)
    (root / "aux" / "tile_a" / "ground_truth" / "defect" / "002_mask.png").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"1 anomalous image\(s\) of category 'tile_a' have no mask: .*defect/002\.png"
    ):
        _train(tiny_clip_path, root)
    root = _tree(tmp_path / "second")
    _resave(root / "aux" / "tile_b" / "ground_truth" / "defect" / "001_mask.png", lambda image: image.resize((32, 32)))
    with pytest.raises(ValueError, match=r"mask .*001_mask\.png is 32x32 but its image .*001\.png is 64x64"):
        _train(tiny_clip_path, root)


def test_empty_category_folder_is_named(tiny_clip_path, tmp_path):
    root = _tree(tmp_path)
    empty = root / "aux" / "tile_empty" / "test" / "good"
    empty.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"category 'tile_empty' under .*aux cannot be read: Found 0 images"):
        _train(tiny_clip_path, root)


def test_a_failed_run_loses_nothing_already_written(tiny_clip_path, tmp_path):
    root = _tree(tmp_path)
    _train(tiny_clip_path, root)
    written = sorted(path.relative_to(root) for path in (root / "results").rglob("*") if path.is_file())
    assert any(path.name == "model.ckpt" for path in written)
    (root / "target" / "tile_c" / "test" / "good" / "000.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"000\.png cannot be read"):
        _train(tiny_clip_path, root)
    for path in written:
        assert (root / path).is_file(), path


def test_unknown_class_names_work_and_empty_ones_are_refused(tiny_clip_path):
    module = tiny_module(tiny_clip_path).eval()
    images = module.pre_processor.transform(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        scores = module.model(images, ["zxqv flange", "Widget-42"]).pred_score
    assert torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="class name is empty"):
        module.model(images, ["bottle", ""])


def test_loose_files_given_to_predict_are_checked_before_any_is_scored(tiny_clip_path, tmp_path):
    root = _tree(tmp_path)
    loose = sorted((root / "target" / "tile_c" / "test").rglob("*.png"))
    truncated = loose[-1]
    truncated.write_bytes(truncated.read_bytes()[:100])
    engine = Engine(default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    named = rf"(?s)1 problem\(s\).*/{truncated.parent.name}/{truncated.name} cannot be read"
    with pytest.raises(ValueError, match=named):
        engine.predict(tiny_module(tiny_clip_path), data_path=root / "target" / "tile_c" / "test")
    assert not list((tmp_path / "results").rglob("predictions.csv"))
    assert not list((tmp_path / "results").rglob("*.png"))
