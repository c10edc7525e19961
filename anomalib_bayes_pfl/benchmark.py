# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``anomalib benchmark`` that can also run zero-shot models: BayesPFL with trained prompts, or WinClip.

anomalib 2.7's benchmark job calls ``engine.fit(model, datamodule)``, which passes the datamodule as
``train_dataloaders``. For a zero-shot model the Engine then validates with neither dataloaders nor datamodule, so
every zero-shot job fails (and the process still exits 0); and its results table needs every job to have the same
config keys, so a grid of models with different arguments loses all rows. This pipeline is anomalib's own
``Benchmark`` with these two fixed; the config format, runners, results table and
``runs/benchmark/<time>/results.csv`` are anomalib's.

    python -m anomalib_bayes_pfl.benchmark --config configs/benchmark_zero_shot_mvtec.yaml
"""

import time
from collections.abc import Generator
from tempfile import TemporaryDirectory
from typing import Any

import pandas as pd
from anomalib.engine import Engine
from anomalib.pipelines import Benchmark
from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator
from anomalib.pipelines.benchmark.job import BenchmarkJob
from anomalib.pipelines.components.base import Runner
from anomalib.pipelines.types import PREV_STAGE_RESULT
from anomalib.utils.logging import hide_output
from lightning.pytorch import seed_everything


class ZeroShotCapableBenchmarkJob(BenchmarkJob):
    """anomalib's benchmark job, with the datamodule passed to ``Engine.fit`` by keyword."""

    @hide_output
    def run(self, task_id: int | None = None) -> dict[str, Any]:
        """Fit (for zero-shot models: validate) and test one model on one datamodule; return timings and metrics."""
        devices: str | list[int] = "auto" if task_id is None else [task_id]
        started = time.time()
        with TemporaryDirectory() as folder:
            seed_everything(self.seed)
            engine = Engine(accelerator=self.accelerator, devices=devices, default_root_dir=folder)
            engine.fit(self.model, datamodule=self.datamodule)
            fitted = time.time()
            metrics = engine.test(self.model, datamodule=self.datamodule)[0]
        finished = time.time()
        durations = {
            "job_duration": finished - started,
            "fit_duration": fitted - started,
            "test_duration": finished - fitted,
        }
        return {"accelerator": self.accelerator, **durations, **self.flat_cfg, **metrics}

    @staticmethod
    def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per job; models with different arguments or metrics leave empty cells instead of failing."""
        return pd.DataFrame(results)


class ZeroShotCapableJobGenerator(BenchmarkJobGenerator):
    """anomalib's job generator, making :class:`ZeroShotCapableBenchmarkJob` jobs."""

    @property
    def job_class(self) -> type:
        """The job class of this generator."""
        return ZeroShotCapableBenchmarkJob

    def generate_jobs(
        self, args: dict, previous_stage_result: PREV_STAGE_RESULT
    ) -> Generator[BenchmarkJob, None, None]:
        """Anomalib's jobs (it builds models and datamodules from the grid), as zero-shot-capable jobs."""
        for job in super().generate_jobs(args, previous_stage_result):
            yield ZeroShotCapableBenchmarkJob(
                accelerator=job.accelerator,
                model=job.model,
                datamodule=job.datamodule,
                seed=job.seed,
                flat_cfg=job.flat_cfg,
            )


class ZeroShotCapableBenchmark(Benchmark):
    """anomalib's ``Benchmark`` pipeline running :class:`ZeroShotCapableBenchmarkJob` jobs."""

    @staticmethod
    def _setup_runners(args: dict) -> list[Runner]:
        runners = Benchmark._setup_runners(args)
        for runner in runners:
            runner.generator = ZeroShotCapableJobGenerator(runner.generator.accelerator)
        return runners


if __name__ == "__main__":
    ZeroShotCapableBenchmark().run()
