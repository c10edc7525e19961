# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The resize that OpenVINO graphs use, the INT8 calibration images, and the refusals before any export runs."""

import logging

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import CompressionType
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.deploy import openvino as openvino_export
from anomalib_bayes_pfl.deploy.openvino import calibration_image_paths
from anomalib_bayes_pfl.deploy.resize import MatrixResize, resize_by_matrices

from ..helpers import cross_dataset, tiny_module


@pytest.mark.parametrize(("height", "width"), [(64, 64), (100, 37), (30, 50), (700, 500), (517, 519)])
def test_matrix_resize_is_torchs_antialiased_bicubic(height, width):
    """Shrinking, enlarging and both at once, at the model's input size."""
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height))
    expected = Resize((518, 518), interpolation=InterpolationMode.BICUBIC, antialias=True)(images)
    torch.testing.assert_close(MatrixResize((518, 518))(images), expected, rtol=0, atol=2e-6)


def test_plain_bicubic_differs_from_the_matrix_resize():
    """The comparison above can fail: without antialiasing, shrinking gives another image."""
    images = torch.rand(1, 3, 700, 500, generator=torch.Generator().manual_seed(0))
    plain = Resize((518, 518), interpolation=InterpolationMode.BICUBIC, antialias=False)(images)
    assert (MatrixResize((518, 518))(images) - plain).abs().max() > 1e-2


def test_only_the_export_graph_resizes_by_matrices_and_only_within_the_block(tiny_clip_path):
    module = tiny_module(tiny_clip_path)
    pre_processor = module.pre_processor
    before = pre_processor.export_transform
    with resize_by_matrices(pre_processor):
        steps = pre_processor.export_transform.transforms
        assert [type(step) for step in steps] == [Normalize, MatrixResize]  # see resize_by_matrices
        assert steps[1].size == (64, 64)
        assert pre_processor.transform is before  # training and testing keep torchvision's resize
    assert pre_processor.export_transform is before


def test_normalising_before_the_matrix_resize_gives_the_same_image():
    images = torch.rand(2, 3, 100, 37, generator=torch.Generator().manual_seed(0))
    normalise = Normalize(mean=[0.5, 0.4, 0.3], std=[0.2, 0.3, 0.25])
    resize = MatrixResize((64, 64))
    torch.testing.assert_close(resize(normalise(images)), normalise(resize(images)), rtol=0, atol=1e-5)


def test_other_pre_processing_is_exported_as_it_is(tiny_clip_path):
    module = tiny_module(tiny_clip_path)
    bilinear = Compose([Resize((64, 64), interpolation=InterpolationMode.BILINEAR, antialias=True)])
    module.pre_processor.export_transform = bilinear
    with resize_by_matrices(module.pre_processor):
        assert module.pre_processor.export_transform is bilinear


def test_int8_calibrates_on_the_auxiliary_images_only(mvtec_tree):
    paths = calibration_image_paths(cross_dataset(mvtec_tree), count=300)
    categories = {path.relative_to(mvtec_tree).parts[0] for path in paths}
    assert categories == {"tile_a", "tile_b"}  # tile_c is the target
    assert len(paths) == 12  # every annotated auxiliary image: 3 good and 3 defective per category


def test_int8_calibration_spreads_a_smaller_count_over_the_categories(mvtec_tree):
    paths = calibration_image_paths(cross_dataset(mvtec_tree), count=4)
    assert len(paths) == len(set(paths)) == 4
    assert {path.relative_to(mvtec_tree).parts[0] for path in paths} == {"tile_a", "tile_b"}


def test_an_anomalib_datamodule_calibrates_on_its_training_split(mvtec_tree):
    paths = calibration_image_paths(MVTecAD(root=mvtec_tree, category="tile_c", num_workers=0), count=300)
    assert paths
    assert all(path.relative_to(mvtec_tree / "tile_c").parts[:2] == ("train", "good") for path in paths)


def test_int8_without_data_is_refused_before_exporting(tiny_clip_path, tmp_path):
    module = tiny_module(tiny_clip_path)
    with pytest.raises(ValueError, match=r"INT8_PTQ calibrates on the auxiliary \(training\) images: add --data"):
        module.to_openvino(tmp_path, compression_type=CompressionType.INT8_PTQ)
    assert not any(tmp_path.iterdir())


def test_accuracy_controlled_int8_is_refused_by_name(tiny_clip_path, tmp_path, mvtec_tree):
    module = tiny_module(tiny_clip_path)
    with pytest.raises(ValueError, match=r"INT8_ACQ is not supported for BayesPFL.*Use --compression_type INT8_PTQ"):
        module.to_openvino(tmp_path, compression_type=CompressionType.INT8_ACQ, datamodule=cross_dataset(mvtec_tree))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("compression", "missing"), [(None, "openvino"), (CompressionType.INT8_PTQ, "nncf")])
