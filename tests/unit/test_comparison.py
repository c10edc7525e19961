# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The benchmark's chart and page: each bar is the value of results.csv, and each missing bar says why."""

import math

import matplotlib.text
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from anomalib_bayes_pfl.benchmark import models_and_categories
from anomalib_bayes_pfl.reporting.comparison import (
    DPI,
    MEAN,
    RESULTS_HTML,
    RESULTS_PNG,
    comparison_figure,
    model_values,
    write_comparison,
)

NAN = float("nan")


@pytest.fixture
def results() -> pd.DataFrame:
    """Two models on two categories; Padim has no AUPRO, and its second job failed."""
    return pd.DataFrame(
        {
            "model.class_path": ["BayesPFL", "BayesPFL", "Padim", "Padim"],
            "data.class_path": ["MVTecAD"] * 4,
            "data.init_args.category": ["bottle", "cable", "bottle", "cable"],
            "image_AUROC": [0.9, 0.7, 0.6, NAN],
            "pixel_AUPRO": [0.4, 0.2, NAN, NAN],
            "job_duration": [10.0, 11.0, 5.0, NAN],
            "log": [f"runs/benchmark/t/logs/00{index}.log" for index in range(4)],
            "not_computed": [NAN, NAN, "pixel_AUPRO: the model gives no <anomaly maps>", NAN],
            "error": [NAN, NAN, NAN, "RuntimeError: <out of memory> & more"],
        }
    )


def test_each_bar_is_the_value_in_results_csv_and_each_missing_one_says_why(results):
    models, categories = models_and_categories(results)
    figure = comparison_figure(results, models, categories)

    assert [axis.get_title() for axis in figure.axes if axis.axison] == ["image_AUROC", "pixel_AUPRO"]
    axis = next(axis for axis in figure.axes if axis.get_title() == "image_AUROC")
    assert [tick.get_text() for tick in axis.get_xticklabels()] == ["bottle", "cable", MEAN]
    heights = {container.get_label(): [patch.get_height() for patch in container] for container in axis.containers}
    assert heights["BayesPFL"] == pytest.approx([0.9, 0.7, 0.8])
    assert heights["Padim"] == pytest.approx([0.6, 0, 0])  # no bar: a failed job, and so no mean
    labels = [text.get_text() for text in axis.texts]
    assert labels == ["0.90", "0.70", "0.80", "0.60", "failed", "no\nmean"]
    pro = next(axis for axis in figure.axes if axis.get_title() == "pixel_AUPRO")
    assert [text.get_text() for text in pro.texts] == ["0.40", "0.20", "0.30", "not\ncomputed", "failed", "no\nmean"]


def test_a_run_that_ended_early_counts_and_names_the_jobs_it_did_not_run(results, tmp_path):
    """A killed run: the chart counts the jobs never run, and their bars say so, not "not computed"."""
    finished = results.drop(index=3)  # Padim on cable never ran
    figure = comparison_figure(finished, *models_and_categories(finished), planned=6)
    assert figure.legends[0].get_title().get_text() == "3 of 6 benchmark jobs finished: 0 failed, 3 not run"
    axis = next(axis for axis in figure.axes if axis.get_title() == "image_AUROC")
    assert [text.get_text() for text in axis.texts] == ["0.90", "0.70", "0.80", "0.60", "not\nrun", "no\nmean"]
    assert (
        "3 of 6 benchmark jobs finished: 0 failed, 3 not run"
        in write_comparison(finished, *models_and_categories(finished), tmp_path, planned=6).read_text()
    )


def test_every_text_of_the_saved_chart_is_at_least_10_pixels_high_and_the_legend_is_on_top(results):
    figure = comparison_figure(results, *models_and_categories(results))
    texts = [text for text in figure.findobj(matplotlib.text.Text) if text.get_text()]
    assert texts
    assert min(text.get_fontsize() * DPI / 72 for text in texts) >= 10
    [legend] = figure.legends
    FigureCanvasAgg(figure).draw()
    box = legend.get_window_extent()
    assert all(box.y0 >= axis.get_tightbbox().y1 for axis in figure.axes if axis.axison)  # above titles and labels


def test_the_mean_is_over_all_categories_or_not_given(results):
    models, categories = models_and_categories(results)
    values = model_values(results, models, categories, "image_AUROC")
    assert values.loc["BayesPFL", MEAN] == pytest.approx(0.8)
    assert math.isnan(values.loc["Padim", MEAN])  # a mean over the categories that succeeded would mislead


def test_models_are_told_apart_by_the_settings_that_vary_and_categories_by_data_where_it_varies(results):
    results.loc[1, "model.init_args.k_shot"] = 4
    results.loc[0, "model.init_args.k_shot"] = 0
    results.loc[3, "data.class_path"] = "Visa"
    models, categories = models_and_categories(results)
    assert models.tolist() == ["BayesPFL / model.k_shot=0.0", "BayesPFL / model.k_shot=4.0", "Padim", "Padim"]
    assert categories.tolist() == ["MVTecAD/bottle", "MVTecAD/cable", "MVTecAD/bottle", "Visa/cable"]


def test_the_page_holds_the_chart_and_every_job_with_its_error_and_log(results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs" / "benchmark" / "t"
    folder.mkdir(parents=True)
    page = write_comparison(results, *models_and_categories(results), folder.relative_to(tmp_path))

    assert (folder / RESULTS_PNG).stat().st_size > 0
    text = (tmp_path / page).read_text()
    assert page.name == RESULTS_HTML
    assert f'src="{RESULTS_PNG}"' in text
    assert text.count("</tr>") == 1 + len(results)  # the header and one row per job
    assert "RuntimeError: &lt;out of memory&gt; &amp; more" in text  # the error, as text
    assert "<td>pixel_AUPRO: the model gives no &lt;anomaly maps&gt;</td>" in text  # why a value is missing
    for index in range(4):
        assert f'href="logs/00{index}.log"' in text  # relative to the page: a copied folder keeps its links
    assert "<script" not in text
    assert "http" not in text
