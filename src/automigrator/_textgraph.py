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
# A line where one of the names may be bound other than by "name = value"
# (import ... as, def, class, for, del, global, a walrus): rare, and then
# the parser, slower but exact, reads the file.
_OTHER_BINDING = re.compile(
    r"^[^\n#]*\b(?:as|def|class|for|del|global|nonlocal)\b[^\n#]*"
    r"\b(?:revision|down_revision|branch_labels|depends_on)\b|:=",
    re.MULTILINE,
)

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
    """The literal values of the four names, or None if the text is not plain.

    A quick scan of the lines first; where it is unsure (a name assigned
    twice, a docstring showing an assignment), Python's own parser decides.
    """
    found = _scan(text)
    if found is None:
        found = _parse(text)
    if found is None or any(name not in found for name in _REQUIRED):
        return None  # e.g. a legacy file named after its revision
    if not isinstance(found["revision"], str):
        return None
    return found


def _scan(text: str) -> dict[str, Any] | None:
    if _OTHER_BINDING.search(text):
        return None  # a name perhaps bound another way: let the parser decide
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
    return found


def _parse(text: str) -> dict[str, Any] | None:
    # The module's own statements, as Python runs them: each name's last
    # top-level assignment of a literal wins (an annotated one, then a plain
    # one, as an older edit of a newer template leaves). Any other binding of
    # a name (in a block, computed, augmented, imported as) means its value
    # is only known by running the file.
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    found: dict[str, Any] = {}
    plain: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id in _NAMES):
            continue
        try:
            found[target.id] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        plain.add(id(target))
    for each in ast.walk(tree):
        bound = _binds(each)
        if bound is not None and bound in _NAMES and id(each) not in plain:
            return None
    return found


_NAMES = frozenset(("revision", "down_revision", "branch_labels", "depends_on"))


def _binds(node: ast.AST) -> str | None:
    """The name a node binds, if it binds one we read."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
        return node.id
    if isinstance(node, ast.alias):
        return node.asname or node.name.partition(".")[0]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return next((n for n in node.names if n in _NAMES), None)
    return None


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
            labels.update(str(label) for label in _as_tuple(getattr(names, "branch_labels", None)))
            edges = [
                (field, str(parent))
                for field in ("down_revision", "depends_on")
                for parent in _as_tuple(getattr(names, field, None))
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
    cycle = _cycle({rev: [p for _, p in edges] for rev, (_, edges) in parents.items()})
    if cycle:
        shown = " -> ".join(f"{rev} ({parents[rev][0].name})" for rev in cycle)
        return (
            f"The revisions form a cycle: {shown}. Each names the next as its "
            "down_revision or depends_on; fix one of them."
        )
    return None


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _cycle(edges: dict[str, list[str]]) -> list[str] | None:
    # Depth-first, without recursion: histories run to thousands of revisions.
    done: set[str] = set()
    for start in edges:
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(edges[start])]
        while stack:
            parent = next(stack[-1], None)
            if parent is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                stack.pop()
                continue
            if parent in on_path:
                return [*path[path.index(parent) :], parent]
            if parent in edges and parent not in done:
                path.append(parent)
                on_path.add(parent)
                stack.append(iter(edges[parent]))
    return None
