# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Few-shot references and calibrated thresholds through anomalib's Engine, on categories the head never saw."""

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from anomalib import LearningType
from anomalib.data import MVTecAD, PredictDataset
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_bayes_pfl import BayesPFL, ZeroShotCrossDataset
from anomalib_bayes_pfl.calibration.images import FEW_SHOT_IMAGES_CSV
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.reporting import CSV_NAME, MEAN_ROW

from ..helpers import cross_dataset, tiny_module

pytestmark = pytest.mark.slow

UNSEEN = ["tile_c", "tile_d"]
SCORE_COLUMNS = ["image_AUROC", "image_AUPR", "pixel_AUROC", "pixel_AUPRO"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(
        tmp_path_factory.mktemp("few_shot"), ["tile_a", "tile_b", *UNSEEN], num_train=12, seed=3, num_test_good=6
    )


def _data(tree: Path) -> ZeroShotCrossDataset:
    return cross_dataset(tree, UNSEEN)


@pytest.fixture(scope="module")
def head(tmp_path_factory, tiny_clip_path, tree) -> Path:
    """A head trained on tile_a and tile_b: tile_c and tile_d are unseen."""
    seed_everything(0)
    root = tmp_path_factory.mktemp("head")
    module = tiny_module(tiny_clip_path, stage_one_epochs=2, stage_two_epochs=1)
    Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False).train(module, datamodule=_data(tree))
    return next(root.rglob("model.ckpt"))


def _test(root: Path, module: BayesPFL, datamodule, **kwargs) -> pd.DataFrame:
    Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False).test(
        module, datamodule=datamodule, **kwargs
    )
    return pd.read_csv(next(root.rglob(CSV_NAME)), index_col="category")


def test_four_shot_beats_zero_shot_on_unseen_categories(head, tiny_clip_path, tree, tmp_path):
    """Mean pixel AUROC over the unseen categories gains at least 0.2 with 4 references (seeds fixed).

    Measured: 0.348 zero-shot, 0.827 with 4 shots, for this tiny head trained for 3 epochs on two other categories.
    """
    zero = _test(tmp_path / "zero", tiny_module(tiny_clip_path, prompt_weights=str(head)), _data(tree))
    few = _test(tmp_path / "four", tiny_module(tiny_clip_path, prompt_weights=str(head), k_shot=4), _data(tree))
    zero_shot, four_shot = zero.loc[MEAN_ROW, "pixel_AUROC"], few.loc[MEAN_ROW, "pixel_AUROC"]
    print(f"mean pixel AUROC: 0-shot {zero_shot:.3f}, 4-shot {four_shot:.3f}")
    assert four_shot >= zero_shot + 0.2


def test_calibration_sets_thresholds_and_never_changes_scores(head, tiny_clip_path, tree, tmp_path, caplog):
    options = {"prompt_weights": str(head), "k_shot": 2}
    plain = _test(tmp_path / "plain", tiny_module(tiny_clip_path, **options), _data(tree))
    module = tiny_module(tiny_clip_path, **options, false_alarm_rate=0.25, calibration_images=6)
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        calibrated = _test(tmp_path / "calibrated", module, _data(tree))
    listed = pd.read_csv(next((tmp_path / "calibrated").rglob(FEW_SHOT_IMAGES_CSV)))
    calibration_lines = [line for line in caplog.messages if "calibrated on 6 normal image(s)" in line]
    assert len(calibration_lines) == len(UNSEEN)
    assert all(line.count(".png") == 3 and line.endswith("and 3 more).") for line in calibration_lines)  # short
    pd.testing.assert_frame_equal(plain[SCORE_COLUMNS], calibrated[SCORE_COLUMNS])
    assert (plain.loc[UNSEEN, "image_threshold"] == 0.5).all()
    thresholds = calibrated.loc[UNSEEN, "image_threshold"]
    assert thresholds.between(0, 1).all()
    assert (thresholds != 0.5).all()
    assert calibrated.loc[MEAN_ROW, "image_threshold"] == pytest.approx(thresholds.mean())
    for category in UNSEEN:
        stored = module.model.references.get(category)
        assert stored.image_threshold == pytest.approx(calibrated.loc[category, "image_threshold"])
        assert stored.pixel_threshold == pytest.approx(calibrated.loc[category, "pixel_threshold"])
        # References and calibration images: normal training images, disjoint, never test images.
        chosen = [*stored.reference_images, *stored.calibration_images]
        assert len(stored.reference_images) == 2
        assert len(stored.calibration_images) == 6
        assert len(set(chosen)) == 8
        assert all(Path(path).parent == tree / category / "train" / "good" for path in chosen)
        rows = listed[listed.category == category]
        assert rows[rows.role == "reference"].image_path.tolist() == stored.reference_images
        assert rows[rows.role == "calibration"].image_path.tolist() == stored.calibration_images


