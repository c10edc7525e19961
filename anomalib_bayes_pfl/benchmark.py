# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``anomalib benchmark`` that can also run zero-shot models, and that keeps every job's result.

    python -m anomalib_bayes_pfl.benchmark --config configs/benchmark_zero_shot_mvtec.yaml

anomalib's own ``Benchmark`` pipeline: its config format (``grid`` keys), runners and
``runs/benchmark/<time>/results.csv``, with its job and job generator replaced, because anomalib 2.7's

- passes the datamodule to ``Engine.fit`` as ``train_dataloaders``, so that the Engine validates a zero-shot model
  (BayesPFL with trained prompts, WinClip) with no data and every such job fails;
- builds the models in the generator, so that one model that cannot be built (WinClip without network access to
  its weights) ends the generator and drops the rows of the jobs that had already finished;
- writes no row for a failed job, needs every row to have the same keys, and exits 0 whatever failed.

Here each job builds its own model and datamodule, and a job that fails, while building or running, leaves a row
with its settings and the error in the ``error`` column. After the results are written, the command prints a short
table and the CSV path, then names the failed jobs and exits 1 if there are any; their tracebacks are in
``runs/pipeline.log``.
"""

import logging
import sys
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pandas as pd
from anomalib.data import get_datamodule
from anomalib.engine import Engine
from anomalib.models import get_model
from anomalib.pipelines import Benchmark
from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator
from anomalib.pipelines.components.base import Job, Runner
from anomalib.pipelines.components.base.pipeline import log_file
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
from anomalib.pipelines.types import PREV_STAGE_RESULT
from anomalib.utils.config import flatten_dict
from anomalib.utils.logging import hide_output, redirect_logs
from jsonargparse import Namespace
from lightning.pytorch import seed_everything

logger = logging.getLogger(__name__)

# Columns that name a job (CSV column: header), where present; ``model`` is a model given by name, not class_path.
JOB_COLUMNS = {
    "model": "model",
    "model.class_path": "model",
    "data.class_path": "data",
    "data.init_args.category": "category",
}
# The settings columns of a row: the flattened config of its grid point, and its runner's accelerator.
SETTINGS = r"^(accelerator|seed|model|data)(\.|$)"
# The printed table's other columns, where present; results.csv has every column.
RESULT_COLUMNS = {
    **{name: name for name in ("image_AUROC", "pixel_AUROC", "category_mean_image_AUROC", "category_mean_pixel_AUROC")},
    "job_duration": "seconds",
    "error": "error",
}


def _one_line(error: BaseException) -> str:
    """The error as one CSV- and table-friendly line."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def _job_columns(results: pd.DataFrame) -> dict[str, str]:
    """The columns that name a job (CSV column: header).

    Model, data and category, and the settings that differ between jobs of one model class (a grid over a model's
    arguments, over seeds or accelerators); arguments of another model class, empty in a row, do not count.
    """
    named = {column: header for column, header in JOB_COLUMNS.items() if column in results}
    settings = results.filter(regex=SETTINGS).drop(columns=list(named)).astype(str)
    model_class = results.get("model.class_path", pd.Series(None, index=results.index))
    varying = settings.groupby(model_class, dropna=False).nunique(dropna=False).gt(1).any()
    return {**named, **{column: column.replace(".init_args.", ".") for column in varying.index[varying]}}


def _job_name(row: pd.Series, columns: dict[str, str]) -> str:
    """E.g. ``BayesPFL / MVTecAD / bottle / model.clip_pretrained=x.pt``: the grid point of a row."""
    values = row[list(columns)].dropna()
    return " / ".join(
        str(value) if column in JOB_COLUMNS else f"{columns[column]}={value}" for column, value in values.items()
    )


class JobsFailedError(RuntimeError):
    """Some jobs failed; raised after all results, theirs included, are written."""

    def __init__(self, results: pd.DataFrame) -> None:
        columns = _job_columns(results)
        failed = results[results["error"].notna()]
        lines = [f"  {_job_name(row, columns)}: {row['error']}" for _, row in failed.iterrows()]
        super().__init__(
            f"{len(failed)} of {len(results)} benchmark jobs failed (tracebacks in {log_file}):\n" + "\n".join(lines)
        )


