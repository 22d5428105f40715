"""The on/off switch: ``enabled=`` or an environment variable, read once."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import ConfigurationError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_switch(name: str, value: str) -> bool:
    """Read a switch value; anything but the known words is an error, never a silent False."""
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigurationError(
        f"{name}={value!r} is not a switch value. Use one of 1/0, true/false, yes/no, "
        "on/off (any case), or unset it to use the default."
    )


def read_switch(
    name: str, *, default: bool, environ: Mapping[str, str] | None = None
) -> tuple[bool, str]:
    """The switch from the environment, and a phrase saying where it came from."""
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None:
        return default, f"{name} is unset; default {'on' if default else 'off'}"
    # Set but empty is not unset: "RUN_MIGRATIONS=" is a mistake to name, as
    # the docs promise for anything but the switch words.
    return parse_switch(name, raw), f"{name}={raw.strip()}"