def test_references_are_nested_in_k_and_independent_of_calibration(head, tiny_clip_path, tree, tmp_path):
    chosen = {}
    for k_shot, rate in ((1, None), (2, None), (4, None), (4, 0.25)):
        module = tiny_module(
            tiny_clip_path, prompt_weights=str(head), k_shot=k_shot, false_alarm_rate=rate, calibration_images=6
        )
        _test(tmp_path / f"{k_shot}_{rate}", module, _data(tree))
        chosen[k_shot, rate] = module.model.references.get("tile_c").reference_images
    assert chosen[1, None] == chosen[2, None][:1]
    assert chosen[2, None] == chosen[4, None][:2]
    assert chosen[4, None] == chosen[4, 0.25]


def test_checkpoint_carries_references_and_thresholds_into_test(head, tiny_clip_path, tree, tmp_path, caplog):
    """``anomalib train`` of a loaded head with k_shot is FEW_SHOT; its checkpoint tests identically, reusing them."""
    module = tiny_module(
        tiny_clip_path, prompt_weights=str(head), k_shot=2, false_alarm_rate=0.25, calibration_images=6
    )
    assert module.learning_type == LearningType.FEW_SHOT
    root = tmp_path / "train"
    Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False).train(module, datamodule=_data(tree))
    first = pd.read_csv(next(root.rglob(CSV_NAME)), index_col="category")
    checkpoint = next(root.rglob("model.ckpt"))
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]["model._extra_state"]
    assert sorted(stored["references"]) == UNSEEN
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        again = _test(tmp_path / "again", BayesPFL(), _data(tree), ckpt_path=str(checkpoint))
    pd.testing.assert_frame_equal(first, again)
    assert "using the references and thresholds stored with the head" in caplog.text
    assert "reference image(s)" not in caplog.text  # nothing was drawn again


def test_k_shot_zero_on_a_few_shot_checkpoint_scores_zero_shot(head, tiny_clip_path, tree, tmp_path):
    zero = _test(tmp_path / "zero", tiny_module(tiny_clip_path, prompt_weights=str(head)), _data(tree))
    module = tiny_module(tiny_clip_path, prompt_weights=str(head), k_shot=2)
    root = tmp_path / "few"
    Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False).train(module, datamodule=_data(tree))
    checkpoint = next(root.rglob("model.ckpt"))
    again = _test(tmp_path / "again", BayesPFL(k_shot=0), _data(tree), ckpt_path=str(checkpoint))
    pd.testing.assert_frame_equal(zero[SCORE_COLUMNS], again[SCORE_COLUMNS])


def test_anomalib_datamodule_gives_references_from_its_training_split(head, tiny_clip_path, tree, tmp_path):
    module = tiny_module(tiny_clip_path, prompt_weights=str(head), k_shot=3)
    datamodule = MVTecAD(root=tree, category="tile_d", eval_batch_size=4, num_workers=0)
    table = _test(tmp_path, module, datamodule)
    assert list(table.index) == ["tile_d", MEAN_ROW]
    assert all("/train/good/" in path for path in module.model.references.get("tile_d").reference_images)


def test_predict_on_loose_files_uses_a_few_shot_source_and_calibrated_labels(head, tiny_clip_path, tree, tmp_path):
    source = tmp_path / "good_parts"
    shutil.copytree(tree / "tile_c" / "train" / "good", source)
    module = BayesPFL(
        class_name="tile", k_shot=2, false_alarm_rate=0.25, calibration_images=6, few_shot_source=str(source)
    )
    engine = Engine(default_root_dir=tmp_path / "predict", accelerator="cpu", devices=1, logger=False)
    loose_files = PredictDataset(tree / "tile_c" / "test" / "defect")
    predictions = engine.predict(module, dataset=loose_files, ckpt_path=str(head))
    stored = module.model.references.get("tile")
    assert all(Path(path).parent == source for path in stored.reference_images)
    for batch in predictions:
        assert torch.equal(batch.pred_label, batch.pred_score > stored.image_threshold)
        assert torch.equal(batch.pred_mask, batch.anomaly_map > stored.pixel_threshold)
    assert module.post_processor.thresholds == pytest.approx((stored.image_threshold, stored.pixel_threshold))


