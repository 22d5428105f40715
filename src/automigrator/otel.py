"""OpenTelemetry: a span per run and per revision (``pip install automigrator[otel]``).

``instrument(migrator)`` subscribes a listener that opens an
``automigrator.run`` span when a run starts and ends it with the outcome, and
records one ``automigrator.revision`` child span per applied revision (its
real start and end times). Only ``opentelemetry-api`` is needed; without a
configured SDK the spans go nowhere, as OpenTelemetry intends.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from ._migrator import AutoMigrator
from .database._connections import display
from .events import Event

__all__ = ["instrument"]


def instrument(
    migrator: AutoMigrator, *, tracer_provider: trace.TracerProvider | None = None
) -> None:
    """Emit spans for ``migrator``'s runs and revisions."""
    tracer = trace.get_tracer("automigrator", tracer_provider=tracer_provider)
    run: dict[str, Any] = {}

    def listener(event: Event) -> None:
        if event.name == "start" and "span" not in run:
            run["span"] = tracer.start_span(
                "automigrator.run",
                attributes={
                    "db.system": migrator.url.get_backend_name(),
                    "automigrator.database": display(migrator.url),
                    "automigrator.target": migrator.target,
                },
            )
        elif event.name == "revision_applied" and "span" in run and event.revision:
            end = time.time_ns()
            start = end - int(event.revision.duration * 1e9)
            span = tracer.start_span(
                "automigrator.revision",
                context=trace.set_span_in_context(run["span"]),
                start_time=start,
                attributes={
                    "automigrator.revision": event.revision.revision,
                    "automigrator.message": event.revision.message,
                },
            )
            span.end(end_time=end)
        elif event.name in ("ready", "degraded", "failed", "disabled") and "span" in run:
            span = run.pop("span")
            status = event.status
            span.set_attribute("automigrator.state", status.state.value)
            span.set_attribute("automigrator.applied", len(status.applied))
            span.set_attribute("automigrator.attempts", status.attempts)
            if event.name == "failed":
                span.set_status(Status(StatusCode.ERROR, status.error or "failed"))
            span.end()

    migrator.subscribe(listener)
