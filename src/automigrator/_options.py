"""Checks of ``AutoMigrator``'s arguments: each wrong one is a named error, raised at once."""

from __future__ import annotations

import logging
from typing import Any, Literal

from .errors import ConfigurationError
from .locking import MigrationLock
from .policies import FailurePolicy

logger = logging.getLogger("automigrator")

LockOption = MigrationLock | Literal["auto"] | None
"""The ``lock=`` argument: ``"auto"`` (the database's own lock), a lock, or None."""


def check_options(
    *,
    target: str,
    lock: Any,
    lock_timeout: float,
    connect_timeout: float,
    mode: str,
    when_disabled: str,
    check_timeout: float,
    before_scripts: Any,
    on_failure: Any,
    ddl_lock_timeout: float | None = None,
    ddl_lock_retries: int = 0,
    progress_interval: float = 1.0,
    when_ahead: str = "refuse",
    lock_url: object = None,
) -> None:
    """Raise :class:`ConfigurationError` naming the first argument that is wrong.

    A risky but valid choice (``lock=None``) is logged as a warning.
    """
    if target == "base":
        raise ConfigurationError(
            "target='base' would mean a downgrade to nothing: automigrator only upgrades. "
            "Use 'head', 'heads', a revision id or a branch label; downgrade with the "
            "Alembic CLI."
        )
    if not target or target[0] in "+-" or ":" in target:
        raise ConfigurationError(
            f"target={target!r} is not a start-up target. Use 'head', 'heads', a revision "
            "id or a branch label; relative targets and ranges would move on every start."
        )
    if lock_timeout <= 0:
        raise ConfigurationError(f"lock_timeout must be > 0 seconds, got {lock_timeout!r}.")
    if mode not in ("migrate", "check") or when_disabled not in ("skip", "check"):
        raise ConfigurationError(
            f"mode={mode!r}, when_disabled={when_disabled!r}: mode is 'migrate' or "
            "'check'; when_disabled is 'skip' or 'check'."
        )
    if not check_timeout > 0:
        raise ConfigurationError(f"check_timeout must be > 0 seconds, got {check_timeout!r}.")
    if ddl_lock_timeout is not None and not ddl_lock_timeout > 0:
        raise ConfigurationError(
            f"ddl_lock_timeout must be > 0 seconds, or None to leave the server's, got "
            f"{ddl_lock_timeout!r}."
        )
    if not (isinstance(ddl_lock_retries, int) and ddl_lock_retries >= 0):
        raise ConfigurationError(
            f"ddl_lock_retries must be an int >= 0, got {ddl_lock_retries!r}."
        )
    if not progress_interval > 0:
        raise ConfigurationError(
            f"progress_interval must be > 0 seconds, got {progress_interval!r}."
        )
    if when_ahead not in ("refuse", "serve"):
        raise ConfigurationError(f"when_ahead={when_ahead!r}: use 'refuse' or 'serve'.")
    if not connect_timeout >= 0:
        raise ConfigurationError(f"connect_timeout must be >= 0 seconds, got {connect_timeout!r}.")
    if not (lock is None or lock == "auto" or isinstance(lock, MigrationLock)):
        raise ConfigurationError(
            f"lock={lock!r} is not a lock. Use 'auto', None, or an object with "
            "acquire(timeout), release() and holder()."
        )
    if lock_url is not None and lock != "auto":
        raise ConfigurationError(
            "lock_url= is for the database's own lock (lock='auto'); a lock you pass as "
            "lock= brings its own connection. Drop one of the two."
        )
    if before_scripts is not None and not callable(before_scripts):
        raise ConfigurationError(
            f"before_scripts={before_scripts!r} is not callable: pass a function that "
            "sets the application up (it may return a context manager)."
        )
    if on_failure is not None and not isinstance(on_failure, FailurePolicy):
        raise ConfigurationError(
            f"on_failure={on_failure!r} is not a failure policy: it needs "
            "'async def handle(self, failure) -> Decision'."
        )
    if lock is None:
        logger.warning(
            "Migration lock disabled (lock=None): concurrent replicas may migrate at the same "
            "time and fail."
        )
