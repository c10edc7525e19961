# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The fidelity test can still fail: each of five deviations from the authors' code makes quantities differ.

``tools/fidelity_report.py`` applies each deviation to a copy of the package and runs the fidelity test there.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPORT = Path(__file__).parents[2] / "tools" / "fidelity_report.py"


def _report():
    """The tool as a module of its name, as its runs' processes import it."""
    if "fidelity_report" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fidelity_report", REPORT)
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["fidelity_report"]


@pytest.mark.parametrize("deviation", list(_report().MUTATIONS))
def test_the_fidelity_test_fails_for_each_deviation_from_the_authors(deviation):
    assert _report().failing_quantities(deviation) > 0, f"the fidelity test passes with '{deviation}'"
