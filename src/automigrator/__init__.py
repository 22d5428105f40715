"""automigrator: bring an ASGI application's Alembic schema up to date at start-up."""

from __future__ import annotations

from ._database import VersionTable
from ._findings import LintFinding
from ._group import MigratorGroup
from ._lifespan import STATE_KEY, MigrationRunner
from ._lint import LintMode, LintReport
from ._migrator import AutoMigrator
from ._options import LockOption
from ._plan import PendingRevision, Plan
from ._preview import Preview, lint, preview
from ._purge import Purged
from ._scripts import BeforeScripts
from ._status import AppliedRevision, Blocker, MigrationState, MigrationStatus, RunningRevision
from .errors import (
    AlreadyPurgedError,
    AutomigratorError,
    ConfigurationError,
    ContentionError,
    DatabaseUnavailableError,
    LockLostError,
    LockTimeoutError,
    MigrationError,
    MultipleHeadsError,
    PoolerError,
    SchemaAheadError,
    SchemaBehindError,
    ShutdownRequestedError,
    UnsafeMigrationError,
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
    BeforeUpgrade,
    Chain,
    Decision,
    Fail,
    FailedMigrator,
    Failure,
    FailurePolicy,
    LogAndContinue,
    PurgeAndRetry,
    RestoreBackup,
    Retry,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyPurgedError",
    "AppliedRevision",
    "AutoMigrateMiddleware",
    "AutoMigrator",
    "AutomigratorError",
    "BeforeScripts",
    "BeforeUpgrade",
    "Blocker",
    "Chain",
    "ConfigurationError",
    "ContentionError",
    "DatabaseUnavailableError",
    "Decision",
    "Event",
    "Fail",
    "FailedMigrator",
    "Failure",
    "FailurePolicy",
    "HealthApp",
    "LintFinding",
    "LintMode",
    "LintReport",
    "LockLostError",
    "LockOption",
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
    "PendingRevision",
    "Plan",
    "PoolerError",
    "PostgresAdvisoryLock",
    "Preview",
    "ProcessLock",
    "PurgeAndRetry",
    "Purged",
    "ReadinessGate",
    "RestoreBackup",
    "Retry",
    "RunningRevision",
    "SQLiteFileLock",
    "STATE_KEY",
    "SchemaAheadError",
    "SchemaBehindError",
    "ShutdownRequestedError",
    "UnsafeMigrationError",
    "UnversionedDatabaseError",
    "VersionTable",
    "lint",
    "preview",
]
