"""Checks of a setting's value where it is built: a ConfigurationError naming the field.

Shared by the settings objects and the failure policies, so that every
option anywhere is refused the same way (``Timeouts(lock=inf): lock must be
a finite number of seconds > 0.``), never with a TypeError from deep inside.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import get_args

from .errors import ConfigurationError, ErrorKind


def seconds(owner: str, name: str, value: object, *, zero: bool = False) -> float:
    """A finite number of seconds (> 0, or >= 0 with ``zero``), as a float."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    number = float(value) if ok else math.nan  # type: ignore[arg-type]
    if not (math.isfinite(number) and (number >= 0 if zero else number > 0)):
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(
            f"{owner}({name}={value!r}): {name} must be a finite number of seconds {bound}."
        )
    return number


def count(owner: str, name: str, value: object, *, least: int = 0) -> int:
    """A whole number, at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(
            f"{owner}({name}={value!r}): {name} must be a whole number >= {least}."
        )
    return value


def choice(owner: str, name: str, value: object, choices: Collection[object]) -> None:
    """One of ``choices``."""
    if value not in choices:
        said = " or ".join(repr(c) for c in choices)
        raise ConfigurationError(f"{owner}({name}={value!r}): use {said}.")


def flag(owner: str, name: str, value: object) -> bool:
    """True or False, never a truthy string ("false" is not False)."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{owner}({name}={value!r}): use True or False.")
    return value


def kinds(owner: str, value: object) -> tuple[ErrorKind, ...]:
    """A tuple of error kinds (a lone string would match its substrings)."""
    known = get_args(ErrorKind)
    if not isinstance(value, tuple) or not all(kind in known for kind in value):
        raise ConfigurationError(
            f"{owner}(kinds={value!r}): give a tuple of error kinds among {', '.join(known)}."
        )
    return value