def test_a_missing_package_is_named_with_the_install_command(
    tiny_clip_path, tmp_path, mvtec_tree, monkeypatch, compression, missing
):
    monkeypatch.setattr(openvino_export, "module_available", lambda package: package != missing)
    module = tiny_module(tiny_clip_path)
    with pytest.raises(ModuleNotFoundError, match=rf"needs {missing}: pip install '{missing}>=.*'\.\[openvino\]'"):
        module.to_openvino(tmp_path, compression_type=compression, datamodule=cross_dataset(mvtec_tree))
    assert not any(tmp_path.iterdir())


def test_int8_with_data_that_cannot_be_read_stops_before_exporting(tiny_clip_path, tmp_path, mvtec_tree):
    module = tiny_module(tiny_clip_path)
    data = ZeroShotCrossDataset(
        auxiliary_root=str(mvtec_tree / "missing"), auxiliary_format="mvtec", target_root=str(mvtec_tree), num_workers=0
    )
    with pytest.raises(FileNotFoundError, match="missing"):
        module.to_openvino(tmp_path / "export", compression_type=CompressionType.INT8_PTQ, datamodule=data)
    assert not (tmp_path / "export").exists()


def test_an_export_says_which_class_name_and_thresholds_it_bakes_in(tiny_clip_path, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        tiny_module(tiny_clip_path, class_name="screw", image_threshold=0.3).to_torch(tmp_path)
    assert (
        "Exporting BayesPFL for class name 'screw': 0-shot, 64 px, image / pixel thresholds 0.3 / 0.5, no uncertainty."
        in caplog.text
    )
    assert "No class name given" not in caplog.text


def test_an_export_without_a_class_name_warns_that_it_scores_object(tiny_clip_path, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="anomalib_bayes_pfl"):
        tiny_module(tiny_clip_path).to_torch(tmp_path)
    assert "No class name given or stored: the exported model scores every image as 'object'" in caplog.text


def _calibrated_for_review(tiny_clip_path, **options):
    """A tiny module whose head stores image, pixel and review thresholds for 'gear', as a calibrated checkpoint."""
    from anomalib_bayes_pfl.model.references import CategoryReferences

    module = tiny_module(tiny_clip_path, false_alarm_rate=0.25, review_rate=0.25, **options)
    stored = CategoryReferences([], {}, image_threshold=0.3, pixel_threshold=0.4, review_threshold=0.01)
    module.model.references.set("gear", stored)
    module.apply_export_thresholds()
    return module


def test_a_default_export_of_a_review_checkpoint_says_last_that_the_review_is_left_out(
    tiny_clip_path, tmp_path, caplog
):
    """Item 3 of issue 33: anomalib's four fields by default, and the last line names the option that keeps review."""
    module = _calibrated_for_review(tiny_clip_path)
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        path = module.to_torch(tmp_path)
    last = caplog.records[-1]
    assert last.levelno == logging.WARNING
    assert "The review mark is left out" in last.getMessage()
    assert "--model.export_uncertainty true to keep it" in last.getMessage()
    outputs = torch.load(path, weights_only=False)["metadata"]["outputs"]
    assert outputs == "pred_score, pred_label, anomaly_map, pred_mask"


def test_every_export_names_the_inferencer_that_reads_it_last_and_in_its_file(tiny_clip_path, tmp_path, caplog):
    """Item 12 of issue 33: anomalib's inferencers cannot read an export with the uncertainty; the log and the file
    say which one can, and how."""
    module = _calibrated_for_review(tiny_clip_path, export_uncertainty=True)
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        path = module.to_torch(tmp_path)
    last = caplog.records[-1].getMessage()
    assert "Load it with BayesPFLInferencer (anomalib's TorchInferencer and OpenVINOInferencer cannot" in last
    assert f"BayesPFLInferencer('{path}').predict('part.png').decision" in last
    assert last.endswith("(a pickle: it loads only with TRUST_REMOTE_CODE=1 set)")
    metadata = torch.load(path, weights_only=False)["metadata"]
    assert metadata["inferencer"] == "anomalib_bayes_pfl.BayesPFLInferencer"
    assert metadata["class_name"] == "gear"
    assert metadata["outputs"].endswith("uncertainty, uncertainty_map, needs_review")


def test_an_export_of_a_class_name_without_a_calibrated_image_threshold_is_refused(tiny_clip_path, tmp_path):
    """Item 6 of issue 33: never the fixed 0.5 in place of a calibrated threshold."""
    module = _calibrated_for_review(tiny_clip_path, class_name="bolt")
    with pytest.raises(ValueError, match=r"no calibrated image threshold for class name 'bolt'.*--model.image_thr"):
        module.to_torch(tmp_path)
    assert not list(tmp_path.rglob("*.pt"))
    with pytest.raises(RuntimeError, match=r"\['bolt'\] have no calibrated image threshold.*false_alarm_rate"):
        module(torch.rand(1, 3, 64, 64))  # the model in Python labels as its export would, or not at all