@pytest.mark.parametrize("copy", [False, True])
def test_a_few_shot_source_holding_test_images_is_refused(head, tiny_clip_path, tree, tmp_path, copy):
    """A test image in the source is refused, also a byte-identical copy of one under another name."""
    source = tree / "tile_c" / "test" / "good"
    if copy:
        shutil.copytree(tree / "tile_c" / "train" / "good", tmp_path / "good_parts")
        shutil.copy(next(source.glob("*.png")), tmp_path / "good_parts" / "renamed.png")
        source = tmp_path / "good_parts"
    module = tiny_module(tiny_clip_path, prompt_weights=str(head), k_shot=2, few_shot_source=str(source))
    datamodule = MVTecAD(root=tree, category="tile_c", eval_batch_size=4, num_workers=0)
    refused = "under their own or another name \\((renamed.png|.*000.png).*must not be test images"
    with pytest.raises(ValueError, match=refused):
        _test(tmp_path / "results", module, datamodule)


def test_a_flat_few_shot_source_cannot_serve_several_categories(head, tiny_clip_path, tree, tmp_path):
    source = tree / "tile_c" / "train" / "good"
    module = tiny_module(tiny_clip_path, prompt_weights=str(head), k_shot=2, few_shot_source=str(source))
    with pytest.raises(FileNotFoundError, match=r"holds no normal images of 'tile_c'.*one sub-folder per category"):
        _test(tmp_path, module, _data(tree))


def test_too_few_normal_images_name_the_counts_and_the_fix(head, tiny_clip_path, tree, tmp_path):
    module = tiny_module(tiny_clip_path, prompt_weights=str(head), k_shot=4, false_alarm_rate=0.1, calibration_images=9)
    with pytest.raises(ValueError, match=r"'tile_c' needs 13 normal images \(4 references \+ 9 calibration.*holds 12"):
        _test(tmp_path, module, _data(tree))


def test_contradicting_or_too_small_calibration_options_stop_the_run_before_scoring(
    head, tiny_clip_path, tree, tmp_path
):
    """Refused when a run starts (in ``__init__``, anomalib's command line would bury the message)."""
    both = tiny_module(tiny_clip_path, prompt_weights=str(head), image_threshold=0.3, false_alarm_rate=0.1)
    with pytest.raises(ValueError, match=r"--model.image_threshold and --model.false_alarm_rate 0.1 cannot both"):
        _test(tmp_path / "both", both, _data(tree))
    few = tiny_module(tiny_clip_path, prompt_weights=str(head), false_alarm_rate=0.05, calibration_images=10)
    with pytest.raises(ValueError, match=r"false-alarm rate of 0.05 needs at least 19 calibration images.*=10"):
        _test(tmp_path / "few", few, _data(tree))
    assert not list(tmp_path.rglob(CSV_NAME))


