# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The autoload hook, in fresh interpreters of the installed package (``pip install .`` or ``-e .``)."""

import os
import subprocess
import sys

import pytest

from ..helpers import TINY_CLIP

pytestmark = pytest.mark.slow


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "ANOMALIB_BAYES_PFL_NO_AUTOLOAD"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300, check=False
    )


def test_bare_interpreter_imports_nothing_heavy():
    result = run_python(
        "import sys; print(sorted(m for m in ('torch', 'anomalib', 'anomalib_bayes_pfl') if m in sys.modules))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    result = run_python(
        "import sys; print(sum(type(f).__name__ == '_ImportAfterAnomalibModels' for f in sys.meta_path))"
    )
    assert result.stdout.strip() == "1"


def test_the_hook_registers_the_model_for_get_model_by_name_and_by_benchmark_dict():
    """One interpreter with the hook on (importing anomalib takes most of its time), one with it switched off."""
    code = f"""
import sys
import anomalib.models
print(hasattr(anomalib.models, "BayesPFL"), "anomalib_bayes_pfl" in sys.modules)
from anomalib.models import get_model
init = {{"clip_model": {str(TINY_CLIP)!r}, "clip_pretrained": None, "image_size": 64}}
by_name = get_model("BayesPFL", **init)
by_dict = get_model({{"class_path": "BayesPFL", "init_args": init}})
print(type(by_name).__module__, type(by_dict).__name__)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-4:] == ["True", "True", "anomalib_bayes_pfl.adapter.lightning_model", "BayesPFL"]


def test_environment_variable_switches_the_hook_off():
    code = (
        "import anomalib.models, sys; print(hasattr(anomalib.models, 'BayesPFL'), 'anomalib_bayes_pfl' in sys.modules)"
    )
    assert run_python(code, ANOMALIB_BAYES_PFL_NO_AUTOLOAD="1").stdout.split()[-2:] == ["False", "False"]


def test_install_is_idempotent_and_late_install_registers_at_once():
    code = """
import sys, _anomalib_bayes_pfl_autoload as hook
hook.install(); hook.install()
print(sum(type(f).__name__ == '_ImportAfterAnomalibModels' for f in sys.meta_path))
"""
    assert run_python(code).stdout.strip() == "1"
    late = """
import anomalib.models, _anomalib_bayes_pfl_autoload as hook
hook.install()
print(anomalib.models.BayesPFL.__name__)
"""
    result = run_python(late, ANOMALIB_BAYES_PFL_NO_AUTOLOAD="")
    assert result.stdout.split()[-1] == "BayesPFL", result.stderr


def test_register_never_replaces_another_class(caplog):
    import anomalib.models

    from anomalib_bayes_pfl.registration import register

    register("Padim", object)
    assert anomalib.models.Padim is not object
    assert "already anomalib.models.image.padim" in caplog.text
