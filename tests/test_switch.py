"""The RUN_MIGRATIONS switch: read once, strict about its values."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from automigrator import AutoMigrator, ConfigurationError, Switch

WORDS = {"1": True, "true": True, "yes": True, "on": True}
WORDS |= {"0": False, "false": False, "no": False, "off": False}


@given(
    word=st.sampled_from(sorted(WORDS)),
    case=st.lists(st.booleans(), min_size=5, max_size=5),
    pad=st.sampled_from(["", " ", "\t"]),
)
def test_known_words_in_any_case(word: str, case: list[bool], pad: str) -> None:
    mixed = "".join(
        c.upper() if up else c for c, up in zip(word, case + [False] * 5, strict=False)
    )
    enabled, _ = Switch().read({"RUN_MIGRATIONS": pad + mixed + pad})
    assert enabled is WORDS[word]


@given(st.text().filter(lambda s: s.strip().lower() not in WORDS))
def test_anything_else_is_an_error_not_false(value: str) -> None:
    with pytest.raises(ConfigurationError, match="RUN_MIGRATIONS="):
        Switch().read({"RUN_MIGRATIONS": value})


def test_unset_means_the_callers_default() -> None:
    assert Switch("X", default=True).read({}) == (True, "X is unset; default on")
    with pytest.raises(ConfigurationError, match="X=''"):  # set but empty: a mistake
        Switch("X", default=False).read({"X": ""})


def test_env_var_name_and_explicit_override(ini: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_APP_MIGRATE", "no")
    assert (
        AutoMigrator(ini, url="sqlite://", enabled=Switch(env_var="MY_APP_MIGRATE")).enabled
        is False
    )
    assert AutoMigrator(
        ini, url="sqlite://", enabled=Switch(env_var="MY_APP_MIGRATE", enabled=True)
    ).enabled
    monkeypatch.delenv("RUN_MIGRATIONS", raising=False)
    assert AutoMigrator(ini, url="sqlite://").enabled is True
    assert AutoMigrator(ini, url="sqlite://", enabled=Switch(default=False)).enabled is False


def test_switch_is_read_once_at_construction(ini: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUN_MIGRATIONS", "1")
    migrator = AutoMigrator(ini, url="sqlite://")
    monkeypatch.setenv("RUN_MIGRATIONS", "0")
    assert migrator.should_run() is True
