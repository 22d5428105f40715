"""The public API is flat, sorted, and every name in it is documented."""

from __future__ import annotations

import inspect
import typing

import automigrator


def test_all_is_sorted_and_complete() -> None:
    assert automigrator.__all__ == sorted(automigrator.__all__)
    for name in automigrator.__all__:
        assert hasattr(automigrator, name), name


def test_public_objects_have_docstrings() -> None:
    for name in automigrator.__all__:
        obj = getattr(automigrator, name)
        if typing.get_origin(obj) is not None:
            continue  # a type alias (Python 3.10 calls it a class): documented by its own line
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_issue_contract_names_are_exported() -> None:
    for name in ["AutoMigrator", "AutoMigrateMiddleware", "Fail", "LogAndContinue"]:
        assert name in automigrator.__all__
