"""What to do when a migration run fails: failure policies.

A policy is any object with ``async def handle(self, failure) -> Decision``
(the :class:`FailurePolicy` Protocol). The migrator calls it with a
:class:`Failure` (the error, its kind, the attempt number, the decisions taken
so far) and acts on the :class:`Decision` it returns:

- ``Decision.fail(reason)``: re-raise the error; start-up fails.
- ``Decision.degrade(reason)``: start the application in the *degraded* state.
- ``Decision.retry(reason, delay=...)``: run the migrate step again.
- ``Decision.pass_on(reason)``: this policy has no opinion; in a chain the next
  policy decides, and at the end of a chain (or alone) it means fail.

Policies keep their options in ``__init__`` and no state of their own: what
they need to count (earlier attempts) is in the ``Failure``. One instance is
therefore safe to share between runs and replicas. The migrator logs every
decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from .errors import AutomigratorError, ErrorKind

if TYPE_CHECKING:
    from ._migrator import AutoMigrator

__all__ = ["Decision", "Fail", "Failure", "FailurePolicy", "LogAndContinue"]

Action = Literal["fail", "degrade", "retry", "pass"]


@dataclass(frozen=True)
class Decision:
    """A policy's answer to a failure.

    .. versionadded:: 0.1
    """

    action: Action
    reason: str
    delay: float = 0.0
    """Seconds to wait before a retry."""
    policy: str = ""
    """The ``repr`` of the policy that decided (filled in by the migrator)."""

    @classmethod
    def fail(cls, reason: str) -> Decision:
        """Re-raise: start-up fails."""
        return cls("fail", reason)

    @classmethod
    def degrade(cls, reason: str) -> Decision:
        """Start anyway, in the degraded state."""
        return cls("degrade", reason)

    @classmethod
    def retry(cls, reason: str, *, delay: float = 0.0) -> Decision:
        """Run the migrate step again after ``delay`` seconds."""
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        return cls("retry", reason, delay)

    @classmethod
    def pass_on(cls, reason: str = "not handled") -> Decision:
        """No opinion: the next policy in a chain decides (alone: fail)."""
        return cls("pass", reason)


@dataclass(frozen=True)
class Failure:
    """What a policy is told about a failed run.

    .. versionadded:: 0.1
    """

    error: AutomigratorError
    attempt: int
    """1 for the first run of the migrate step, 2 after one retry, and so on."""
    history: tuple[Decision, ...]
    """Decisions already taken in this run, oldest first."""
    migrator: AutoMigrator

    @property
    def kind(self) -> ErrorKind:
        """The error's class: configuration, transient, schema_ahead, ..., migration."""
        return self.error.kind


@runtime_checkable
class FailurePolicy(Protocol):
    """Decides what happens after a failed migration run.

    .. versionadded:: 0.1
    """

    async def handle(self, failure: Failure) -> Decision:
        """Return what to do about ``failure``; may act first (alert, back up)."""
        ...


class Fail:
    """Re-raise the error so that start-up fails (the default).

    .. versionadded:: 0.1
    """

    async def handle(self, failure: Failure) -> Decision:
        return Decision.fail(f"{failure.kind} failure: start-up fails")

    def __repr__(self) -> str:
        return "Fail()"


class LogAndContinue:
    """Log at CRITICAL and start the application in the degraded state.

    The status says ``degraded`` (and the health endpoint can report it), so
    the application knows its schema may be stale.

    Args:
        kinds: the error kinds to continue on; others fail. Default: all.

    .. versionadded:: 0.1
    """

    def __init__(self, *, kinds: tuple[ErrorKind, ...] | None = None) -> None:
        self.kinds = kinds

    async def handle(self, failure: Failure) -> Decision:
        if self.kinds is not None and failure.kind not in self.kinds:
            return Decision.fail(f"{failure.kind} failure is not in {self.kinds!r}")
        return Decision.degrade(f"{failure.kind} failure: continuing without an up-to-date schema")

    def __repr__(self) -> str:
        if self.kinds is None:
            return "LogAndContinue()"
        return f"LogAndContinue(kinds={self.kinds!r})"
