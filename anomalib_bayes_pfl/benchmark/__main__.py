# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``python -m anomalib_bayes_pfl.benchmark``.

A package's ``__main__``, so that the job processes import the benchmark by its name and never run this file again.
"""

from anomalib_bayes_pfl.benchmark import main

main()
