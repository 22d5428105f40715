"""Keep the application's logging intact across a run of env.py.

Every env.py that Alembic generates calls ``logging.config.fileConfig(...)``
whose default ``disable_existing_loggers=True`` disables every logger that
existed before (uvicorn's, the application's, and ours) and replaces the root
handlers. We put back what was there as soon as env.py calls
``context.configure()`` (so the revisions' own log lines, and ours, flow through
the application's logging) and again when the run ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType


@dataclass
class _LoggerState:
    logger: logging.Logger
    disabled: bool
    level: int
    propagate: bool
    handlers: list[logging.Handler]


class LoggingGuard:
    """Snapshot every existing logger on entry; ``restore()`` puts them back."""

    def __enter__(self) -> LoggingGuard:
        loggers = [logging.getLogger()]
        loggers += [
            logger
            for logger in list(logging.Logger.manager.loggerDict.values())
            if isinstance(logger, logging.Logger)
        ]
        self._saved = [
            _LoggerState(lg, lg.disabled, lg.level, lg.propagate, list(lg.handlers))
            for lg in loggers
        ]
        return self

    def restore(self) -> None:
        for state in self._saved:
            state.logger.disabled = state.disabled
            state.logger.setLevel(state.level)
            state.logger.propagate = state.propagate
            state.logger.handlers[:] = state.handlers

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()