class ZeroShotCapableBenchmarkJob(Job):
    """Fit and test one model on one datamodule of the grid; building them is part of the job, so are its errors."""

    name = "benchmark"

    def __init__(self, accelerator: str, seed: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.accelerator = accelerator
        self.seed = seed
        self.config = config

    @hide_output
    def run(self, task_id: int | None = None) -> dict[str, Any]:
        """The job's row: settings, durations and test metrics, or settings and the error that stopped the job."""
        settings = {"accelerator": self.accelerator, **flatten_dict(self.config)}
        try:
            return {**settings, **self._fit_and_test(task_id)}
        except Exception as error:
            logger.exception("Benchmark job %s failed.", settings)
            return {**settings, "error": _one_line(error)}

    def _fit_and_test(self, task_id: int | None) -> dict[str, float]:
        """Durations and test metrics.

        The datamodule goes to ``Engine.fit`` by keyword: passed positionally, it becomes ``train_dataloaders``, and
        the Engine then "fits" a zero-shot model by validating it with no data.
        """
        seed_everything(self.seed)
        model, datamodule = get_model(self.config["model"]), get_datamodule(self.config["data"])
        devices: str | list[int] = "auto" if task_id is None else [task_id]
        started = time.time()
        with TemporaryDirectory() as folder:
            engine = Engine(accelerator=self.accelerator, devices=devices, default_root_dir=folder)
            engine.fit(model, datamodule=datamodule)
            fitted = time.time()
            metrics = engine.test(model, datamodule=datamodule)[0]
        finished = time.time()
        return {
            "job_duration": finished - started,
            "fit_duration": fitted - started,
            "test_duration": finished - fitted,
            **metrics,
        }

    @staticmethod
    def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per job, ``error`` last; models with different arguments or metrics leave empty cells."""
        frame = pd.DataFrame(results)
        return frame.reindex(columns=[*frame.columns.drop("error", errors="ignore"), "error"])

    @staticmethod
    def save(results: pd.DataFrame) -> None:
        """Write ``runs/benchmark/<time>/results.csv`` (every column), then print a short table and the path."""
        # Microseconds: a second runner (another accelerator) must not overwrite the first one's file.
        path = Path("runs") / ZeroShotCapableBenchmarkJob.name / datetime.now().strftime("%Y-%m-%d-%H_%M_%S_%f")
        path.mkdir(parents=True, exist_ok=True)
        results.to_csv(path / "results.csv", index=False)
        columns = {**_job_columns(results), **RESULT_COLUMNS}
        summary = results.filter(items=list(columns)).rename(columns=columns)
        print(summary.to_string(index=False, na_rep="", float_format="{:.3f}".format, max_colwidth=60))
        print(f"Results of {len(results)} jobs, all columns: {path / 'results.csv'}")


class ZeroShotCapableJobGenerator(BenchmarkJobGenerator):
    """One :class:`ZeroShotCapableBenchmarkJob` per grid point."""

    @property
    def job_class(self) -> type:
        """The job class of this generator."""
        return ZeroShotCapableBenchmarkJob

    def generate_jobs(
        self, args: dict, previous_stage_result: PREV_STAGE_RESULT
    ) -> Generator[ZeroShotCapableBenchmarkJob, None, None]:
        """The grid's jobs; they build their own models, so that nothing raised here can drop another job's row."""
        del previous_stage_result  # a single-stage pipeline
        for config in grid_points(args):
            yield ZeroShotCapableBenchmarkJob(self.accelerator, config["seed"], config)


def _plain(value: Any) -> Any:
    """Mappings and sequences of a parsed config (OmegaConf's included) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


def grid_points(container: dict) -> Iterator[dict]:
    """Every point of the grid, grids inside a chosen grid item included (one model's ``k_shot: {grid: [0, 4]}``).

    anomalib expands the outer grids only, and would hand such a model its ``{grid: ...}`` as a value.
    """
    for config in get_iterator_from_grid_dict(container):
        config = _plain(config)
        if any(key == "grid" or key.endswith(".grid") for key in flatten_dict(config)):
            yield from grid_points(config)
        else:
            yield config


class ZeroShotCapableBenchmark(Benchmark):
    """anomalib's ``Benchmark`` pipeline running :class:`ZeroShotCapableBenchmarkJob` jobs."""

    @staticmethod
    def _setup_runners(args: dict) -> list[Runner]:
        runners = Benchmark._setup_runners(args)
        for runner in runners:
            runner.generator = ZeroShotCapableJobGenerator(runner.generator.accelerator)
        return runners

    def run(self, args: Namespace | None = None) -> None:
        """Run every runner (one per accelerator); raise :class:`JobsFailedError` once all are done, if a job failed.

        anomalib's loop logs a runner's error and carries on, so that nothing reaches the exit status; here errors
        outside the jobs propagate.
        """
        pipeline_args = self._get_args(args)
        runners = self._setup_runners(pipeline_args)
        redirect_logs(log_file)
        job_args = pipeline_args.get(ZeroShotCapableBenchmarkJob.name) or {}
        results = pd.concat([runner.run(job_args) for runner in runners], ignore_index=True)
        if results["error"].notna().any():
            raise JobsFailedError(results)


def main() -> None:
    """Command-line entry point; exit status 1, after the results table, when a job failed."""
    try:
        ZeroShotCapableBenchmark().run()
    except JobsFailedError as error:
        sys.stdout.flush()  # the table before the failures, also when both streams go to one pipe
        sys.exit(str(error))


if __name__ == "__main__":
    main()