@pytest.fixture(scope="module")
def few_shot_checkpoint(head, tiny_clip_path, tree, tmp_path_factory) -> Path:
    """A checkpoint with 2-shot references and thresholds calibrated for 0.25 on 6 images, for tile_c and tile_d."""
    module = tiny_module(
        tiny_clip_path, prompt_weights=str(head), k_shot=2, false_alarm_rate=0.25, calibration_images=6
    )
    root = tmp_path_factory.mktemp("few_shot_checkpoint")
    Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False).train(module, datamodule=_data(tree))
    return next(root.rglob("model.ckpt"))


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_exported_model_scores_and_labels_with_its_class_references(
    few_shot_checkpoint, tree, tmp_path, runtime, request, monkeypatch
):
    """Exported for one class name, the model fuses that class's references and labels with its thresholds.

    The ONNX file is exported once (``tile_d_onnx``); onnxruntime and OpenVINO (reading the file) each run it.
    """
    from anomalib.data.utils import read_image

    module = BayesPFL(class_name="tile_d", prompt_weights=str(few_shot_checkpoint)).eval()
    stored = module.model.references.get("tile_d")
    assert module.post_processor.thresholds == pytest.approx((stored.image_threshold, stored.pixel_threshold))
    paths = sorted((tree / "tile_d" / "test").rglob("*.png"))[:3]
    images = torch.stack([read_image(path, as_tensor=True) for path in paths])
    if runtime == "torch":
        run = _torch_runner(module.to_torch(tmp_path))
    else:
        monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes its cache folder into the working directory
        run = _onnx_runner(request.getfixturevalue("tile_d_onnx"), runtime)
    for batch in (images[:1], images):  # the batch size stays dynamic
        outputs = run(batch)
        with torch.no_grad():
            expected = module.model.score(module.pre_processor.transform(batch), ["tile_d"] * len(batch), few_shot=True)
        torch.testing.assert_close(outputs["pred_score"].flatten(), expected.pred_score, rtol=0, atol=1e-5)
        torch.testing.assert_close(outputs["anomaly_map"].squeeze(1), expected.anomaly_map, rtol=0, atol=1e-5)
        assert torch.equal(outputs["pred_label"].flatten(), expected.pred_score > stored.image_threshold)
        assert torch.equal(outputs["pred_mask"].squeeze(1), expected.anomaly_map > stored.pixel_threshold)


EXPORTED_FIELDS = ("pred_score", "anomaly_map", "pred_label", "pred_mask")


@pytest.fixture(scope="module")
def tile_d_onnx(few_shot_checkpoint, tmp_path_factory) -> Path:
    """The few-shot checkpoint exported to ONNX for tile_d at 64 px."""
    module = BayesPFL(class_name="tile_d", prompt_weights=str(few_shot_checkpoint)).eval()
    return module.to_onnx(tmp_path_factory.mktemp("tile_d_onnx"), input_size=(64, 64), opset_version=18)


