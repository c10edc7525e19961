# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``anomalib benchmark`` that can also run zero-shot models, and that keeps every job's result.

    python -m anomalib_bayes_pfl.benchmark --config configs/benchmark_zero_shot_mvtec.yaml [--memory_limit 12]

anomalib's benchmark config format (``grid`` keys, one runner per accelerator) and
``runs/benchmark/<time>/results.csv``, with the jobs run otherwise, because anomalib 2.7's

- passes the datamodule to ``Engine.fit`` as ``train_dataloaders``, so that the Engine validates a zero-shot model
  (BayesPFL with trained prompts, WinClip) with no data and every such job fails;
- builds the models in the generator, so that one model that cannot be built (WinClip without network access to
  its weights) ends the generator and drops the rows of the jobs that had already finished;
- writes ``results.csv`` only once every job has finished, and runs the jobs in its own process: one job that dies
  without raising (the kernel's out-of-memory killer, a signal, a crash in a native library) loses every row;
- writes no row for a failed job, needs every row to have the same keys, and exits 0 whatever failed;
- tests each model on its own evaluator's metrics, so that models are compared on the two metrics they share.

Here each job builds its own model and datamodule in a process of its own (``jobs.py``), which may start DataLoader
workers and whose memory and progress are watched: a job whose processes hold more than ``--memory_limit`` GiB, or
that goes ``--stall_timeout`` seconds without a batch or a line of output, is stopped. A job that fails, raises, dies
or is stopped leaves a row with its settings and the reason in the ``error`` column, and the next job runs. Every job
is tested on the same metrics (``--metrics common``): image AUROC, AUPR and F1Max, pixel AUROC, AUPRO and AUPR; a
metric that a job cannot give (no masks in the data, no maps from the model) is named with the reason in its row's
``not_computed`` column. ``results.csv`` is written again as each job finishes (``results.py``), so a run that is
itself killed keeps every finished row, and with it ``results.png``, a chart of each metric per model and category,
and ``results.html``, the chart and the rows on one page. Each row names its job's log (everything the job printed,
logged or crashed with) in the ``log`` column, and its peak memory in ``peak_memory_gb``. At the end the command
prints a short table and the CSV path, then names the failed jobs and exits 1 if there are any (``pipeline.py``).

Memory. Jobs run with glibc's ``MALLOC_TRIM_THRESHOLD_=0`` unless it is set: anomalib's Patchcore coreset selection
allocates and frees an embedding-sized temporary in each of its thousands of steps, and glibc's allocator kept the
freed ones, so that one job's resident memory grew by the temporary's size at every step (past 18 GB on the offline
config). Returning free memory at once keeps it at the job's working size.
"""

from .pipeline import ZeroShotCapableBenchmark, main
from .results import models_and_categories

__all__ = ["ZeroShotCapableBenchmark", "main", "models_and_categories"]
