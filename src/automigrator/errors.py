"""The exceptions automigrator raises, and how failure policies classify them.

```
AutomigratorError                 every error the library raises
├── ConfigurationError            kind "configuration": fix the settings
│   └── PoolerError               the URL goes through a pooler mode that cannot work
├── DatabaseUnavailableError      kind "transient": the database cannot be reached
├── LockTimeoutError              kind "transient": another replica held the lock too long
├── LockLostError                 kind "transient": the lock went away during the run
├── SchemaAheadError              kind "schema_ahead": the database is newer than the code
├── SchemaBehindError             kind "transient": check mode waited, nobody migrated
├── MultipleHeadsError            kind "multiple_heads": the scripts have several heads
├── UnversionedDatabaseError      kind "unversioned": tables, but no version table
├── ContentionError               kind "contention": a revision met a busy table, deadlock
├── PartialMigrationError         kind "partial": a revision failed half way, and that half stays
├── EditedRevisionError           kind "edited": an applied revision's file was changed since
├── MigrationError                kind "migration": a revision failed, or did not stick
│   └── AlreadyPurgedError        a purge refused: purged before, not migrated since
├── UnsafeMigrationError          kind "unsafe": lint="refuse" found an unsafe revision
├── BackupError                   kind "backup": a backup could not be written; nothing moved
└── ShutdownRequestedError        kind "shutdown": the server stopped us while we waited
```

Every error carries a ``kind``; failure policies decide on it, so that a
destructive policy (purge, restore) acts on ``"migration"`` failures only and
never on a failure that was not the migration's fault (a busy table is
``"contention"``: the revision is fine, the database was busy). ``ShutdownRequestedError``
never reaches a policy: the run was stopped, not failed. Errors from Alembic and
SQLAlchemy are translated into this tree in one place and chained
(``raise ... from exc``), so the original traceback is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._findings import LintFinding

__all__ = [
    "AlreadyPurgedError",
    "AutomigratorError",
    "BackupError",
    "ConfigurationError",
    "ContentionError",
    "DatabaseUnavailableError",
    "EditedRevisionError",
    "ErrorKind",
    "LockLostError",
    "LockTimeoutError",
    "MigrationError",
    "MultipleHeadsError",
    "PartialMigrationError",
    "PoolerError",
    "SchemaAheadError",
    "SchemaBehindError",
    "ShutdownRequestedError",
    "UnsafeMigrationError",
    "UnversionedDatabaseError",
    "first_line",
]

ErrorKind = Literal[
    "configuration",
    "transient",
    "schema_ahead",
    "multiple_heads",
    "unversioned",
    "migration",
    "contention",
    "unsafe",
    "shutdown",
    "backup",
    "partial",
    "edited",
]


class AutomigratorError(Exception):
    """Base class of every error automigrator raises."""

    kind: ErrorKind = "migration"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def summary(self) -> str:
        """``ErrorClass: first line of the message``, for logs and the status."""
        return f"{type(self).__name__}: {first_line(self.message)}"


class ConfigurationError(AutomigratorError):
    """The settings are wrong: a missing file, a bad URL, credentials, target or switch."""

    kind: ErrorKind = "configuration"


class PoolerError(ConfigurationError):
    """The URL goes through a connection pooler in a mode that cannot migrate.

    PgBouncer in statement pooling mode allows no transaction, and both the
    migration and automigrator's own reads need them. Session and
    transaction modes work (see the pooler matrix in docs/replicas.md).
    """


class DatabaseUnavailableError(AutomigratorError):
    """The database could not be reached (refused, timed out, or lost mid-run)."""

    kind: ErrorKind = "transient"


class LockTimeoutError(AutomigratorError):
    """The migration lock was not acquired within ``Timeouts.lock`` seconds."""

    kind: ErrorKind = "transient"

    def __init__(self, message: str, *, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout


class LockLostError(AutomigratorError):
    """The migration lock was lost while migrating (its connection died): the run stopped.

    Another process may have taken it; nothing more was applied after the loss
    was seen, and on PostgreSQL the running transaction was rolled back.
    """

    kind: ErrorKind = "transient"


class SchemaAheadError(AutomigratorError):
    """The database is at a revision the scripts do not know: the code is older."""

    kind: ErrorKind = "schema_ahead"

    def __init__(
        self,
        message: str | None = None,
        *,
        revisions: tuple[str, ...],
        missing: tuple[str, ...] = (),
        breaking: tuple[str, str] | None = None,
    ) -> None:
        self.breaking = breaking
        """The first unknown revision that may break this code, and why (None: not known)."""
        why = (
            f" Revision {breaking[0]} is why this older code is not served on it: "
            f"{breaking[1]} (History(when_ahead='compatible'))."
            if breaking is not None and not missing
            else ""
        )
        lacks = (
            f" It also lacks {', '.join(missing)}, which this code needs: it is behind "
            "and ahead at once (another branch, or a deploy that skipped one), so it is "
            "never served, whatever when_ahead says."
            if missing
            else ""
        )
        super().__init__(
            message
            or f"The database is at revision {', '.join(revisions)}, which these migration "
            f"scripts do not know: this deploy is older than the database (a rollback, or an "
            f"old replica restarted during a rollout?).{lacks}{why} "
            "Deploy code that contains that revision, or downgrade the database with the "
            "newer code first. Nothing was changed."
        )
        self.revisions = revisions
        self.missing = missing

    @property
    def revision(self) -> str:
        """The first unknown revision found in the database."""
        return self.revisions[0]


class SchemaBehindError(AutomigratorError):
    """Check mode: the database stayed behind the code for ``Timeouts.check`` seconds.

    Transient: another replica or a migration Job may still bring it up;
    ``Retry`` waits again, a destructive policy never acts on it.
    """

    kind: ErrorKind = "transient"


class MultipleHeadsError(AutomigratorError):
    """The scripts have several heads while the target is ``"head"``."""

    kind: ErrorKind = "multiple_heads"

    def __init__(self, message: str | None = None, *, heads: tuple[str, ...]) -> None:
        super().__init__(
            message
            or f"The migration scripts have {len(heads)} heads ({', '.join(heads)}) and the "
            "target is 'head': usually two branches each added a revision on the same parent. "
            "Run 'alembic merge heads' and deploy the merge revision, or pass target='heads' "
            "if the branches are deliberate. Nothing was changed."
        )
        self.heads = heads


class UnversionedDatabaseError(AutomigratorError):
    """The database has tables but no version table, and no baseline was given."""

    kind: ErrorKind = "unversioned"

    def __init__(self, message: str | None = None, *, version_table: str = "") -> None:
        super().__init__(
            message
            or f"The database has tables but no revision in a version table "
            f"{version_table!r}: these migrations did not create them (or a baseline stamp "
            "did not finish). If its schema matches a revision, pass baseline='<revision>' "
            "to stamp it there first; if env.py keeps the version table elsewhere, pass "
            "version_table=VersionTable(name, schema). Nothing was changed."
        )
        self.version_table = version_table


class PartialMigrationError(AutomigratorError):
    """A revision failed after some of its statements took effect, and they stay.

    Where DDL is not transactional (MySQL/MariaDB, and PostgreSQL's autocommit
    blocks) nothing takes those statements back: running the revision again
    would meet its own half-done work, and purging would blame the data for
    it. It is recorded ``partial`` in the ledger (``automigrator_history``)
    and every start refuses to run the revision until a person has finished
    or undone those statements and said so (``automigrator resolve REVISION
    --applied`` or ``--not-applied``). No policy purges or retries it.
    """

    kind: ErrorKind = "partial"

    def __init__(self, message: str, *, revision: str, statements: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.revision = revision
        self.statements = statements


class EditedRevisionError(AutomigratorError):
    """An applied revision's file is not the one that ran: edited, or its id reused.

    Refused before any DDL (``History(on_edit="refuse")``, the default): the
    database keeps what the old file did, so the edit never reaches it. The
    message names each file, revision and both checksums. Put the file back,
    or accept the edit with ``automigrator resolve REV --accept-checksum``.
    """

    kind: ErrorKind = "edited"

    def __init__(self, message: str, *, revisions: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.revisions = revisions


class ContentionError(AutomigratorError):
    """A revision gave up on a table lock (lock timeout), lost a deadlock or a serialization.

    The revision is fine and nothing of it stayed: another transaction held
    what it needed. ``Retry()`` retries it; the destructive policies never
    act on it.
    """

    kind: ErrorKind = "contention"

    def __init__(self, message: str, *, revision: str | None = None) -> None:
        super().__init__(message)
        self.revision = revision


class MigrationError(AutomigratorError):
    """A revision raised, the database rejected its DDL, or the result did not verify."""

    kind: ErrorKind = "migration"

    def __init__(self, message: str, *, revision: str | None = None) -> None:
        super().__init__(message)
        self.revision = revision

    @classmethod
    def not_recorded(cls, revisions: tuple[str, ...], heads: tuple[str, ...]) -> MigrationError:
        """The upgrade ran, but the version table does not say the target."""
        return cls(
            f"After the upgrade the database is at {', '.join(revisions) or 'base'}, not at "
            f"{', '.join(heads)}: env.py did not record the revisions (does it call "
            "context.run_migrations() inside a transaction that is committed, and with the "
            "same version table?)."
        )


class BackupError(AutomigratorError):
    """A backup could not be written (a full disk, a read-only folder): nothing was moved.

    The purge or the restore that needed it did not happen, and no partial
    copy is left behind. No policy purges for it.
    """

    kind: ErrorKind = "backup"


class AlreadyPurgedError(MigrationError):
    """A purge was refused: the database was purged already and has not migrated since.

    Purging again could only throw away the fresh database: the data from
    before the failure is in the backup this error names.
    """

    kind: ErrorKind = "migration"

    def __init__(self, backup: str | None) -> None:
        where = f"the data from before it is in {backup}" if backup else "no backup was taken"
        super().__init__(
            "Not purging again: this database was already purged after a failed migration, "
            f"and no migration has succeeded since ({where}). Fix the failing revision; to "
            "start over by hand, restore or drop the backup and remove the purge marker."
        )
        self.backup = backup


class UnsafeMigrationError(AutomigratorError):
    """``lint="refuse"``: a pending revision would lock a busy table or break the old version.

    Raised under the lock before any DDL, so nothing changed. ``findings``
    says which revision, rule and table, and how many rows.
    """

    kind: ErrorKind = "unsafe"

    def __init__(self, message: str = "", *, findings: tuple[LintFinding, ...] = ()) -> None:
        if not message:
            first = findings[0]
            more = f" (and {len(findings) - 1} more: see the log)" if len(findings) > 1 else ""
            after = (
                ""
                if not first.old_version or first.post_deploy
                else ", mark it post-deploy ('post_deploy = True' in the file: a start leaves "
                "it for 'automigrator upgrade --post-deploy' after the rollout)"
            )
            message = (
                f"Not migrating: {first}{more}. Nothing was changed (lint='refuse'). Fix "
                f"{first.where or 'the revision'}{after}, allow the rule there with a comment "
                f"'# automigrator: allow={first.rule}', or set lint='warn'."
            )
        super().__init__(message)
        self.findings = findings

    @classmethod
    def unlinted(cls, exc: BaseException) -> UnsafeMigrationError:
        """The lint itself could not run; under ``lint="refuse"`` that refuses too."""
        return cls(
            f"Not migrating: the pending revisions could not be linted ({first_line(exc)}), "
            "and lint='refuse' admits only revisions it has checked. Nothing was changed. "
            "Render them with 'automigrator plan --sql' to see why, or set lint='warn'."
        )


class ShutdownRequestedError(AutomigratorError):
    """SIGTERM or SIGINT arrived while waiting for the lock or the database.

    Raised instead of waiting on; the failure policy is not asked (nothing failed).
    """

    kind: ErrorKind = "shutdown"

    def __init__(self, message: str, *, signal: int) -> None:
        super().__init__(message)
        self.signal = signal

    @classmethod
    def between_revisions(cls, last: object | None) -> ShutdownRequestedError:
        """A background run stopped by a shutdown after revision ``last`` (None: none)."""
        done = getattr(last, "revision", None) or "none"
        return cls(
            f"The application is shutting down: the migration stopped after revision {done}, "
            "before the next one. The next start continues from there.",
            signal=0,
        )


def first_line(text: str | BaseException) -> str:
    """The first line of a message or of an exception's text (its class name if empty)."""
    if isinstance(text, BaseException):
        # A driver error wrapped by SQLAlchemy: the driver's own words.
        exc = text
        text = str(getattr(exc, "orig", None) or exc).strip()
        if not text:
            return type(exc).__name__
    lines = text.strip().splitlines()
    return lines[0] if lines else ""
