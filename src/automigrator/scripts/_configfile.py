"""The Alembic config file (alembic.ini or pyproject.toml) read without importing Alembic.

Importing Alembic is costly (its package imports its whole runtime; see
docs/performance.md), and a start at head does not need it: the database's revisions and
the remembered heads decide. So ``AutoMigrator("alembic.ini")`` reads
``script_location`` and ``sqlalchemy.url`` here, the way Alembic's ``Config``
does (``ConfigParser`` with ``here`` set to the file's folder; ``[tool.alembic]``
in a ``pyproject.toml``), and builds Alembic's ``Config`` only when it is
needed.
"""

from __future__ import annotations

import configparser
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..database._redaction import mask_credentials
from ..errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - our own dependency there (pyproject.toml)
    import tomli as tomllib

SECTION = "alembic"
LAYOUT_OPTIONS = (
    "version_locations",
    "sourceless",
    "recursive_version_locations",
    "path_separator",
    "version_path_separator",
)


@dataclass(frozen=True)
class Settings:
    """What the config file says, as Alembic would read it."""

    path: Path
    script_location: str
    url: str | None
    layout: Mapping[str, object] = field(default_factory=dict)
    """The options that say where Alembic looks for revision files, as written
    (:data:`LAYOUT_OPTIONS`, those present)."""

    def script_folder(self) -> Path | None:
        """The folder holding env.py; None for a package resource (``pkg:dir``)."""
        location = self.script_location
        if not os.path.isabs(location) and ":" in location:
            return None  # Alembic resolves these through importlib.resources
        return Path(location).absolute()


def _config_near(folder: Path) -> Path | None:
    # The config a folder given by mistake was meant to be: in it, or above it
    # (`-c app/migrations` for app/alembic.ini).
    for place in (folder, *folder.absolute().parents):
        ini = place / "alembic.ini"
        if ini.is_file():
            return ini if folder.is_absolute() else Path(os.path.relpath(ini))
        toml = place / "pyproject.toml"
        try:
            if toml.is_file() and "[tool.alembic]" in toml.read_text(encoding="utf-8"):
                return toml if folder.is_absolute() else Path(os.path.relpath(toml))
        except (OSError, UnicodeDecodeError):
            continue
    return None


def read_settings(source: str | os.PathLike[str]) -> Settings:
    """Read an alembic.ini (or a pyproject.toml with ``[tool.alembic]``)."""
    path = Path(source)
    if path.is_dir():
        found = _config_near(path)
        suggestion = (
            f"this one? {str(found)!r}"
            if found is not None
            else "none is in it or in a folder above it (alembic.ini usually sits beside "
            "the migrations folder)"
        )
        raise ConfigurationError(
            f"Alembic config {str(path)!r} is a folder: pass the alembic.ini (or "
            f"pyproject.toml with [tool.alembic]); {suggestion}."
        )
    if not path.is_file():
        raise ConfigurationError(
            f"Alembic config file {str(path)!r} not found (looked from {os.getcwd()!r}). "
            "Pass the path to your alembic.ini, or an alembic.config.Config."
        )
    here = path.absolute().parent.as_posix()
    if path.suffix == ".toml":
        location, url, layout = _read_toml(path, here)
    else:
        location, url, layout = _read_ini(path)
    if not location:
        raise ConfigurationError(
            f"The Alembic config {str(path)!r} has no 'script_location'. Add "
            "'script_location = <folder with env.py>' to its [alembic] section."
        )
    return Settings(path, location, url or None, layout)


@contextmanager
def _ini(path: Path) -> Iterator[configparser.ConfigParser]:
    """The ini file parsed as Alembic parses it; any error reading it is a ConfigurationError."""
    parser = configparser.ConfigParser({"here": path.absolute().parent.as_posix()})
    try:
        parser.read(path, encoding="utf-8")
        if not parser.has_section(SECTION):
            raise ConfigurationError(
                f"The Alembic config {str(path)!r} has no [{SECTION}] section. Is it an "
                "alembic.ini?"
            )
        yield parser
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"Could not read the Alembic config {str(path)!r}: {config_error_text(exc)}"
        ) from exc


def config_error_text(exc: Exception) -> str:
    """What went wrong reading an ini, without the value (it may be a password)."""
    if isinstance(exc, configparser.InterpolationError):
        return (
            f"the value of {exc.option!r} in [{exc.section}] has a '%' that is neither '%%' "
            "nor '%(name)s'. Write a literal % as %% (a percent-encoded password too)."
        )
    return mask_credentials(str(exc)).strip()


_Read = tuple[str | None, str | None, dict[str, object]]


def _read_ini(path: Path) -> _Read:
    with _ini(path) as parser:
        location = parser.get(SECTION, "script_location", fallback=None)
        url = parser.get(SECTION, "sqlalchemy.url", fallback=None)
        layout: dict[str, object] = {
            name: parser.get(SECTION, name)
            for name in LAYOUT_OPTIONS
            if parser.has_option(SECTION, name)
        }
    return location, url, layout


def _read_toml(path: Path, here: str) -> _Read:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"Could not read {str(path)!r}: {exc}") from exc
    section = data.get("tool", {}).get("alembic", {})
    location = section.get("script_location") if isinstance(section, dict) else None
    if not isinstance(location, str):
        return None, None, {}
    layout = {name: section[name] for name in LAYOUT_OPTIONS if name in section}
    # Alembic keeps sqlalchemy.url out of pyproject.toml: env.py finds the URL.
    return location.replace("%(here)s", here), None, layout


def read_multidb(source: str | os.PathLike[str]) -> dict[str, str | None]:
    """The multidb template's databases: ``databases = a, b`` and each ``[a] sqlalchemy.url``.

    In the order the config lists them; a URL is None where the section has none.
    """
    path = Path(source)
    read_settings(path)  # the file exists and is an Alembic config
    if path.suffix == ".toml":
        raise ConfigurationError(
            f"{str(path)!r}: the multidb template keeps its databases in an alembic.ini "
            "('databases = ...' and one section per database); pass that file."
        )
    with _ini(path) as parser:
        listed = parser.get(SECTION, "databases", fallback="")
        names = [name for name in re.split(r",\s*", listed.strip()) if name]
        if not names:
            raise ConfigurationError(
                f"The Alembic config {str(path)!r} has no 'databases = ...' in [{SECTION}]: "
                "it is not from the multidb template. Use AutoMigrator for one database, or "
                "MigratorGroup({...}) for several configs."
            )
        return {
            name: parser.get(name, "sqlalchemy.url", fallback=None) or None
            if parser.has_section(name)
            else None
            for name in names
        }
