# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""How much the B x R sampled prompt sets disagree about an anomaly probability: the model's epistemic uncertainty.

Bayes-PFL scores each image with M = B * R prompt sets, B prompts of the bank each shifted by R samples of the
learned distributions, and reports the mean of their M probabilities. The spread of those M probabilities is what
the model does not know; it comes with no extra forward pass.

Per pixel, the samples are the M maps before smoothing (the mean of which is the unsmoothed anomaly map); the
uncertainty map is then smoothed with the anomaly map's Gaussian, so that it is as smooth as the map it sits beside.
Smoothing each of the M maps first would cost M smoothing passes, about a tenth of the inference time on a CPU.

Two measures, both zero exactly when all samples agree, both bounded (one fixed colour scale serves every image and
category) and both computed from the samples in one batched reduction:

- ``std`` (the default): the standard deviation of the M probabilities (Kendall & Gal, "What Uncertainties Do We
  Need in Bayesian Deep Learning for Computer Vision?", NeurIPS 2017, read segmentation uncertainty off the spread of
  sampled probabilities), in probability units, at most 0.5. It is the default because it reads on the scale of the
  scores and thresholds ("the samples' anomaly probability here spreads by 0.05"), it is linear in the few-shot
  fusion (fused samples spread exactly half as much), and it costs the least: about 1 % of the inference time of the
  paper's configuration on a CPU (``benchmarks/bench_uncertainty.py``).
- ``mutual_information``: the mutual information between the binary outcome and the sample, in bits (at most 1),
  ``H(mean p) - mean H(p_m)`` (BALD: Houlsby et al., "Bayesian Active Learning for Classification and Preference
  Learning", 2011; Depeweg et al., "Decomposition of Uncertainty in Bayesian Deep Learning", ICML 2018): the epistemic
  part of the predictive entropy. For small spreads it is ``variance / (2 ln 2 * p (1 - p))``, so it weighs a
  disagreement near 0 or 1 more than the same disagreement near 0.5. It is computed in its equivalent form
  ``mean KL(p_m || mean p)``, a mean of non-negative terms, which keeps its precision when the samples nearly agree
  (the entropy difference cancels to float32 noise there); its two logarithms per sample and pixel cost about 3 times
  the standard deviation's time.
"""

import math
from typing import Literal

import torch

UncertaintyMeasure = Literal["mutual_information", "std"]
UNCERTAINTY_UNITS: dict[str, str] = {"mutual_information": "bits", "std": "probability"}
# The largest value each measure can take, the top of every uncertainty colour scale.
UNCERTAINTY_MAXIMUM: dict[str, float] = {"mutual_information": 1.0, "std": 0.5}


def mutual_information(probabilities: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Mutual information in bits between a Bernoulli outcome and the sample index, over ``dim`` of ``probabilities``.

    ``mean_m KL(Bernoulli(p_m) || Bernoulli(mean p))``, which equals ``H(mean p) - mean_m H(p_m)``.
    """
    mean = probabilities.mean(dim=dim, keepdim=True)
    tiny = torch.finfo(probabilities.dtype).tiny
    difference = probabilities - mean
    # p log(p / mean) + (1 - p) log((1 - p) / (1 - mean)), each log as log1p of a small relative difference; a term
    # with p = 0 or p = 1 is zero, and a mean of exactly 0 or 1 means every sample equals it. In place where possible:
    # these temporaries are as large as the samples.
    kl = torch.special.xlog1py(probabilities, difference / mean.clamp_min(tiny))
    kl += torch.special.xlog1py(1 - probabilities, difference.div_((mean - 1).clamp_max(-tiny)))
    return kl.mean(dim=dim).clamp_min(0) / math.log(2)


def standard_deviation(probabilities: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Population standard deviation of ``probabilities`` over ``dim`` (the M samples are the whole posterior draw)."""
    return probabilities.std(dim=dim, correction=0)


def sample_uncertainty(probabilities: torch.Tensor, measure: UncertaintyMeasure, dim: int = 0) -> torch.Tensor:
    """The uncertainty ``measure`` of the sampled ``probabilities``, reduced over their sample dimension ``dim``."""
    if measure == "mutual_information":
        return mutual_information(probabilities, dim)
    if measure == "std":
        return standard_deviation(probabilities, dim)
    msg = f"unknown uncertainty measure {measure!r}; use one of {sorted(UNCERTAINTY_UNITS)}."
    raise ValueError(msg)
