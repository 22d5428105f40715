"""automigrator: bring an ASGI application's Alembic schema up to date at start-up."""

from __future__ import annotations

from ._group import MigratorGroup
from ._migrator import AutoMigrator
from ._runner import STATE_KEY, MigrationRunner
from ._state import AppliedRevision, MigrationState, MigrationStatus, Plan
from .errors import (
    AutomigratorError,
    ConfigurationError,
    DatabaseUnavailableError,
    LockTimeoutError,
    MigrationError,
    MultipleHeadsError,
    SchemaAheadError,
    SchemaBehindError,
    ShutdownRequestedError,
    UnversionedDatabaseError,
)
from .events import Event
from .gate import ReadinessGate
from .health import HealthApp
from .locking import (
    MigrationLock,
    MySQLLock,
    PostgresAdvisoryLock,
    ProcessLock,
    SQLiteFileLock,
)
from .middleware import AutoMigrateMiddleware
from .policies import (
    Chain,
    Decision,
    Fail,
    Failure,
    FailurePolicy,
    LogAndContinue,
    PurgeAndRetry,
    RestoreBackup,
    Retry,
)

__version__ = "0.1.0"

__all__ = [
    "AppliedRevision",
    "AutoMigrateMiddleware",
    "AutoMigrator",
    "AutomigratorError",
    "Chain",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "Decision",
    "Event",
    "Fail",
    "Failure",
    "FailurePolicy",
    "HealthApp",
    "LockTimeoutError",
    "LogAndContinue",
    "MigrationError",
    "MigrationLock",
    "MigrationRunner",
    "MigrationState",
    "MigrationStatus",
    "MigratorGroup",
    "MultipleHeadsError",
    "MySQLLock",
    "Plan",
    "PostgresAdvisoryLock",
    "ProcessLock",
    "PurgeAndRetry",
    "ReadinessGate",
    "RestoreBackup",
    "Retry",
    "SQLiteFileLock",
    "STATE_KEY",
    "SchemaAheadError",
    "SchemaBehindError",
    "ShutdownRequestedError",
    "UnversionedDatabaseError",
]