def _torch_runner(exported: Path) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The exported torch model: a function from images to the exported fields."""
    model = torch.load(exported, weights_only=False)["model"].eval()

    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            output = model(images)
        return {name: getattr(output, name) for name in EXPORTED_FIELDS}

    return run


def _onnx_runner(onnx_file: Path, runtime: str) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The ONNX file in onnxruntime or in anomalib's OpenVINOInferencer: a function from images to the fields."""
    if runtime == "openvino":
        from anomalib.deploy import OpenVINOInferencer  # in the test extra

        inferencer = OpenVINOInferencer(onnx_file, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})

        def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
            prediction = inferencer.predict(images)
            return {name: torch.from_numpy(getattr(prediction, name)) for name in EXPORTED_FIELDS}

        return predict
    import onnxruntime as ort  # in the test extra

    session = ort.InferenceSession(str(onnx_file))
    names = [output.name for output in session.get_outputs()]

    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        values = session.run(None, {"input": images.numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(names, values, strict=True)}

    return run


@pytest.mark.parametrize("export", ["to_torch", "to_openvino"])
def test_an_exported_class_without_references_is_refused_by_name(few_shot_checkpoint, tmp_path, export):
    module = BayesPFL(class_name="gear", prompt_weights=str(few_shot_checkpoint)).eval()
    with pytest.raises(
        ValueError, match=r"no references for class name 'gear' \(it has them for \['tile_c', 'tile_d'\]"
    ):
        getattr(module, export)(tmp_path)
    assert not list(tmp_path.rglob("*.pt"))
    assert not list(tmp_path.rglob("*.xml"))


def _keep_one_category(checkpoint: Path, category: str, path: Path) -> Path:
    """The checkpoint with the references and thresholds of ``category`` only, as a run on that one category writes."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    extra = saved["state_dict"]["model._extra_state"]
    extra["references"] = {category: extra["references"][category]}
    torch.save(saved, path)
    return path


def test_a_calibrated_few_shot_checkpoint_exports_from_the_checkpoint_alone(few_shot_checkpoint, tree, tmp_path):
    """``anomalib export --ckpt_path``: the model is rebuilt from the checkpoint's own options (its fixed thresholds
    and its false-alarm rate among them), exports the one part it stores, and labels with that part's thresholds.
    ``anomalib predict`` of the same checkpoint scores loose images as that part too, as the export does."""
    from anomalib.data.utils import read_image
    from anomalib.deploy import ExportType

    single = _keep_one_category(few_shot_checkpoint, "tile_c", tmp_path / "tile_c.ckpt")
    engine = Engine(default_root_dir=tmp_path / "export", accelerator="cpu", devices=1, logger=False)
    path = engine.export(model=BayesPFL(), export_type=ExportType.TORCH, ckpt_path=single)
    exported = torch.load(path, weights_only=False)["model"].eval()
    module = BayesPFL(prompt_weights=str(single)).eval()
    stored = module.model.references.get("tile_c")
    images = torch.stack(
        [read_image(path, as_tensor=True) for path in sorted((tree / "tile_c" / "test").rglob("*.png"))]
    )
    with torch.no_grad():
        output = exported(images)
        expected = module.model.score(module.pre_processor.transform(images), ["tile_c"] * len(images), few_shot=True)
    torch.testing.assert_close(output.pred_score, expected.pred_score, rtol=0, atol=1e-6)
    assert torch.equal(output.pred_label.flatten(), expected.pred_score > stored.image_threshold)
    assert torch.equal(output.pred_mask.squeeze(1), expected.anomaly_map > stored.pixel_threshold)
    loose = tmp_path / "loose"  # issue 33, item 4: predict gives loose images the category the export scores
    loose.mkdir()
    for image in sorted((tree / "tile_c" / "test" / "defect").glob("*.png"))[:2]:
        shutil.copy(image, loose / f"part_{image.name}")
    predictor = Engine(default_root_dir=tmp_path / "predict", accelerator="cpu", devices=1, logger=False)
    for predicted in predictor.predict(BayesPFL(), dataset=PredictDataset(loose), ckpt_path=single):
        assert predicted.category == predicted.class_name == ["tile_c"] * len(predicted.image_path)
        with torch.no_grad():
            raw = exported(torch.stack([read_image(path, as_tensor=True) for path in predicted.image_path]))
        torch.testing.assert_close(raw.pred_score.flatten(), predicted.pred_score, rtol=0, atol=1e-6)
    with pytest.raises(
        ValueError, match=r"for \['tile_c', 'tile_d'\].*one model per class name with --model.class_name <name>"
    ):
        engine.export(model=BayesPFL(), export_type=ExportType.TORCH, ckpt_path=few_shot_checkpoint)


def test_fixed_thresholds_given_with_a_calibrated_checkpoint_win_with_a_warning(
    few_shot_checkpoint, tree, tmp_path, caplog
):
    with caplog.at_level(logging.WARNING, logger="anomalib_bayes_pfl"):
        module = BayesPFL(prompt_weights=str(few_shot_checkpoint), image_threshold=0.4)
    assert "labelling with fixed thresholds, not with the thresholds calibrated for a false-alarm rate" in caplog.text
    table = _test(tmp_path, module, _data(tree))
    assert (table.loc[UNSEEN, "image_threshold"] == 0.4).all()


def test_stored_references_that_are_scored_now_are_drawn_again(few_shot_checkpoint, tree, tmp_path, caplog):
    """Scoring a category's own stored reference or calibration images never compares them with themselves."""
    stored = BayesPFL(prompt_weights=str(few_shot_checkpoint)).model.references.get("tile_c")
    loose = tmp_path / "loose"
    loose.mkdir()
    for path in stored.calibration_images:
        shutil.copy(path, loose)
    everything = len(stored.calibration_images) + len(stored.reference_images)  # all in the category's train/good
    for folder, scored_again in (
        (loose, len(stored.calibration_images)),
        (Path(stored.calibration_images[0]).parent, everything),
    ):
        module = BayesPFL(class_name="tile_c")
        engine = Engine(default_root_dir=tmp_path / folder.name, accelerator="cpu", devices=1, logger=False)
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="anomalib_bayes_pfl"),
            pytest.raises(ValueError, match=r"no datamodule"),
        ):
            engine.predict(module, dataset=PredictDataset(folder), ckpt_path=str(few_shot_checkpoint))
        assert f"{scored_again} of the references and calibration images stored with the head are scored" in caplog.text
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    shutil.copy(next((tree / "tile_c" / "test" / "defect").glob("*.png")), unrelated)
    module = BayesPFL(class_name="tile_c")
    engine = Engine(default_root_dir=tmp_path / "unrelated_run", accelerator="cpu", devices=1, logger=False)
    engine.predict(module, dataset=PredictDataset(unrelated), ckpt_path=str(few_shot_checkpoint))
    assert module.model.references.get("tile_c").reference_images == stored.reference_images  # kept


