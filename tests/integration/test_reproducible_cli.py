# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The command line tells the truth: checkpoints, seeds and multi-process tests reproduce a run's numbers.

Each test runs ``anomalib`` in a fresh process, the way a newcomer types it: a checkpoint from another run with no
``--model.*`` option, the same seeded command twice, two worker settings, a config file, and two processes.
"""

from pathlib import Path

import pandas as pd
import pytest
import torch
from anomalib.data.utils import read_image
from anomalib.deploy import TorchInferencer

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.reporting import CSV_NAME

from ..helpers import TINY_MODEL, anomalib_cli, cross_data_cli

pytestmark = pytest.mark.slow

SEEDED = ("--seed_everything=42", "--model.num_prompts=2", "--model.num_flow_steps=2", "--model.stage_one_epochs=2")


def _train(cwd: Path, tree: Path, *extra: str, pythonpath: str | None = None) -> tuple[pd.DataFrame, Path]:
    cwd.mkdir(exist_ok=True)
    result = anomalib_cli(
        "train",
        "--model=BayesPFL",
        *TINY_MODEL,
        *SEEDED,
        *cross_data_cli(tree),
        "--trainer.accelerator=cpu",
        "--default_root_dir=results",
        *extra,
        cwd=cwd,
        pythonpath=pythonpath,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return _table(cwd / "results"), next((cwd / "results").rglob("model.ckpt"))


def _test(
    cwd: Path, checkpoint: Path, tree: Path, *extra: str, table_of: Path | None = None
) -> tuple[pd.DataFrame, str]:
    """``anomalib test`` of a checkpoint with no ``--model.*`` option: its per-category table and its log.

    With ``table_of``, the table is the one of the newest version folder there.
    """
    cwd.mkdir(exist_ok=True)
    result = anomalib_cli(
        "test",
        "--model=BayesPFL",
        f"--ckpt_path={checkpoint}",
        *cross_data_cli(tree),
        "--trainer.accelerator=cpu",
        "--default_root_dir=results",
        *extra,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if table_of is None:
        return _table(cwd / "results"), result.stderr
    newest = max(table_of.glob("v*"), key=lambda folder: int(folder.name[1:]))
    assert newest.name != "v0"
    return pd.read_csv(newest / CSV_NAME, index_col="category"), result.stderr


def _table(root: Path) -> pd.DataFrame:
    return pd.read_csv(next(root.rglob(CSV_NAME)), index_col="category")


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory, mvtec_tree):
    return _train(tmp_path_factory.mktemp("seeded"), mvtec_tree, "--data.num_workers=0")


def test_checkpoint_alone_scores_like_the_run_that_wrote_it(tmp_path, mvtec_tree, seeded_run):
    """No --model.* option: 64 px, R = 2, the tiny CLIP and its random weights all come from the checkpoint.

    The test runs where the training did, with the checkpoint through ``latest``: it writes a new version folder, and
    leaves every file of the training run as it was.
    """
    table, checkpoint = seeded_run
    results = next(path for path in checkpoint.parents if path.name == "results")
    cwd, training_run = results.parent, checkpoint.parents[2]
    through_latest = training_run.parent / "latest" / checkpoint.relative_to(training_run)
    before = {path: path.read_bytes() for path in training_run.rglob("*") if path.is_file()}
    again, log = _test(cwd, through_latest, mvtec_tree, "--data.eval_batch_size=5", table_of=training_run.parent)
    pd.testing.assert_frame_equal(again, table, check_exact=False, rtol=0, atol=1e-6)
    assert "instead of" not in log  # nothing was overridden
    assert {path: path.read_bytes() for path in training_run.rglob("*") if path.is_file()} == before
    assert (training_run.parent / "latest").resolve() == training_run


def test_predict_and_export_take_the_checkpoint_s_options_and_export_applies_its_own(
    tmp_path, mvtec_tree, seeded_run, monkeypatch
):
    _, checkpoint = seeded_run
    images = mvtec_tree / "tile_c" / "test" / "defect"
    result = anomalib_cli(
        "predict", "--model=BayesPFL", f"--ckpt_path={checkpoint}", "--data", str(images), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = pd.read_csv(next(tmp_path.rglob("predictions.csv"))).sort_values("image_path")
    module = BayesPFL.load_from_checkpoint(checkpoint).eval()
    assert (module.settings.image_size, module.settings.num_samples) == (64, 2)
    raw = torch.stack([read_image(path, as_tensor=True) for path in sorted(images.glob("*.png"))])
    with torch.no_grad():
        expected = module(raw)  # an exported model's forward: the class name 'object', as nothing names one
        as_tile_c = module.model.score(module.pre_processor.transform(raw), ["tile_c"] * len(raw))
    assert set(predicted.category) == set(predicted.class_name) == {"tile_c"}  # the MVTec AD layout of the paths
    torch.testing.assert_close(
        torch.tensor(predicted.pred_score.to_numpy(), dtype=torch.float32), as_tile_c.pred_score, rtol=0, atol=1e-6
    )
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
    (tmp_path / "export").mkdir()
    result = anomalib_cli(
        "export",
        "--model=BayesPFL",
        "--model.class_name=tile_c",
        f"--ckpt_path={checkpoint}",
        "--export_type=torch",
        cwd=tmp_path / "export",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # anomalib drops --model.* with --ckpt_path; the model applies them itself, and says so
    assert "class_name: using 'tile_c' from the command line instead of None" in " ".join(result.stderr.split())
    inferencer = TorchInferencer(path=next((tmp_path / "export").rglob("model.pt")), device="cpu")
    exported = inferencer.predict(str(sorted(images.glob("*.png"))[0]))
    torch.testing.assert_close(exported.pred_score.flatten(), as_tile_c.pred_score[:1], rtol=0, atol=1e-6)
    assert not torch.allclose(as_tile_c.pred_score[:1], expected.pred_score[:1])  # the class name changes the score
    assert not exported.pred_score.requires_grad
    refused = anomalib_cli(
        "export",
        "--model=BayesPFL",
        "--model.num_prompts",
        "3",
        f"--ckpt_path={checkpoint}",
        "--export_type=torch",
        "--default_root_dir=refused",
        cwd=tmp_path / "export",
    )
    assert refused.returncode != 0
    assert "num_prompts: 2 there, 3 given" in " ".join(" ".join(refused.stderr.strip().splitlines()[-4:]).split())
    assert not list((tmp_path / "export" / "refused").rglob("model.pt"))  # no artifact for other options


def test_explicit_options_are_applied_with_a_warning_or_refused(tmp_path, mvtec_tree, seeded_run):
    _, checkpoint = seeded_run
    common = ("test", "--model=BayesPFL", f"--ckpt_path={checkpoint}", *cross_data_cli(mvtec_tree))
    result = anomalib_cli(*common, "--model.num_samples=3", "--default_root_dir=more", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_samples: using 3 from the command line instead of 2 stored in checkpoint" in result.stderr
    result = anomalib_cli(*common, "--model.num_prompts=3", "--default_root_dir=refused", cwd=tmp_path)
    assert result.returncode != 0
    last_lines = " ".join(" ".join(result.stderr.strip().splitlines()[-4:]).split())  # rich wraps long lines
    assert "num_prompts: 2 there, 3 given" in last_lines


def test_same_seed_same_table_with_workers_and_from_a_config_file(tmp_path, mvtec_tree, seeded_run):
    table, _ = seeded_run
    again, _ = _train(tmp_path / "again", mvtec_tree, "--data.num_workers=0")
    pd.testing.assert_frame_equal(again, table, check_exact=True)
    workers, _ = _train(tmp_path / "workers", mvtec_tree, "--data.num_workers=2")
    pd.testing.assert_frame_equal(workers, table, check_exact=True)
    config = tmp_path / "seed.yaml"
    config.write_text("seed_everything: 42\n")
    from_config, _ = _train(tmp_path / "config", mvtec_tree, "--data.num_workers=0", f"--config={config}")
    pd.testing.assert_frame_equal(from_config, table, check_exact=True)


def test_two_processes_train_one_head_and_score_every_image_once(tmp_path):
    """Both processes end training with the same head. 5 target images on 2 processes: the distributed sampler pads
    one duplicate, which must not be counted."""
    tree = write_tree(tmp_path / "data", ["tile_a", "tile_b", "tile_c"], num_test_good=3, num_test_defect=2)
    distributed, checkpoint = _train(
        tmp_path / "ddp",
        tree,
        "--data.eval_batch_size=2",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.callbacks+=tests.helpers.SaveHeadPerRank",
        f"--trainer.callbacks.folder={tmp_path / 'heads'}",
        pythonpath=str(Path(__file__).parents[2]),
    )
    heads = [torch.load(tmp_path / "heads" / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    for key, value in heads[0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, heads[1][key]), key
    single, _ = _test(tmp_path / "single", checkpoint, tree, "--trainer.devices=1")
    assert distributed.loc["tile_c", "images"] == single.loc["tile_c", "images"] == 5
    # The same images and scores; pixel metrics sum over pixels in the gathered order, hence not bit for bit.
    pd.testing.assert_frame_equal(distributed, single, check_exact=False, rtol=0, atol=1e-5)
    images = list((tmp_path / "ddp" / "results").rglob("images/**/*.png"))
    assert len([image for image in images if not image.stem.endswith("_uncertainty")]) == 5
    assert len(images) == 10  # each with its uncertainty image beside it


def test_two_processes_predict_one_table_with_the_review_marks_of_one_process(tmp_path, mvtec_tree, seeded_run):
    """5 loose files on 2 processes (one padded repeat): one predictions.csv, the rows, scores and review_fraction's
    marks of a one-process run, in its order; no part is left behind."""
    _, checkpoint = seeded_run
    images = tmp_path / "parts"
    images.mkdir()
    for number, path in enumerate(sorted((mvtec_tree / "tile_c" / "test").rglob("*.png"))[:5]):
        (images / f"part_{number}.png").write_bytes(path.read_bytes())
    tables, pages = {}, {}
    for name, extra, pythonpath in [
        ("single", ["--trainer.devices=1"], None),
        ("ddp", ["--trainer.devices=2", "--trainer.strategy=ddp"], str(Path(__file__).parents[2])),
    ]:
        (tmp_path / name).mkdir()
        result = anomalib_cli(
            "predict",
            "--model=BayesPFL",
            f"--ckpt_path={checkpoint}",
            "--model.review_fraction=0.4",
            "--data",
            str(images),
            "--trainer.accelerator=cpu",
            "--default_root_dir=out",
            *extra,
            cwd=tmp_path / name,
            pythonpath=pythonpath,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        written = list((tmp_path / name / "out").rglob("predictions*.csv"))
        assert [path.name for path in written] == ["predictions.csv"]
        tables[name] = pd.read_csv(written[0])
        pages[name] = written[0].with_suffix(".html").read_text()
    single, distributed = tables["single"], tables["ddp"]
    assert len(distributed) == 5
    assert single.needs_review.sum() == 2  # floor(0.4 * 5), decided over all five images
    pd.testing.assert_frame_equal(distributed, single, check_exact=False, rtol=0, atol=1e-6)
    assert pages["ddp"] == pages["single"]  # the page gathers every process's images and marks too
    assert "2 of 2 shown" in pages["single"]  # the review queue
