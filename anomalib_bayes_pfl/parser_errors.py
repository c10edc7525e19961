# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""A last line that says what is wrong, for command-line errors about the options of this package's classes.

jsonargparse reports an option it cannot accept inside a nested report about the union of every model (or datamodule)
class, which ends in ``Given value: NestedArg(key='kshot', val='1')``: the reason sits in the middle. For errors about
this package's classes, :func:`install` adds one line at the end that names the option, the value, the reason and, for
an unknown option, the closest option the class has::

    In short: --model.kshot 1: BayesPFL has no option 'kshot'; did you mean --model.k_shot? (anomalib <command>
    --model.help BayesPFL lists them)

Other errors are printed as jsonargparse prints them.
"""

import difflib
import functools
import importlib
import inspect
import re
from typing import Any, NoReturn

from jsonargparse import ArgumentParser

PACKAGE = "anomalib_bayes_pfl"
_GIVEN = re.compile(r"Given value: NestedArg\(key='(?P<key>[^']+)', val=(?P<value>.*)\)\s*$")
_GROUP = re.compile(r'^Parser key "(?P<group>\w+)"')
_CLASS = re.compile(rf"Problem with given class_path '(?P<path>{PACKAGE}\.[\w.]+)':")
_NOT_ACCEPTED = re.compile(r"Option '(?P<name>[^']+)' is not accepted")
_CHOICES = re.compile(r"Expected a typing.Literal\[(?P<choices>.*)\]\. Got value: .*")
# Lines of jsonargparse's report that describe its search, not the problem.
_STRUCTURE = (
    "Parser key",
    "Does not validate",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
)


def _option_names(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    return [parameter for parameter in inspect.signature(cls).parameters if parameter not in {"args", "kwargs"}]


def summarise(message: str) -> str | None:
    """The last line for a report about an option of this package's classes; ``None`` for other reports."""
    given, group, owner = _GIVEN.search(message), _GROUP.search(message), _CLASS.search(message)
    if given is None or group is None or owner is None:
        return None
    key, value = given["key"], given["value"].strip("'\"")
    class_path = owner["path"]
    class_name = class_path.rpartition(".")[2]
    option = f"--{group['group']}.{key}"
    unknown = _NOT_ACCEPTED.search(message)
    if unknown:
        names = _option_names(class_path)
        close = difflib.get_close_matches(unknown["name"], names, n=1)
        guess = f"; did you mean --{group['group']}.{close[0]}?" if close else ""
        listed = f"(--{group['group']}.help {class_name} lists them)"
        return f"In short: {option} {value}: {class_name} has no option '{unknown['name']}'{guess} {listed}"
    block = message[owner.end() : given.start()]
    reasons = [line.strip().removeprefix("- ") for line in block.splitlines()]
    reasons = [
        _CHOICES.sub(r"expected one of \g<choices>", line)
        for line in reasons
        if line and not line.startswith(_STRUCTURE)
    ]
    if not reasons:
        return None
    return f"In short: {option} {value}: {'; '.join(reasons)}"


def install() -> None:
    """Add the summary line to the command line's errors, once per process."""
    if getattr(ArgumentParser.error, "_adds_summary", False):
        return
    original = ArgumentParser.error

    @functools.wraps(original)
    def error(self: ArgumentParser, message: str, ex: Any = None) -> NoReturn:
        summary = summarise(message) if self.exit_on_error else None  # inner parsers' reports are nested later
        original(self, f"{message}\n{summary}" if summary else message, ex)

    error._adds_summary = True  # type: ignore[attr-defined]
    ArgumentParser.error = error  # type: ignore[method-assign]