def test_a_few_shot_source_is_compared_by_its_folder_not_its_text(head, tree, tmp_path, monkeypatch, caplog):
    """The same relative ``few_shot_source`` in another working directory is another folder: drawn again."""
    for place, category in (("first", "tile_c"), ("second", "tile_d")):
        shutil.copytree(tree / category / "train" / "good", tmp_path / place / "good_parts")
    loose = PredictDataset(tree / "tile_c" / "test" / "defect")
    options = {"class_name": "tile", "k_shot": 2, "few_shot_source": "good_parts"}

    def predict(place: str, checkpoint: Path) -> BayesPFL:
        monkeypatch.chdir(tmp_path / place)
        module = BayesPFL(**options)
        engine = Engine(default_root_dir="results", accelerator="cpu", devices=1, logger=False)
        engine.predict(module, dataset=loose, ckpt_path=str(checkpoint))
        engine.trainer.save_checkpoint(tmp_path / place / "with_references.ckpt")
        return module

    first = predict("first", head).model.references.get("tile").reference_images
    assert all(Path(path).parent == tmp_path / "first" / "good_parts" for path in first)
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        again = predict("first", tmp_path / "first" / "with_references.ckpt").model.references.get("tile")
    assert again.reference_images == first
    assert "using the references and thresholds stored with the head" in caplog.text
    second = predict("second", tmp_path / "first" / "with_references.ckpt").model.references.get("tile")
    assert all(Path(path).parent == tmp_path / "second" / "good_parts" for path in second.reference_images)


@pytest.mark.parametrize("seed", [None, 0])
def test_a_datamodule_that_splits_at_random_is_named_in_a_warning(head, tiny_clip_path, tmp_path, caplog, seed):
    from anomalib.data import Folder

    root = write_tree(tmp_path / "line", ["widget"], layout="anomalib_folder", num_test_good=20, num_test_defect=4)
    datamodule = Folder(
        name="line",
        root=root / "widget",
        normal_dir="good",
        abnormal_dir="bad",
        mask_dir="masks",
        seed=seed,
        eval_batch_size=8,
        num_workers=0,
    )
    module = tiny_module(tiny_clip_path, prompt_weights=str(head), k_shot=2)
    with caplog.at_level(logging.WARNING, logger="anomalib_bayes_pfl"):
        _test(tmp_path / "results", module, datamodule)
    warned = "Folder moves a random share of its normal images into the test set" in caplog.text
    assert warned == (seed is None)


def _loose_parts(tree: Path, folder: Path) -> Path:
    """tile_c's test images as loose files, a third of them at other sizes (the exported model takes any size)."""
    from PIL import Image

    folder.mkdir()
    for number, path in enumerate(sorted((tree / "tile_c" / "test").rglob("*.png"))):
        image = Image.open(path)
        size = [None, (80, 72), (50, 64)][number % 3]
        (image.resize(size) if size else image).save(folder / f"part_{number:02d}.png")
    return folder


