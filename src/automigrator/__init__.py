"""automigrator: bring an ASGI application's Alembic schema up to date at start-up."""

from __future__ import annotations

from ._drift import DriftReport, drift
from ._findings import LintFinding
from ._group import MigratorGroup
from ._lifespan import STATE_KEY, MigrationRunner
from ._migrator import AutoMigrator
from ._plan import Plan
from ._preview import Preview, lint, preview
from ._settings import (
    Baseline,
    Ddl,
    History,
    Lint,
    LintMode,
    LockOption,
    MigratorSettings,
    Switch,
    Timeouts,
)
from ._status import AppliedRevision, Blocker, MigrationState, MigrationStatus, RunningRevision
from .database._connections import VersionTable
from .database._ledger import Ledger, LedgerEntry
from .database._purge import Purged
from .errors import (
    AlreadyPurgedError,
    AutomigratorError,
    BackupError,
    ConfigurationError,
    ContentionError,
    DatabaseUnavailableError,
    EditedRevisionError,
    LockLostError,
    LockTimeoutError,
    MigrationError,
    MultipleHeadsError,
    PartialMigrationError,
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
from .linting._linter import LintReport
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
    Failure,
    FailurePolicy,
    LogAndContinue,
    PolicyMigrator,
    PurgeAndRetry,
    RestoreBackup,
    Retry,
)
from .scripts._pending import PendingRevision
from .scripts._scripts import BeforeScripts

__version__ = "0.1.0"

__all__ = [
    "AlreadyPurgedError",
    "AppliedRevision",
    "AutoMigrateMiddleware",
    "AutoMigrator",
    "AutomigratorError",
    "BackupError",
    "Baseline",
    "BeforeScripts",
    "BeforeUpgrade",
    "Blocker",
    "Chain",
    "ConfigurationError",
    "ContentionError",
    "DatabaseUnavailableError",
    "Ddl",
    "Decision",
    "DriftReport",
    "EditedRevisionError",
    "Event",
    "Fail",
    "Failure",
    "FailurePolicy",
    "HealthApp",
    "History",
    "Ledger",
    "LedgerEntry",
    "Lint",
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
    "MigratorSettings",
    "MultipleHeadsError",
    "MySQLLock",
    "PartialMigrationError",
    "PendingRevision",
    "Plan",
    "PolicyMigrator",
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
    "Switch",
    "Timeouts",
    "UnsafeMigrationError",
    "UnversionedDatabaseError",
    "VersionTable",
    "drift",
    "lint",
    "preview",
]
