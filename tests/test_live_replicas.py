"""Replicas waiting for the lock never hold up a concurrent index build.

``CREATE INDEX CONCURRENTLY`` waits, at each of its phases, for every
transaction older than itself. A replica blocked in ``pg_advisory_lock`` is
such a transaction, so waiters that block in the server slowed a build with
five indexes thirty-fold (and in other tools deadlocked with it). Waiters
must poll instead, holding no transaction while they wait.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.engine import URL

from tests.conftest import revisions, rows
from tests.faults import wait_for
from tests.helpers import line_with
from tests.processes import start_replicas
from tests.project import Rev, make_project, waiting

ITEMS = Rev(
    "r1",
    None,
    "items",
    """
    op.create_table(
        "items", *[sa.Column(f"c{i}", sa.Integer) for i in range(5)]
    )
    op.execute("INSERT INTO items SELECT g, g, g, g, g FROM generate_series(1, 2000) g")
    """,
)
INDEXES = Rev(
    "r3",
    "r2",
    "five concurrent indexes",
    """
    with op.get_context().autocommit_block():
        for i in range(5):
            op.create_index(f"ix_items_c{i}", "items", [f"c{i}"], postgresql_concurrently=True)
    """,
)
WAITERS = 3


def blocked_in_the_server(url: URL) -> list[tuple[object, ...]]:
    """Sessions of this database that wait inside the server for an advisory lock."""
    return rows(
        url,
        "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
    )


def test_waiting_replicas_never_hold_up_a_concurrent_index_build(
    tmp_path: Path, pg_url: URL, signals: Path
) -> None:
    ini = make_project(tmp_path / "proj", (ITEMS, waiting("r2", "r1"), INDEXES))
    procs = start_replicas(ini, pg_url, 1 + WAITERS)
    try:
        wait_for(signals / "r2.running")  # one holds the lock, paused before the build
        said = [line_with(p, "Waiting for the migration lock", "Migrating from") for p in procs]
        assert sum("Waiting for the migration lock" in line for line in said) == WAITERS
        # While they wait, none sits in the server holding a transaction open.
        seen = [blocked_in_the_server(pg_url) for _ in range(50)]
        (signals / "r2.go").touch()
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:
        (signals / "r2.go").touch()
        for proc in procs:
            proc.kill()
            proc.wait()

    assert [s for s in seen if s] == []
    statuses = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert [s["state"] for s in statuses] == ["ready"] * (1 + WAITERS)
    assert sorted(len(s["applied"]) for s in statuses) == [0] * WAITERS + [3]
    assert revisions(pg_url) == {"r3"}
    valid = rows(
        pg_url,
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'items'::regclass ORDER BY c.relname",
    )
    assert valid == [(f"ix_items_c{i}", True) for i in range(5)]
