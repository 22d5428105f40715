"""The heap is frozen while migrating (short GC pauses), and given back as it was."""

from __future__ import annotations

import gc
from pathlib import Path

import anyio
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, MigrationState


def test_the_heap_is_unfrozen_after_a_migration(ini: Path, sqlite_url: URL) -> None:
    assert gc.get_freeze_count() == 0
    status = anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    assert status.state is MigrationState.READY
    assert len(status.applied) == 3
    assert gc.get_freeze_count() == 0


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
