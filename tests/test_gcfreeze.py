"""The heap is frozen while migrating (short GC pauses), and given back as it was."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, DatabaseUnavailableError, MigrationState, Timeouts
from tests.conftest import server_url
from tests.faults import Proxy
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


def test_the_heap_is_frozen_while_a_start_at_head_lists_the_files(
    ini: Path, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The plan's objects (a stat result per revision file, a ledger row per
    # revision) would otherwise set off full collections of the whole process
    # at every start: docs/performance.md, "The ledger at head".
    before = gc.get_freeze_count()
    anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    seen: list[int] = []
    listing = os.listdir

    def noting(path: Any) -> Any:
        seen.append(gc.get_freeze_count())
        return listing(path)

    monkeypatch.setattr(os, "listdir", noting)
    status = anyio.run(AutoMigrator(ini, url=sqlite_url).run)

    assert status.state is MigrationState.READY
    assert status.applied == ()
    assert seen
    assert min(seen) > max(before, 1000)  # the whole heap, while the files are listed
    assert gc.get_freeze_count() <= before


def test_a_plan_abandoned_on_a_silent_server_leaves_the_apps_own_freeze(ini: Path) -> None:
    # The start gives up at its deadline while the plan's connect is still
    # under way (left to the driver's timeout). The app then freezes its own
    # heap; the abandoned plan ending later must not unfreeze it.
    real = server_url("postgresql")
    with Proxy(real.host or "127.0.0.1", real.port or 0) as proxy:
        proxy.blackhole()
        url = real.set(host="127.0.0.1", port=proxy.port, query={"connect_timeout": "3"})
        migrator = AutoMigrator(ini, url=url, timeouts=Timeouts(connect=1))
        with pytest.raises(DatabaseUnavailableError):
            anyio.run(migrator.run)
        gc.freeze()  # the app's own, after the failed start
        try:
            for thread in threading.enumerate():
                if thread.name == "automigrator connect":
                    thread.join(timeout=30)  # the driver's timeout ends it
            assert gc.get_freeze_count() > 1000
        finally:
            gc.unfreeze()


def test_the_apps_hook_never_runs_with_the_heap_frozen(tmp_path: Path, sqlite_url: URL) -> None:
    # A revision whose id is computed must be imported to read the graph, so
    # the plan runs the app's before_scripts hook, which may wait (a secrets
    # store): a plan abandoned there must not hold the heap frozen meanwhile.
    ini = make_project(tmp_path / "p", CHAIN)
    versions = ini.parent / "migrations" / "versions"
    (versions / "r4.py").write_text(
        "revision = 'r' + '4'\ndown_revision = 'r3'\nbranch_labels = None\n"
        "depends_on = None\n\n\ndef upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    )
    before = gc.get_freeze_count()
    seen: list[int] = []

    def hook() -> None:
        seen.append(gc.get_freeze_count())

    plan = anyio.run(AutoMigrator(ini, url=sqlite_url, before_scripts=hook).plan)

    assert plan.pending == ("r1", "r2", "r3", "r4")
    assert seen
    assert max(seen) <= before
