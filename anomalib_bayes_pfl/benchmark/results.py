# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The benchmark's rows: ``results.csv`` as jobs finish, what names a job, and the error that ends the command."""

import threading
from pathlib import Path
from typing import Any

import pandas as pd

from anomalib_bayes_pfl.reporting.comparison import write_comparison

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
    "peak_memory_gb": "GB",
    "error": "error",
}
# Last in a row, in this order: why some metrics have no value, the job's log, and its error.
LAST_COLUMNS = ("not_computed", "log", "error")


def job_columns(results: pd.DataFrame) -> dict[str, str]:
    """The columns that name a job (CSV column: header).

    Model, data and category, and the settings that differ between jobs of one model class (a grid over a model's
    arguments, over seeds or accelerators); arguments of another model class, empty in a row, do not count.
    """
    named = {column: header for column, header in JOB_COLUMNS.items() if column in results}
    settings = results.filter(regex=SETTINGS).drop(columns=list(named)).astype(str)
    model_class = results.get("model.class_path", pd.Series(None, index=results.index))
    varying = settings.groupby(model_class, dropna=False).nunique(dropna=False).gt(1).any()
    return {**named, **{column: column.replace(".init_args.", ".") for column in varying.index[varying]}}


def job_name(row: pd.Series, columns: dict[str, str]) -> str:
    """E.g. ``BayesPFL / MVTecAD / bottle / model.clip_pretrained=x.pt``: the grid point of a row."""
    values = row[list(columns)].dropna()
    return " / ".join(
        str(value) if column in JOB_COLUMNS else f"{columns[column]}={value}" for column, value in values.items()
    )


def models_and_categories(results: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each row's model (with the settings that vary between its jobs) and category (with its data, where they vary).

    The chart's groups: a job is one model on one category.
    """
    columns = job_columns(results)
    model_columns = {column: header for column, header in columns.items() if header not in ("data", "category")}
    models = results.apply(lambda row: job_name(row, model_columns), axis=1)
    data = results.get("data.class_path", pd.Series("", index=results.index)).fillna("").astype(str)
    category = results.get("data.init_args.category", pd.Series(None, index=results.index))
    categories = category.fillna(data).astype(str)
    if data.nunique() > 1:
        categories = data + "/" + categories
    return models, categories


class JobsFailedError(RuntimeError):
    """Some jobs failed; raised after all results, theirs included, are written."""

    def __init__(self, results: pd.DataFrame) -> None:
        columns = job_columns(results)
        failed = results[results["error"].notna()]
        lines = [f"  {job_name(row, columns)}: {row['error']}" for _, row in failed.iterrows()]
        super().__init__(
            f"{len(failed)} of {len(results)} benchmark jobs failed (their logs: the `log` column of the CSV):\n"
            + "\n".join(lines)
        )


class ResultsTable:
    """``results.csv``, written again whenever a job's row is added, so that it always holds every finished job.

    ``results.png`` and ``results.html`` are drawn again from the same rows.

    Rows keep the grid's order whatever order their jobs finish in. The file is replaced in one step (written beside,
    then renamed), so that a reader, or a run killed while writing, never sees half of it.
    """

    def __init__(self, folder: Path, planned: int | None = None) -> None:
        self.path = folder / "results.csv"
        self.planned = planned  # the run's jobs: the chart counts those without a row as not run
        self.rows: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, index: int, row: dict[str, Any]) -> None:
        """Record the row of job ``index`` and write the file."""
        with self._lock:
            self.rows[index] = row
            frame = self.frame()
            partial = self.path.with_suffix(".csv.partial")
            frame.to_csv(partial, index=False)
            partial.replace(self.path)
            write_comparison(frame, *models_and_categories(frame), self.path.parent, self.planned)

    def frame(self) -> pd.DataFrame:
        """One row per finished job, in grid order, :data:`LAST_COLUMNS` last; a metric a job lacks is empty."""
        frame = pd.DataFrame([self.rows[index] for index in sorted(self.rows)])
        last = [column for column in LAST_COLUMNS if column in frame or column in ("log", "error")]
        return frame.reindex(columns=[*frame.columns.drop(last, errors="ignore"), *last])
