"""Loading through Alembic: the config, the script directory, checked as they load.

With ``_scripts.py`` (which calls it) and ``_alembic_run.py`` the only modules
that call Alembic; its private API is reached through ``_alembic_compat.py``
alone. Alembic's errors are translated here, chained with ``from``.
"""

from __future__ import annotations

import logging
import os
import warnings
from configparser import Error as ConfigParserError
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import URL

from ..errors import (
    ConfigurationError,
)
from ._alembic_compat import version_locations
from ._configfile import config_error_text
from ._textgraph import graph_problem

logger = logging.getLogger("automigrator")

GRAPH_ERRORS = (CommandError, RevisionError)
"""What Alembic raises for a revision or target it cannot find in the graph."""


def load_config(source: str | os.PathLike[str] | Config) -> Config:
    """An Alembic Config: built from a file ``_settings`` has read and checked, or as given.

    A given ``Config`` is checked here: it must name a ``script_location``.
    """
    if not isinstance(source, Config):
        path = Path(source)
        if path.suffix != ".toml":
            return Config(path)
        try:
            return Config(toml_file=path)
        except TypeError as exc:  # Alembic before 1.16 has no toml_file
            raise ConfigurationError(
                f"{str(path)!r}: Alembic settings in pyproject.toml need Alembic 1.16 or "
                "newer. Upgrade Alembic, or pass an alembic.ini."
            ) from exc
    try:
        location = option(source, "script_location")
    except ConfigParserError as exc:
        raise ConfigurationError(
            f"Could not read the Alembic config {source.config_file_name!r}: "
            f"{config_error_text(exc)}"
        ) from exc
    if not location:
        raise ConfigurationError(
            f"The Alembic config {source.config_file_name or source.toml_file_name!r} has no "
            "'script_location'. Add 'script_location = <folder with env.py>' to its "
            "[alembic] section."
        )
    return source


def option(cfg: Config, name: str) -> str | None:
    """An ``[alembic]`` option of the config (or of pyproject.toml's ``[tool.alembic]``)."""
    # get_alembic_option (Alembic 1.16+) also reads pyproject.toml.
    getter = getattr(cfg, "get_alembic_option", None) or cfg.get_main_option
    value: str | None = getter(name)
    return value


def set_url(cfg: Config, url: URL, *, section: str | None = None) -> None:
    """Make ``url`` the ``sqlalchemy.url`` that env.py reads (in ``section``, for multidb)."""
    # ConfigParser interpolates '%': a percent-encoded password must be doubled.
    value = url.render_as_string(hide_password=False).replace("%", "%%")
    if section is None:
        cfg.set_main_option("sqlalchemy.url", value)
    else:
        cfg.set_section_option(section, "sqlalchemy.url", value)


def config_url(cfg: Config) -> str | None:
    """The ``sqlalchemy.url`` of the config, if any."""
    return cfg.get_main_option("sqlalchemy.url") or None


def load_script(cfg: Config) -> ScriptDirectory:
    """The script directory, checked: folders exist, revision files import, graph is sound."""
    try:
        script = ScriptDirectory.from_config(cfg)
    except CommandError as exc:
        raise ConfigurationError(
            f"Could not load the migration scripts: {exc}. Check 'script_location' in "
            f"{cfg.config_file_name or cfg.toml_file_name!r}."
        ) from exc
    # Alembic treats a missing versions folder as "no revisions", which would
    # make an empty database look up to date.
    for location in version_locations(script):
        if not Path(location).is_dir():
            raise ConfigurationError(
                f"The versions folder {str(location)!r} does not exist. Create it, or fix "
                "'script_location' / 'version_locations' in the Alembic config."
            )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            heads = script.get_heads()
        except (RevisionError, CommandError, KeyError) as exc:
            # A KeyError is Alembic meeting a down_revision that names no
            # revision: the files' text says which file, and what to fix.
            problem = _graph_problem(script)
            raise ConfigurationError(
                problem or f"The revision graph is broken: {type(exc).__name__}: {exc}"
            ) from exc
        except Exception as exc:
            raise ConfigurationError(
                _graph_problem(script)
                or f"A revision file failed to import: {type(exc).__name__}: {exc}"
            ) from exc
    for warning in seen:
        if "present more than once" in str(warning.message):
            # Alembic keeps one of the two files and skips the other.
            raise ConfigurationError(
                _graph_problem(script) or f"A revision id is used twice: {warning.message}"
            )
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if not heads:
        raise no_revisions(script)
    for revision in script.walk_revisions():
        # Alembic would fail on it with an AttributeError as it plans (a raw
        # error, taken for the revision's own): say which file it is.
        if not callable(getattr(revision.module, "upgrade", None)):
            raise ConfigurationError(
                f"{revision.path}: revision {revision.revision} has no upgrade() function, "
                "which Alembic calls to apply it. Define it (an empty one is "
                "'def upgrade() -> None: pass'); nothing was changed."
            )
    return script


def _graph_problem(script: ScriptDirectory) -> str | None:
    recursive = bool(getattr(script, "recursive_version_locations", False))
    return graph_problem(version_locations(script), recursive)


def no_revisions(script: ScriptDirectory) -> ConfigurationError:
    """Scripts without one revision: a wrong folder, never "ready at base"."""
    folders = ", ".join(repr(folder) for folder in version_locations(script))
    return ConfigurationError(
        f"No revision file was found in {folders}: an empty database would look up to "
        "date. Point 'script_location' / 'version_locations' at the folder holding the "
        "revisions (if env.py chooses a folder at run time, set version_locations to it)."
    )
