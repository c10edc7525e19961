# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Offline end-to-end demo: train BayesPFL on auxiliary categories, evaluate it zero- and few-shot on unseen ones.

    python -m anomalib_bayes_pfl.demo [--output bayes_pfl_demo] [--epochs 40]

It writes small synthetic datasets (textures with Perlin-noise defects, anomalib's generator), builds a tiny
randomly initialised CLIP unless ``--clip_model`` / ``--clip_pretrained`` name real ones, scores the unseen
categories with the untrained head, trains the head through anomalib's Engine on the auxiliary categories, scores
the unseen categories again, and prints both per-category tables (with anomalib's image visualisations of the
trained run). Then it scores the unseen categories with 0, 1, 2 and 4 normal reference images per category, each
with thresholds calibrated for a false-alarm rate of 0.1 on 20 further normal images, and prints the means over
categories, with how well the prompt samples' uncertainty finds the model's errors, the share of normal and of
anomalous images sent to review by a review rate of 0.1 calibrated on the same normal images, and the error rate of
the images decided without review. A tiny random backbone demonstrates the pipeline, not the paper's accuracy. A
second run in the same ``--output`` replaces the first one's results.
"""

import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd
from anomalib.engine import Engine
from jsonargparse import CLI
from lightning.pytorch import seed_everything

from anomalib_bayes_pfl.adapter import BayesPFL
from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
from anomalib_bayes_pfl.data import ZeroShotCrossDataset
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.reporting import CSV_NAME, MEAN_ROW, REPORT_HTML

AUXILIARY_CATEGORIES = ("fabric", "wood_grain", "marble", "cork", "linen")
TARGET_CATEGORIES = ("slate", "felt", "granite", "terrazzo")
SUMMARY_COLUMNS = ["image_AUROC", "image_AUPR", "pixel_AUROC", "pixel_AUPRO"]
SHOTS = (0, 1, 2, 4)
FALSE_ALARM_RATE = 0.1
CALIBRATION_IMAGES = 20
LABEL_COLUMNS = ["image_false_alarm_rate", "image_recall", "pixel_false_alarm_rate"]
REVIEW_FRACTION = 0.1  # the trained run's visualisations: a banner on the most uncertain tenth of each category
REVIEW_RATE = 0.1
UNCERTAINTY_COLUMNS = [
    "pixel_uncertainty_auroc",
    "image_ause",
    "image_ause_random",
    "image_ece",
    "image_error_rate",
    "image_error_rate_unreviewed",
    "review_share_normal",
    "review_share_anomalous",
]


def _datamodule(datasets: Path) -> ZeroShotCrossDataset:
    return ZeroShotCrossDataset(
        auxiliary_root=str(datasets / "auxiliary"),
        auxiliary_format="mvtec",
        target_root=str(datasets / "target"),
        target_format="mvtec",
        train_batch_size=8,
        eval_batch_size=16,
        num_workers=0,
    )


def _table(root: Path) -> pd.DataFrame:
    return pd.read_csv(next(root.rglob(CSV_NAME)), index_col="category")


def run_demo(
    output: str = "bayes_pfl_demo",
    epochs: int = 40,
    clip_model: str = TINY_CLIP_CONFIG,
    clip_pretrained: str | None = None,
    image_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Run the demo and return the mean pixel AUROC over the unseen categories: untrained, trained, k-shot.

    Args:
        output: Folder for the synthetic datasets and the results.
        epochs: Training epochs (the last one trains the image classifier alone).
        clip_model: open_clip model name or config JSON (the tiny shipped config by default).
        clip_pretrained: CLIP weights (tag or local file), or ``None`` for random weights.
        image_size: Model input size.
        seed: Seed of the data, the head initialisation and the training.
    """
    started = time.time()
    root = Path(output)
    datasets = root / "datasets"
    size = {"image_size": 64, "num_test_good": 12, "num_test_defect": 12}
    write_tree(datasets / "auxiliary", AUXILIARY_CATEGORIES, seed=seed, num_train=2, **size)
    # The unseen categories' training images are the few-shot references and calibration images.
    write_tree(datasets / "target", TARGET_CATEGORIES, seed=seed + 1, num_train=max(SHOTS) + CALIBRATION_IMAGES, **size)

    def model(**options: object) -> BayesPFL:
        return BayesPFL(
            clip_model=clip_model,
            clip_pretrained=clip_pretrained,
            image_size=image_size,
            tap_layers=None,
            num_samples=4,
            smoothing_sigma=1.0,
            stage_one_epochs=max(1, epochs - 1),
            stage_two_epochs=1 if epochs > 1 else 0,
            # The tiny random backbone learns slowly at the paper's rates; these are twenty times higher.
            prompt_learning_rate=2e-2,
            flow_learning_rate=2e-2,
            learning_rate=2e-3,
            **options,
        )

    results = root / "results"
    # anomalib's per-image visualisations (two PNGs of about 200 KB per image) are written for the trained run only:
    # every run's report.html has its own galleries, and the other five runs' images took a fifth of the demo's time.
    runs = ["untrained", "trained", *(f"{k_shot}_shot" for k_shot in SHOTS)]
    for run in runs:  # this demo's own folders: a second run starts afresh and prints the same tables
        shutil.rmtree(results / run, ignore_errors=True)
    print("Scoring the unseen categories with the untrained head ...")
    untrained_root = results / "untrained"
    seed_everything(seed)  # the head is built, from the global RNG, when it is first used
    Engine(default_root_dir=untrained_root, accelerator="cpu", devices=1, logger=False).test(
        model(visualizer=False), datamodule=_datamodule(datasets)
    )
    print(f"Training on {', '.join(AUXILIARY_CATEGORIES)}; testing on the unseen {', '.join(TARGET_CATEGORIES)} ...")
    trained_root = results / "trained"
    seed_everything(seed)
    engine = Engine(default_root_dir=trained_root, accelerator="cpu", devices=1, logger=False)
    engine.train(model(review_fraction=REVIEW_FRACTION), datamodule=_datamodule(datasets))

    checkpoint = next(trained_root.rglob("model.ckpt"))
    shots, uncertainty = {}, {}
    for k_shot in SHOTS:
        print(f"Scoring the unseen categories with {k_shot} normal reference image(s) per category ...")
        shot_root = results / f"{k_shot}_shot"
        few_shot = {"k_shot": k_shot, "false_alarm_rate": FALSE_ALARM_RATE, "calibration_images": CALIBRATION_IMAGES}
        Engine(default_root_dir=shot_root, accelerator="cpu", devices=1, logger=False).test(
            model(prompt_weights=str(checkpoint), review_rate=REVIEW_RATE, visualizer=False, **few_shot),
            datamodule=_datamodule(datasets),
        )
        shots[f"{k_shot}-shot"] = _table(shot_root).loc[MEAN_ROW, SUMMARY_COLUMNS + LABEL_COLUMNS]
        uncertainty[f"{k_shot}-shot"] = _table(shot_root).loc[MEAN_ROW, UNCERTAINTY_COLUMNS]

    untrained, trained = _table(untrained_root), _table(trained_root)
    summary = pd.DataFrame(
        {"untrained": untrained.loc[MEAN_ROW, SUMMARY_COLUMNS], "trained": trained.loc[MEAN_ROW, SUMMARY_COLUMNS]}
    )
    images = next(trained_root.rglob("images"))
    report = next((results / f"{max(SHOTS)}_shot").rglob(REPORT_HTML)).resolve()
    print("\nMean over the unseen categories:")
    print(summary.to_string(float_format=lambda value: f"{value:.3f}"))
    print(
        f"\nTrained head, with k normal reference images per unseen category and thresholds calibrated for a "
        f"false-alarm rate of {FALSE_ALARM_RATE} on {CALIBRATION_IMAGES} further normal images (mean over categories):"
    )
    print(pd.DataFrame(shots).to_string(float_format=lambda value: f"{value:.3f}"))
    print(
        f"\nUncertainty of the prompt samples (std of their probabilities); an image goes to review when it is above "
        f"its category's threshold, calibrated for a review rate of {REVIEW_RATE} on the same normal images (mean "
        f"over categories):"
    )
    print(pd.DataFrame(uncertainty).to_string(float_format=lambda value: f"{value:.3f}"))
    print(
        f"\nPer-category tables: {next(untrained_root.rglob(CSV_NAME))} and {next(trained_root.rglob(CSV_NAME))}"
        f"\nAnomaly-map images: {images}"
        f"\nReport page, to open in a browser (4-shot, with its plots and galleries): {report}"
        f"\nWall time: {time.time() - started:.0f} s"
    )
    if clip_model == TINY_CLIP_CONFIG:
        print(
            "Note: a tiny randomly initialised CLIP demonstrates the pipeline, not the paper's accuracy. "
            "Pass --clip_model ViT-L-14-336 --clip_pretrained <ViT-L-14-336px.pt> --image_size 518 for the real model."
        )
    return {
        "untrained_pixel_AUROC": float(untrained.loc[MEAN_ROW, "pixel_AUROC"]),
        "trained_pixel_AUROC": float(trained.loc[MEAN_ROW, "pixel_AUROC"]),
        **{f"{name}_pixel_AUROC": float(values["pixel_AUROC"]) for name, values in shots.items()},
    }


def main() -> None:
    """Command-line entry point."""
    logging.getLogger("anomalib").setLevel(logging.WARNING)
    print(json.dumps(CLI(run_demo)))


if __name__ == "__main__":
    main()
