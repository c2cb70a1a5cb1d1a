"""One error tree: every error class lives in runlet/errors.py and is drawn in its docstring."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import actors
import runlet
from runlet import errors


def _all_errors() -> list[type[errors.RunletError]]:
    for package in (runlet, actors):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    found: list[type[errors.RunletError]] = []
    todo: list[type[errors.RunletError]] = [errors.RunletError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


ALL = _all_errors()


def test_the_tree_is_found() -> None:
    """The walk sees the whole tree, so the checks below can fail."""
    assert len(ALL) >= 15
    assert errors.UsageError in ALL


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_class_lives_in_errors(cls: type[errors.RunletError]) -> None:
    """No module defines an error class of its own: they are all in runlet.errors."""
    assert cls.__module__ == "runlet.errors"


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_class_is_drawn_in_the_tree(cls: type[errors.RunletError]) -> None:
    """The docstring's tree names every class, so it is the whole picture."""
    assert errors.__doc__ is not None
    assert f" {cls.__name__} " in errors.__doc__.replace("\n", " \n ")


def test_exit_statuses_are_distinct_and_named_once() -> None:
    """Each EXIT_* constant is a different number; a usage error exits 64."""
    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert len(set(codes.values())) == len(codes)
    assert errors.UsageError("x").exit_code == errors.EXIT_USAGE == 64