def test_the_on_line_recipe_calibrate_export_load_and_decide_per_part(head, tree, tmp_path, monkeypatch):
    """The README's recipe as typed: calibrate into a checkpoint on anomalib's Folder, export it to OpenVINO with its
    uncertainty, load it with BayesPFLInferencer and decide each part. ``anomalib predict`` of the checkpoint marks
    each part on its own (uncertainty above the calibrated threshold), and the OpenVINO and torch exports mark the
    same parts, with the same uncertainty and uncertainty map within 1e-5, on raw images of three sizes."""
    from anomalib.data.utils import read_image

    from anomalib_bayes_pfl import BayesPFLInferencer

    from ..helpers import anomalib_cli

    parts = _loose_parts(tree, tmp_path / "parts")
    folder = [f"--data.root={tree / 'tile_c'}", "--data.normal_dir=train/good", "--data.abnormal_dir=test/defect"]
    folder += ["--data.normal_test_dir=test/good", "--data.name=gears", "--data.num_workers=0"]
    calibration = ["--model.false_alarm_rate=0.25", "--model.review_rate=0.25", "--model.false_alarm_confidence=0.5"]
    commands = {
        "calibrated": ["train", "--model=BayesPFL", f"--model.prompt_weights={head}", "--model.class_name=gear",
                       *calibration, "--model.calibration_images=8", "--data=Folder", *folder],
        "exported": ["export", "--model=BayesPFL", "--ckpt_path={checkpoint}", "--model.export_uncertainty=true",
                     "--export_type=openvino"],
        "predicted": ["predict", "--model=BayesPFL", "--ckpt_path={checkpoint}", "--data", str(parts)],
    }  # fmt: skip
    checkpoint = None
    for folder_name, command in commands.items():
        command = [argument.format(checkpoint=checkpoint) for argument in command]
        result = anomalib_cli(
            *command,
            f"--default_root_dir={folder_name}",
            *(["--trainer.accelerator=cpu"] if command[0] != "export" else []),
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        checkpoint = checkpoint or next((tmp_path / "calibrated").rglob("model.ckpt"))
    assert "marked needs_review (uncertainty above its category's threshold for a review rate of 0.25" in result.stdout
    table = pd.read_csv(next((tmp_path / "predicted").rglob("predictions.csv")))
    module = BayesPFL(prompt_weights=str(checkpoint), export_uncertainty=True).eval()
    stored = module.model.references.get("gear")
    assert len(stored.calibration_images) == 8
    assert table.needs_review.tolist() == (table.uncertainty > stored.review_threshold).tolist()
    assert 0 < table.needs_review.sum() < len(table)  # the test can tell marks apart
    exported = [next((tmp_path / "exported").rglob("model.xml")), module.to_torch(tmp_path / "torch")]
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # anomalib's opt-in for unpickling model.pt
    for inferencer in map(BayesPFLInferencer, exported):
        for row in table.itertuples():
            output = inferencer.predict(row.image_path)
            assert output.needs_review.tolist() == [row.needs_review], row.image_path
            assert output.uncertainty[0] == pytest.approx(row.uncertainty, abs=1e-5)
            assert output.pred_score[0] == pytest.approx(row.pred_score, abs=1e-5)
            assert output.decision == ["person" if row.needs_review else "fail" if row.pred_label else "pass"]
            image = module.pre_processor.transform(read_image(row.image_path, as_tensor=True).unsqueeze(0))
            expected = module.model.score(image, ["gear"], uncertainty="std").uncertainty_map
            assert abs(output.uncertainty_map - expected.numpy()).max() <= 1e-5


def test_review_rate_in_a_test_run_reports_the_review_shares_and_calibrates_on_all_images_there_are(
    head, tiny_clip_path, tree, tmp_path, caplog
):
    """12 normal images per category, fewer than the 32 asked for, but more than the 3 that a rate of 0.25 with
    confidence 0.5 needs: all 12 calibrate, with a warning. With confidence 0.99 (17 needed) the run is refused."""
    options = {"prompt_weights": str(head), "review_rate": 0.25, "false_alarm_rate": 0.25}
    module = tiny_module(tiny_clip_path, **options, false_alarm_confidence=0.5)
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        table = _test(tmp_path / "test", module, _data(tree))
    assert caplog.text.count("fewer than calibration_images=32: calibrating on all 12 (the rates need at least 3)") == 2
    for category in UNSEEN:
        stored = module.model.references.get(category)
        assert len(stored.calibration_images) == 12
        assert table.loc[category, "review_threshold"] == pytest.approx(stored.review_threshold)
        assert table.loc[category, "image_threshold"] == pytest.approx(stored.image_threshold)
    columns = ["review_share", "review_share_normal", "review_share_anomalous", "image_error_rate_unreviewed"]
    assert table[columns].notna().all().all()
    # 6 normal and 3 anomalous test images per category: the shares weigh into the overall one.
    mixed = (6 * table.review_share_normal + 3 * table.review_share_anomalous) / 9
    pd.testing.assert_series_equal(mixed.drop(MEAN_ROW), table.review_share.drop(MEAN_ROW), check_names=False)
    strict = tiny_module(tiny_clip_path, **options, false_alarm_confidence=0.99)
    with pytest.raises(ValueError, match=r"'tile_c' needs 32 normal images .*holds 12.*to no fewer than 17"):
        _test(tmp_path / "strict", strict, _data(tree))
