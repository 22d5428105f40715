"""The attempts of a run: migrate, and after a failure ask the failure policy what next."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

import anyio
from sqlalchemy.engine import URL, Engine

from .._plan import revisions_soon
from .._status import MigrationState, MigrationStatus
from ..database._connections import VersionTable, as_error, display
from ..errors import AutomigratorError, DatabaseUnavailableError, ShutdownRequestedError
from ..policies import Decision, Failure, FailurePolicy, PolicyMigrator
from ._reporting import Reporter

logger = logging.getLogger("automigrator")

# At the end of a failed run we read where the database is, if it answers soon.
_END_READ_TIMEOUT = 5.0


class Attempts:
    """Runs attempts until one succeeds or the policy decides to fail or degrade."""

    def __init__(
        self, reporter: Reporter, engine: Engine, version_table: VersionTable, url: URL
    ) -> None:
        self.reporter = reporter
        self.engine = engine
        self.version_table = version_table
        self.url = url

    async def run(
        self,
        migrator: PolicyMigrator,
        policy: FailurePolicy,
        attempt: Callable[[], Awaitable[None]],
        *,
        before_each: Callable[[], None],
        started: float,
    ) -> MigrationStatus:
        """``attempt()`` until it succeeds, ``before_each()`` before each; the policy decides.

        Raises the error when the policy decides to fail.
        """
        history: list[Decision] = []
        number = 0
        logger.info("Checking the schema of %s", display(self.url))
        while True:
            number += 1
            self.reporter.attempt(number)
            before_each()
            try:
                await attempt()
            except ShutdownRequestedError:
                raise
            except Exception as exc:
                error = as_error(exc, self.url)
            else:
                self.reporter.finish(MigrationState.READY, started)
                return self.reporter.status
            self.reporter.attempt_failed(error)
            failure = Failure(
                error=error, attempt=number, history=tuple(history), migrator=migrator
            )
            try:
                decision = await policy.handle(failure)
            except BaseException:
                await self._end(MigrationState.FAILED, started, error)
                raise
            # A chain names the member that decided; a lone policy is named here.
            decision = replace(decision, policy=decision.policy or repr(policy))
            history.append(decision)
            self.reporter.decided(decision, error)
            if decision.action == "retry":
                self.reporter.retrying()
                await anyio.sleep(decision.delay)
                continue
            degraded = decision.action == "degrade"
            await self._end(
                MigrationState.DEGRADED if degraded else MigrationState.FAILED, started, error
            )
            if degraded:
                return self.reporter.status
            raise error

    async def _end(self, state: MigrationState, started: float, error: AutomigratorError) -> None:
        # After a failure, show where the database really is (transactional
        # DDL may have rolled everything back), if it answers soon. Not when
        # it did not answer at all: the start ends at its connect deadline.
        if isinstance(error, DatabaseUnavailableError):
            self.reporter.finish(state, started)
            return
        after = await revisions_soon(self.engine, self.version_table, _END_READ_TIMEOUT)
        if after is not None:
            self.reporter.revisions_read(after)
        self.reporter.finish(state, started)
