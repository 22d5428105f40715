"""The heap is frozen while migrating (short GC pauses), and given back as it was."""

from __future__ import annotations

import gc
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, MigrationState
from tests.project import CHAIN, Rev, make_project

# A revision that notes how many objects are frozen while it runs.
COUNTS_FROZEN = Rev(
    "r4",
    "r3",
    "note the frozen objects",
    """
    import gc
    import os
    with open(os.environ["AM_FROZEN_DURING"], "w") as out:
        out.write(str(gc.get_freeze_count()))
    """,
)


def test_the_heap_is_frozen_while_migrating_and_unfrozen_after(
    tmp_path: Path, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python 3.12 starts with some of its own objects frozen: the baseline.
    before = gc.get_freeze_count()
    noted = tmp_path / "frozen"
    monkeypatch.setenv("AM_FROZEN_DURING", str(noted))
    ini = make_project(tmp_path / "p", (*CHAIN, COUNTS_FROZEN))

    status = anyio.run(AutoMigrator(ini, url=sqlite_url).run)

    assert status.state is MigrationState.READY
    assert len(status.applied) == 4
    assert int(noted.read_text()) > max(before, 1000)  # the whole heap, not a few objects
    assert gc.get_freeze_count() <= before


def test_an_applications_own_freeze_is_left_alone(ini: Path, sqlite_url: URL) -> None:
    # A gunicorn --preload app freezes its heap before forking: not ours to undo.
    gc.freeze()
    try:
        status = anyio.run(AutoMigrator(ini, url=sqlite_url).run)
        assert status.state is MigrationState.READY
        # Still frozen (objects that died meanwhile leave the count, hence > 0).
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_heap_is_frozen_while_a_start_at_head_reads_the_plan(
    ini: Path, sqlite_url: URL
) -> None:
    # The plan's objects (a stat result per revision file, a ledger row per
    # revision) would otherwise set off full collections of the whole process
    # at every start: docs/performance.md, "The ledger at head".
    before = gc.get_freeze_count()
    anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    seen: list[int] = []

    def note(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "automigrator_history" in statement:
            seen.append(gc.get_freeze_count())

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", note)
    try:
        status = anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", note)

    assert status.state is MigrationState.READY
    assert status.applied == ()
    assert seen
    assert min(seen) > max(before, 1000)  # the whole heap, during the ledger's read
    assert gc.get_freeze_count() <= before
