"""The migration scripts of one migrator: config, Alembic's Config, the graph, remembered heads.

With ``_alembic_load.py`` and ``_alembic_run.py``, the one place that reaches
Alembic. Alembic itself is
imported only when a graph is needed: a start at head with remembered heads,
or with plain files in Alembic's default layout (``_plainheads``), does
without it. The graph is read from the files' text for planning
(``_textgraph``) and imported, as Alembic does, only to run the scripts.
``before_scripts`` runs in the worker thread around each import or run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

from ..database._connections import VersionTable, for_env_py, parse_url
from ..errors import ConfigurationError
from . import _fingerprints, _headcache, _plainheads
from ._configfile import Settings, read_settings
from ._fingerprints import Fingerprint

# The options by which Alembic finds the revision files: what remembered heads
# of a Config object built in code are keyed on.
_SCRIPT_OPTIONS = (
    "script_location",
    "version_locations",
    "sourceless",
    "recursive_version_locations",
    "path_separator",
    "version_path_separator",
)

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from ..database._contention import UpgradeTry
    from ._alembic_compat import Destination
    from ._hooks import RunHooks

BeforeScripts = Callable[[], AbstractContextManager[Any] | None]
"""A function that sets the application up for its migration scripts (``before_scripts=``)."""


class Scripts:
    """One migrator's scripts: where they are, what their heads are, and running them.

    Args:
        config: path to alembic.ini / pyproject.toml, or an Alembic ``Config``.
        url: the URL that env.py sees, if not the config's ``sqlalchemy.url``.
        multidb_name: the multidb template's database (ini section) to serve.
        before_scripts: called in the worker thread around each import or run.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Config,
        *,
        url: str | URL | None,
        multidb_name: str | None,
        before_scripts: BeforeScripts | None,
    ) -> None:
        if before_scripts is not None and not callable(before_scripts):
            raise ConfigurationError(
                f"before_scripts={before_scripts!r} is not callable: pass a function that "
                "sets the application up (it may return a context manager)."
            )
        self.before_scripts = before_scripts
        self.multidb_name = multidb_name
        self._settings: Settings | None = None
        self._config: Config | None = None
        if isinstance(config, (str, os.PathLike)):
            self._settings = read_settings(config)
            config_url, self.name = self._settings.url, str(config)
        else:
            from . import _alembic_load

            self._config = _alembic_load.load_config(config)
            config_url = _alembic_load.config_url(self._config)
            self.name = self._config.config_file_name or "<Config>"
        raw_url = url if url is not None else config_url
        # An ini shipped with `sqlalchemy.url = ""` (filled in at deploy time)
        # holds the two quotes: that is no URL either.
        if raw_url is None or (isinstance(raw_url, str) and not raw_url.strip().strip("\"'")):
            raise ConfigurationError(
                "No database URL: pass url= to AutoMigrator (with the CLI: --url or "
                f"AUTOMIGRATOR_URL), or set sqlalchemy.url in {self.name!r}."
            )
        self.url: URL = parse_url(raw_url)
        self._url_given = url is not None
        if self._config is not None and self._url_given:
            self._apply_url(self._config)
        self._script: ScriptDirectory | None = None  # imported: to run
        self._graph: ScriptDirectory | None = None  # read, not imported: for plans
        self._text_read = False  # the files' text was read this attempt
        # Each revision file's fingerprint, read or remembered with the heads.
        self._prints: dict[str, Fingerprint] | None = None
        self._prints_place: tuple[list[str], bool, bool] | None = None
        self._prints_heads: tuple[str, ...] = ()
        # The files' key when the fingerprints were read (None: take it when kept).
        self._prints_files: str | None = None
        # The heads' file and record, remembered or just written: the
        # fingerprints beside them, the clean ledger checks.
        self._record: tuple[Path, Any] | None = None

    @property
    def config(self) -> Config:
        """The Alembic config env.py sees (with the URL applied); built on first use."""
        if self._config is None:
            from . import _alembic_load

            assert self._settings is not None
            config = _alembic_load.load_config(self._settings.path)
            if self._url_given:
                self._apply_url(config)
            self._config = config
        return self._config

    def _apply_url(self, config: Config) -> None:
        from . import _alembic_load

        url = for_env_py(self.url)  # its connection bounded as ours are
        if self.multidb_name is None:
            _alembic_load.set_url(config, url)
        else:  # the multidb template's env.py migrates the databases listed here
            _alembic_load.set_url(config, url, section=self.multidb_name)
            config.set_main_option("databases", self.multidb_name)

    def forget(self) -> None:
        """Drop the graph and the imported scripts: read them again next time."""
        self._script, self._graph, self._text_read = None, None, False
        self._prints, self._prints_place, self._record = None, None, None
        self._prints_files = None

    def remembered_heads(self, target: str) -> tuple[str, ...] | None:
        """The heads known without Alembic: remembered, or read from plain files.

        Remembered from an earlier start if the files are unchanged; else,
        for Alembic's default layout of plain files, computed from their
        text (and remembered for the next start where the folder is
        writable). None when only Alembic can say.
        """
        if target not in ("head", "heads") or self._graph or self._script:
            return None  # a pinned target, or the graph is at hand anyway
        where = self._cache_place()
        if where is None:
            return None
        recalled = _headcache.recall(*where)
        if recalled is not None:
            heads, record = recalled
            self._record = (where[0], record)
            place = (record["locations"], record["sourceless"], record["recursive"])
            self._prints_place, self._prints_heads = place, heads
            self._prints_files = record["files"]
            return heads
        if self._settings is None:
            return None
        plain = _plainheads.read(self._settings)
        if plain is None:
            return None
        self._prints = plain.fingerprints
        self._prints_place = ([str(f) for f in plain.folders], False, plain.recursive)
        self._prints_files = plain.files
        self._remember(plain.heads)
        return plain.heads

    def _remember(self, heads: tuple[str, ...]) -> None:
        where, place = self._cache_place(), self._prints_place
        if where is None or place is None:
            return
        locations, sourceless, recursive = place
        self._prints_heads = heads
        revisions = None if self._prints is None else _fingerprints.to_record(self._prints)
        record = _headcache.remember(
            *where,
            heads,
            locations=locations,
            sourceless=sourceless,
            recursive=recursive,
            revisions=revisions,
            files=self._prints_files,
        )
        self._record = None if record is None else (where[0], record)

    def fingerprints(self) -> dict[str, Fingerprint]:
        """Each revision file's fingerprint: remembered with the heads, read with
        the files' text, or (for other layouts) from the graph."""
        if self._prints is None and self._record is not None:
            self._prints = _fingerprints.from_record(_headcache.recall_prints(*self._record))
        if self._prints is None:
            self._prints = _fingerprints.of_graph(self.graph())
        return self._prints

    def keep_checksums(self) -> None:
        """Remember the checksums computed since the heads were (a reformatted
        file's, compared once): the next start need not parse it again."""
        if self._prints is not None and self._prints_place is not None:
            self._remember(self._prints_heads)

    def audited(self, key: str) -> bool:
        """Whether a ledger check of ``key`` (``_integrity.audit_key``) was found
        clean with these very files (remembered with the heads)."""
        return self._record is not None and _headcache.audited(self._record[1], key)

    def remember_audit(self, key: str) -> None:
        """Remember that a ledger check of ``key`` found nothing, for the next start."""
        if self._record is not None:
            where = self._record[0]
            self._record = (where, _headcache.remember_audit(where, self._record[1], key))

    def _cache_place(self) -> tuple[Path, str] | None:
        # Keyed on the config file's bytes; a Config object built in code, on
        # the options that say where the scripts are.
        if self._settings is None:
            return self._config_object_place()
        folder = self._settings.script_folder()
        key = _headcache.config_key(self._settings.path)
        if folder is None or key is None:
            return None
        return folder / "__pycache__" / _headcache.FILE_NAME, key

    def _config_object_place(self) -> tuple[Path, str] | None:
        from . import _alembic_load

        config = self.config
        options = {name: _alembic_load.option(config, name) for name in _SCRIPT_OPTIONS}
        location = options["script_location"]
        if not location or (not os.path.isabs(location) and ":" in location):
            return None  # none, or a package resource (pkg:dir)
        folder = Path(location).absolute()
        key = _headcache.options_key(options, config.config_file_name)
        return folder / "__pycache__" / _headcache.FILE_NAME, key

    def graph(self) -> ScriptDirectory:
        """The revision graph, for planning: read from the files' text where it can be.

        Imported (as Alembic does) when the files cannot be read plainly.
        """
        if self._script is not None:
            return self._script
        if self._graph is None:
            self._read_graph()
        if self._graph is None:
            self._graph = self.imported()
        return self._graph

    def _read_graph(self) -> None:
        # Read once per attempt; remembered for the next start when every
        # file stated its names plainly.
        if self._text_read:
            return
        self._text_read = True
        from . import _textgraph

        with ExitStack() as stack:
            # The hook runs only if a file must be imported after all.
            graph = _textgraph.load(self.config, lambda: self._enter_set_up(stack))
        if graph is None:
            return
        self._graph = graph.script
        if graph.plain and graph.heads and self._cache_place() is not None:
            from ._alembic_compat import version_locations

            locations = version_locations(graph.script)
            sourceless = bool(graph.script.sourceless)
            recursive = bool(graph.script.recursive_version_locations)
            # The key before the fingerprints' read: an edit meanwhile leaves
            # the record stale, never blessed (_headcache.remember).
            self._prints_files = _headcache.files_key(
                locations, sourceless=sourceless, recursive=recursive
            )
            self._prints = _fingerprints.of_graph(graph.script)
            self._prints_place = (locations, sourceless, recursive)
            self._remember(graph.heads)

    def imported(self) -> ScriptDirectory:
        """The scripts imported and checked, ready to run (once per attempt)."""
        if self._script is None:
            from . import _alembic_load

            # A run that planned without the graph (an empty database) still
            # leaves the heads remembered: the next start, at head, then needs
            # neither Alembic nor the files. Read as a cold start reads them
            # where the layout allows (a tenth of the text graph's cost, which
            # Alembic's import repeats anyway).
            if (
                self._graph is None
                and self._cache_place() is not None
                and self.remembered_heads("heads") is None
            ):
                self._read_graph()

            with self.set_up():
                self._script = _alembic_load.load_script(self.config)
        return self._script

    def upgrade(
        self,
        target: Destination,
        *,
        version_table: VersionTable,
        hooks: RunHooks,
        live: UpgradeTry | None = None,
    ) -> None:
        """Run env.py's upgrade to ``target`` in this (worker) thread, calling ``hooks``.

        ``live`` gives env.py's connection its lock timeout and learns its id.
        """
        from . import _alembic_run

        script = self.imported()
        with self.set_up():
            _alembic_run.run_env(
                self.config,
                script,
                target,
                url=self.url,
                version_table=version_table,
                hooks=hooks,
                live=live,
            )

    def drift(self, version_table: VersionTable, ours: tuple[str, ...]) -> list[str]:
        """env.py's ``target_metadata`` against the database, a line per difference
        (in this thread; nothing written). ``ours``: our tables, left out."""
        from . import _alembic_drift

        script = self.imported()
        with self.set_up():
            return _alembic_drift.compare_env(
                self.config, script, url=self.url, version_table=version_table, ours=ours
            )

    def stamp(self, revision: str, *, version_table: VersionTable, hooks: RunHooks) -> None:
        """Run env.py's stamp at ``revision`` in this (worker) thread, fenced as an upgrade."""
        from . import _alembic_run

        script = self.imported()
        with self.set_up():
            _alembic_run.run_env(
                self.config,
                script,
                revision,
                url=self.url,
                version_table=version_table,
                hooks=hooks,
                stamp=True,
            )

    @contextmanager
    def set_up(self) -> Iterator[None]:
        """Run ``before_scripts`` in this thread, inside what it returns."""
        with ExitStack() as stack:
            self._enter_set_up(stack)
            yield

    def _enter_set_up(self, stack: ExitStack) -> None:
        if self.before_scripts is None:
            return
        try:
            entered = self.before_scripts()
            if entered is not None:
                stack.enter_context(entered)
        except Exception as exc:
            raise ConfigurationError(
                f"before_scripts ({self.before_scripts!r}) failed: {type(exc).__name__}: "
                f"{exc}. It sets the application up for the migration scripts; fix it, "
                "or the set-up it needs."
            ) from exc
