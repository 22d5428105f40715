"""Events for metrics and alerts: what a run did, in order."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, Event, LogAndContinue, MigrationError, Timeouts
from automigrator.locking import lock_for
from tests.project import BROKEN, EMAIL, USERS, make_project


def recorded(migrator: AutoMigrator) -> list[Event]:
    events: list[Event] = []
    migrator.subscribe(events.append)
    return events


def test_a_migration_then_a_start_at_head(ini: Path, db_url: URL) -> None:
    migrator = AutoMigrator(ini, url=db_url)
    events = recorded(migrator)

    anyio.run(migrator.run)
    anyio.run(migrator.run)

    names = [e.name for e in events]
    assert names == [
        "start",
        "migrating",
        "revision_applied",
        "revision_applied",
        "revision_applied",
        "ready",
        "start",
        "ready",
    ]
    applied = [e.revision.revision for e in events if e.revision is not None]
    assert applied == ["r1", "r2", "r3"]
    assert events[5].status.ready


def test_waiting_and_a_decision(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(
        ini, url=sqlite_url, timeouts=Timeouts(lock=0.2), on_failure=LogAndContinue()
    )
    events = recorded(migrator)
    holder = lock_for(sqlite_url)
    assert holder.acquire(0)
    try:
        anyio.run(migrator.run)
    finally:
        holder.release()

    assert [e.name for e in events] == ["start", "waiting", "decision", "degraded"]
    decision = events[2].decision
    assert decision is not None
    assert decision.action == "degrade"
    assert events[1].status.waiting_for == "lock"


def test_a_failing_listener_never_fails_the_start(
    tmp_path: Path, sqlite_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    migrator = AutoMigrator(ini, url=sqlite_url)

    def broken(event: Event) -> None:
        raise RuntimeError("metrics backend down")

    unsubscribe = migrator.subscribe(broken)
    with caplog.at_level(logging.ERROR, logger="automigrator"):
        status = anyio.run(migrator.run)
    unsubscribe()

    assert status.ready
    assert "An event listener" in caplog.text


def test_failed_is_announced(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL, BROKEN))
    migrator = AutoMigrator(ini, url=sqlite_url, timeouts=Timeouts(lock=5))
    events = recorded(migrator)
    with pytest.raises(MigrationError, match="boom in r3"):
        anyio.run(migrator.run)
    assert events[-1].name == "failed"
    assert events[-2].name == "decision"
