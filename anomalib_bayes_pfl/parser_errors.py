# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""A last line that says what is wrong, for command-line errors about the options of this package's classes.

jsonargparse reports an option it cannot accept inside a nested report about the union of every model (or datamodule)
class, which ends in ``Given value: NestedArg(key='kshot', val='1')``: the reason sits in the middle. For errors about
this package's classes, :func:`install` adds one line at the end that names the option, the value, the reason and, for
an unknown option, the closest option the class has::

    In short: --model.kshot 1: BayesPFL has no option 'kshot'; did you mean --model.k_shot? (anomalib <command>
    --model.help BayesPFL lists them)

An error that one of these classes raises while the command line builds it (``--model.prompt_weights`` naming a
missing file) reaches the user inside jsonargparse's report about the union of models, followed by a dump of every
option; :func:`install` raises it again alone, so that its sentence, which names the fix, is the last thing printed.

Other errors are printed as jsonargparse prints them.
"""

import difflib
import functools
import importlib
import inspect
import re
from collections.abc import Callable
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


_BUILDING = re.compile(rf"Given value: Namespace\(class_path='{PACKAGE}\.")
_ERRORS = re.compile(r"\nErrors:\n(?P<errors>.*?)\nGiven value type:", re.S)


def construction_error(message: str) -> str | None:
    """The error one of this package's classes raised while jsonargparse built it; ``None`` for other reports."""
    errors = _ERRORS.search(message)
    if _BUILDING.search(message) is None or errors is None:
        return None
    items = re.split(r"^  - ", errors["errors"], flags=re.M)
    reasons = [" ".join(line.strip() for line in item.splitlines()) for item in items if item.strip()]
    reasons = [reason for reason in reasons if not reason.startswith("Expected a <class 'NoneType'>")]
    return "\n".join(reasons) or None


def _instantiate_classes_raising_the_reason(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def instantiate_classes(self: ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except ValueError as error:
            reason = construction_error(str(error))
            if reason is None:
                raise
        raise ValueError(reason)  # alone, after the dump of every option: its sentence names the fix

    instantiate_classes._raises_reason = True  # type: ignore[attr-defined]
    return instantiate_classes


def install() -> None:
    """Add the summary line to the command line's errors, and raise construction errors alone, once per process."""
    if not getattr(ArgumentParser.instantiate_classes, "_raises_reason", False):
        ArgumentParser.instantiate_classes = _instantiate_classes_raising_the_reason(  # type: ignore[method-assign]
            ArgumentParser.instantiate_classes
        )
    if getattr(ArgumentParser.error, "_adds_summary", False):
        return
    original = ArgumentParser.error

    @functools.wraps(original)
    def error(self: ArgumentParser, message: str, ex: Any = None) -> NoReturn:
        summary = summarise(message) if self.exit_on_error else None  # inner parsers' reports are nested later
        original(self, f"{message}\n{summary}" if summary else message, ex)

    error._adds_summary = True  # type: ignore[attr-defined]
    ArgumentParser.error = error  # type: ignore[method-assign]
