"""OpenTelemetry: a span per run and one per applied revision."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, MigrationError
from automigrator.otel import instrument
from tests.project import BROKEN, EMAIL, USERS, make_project


def traced(migrator: AutoMigrator) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument(migrator, tracer_provider=provider)
    return exporter


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    return dict(span.attributes or {})


def test_a_run_span_with_a_child_per_revision(ini: Path, pg_url: URL) -> None:
    # A password in the URL (the local server trusts, so it is not checked).
    migrator = AutoMigrator(ini, url=pg_url.set(password="s3cr3t-pw"))
    exporter = traced(migrator)

    anyio.run(migrator.run)

    spans = exporter.get_finished_spans()
    runs = [s for s in spans if s.name == "automigrator.run"]
    revisions = [s for s in spans if s.name == "automigrator.revision"]
    assert len(runs) == 1
    assert [attrs(s)["automigrator.revision"] for s in revisions] == ["r1", "r2", "r3"]
    assert all(s.parent is not None for s in revisions)
    assert {s.parent.span_id for s in revisions if s.parent} == {runs[0].context.span_id}
    assert attrs(runs[0])["automigrator.state"] == "ready"
    assert attrs(runs[0])["automigrator.applied"] == 3
    assert attrs(runs[0])["db.system"] == "postgresql"
    assert "s3cr3t-pw" not in str([attrs(s) for s in spans])


def test_a_failed_run_is_an_error_span(tmp_path: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(make_project(tmp_path / "p", (USERS, EMAIL, BROKEN)), url=sqlite_url)
    exporter = traced(migrator)

    with pytest.raises(MigrationError):
        anyio.run(migrator.run)

    [run] = [s for s in exporter.get_finished_spans() if s.name == "automigrator.run"]
    assert run.status.status_code is StatusCode.ERROR
    assert attrs(run)["automigrator.state"] == "failed"
