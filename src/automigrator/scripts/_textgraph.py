"""The revision graph read from the files' text, without importing them.

Alembic imports every revision file to learn four names: ``revision``,
``down_revision``, ``branch_labels`` and ``depends_on``. Real revision files
import the application's models and libraries, so that costs seconds on real
histories, on every start, while the answer is almost always "at head".

Here Alembic still does everything (finding the files, the version locations,
``sourceless``, the graph and its heads) except the import: while
:func:`load` builds the graph, Alembic's ``load_python_file`` is answered, for our thread
only, by a module object holding the names read from the file's text.
Where the text does not state them plainly (a computed value, two
assignments, an assignment in a block), the file is imported as usual. A
property test holds the result equal to Alembic's own heads.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory

from ._alembic_compat import Loader, loading_modules_with, version_locations
from ._revisiontext import as_tuple, cycle, read_file

_local = threading.local()
# The loader in place when our patch went in: the answer for every file we
# decline, and for every other thread while the patch is in.
_previous: Loader | None = None


@dataclass(frozen=True)
class Graph:
    """A script directory whose revision graph was read, not imported."""

    script: ScriptDirectory
    plain: bool
    """Every file stated its names plainly (none was imported): safe to remember."""

    @property
    def heads(self) -> tuple[str, ...]:
        """The scripts' heads, sorted."""
        return tuple(sorted(self.script.get_heads()))


def load(cfg: Config, before_import: Callable[[], None] | None = None) -> Graph | None:
    """The revision graph, read without importing the files; None if Alembic fails.

    Good for planning (heads, pending revisions, ancestry, post-deploy), never
    for running: its modules hold only the names ``_revisiontext`` reads. On
    failure (a broken graph, a missing folder) the caller imports the scripts,
    and reports the problem.
    ``before_import`` is called once, before the first file that has to be
    imported after all (the application's set-up hook).
    """
    try:
        script = ScriptDirectory.from_config(cfg)
        if not all(Path(location).is_dir() for location in version_locations(script)):
            return None  # Alembic would see "no revisions": let the full load refuse
        with _reading_statically(before_import):
            script.get_heads()  # builds and memoizes the whole revision map
            plain = _local.imported == 0
    except Exception:
        return None
    return Graph(script, plain)


@contextmanager
def _reading_statically(before_import: Callable[[], None] | None) -> Iterator[None]:
    # The patch is process-wide, but it answers only the thread that set
    # _local.active; every other caller gets the loader that was in place.
    global _previous
    with loading_modules_with(_load_python_file) as _previous:
        _local.active, _local.imported, _local.before_import = True, 0, before_import
        try:
            yield
        finally:
            # Nothing of this run stays behind in the thread-local.
            _local.active, _local.before_import = False, None


def _load_python_file(dir_: Any, filename: Any) -> types.ModuleType:
    assert _previous is not None  # only installed by _reading_statically
    if not getattr(_local, "active", False):
        return _previous(dir_, filename)
    path = Path(dir_) / Path(filename).name
    if path.suffix == ".py":
        module = read_module(path)
        if module is not None:
            return module
    if _local.imported == 0 and _local.before_import is not None:
        _local.before_import()
    _local.imported += 1
    return _previous(dir_, filename)


def read_module(path: Path) -> types.ModuleType | None:
    """A module holding the names as the file states them, or None if unsure."""
    values = read_file(path)
    if values is None:
        return None
    module = types.ModuleType(path.stem)
    module.__file__ = str(path)
    for name, value in values.items():
        setattr(module, name, value)
    # A plan builds Alembic's steps, which look these up but never call them.
    module.__dict__.update(upgrade=_not_imported, downgrade=_not_imported)
    return module


def _not_imported(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError(
        "automigrator bug: a revision read for planning was run; revisions are imported to run"
    )


def graph_problem(folders: list[str], recursive: bool) -> str | None:
    """What is wrong with the revision graph, naming files, from their text; None if unsure.

    Alembic's own errors name a revision at best ("KeyError: 'deadbeef'")
    and take a revision id used twice for a warning, silently keeping one of
    the files. Read here: an id used twice, a ``down_revision`` or
    ``depends_on`` naming no revision, a cycle. Files whose names are not
    plain text are left out.
    """
    files: dict[str, list[Path]] = {}
    labels: set[str] = set()
    parents: dict[str, tuple[Path, list[tuple[str, str]]]] = {}
    for folder in folders:
        pattern = "**/*.py" if recursive else "*.py"
        for path in sorted(Path(folder).glob(pattern)):
            names = read_module(path)
            if names is None:
                continue
            revision = names.revision
            files.setdefault(revision, []).append(path)
            labels.update(str(label) for label in as_tuple(getattr(names, "branch_labels", None)))
            edges = [
                (field, str(parent))
                for field in ("down_revision", "depends_on")
                for parent in as_tuple(getattr(names, field, None))
            ]
            parents[revision] = (path, edges)
    for revision, paths in files.items():
        if len(paths) > 1:
            listed = ", ".join(str(p) for p in paths)
            return (
                f"The revision id {revision!r} is used by {len(paths)} files: {listed}. "
                "Alembic would keep one of them and skip the other without an error. Give one "
                "a new id (its 'revision' and the 'Revision ID' line of its docstring), and "
                "point the down_revision that should follow it at the new id."
            )
    for revision, (path, edges) in parents.items():
        for field, parent in edges:
            # depends_on may name a branch label instead of a revision.
            if parent not in files and not (field == "depends_on" and parent in labels):
                return (
                    f"{path}: {field} = {parent!r}, but no revision file has that id "
                    f"(revision {revision!r} cannot be placed in the graph). Fix {field} in "
                    "that file: the revision it follows may have been renamed or deleted."
                )
    found = cycle({rev: [p for _, p in edges] for rev, (_, edges) in parents.items()})
    if found:
        shown = " -> ".join(f"{rev} ({parents[rev][0].name})" for rev in found)
        return (
            f"The revisions form a cycle: {shown}. Each names the next as its "
            "down_revision or depends_on; fix one of them."
        )
    return None
