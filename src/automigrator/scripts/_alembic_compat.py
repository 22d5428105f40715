"""Every use of Alembic's private API, in one place, with the versions it was checked on.

Checked against Alembic 1.13.2 (the oldest we admit) and 1.20.1. Each of
these has been stable since Alembic 1.x's ``ScriptDirectory``; a change
shows up in the matrix (``nox -s matrix``) as a failing test of the caller.
"""

from __future__ import annotations

import os
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import alembic.util
from alembic.script import ScriptDirectory

Loader = Callable[[Any, Any], types.ModuleType]
Destination = str | tuple[str, ...]
"""Where an upgrade goes, as Alembic takes it: a revision, label or ``head``, or
several revisions (one per branch)."""

_patch_lock = threading.Lock()
_invoke_lock = threading.Lock()


def version_locations(script: ScriptDirectory) -> list[str]:
    """The version folders as Alembic resolved them (``ScriptDirectory._version_locations``).

    Public Alembic has only the config's raw ``version_locations`` string;
    we need the resolved folders (relative to ``script_location``, with the
    default ``versions`` folder when none is set).
    """
    return [str(location) for location in script._version_locations]


def upgrade_steps(script: ScriptDirectory, target: Destination, current: Any) -> Iterable[Any]:
    """Alembic's own upgrade steps from ``current`` to ``target`` (``_upgrade_revs``).

    The same list ``command.upgrade`` hands to env.py's run; public Alembic
    offers it only from inside a running env.py.
    """
    # Typed str, but resolved by iterate_revisions, which takes a tuple too.
    return script._upgrade_revs(target, current)  # type: ignore[arg-type]


def stamp_steps(
    script: ScriptDirectory, revision: Destination, current: Sequence[str]
) -> Iterable[Any]:
    """Alembic's own stamp steps (``_stamp_revs``), as ``command.stamp`` uses them."""
    return script._stamp_revs(revision, current)  # type: ignore[arg-type]


@contextmanager
def loading_modules_with(loader: Loader) -> Iterator[Loader]:
    """Answer Alembic's ``util.load_python_file`` with ``loader`` for the block.

    ``ScriptDirectory`` imports each revision file through that module
    attribute (``alembic/script/base.py``). Yields the loader that was in
    place, for the files ``loader`` declines; that one (not the one seen at
    import time) is put back after, so a patch someone else made is kept.
    The patch is process-wide: ``loader`` must answer only its own thread.
    """
    with _patch_lock:
        previous: Loader = alembic.util.load_python_file
        alembic.util.load_python_file = loader  # type: ignore[assignment]
        try:
            yield previous
        finally:
            alembic.util.load_python_file = previous  # type: ignore[assignment]


class Recorded:
    """The operations invoked in one thread while :func:`recording_operations` is on."""

    def __init__(self) -> None:
        self.into: list[Any] | None = None
        """Where the next operations go; None: nowhere."""
        self.path: str | None = None
        """The revision file running: :func:`line_of` an operation is the line of
        it that invoked the operation."""
        self.then: Callable[[Any], None] | None = None
        """Told of each operation recorded, before it runs."""


# Beside the operations, not on them: an operation's ``info`` is sometimes
# the table's own (CreateTableOp hands it to the Table), or None.
_lines: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def line_of(operation: Any) -> int | None:
    """The line of its revision file that invoked ``operation`` (recorded), if known."""
    return _lines.get(operation)


def _line_in(path: str) -> int | None:
    """The line of ``path`` on the calling stack (the revision's ``op.*`` call)."""
    wanted = os.path.abspath(path)
    frame = sys._getframe(2)
    while frame is not None:
        if os.path.abspath(frame.f_code.co_filename) == wanted:
            return frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None


@contextmanager
def recording_operations() -> Iterator[Recorded]:
    """List each operation a revision invokes (``op.add_column`` is an ``AddColumnOp``).

    Every ``op.*`` call, and each one inside ``op.batch_alter_table``, goes
    through ``AbstractOperations.invoke`` (public since Alembic 1.11, on
    ``Operations`` before; both checked); we wrap it for the block. The patch
    is process-wide, so it answers only the calling thread. A batch
    operation on SQLite is recorded and not rendered (see below).
    """
    from alembic.operations import BatchOperations, Operations

    owner = next(c for c in Operations.__mro__ if "invoke" in vars(c))
    recorded, thread = Recorded(), threading.get_ident()
    original = vars(owner)["invoke"]

    def invoke(self: Any, operation: Any) -> Any:
        if recorded.into is not None and threading.get_ident() == thread:
            _typed_literals(operation)
            recorded.into.append(operation)
            if recorded.then is not None:
                recorded.then(operation)
            line = _line_in(recorded.path) if recorded.path is not None else None
            if line is not None:
                _lines[operation] = line
            if (
                isinstance(self, BatchOperations)
                and self.migration_context.dialect.name == "sqlite"
            ):
                # SQLite rebuilds the table for most batch operations, which
                # offline mode cannot do (no table to reflect; the block would
                # raise at its end): recorded, not rendered, so the operations
                # after the block are still seen.
                return None
        return original(self, operation)

    with _invoke_lock:
        owner.invoke = invoke  # type: ignore[attr-defined]
        try:
            yield recorded
        finally:
            owner.invoke = original  # type: ignore[attr-defined]


def _typed_literals(operation: Any) -> None:
    """An ``op.execute(statement)`` whose values have no SQL type (``sa.table("t",
    sa.column("n"))``, updated with ``n=5``) gets the type of each Python value:
    offline, Alembic renders values as literals, and a value of no type has no
    literal form. Online, the driver takes it as it is; the SQL is the same."""
    from alembic.operations import ops
    from sqlalchemy import literal
    from sqlalchemy.sql import visitors
    from sqlalchemy.sql.elements import BindParameter, ClauseElement
    from sqlalchemy.types import NullType

    if not isinstance(operation, ops.ExecuteSQLOp) or not isinstance(
        operation.sqltext, ClauseElement
    ):
        return

    def typed(element: Any, **kw: Any) -> Any:
        if (
            isinstance(element, BindParameter)
            and isinstance(element.type, NullType)
            and element.value is not None
        ):
            return literal(element.value)
        return None

    statement: Any = operation.sqltext
    operation.sqltext = visitors.replacement_traverse(statement, {}, typed)


def parents(script: ScriptDirectory, revision: str) -> tuple[str, ...]:
    """The revisions ``revision`` follows: its down revisions and its resolved
    ``depends_on`` (``Revision._all_down_revisions``); an upgrade applies them first."""
    found = script.revision_map.get_revision(revision)
    return tuple(found._all_down_revisions) if found is not None else ()
