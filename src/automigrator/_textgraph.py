"""The revision graph read from the files' text, without importing them.

Alembic imports every revision file to learn four names: ``revision``,
``down_revision``, ``branch_labels`` and ``depends_on``. Real revision files
import the application's models and libraries, so that costs seconds on real
histories, on every start, while the answer is almost always "at head".

Here Alembic still does everything (finding the files, the version locations,
``sourceless``, the graph and its heads) except the import: while
:func:`load` builds the graph, Alembic's ``load_python_file`` is answered, for our thread
only, by a module object holding the four names read from the file's text.
Where the text does not state them plainly (a computed value, two
assignments, an assignment in a block), the file is imported as usual. A
property test holds the result equal to Alembic's own heads.
"""

from __future__ import annotations

import ast
import re
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

_REQUIRED = ("revision", "down_revision")
# Any line that assigns one of the names, at any indentation, with or without
# an annotation or an augmented operator: we accept exactly one per name, at
# the top level and plain.
_ASSIGN = re.compile(
    r"^(?P<indent>[ \t]*)(?P<name>revision|down_revision|branch_labels|depends_on)"
    r"[ \t]*(?::[^=\n]*)?(?P<op>[-+*/%&|^@]|//|<<|>>|\*\*)?=(?!=)",
    re.MULTILINE,
)
_MAX_VALUE_LINES = 30

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

    Good for planning (heads, pending revisions, ancestry), never for running:
    its modules hold only the four names. On failure (a broken graph, a
    missing folder) the caller imports the scripts, and reports the problem.
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
    """A module holding the four names as the file states them, or None if unsure."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    values = read_names(text)
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


def read_names(text: str) -> dict[str, Any] | None:
    """The literal values of the four names, or None if the text is not plain."""
    found: dict[str, Any] = {}
    for match in _ASSIGN.finditer(text):
        name = match["name"]
        if match["indent"] or match["op"] or name in found:
            return None  # in a block, augmented, or assigned twice
        if _inside_triple_quotes(text, match.start()):
            return None  # a docstring that shows an assignment: let Python decide
        value = _literal_after(text, match.end())
        if value is _NOT_LITERAL:
            return None
        found[name] = value
    if any(name not in found for name in _REQUIRED):
        return None  # e.g. a legacy file named after its revision
    if not isinstance(found["revision"], str):
        return None
    return found


_NOT_LITERAL = object()


def _literal_after(text: str, start: int) -> Any:
    # The value may run over several lines (a tuple of parents): take lines
    # until what we have is a complete literal expression.
    lines = text[start:].split("\n", _MAX_VALUE_LINES)
    for end in range(1, min(len(lines), _MAX_VALUE_LINES) + 1):
        source = "\n".join(lines[:end]).strip()
        if not source:
            continue
        try:
            return ast.literal_eval(source)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return _NOT_LITERAL


def _inside_triple_quotes(text: str, offset: int) -> bool:
    before = text[:offset]
    return before.count('"""') % 2 == 1 or before.count("'''") % 2 == 1
