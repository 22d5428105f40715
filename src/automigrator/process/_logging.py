"""Our logging beside the application's: kept intact across env.py, and visible under a server.

**Kept intact.** Every env.py that Alembic generates calls
``logging.config.fileConfig(...)`` whose default
``disable_existing_loggers=True`` disables every logger that existed before
(uvicorn's, the application's, and ours) and replaces the root handlers.
:class:`LoggingGuard` puts back what was there as soon as env.py calls
``context.configure()`` (so the revisions' own log lines, and ours, flow
through the application's logging) and again when the run ends.

**Visible under a server.** uvicorn, gunicorn, hypercorn and granian set up
their own loggers, never the root one. An application that configured no
logging therefore saw none of our phase and per-revision lines (INFO). So
when a server starts the migration and nothing would show our lines (no
handler on our logger nor on the root, our level not set), they go to the
server's own error-log handlers, in its format, or else to stderr. An
application that configures logging before the start (``basicConfig``,
``dictConfig``, a handler on ``automigrator``) keeps full control: nothing is
added, and a handler added here steps aside once the root logger has a
handler of the application's. Alembic's own plugin set-up lines are quieted.
"""

from __future__ import annotations

import logging
import sys
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


logger = logging.getLogger("automigrator")

# Alembic (1.18+) logs a "setup plugin ..." line at INFO for each of its
# plugins when it is first imported: seven lines of noise on every start of
# an app that logs at INFO. Quieted unless the application set that logger's
# level itself; done here, at our import, because Alembic is imported later,
# lazily, and says them then.
_plugins = logging.getLogger("alembic.runtime.plugins")
if _plugins.level == logging.NOTSET:
    _plugins.setLevel(logging.WARNING)

# Each server's error log, in the order we look for one with handlers.
_SERVER_LOGGERS = ("uvicorn.error", "gunicorn.error", "hypercorn.error", "_granian")


class ServerLogHandler(logging.Handler):
    """Hands our records to the server's error-log handlers, or to stderr."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._stderr = logging.StreamHandler(sys.stderr)
        self._stderr.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.root.handlers:
            return  # the application set up logging since: its handlers have it
        named = logging.makeLogRecord(record.__dict__)
        named.msg, named.args = f"automigrator: {record.getMessage()}", None
        for name in _SERVER_LOGGERS:
            handlers = _reached_from(logging.getLogger(name))
            if handlers:
                for handler in handlers:
                    if named.levelno >= handler.level:
                        handler.handle(named)
                return
        self._stderr.handle(named)


def _reached_from(start: logging.Logger) -> list[logging.Handler]:
    # The handlers a record logged on ``start`` would reach short of the root
    # (uvicorn's are on "uvicorn", which "uvicorn.error" propagates to).
    found: list[logging.Handler] = []
    current: logging.Logger | None = start
    while current is not None and current is not logging.root:
        found += current.handlers
        if not current.propagate:
            break
        current = current.parent
    return found


def show_by_default() -> None:
    """Make our INFO lines visible if nothing else would show them."""
    if logger.handlers or logger.level != logging.NOTSET or logging.root.handlers:
        return
    logger.addHandler(ServerLogHandler())
    logger.setLevel(logging.INFO)
