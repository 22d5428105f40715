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
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from ..database._redaction import mask_credentials
from ..errors import ConfigurationError

SECTION = "alembic"
LAYOUT_OPTIONS = (
    "version_locations",
    "sourceless",
    "recursive_version_locations",
    "path_separator",
    "version_path_separator",
    "prepend_sys_path",
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
        """The folder holding env.py; a package resource (``pkg:dir``) found
        without importing the package; None where that cannot be said."""
        if self._shadowed(self.script_location):
            return None
        return location_folder(self.script_location)

    def _shadowed(self, location: str) -> bool:
        # Alembic puts prepend_sys_path first on sys.path before it resolves
        # pkg:dir: where the package is found there (Alembic's template says
        # ".", the working folder), only Alembic can say which one it imports.
        # Split on every separator any Alembic release uses: a superset.
        written = self.layout.get("prepend_sys_path")
        if not written or os.path.isabs(location) or ":" not in location:
            return False
        top = location.partition(":")[0].split(".")[0]
        entries = written if isinstance(written, list) else re.split(r"[,\s:;]+", str(written))
        return any(
            (Path(str(entry)) / top).exists() or (Path(str(entry)) / f"{top}.py").exists()
            for entry in entries
            if entry
        )

    def version_folders(self) -> list[Path] | None:
        """The folders Alembic reads revision files from, in its order: the
        ``versions`` folder, or ``version_locations`` split and resolved as
        Alembic does; None where only Alembic can say."""
        written = self.layout.get("version_locations")
        if not written:
            folder = self.script_folder()
            return None if folder is None else [folder / "versions"]
        if isinstance(written, list):  # pyproject.toml: a list already
            items: list[str] | None = [str(item) for item in written]
            if any("%(" in item for item in items or ()):
                items = None  # Alembic's own substitution: let it make it
        elif isinstance(written, str):
            items = _split_locations(written, self.layout)
        else:
            items = None
        if not items:
            return None
        if any(self._shadowed(item) for item in items):
            return None
        folders = [location_folder(item) for item in items]
        return None if any(f is None for f in folders) else [f for f in folders if f]


def location_folder(location: str) -> Path | None:
    """A script or version location as a folder. ``pkg:dir`` (Alembic's
    ``importlib.resources`` notation) is found without importing ``pkg``: a
    Prefect start imported all of Prefect for it (1.3 s at head)."""
    if os.path.isabs(location) or ":" not in location:
        return Path(location).absolute()
    package, _, below = location.partition(":")
    top, *rest = package.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level spec: nothing is imported
    except (ImportError, ValueError):
        return None
    places = list(spec.submodule_search_locations or ()) if spec is not None else []
    if len(places) != 1:
        return None  # not a package, or a namespace spread over folders: Alembic says
    folder = Path(places[0]).joinpath(*rest, below)
    return folder if folder.is_dir() else None


# Alembic's separators (Config._get_file_separator_char), and its legacy split
# on spaces and commas where none is set.
_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
_SPACE_COMMA = re.compile(r", *|(?: +)")


def _split_locations(written: str, layout: Mapping[str, object]) -> list[str] | None:
    named = layout.get("path_separator")
    if named is not None and not _alembic_reads_path_separator():
        named = None  # older Alembic ignores it
    if named is None:
        named = layout.get("version_path_separator")
    if named is None:
        return _SPACE_COMMA.split(written)
    separator = _SEPARATORS.get(str(named))
    if separator is None:
        return None  # Alembic refuses it: let it say so
    return [item.strip() for item in written.split(separator) if item]


def _alembic_reads_path_separator() -> bool:
    # path_separator came in Alembic 1.16; asked of the installed metadata,
    # not of Alembic (a start at head imports none of it).
    try:
        major, minor = (int(part) for part in metadata.version("alembic").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (1, 16)


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
    # Imported here: most projects keep an alembic.ini, and a start at head
    # counts its memory (docs/performance.md, P5).
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - our own dependency there (pyproject.toml)
        import tomli as tomllib

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
