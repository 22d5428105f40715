"""Our own short connections: URLs, masking, reading the version table, connect errors.

env.py opens its own engine for the migration itself; this module is only for
what automigrator reads (plan, verify) and for the lock backends.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from ..errors import (
    AutomigratorError,
    ConfigurationError,
    DatabaseUnavailableError,
    MigrationError,
    PoolerError,
    first_line,
)
from ._redaction import mask_credentials, redact

# Async drivers cannot serve our synchronous reads; each maps to the sync
# drivers of the same database, in order of preference.
_SYNC_DRIVERS: dict[str, tuple[tuple[str, str], ...]] = {
    "asyncpg": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "psycopg_async": (("psycopg", "psycopg"),),
    "aiosqlite": (("pysqlite", "sqlite3"),),
    "asyncmy": (("pymysql", "pymysql"), ("mysqldb", "MySQLdb")),
    "aiomysql": (("pymysql", "pymysql"), ("mysqldb", "MySQLdb")),
}


def parse_url(raw: str | URL) -> URL:
    """Parse a URL, or raise ConfigurationError without echoing the password."""
    if isinstance(raw, URL):
        return raw
    try:
        url = sa.make_url(raw)
    except (ArgumentError, ValueError):
        # Not chained: the original message repeats the URL, password and all.
        raise ConfigurationError(
            f"Could not parse the database URL {_mask_unparsed(raw)!r}. Expected a SQLAlchemy "
            "URL such as 'postgresql+psycopg://user:password@host/dbname' or "
            "'sqlite:///path/to/file.db'."
        ) from None
    try:
        url.get_dialect()
    except NoSuchModuleError as exc:
        raise ConfigurationError(
            f"The database URL {display(url)!r} names an unknown dialect or driver "
            f"{url.drivername!r}. Check the part before '://', and that its driver is installed."
        ) from exc
    return url


def _mask_unparsed(raw: str) -> str:
    # The URL did not parse, so SQLAlchemy cannot mask it: hide anything that
    # looks like "user:password@" ourselves, with or without a "://" before.
    return mask_credentials(raw)


def display(url: URL) -> str:
    """The URL with its password replaced by ``***``, for logs and messages."""
    return url.render_as_string(hide_password=True)


def sync_url(url: URL) -> URL:
    """The same database through a synchronous driver, for our own short reads."""
    dialect = url.get_dialect()
    if not getattr(dialect, "is_async", False):
        return url
    _async_parts_installed(url, dialect)
    for driver, module in _SYNC_DRIVERS.get(url.get_driver_name(), ()):
        if importlib.util.find_spec(module) is not None:
            return url.set(drivername=f"{url.get_backend_name()}+{driver}")
    wanted = " or ".join(m for _, m in _SYNC_DRIVERS.get(url.get_driver_name(), ())) or "one"
    raise ConfigurationError(
        f"The URL {display(url)!r} uses the async driver {url.get_driver_name()!r}. "
        f"automigrator reads the version table and takes its lock through a synchronous "
        f"driver: install {wanted} for {url.get_backend_name()}."
    )


def _async_parts_installed(url: URL, dialect: Any) -> None:
    """What env.py's async engine will need, asked for when the migrator is built:
    missing, it would fail the first start as "env.py failed"."""
    try:
        importlib.import_module("greenlet")  # SQLAlchemy's asyncio runs on it
    except ImportError:
        raise ConfigurationError(
            f"The URL {display(url)!r} uses an async driver, and SQLAlchemy's asyncio "
            "extension needs greenlet, which is not installed: pip install "
            "'sqlalchemy[asyncio]'."
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigurationError(
            f"The URL {display(url)!r} names the async driver {url.get_driver_name()!r}, "
            f"which is not installed ({exc}): pip install {exc.name or url.get_driver_name()} "
            "(env.py's async engine connects through it), or name an installed driver in the URL."
        ) from None


def create_engine(url: URL) -> Engine:
    """An engine without a pool: every connection we open is short and closed at once.

    Imports the driver (it does not connect); a missing one is a ConfigurationError.
    """
    sync = sync_url(url)
    options: dict[str, object] = {}
    if sync.get_driver_name() in ("psycopg", "psycopg2"):
        # Our reads never carry an hstore value; asking the server for the
        # type at the first connect cost 1.3 ms of every start (a query, and
        # psycopg's set-up of the adapter).
        options["use_native_hstore"] = False
    try:
        engine = sa.create_engine(sync, poolclass=NullPool, connect_args=_bounded(sync), **options)
    except ImportError as exc:
        raise ConfigurationError(
            f"The driver for {display(sync)!r} is not installed ({exc}). Install it, or "
            "name an installed one in the URL (e.g. postgresql+psycopg://...)."
        ) from exc
    if sync.get_backend_name() == "postgresql" and "application_name" not in sync.query:
        sa.event.listen(engine, "do_connect", _name_the_session)
    return engine


def _name_the_session(
    dialect: object, record: object, cargs: object, cparams: dict[str, object]
) -> None:
    # pg_stat_activity then names the pod (its host name) and the process that
    # holds the lock or waits for it, which a server pid never does. Read at
    # each connect: a server forks its workers after the migrator is built.
    cparams["application_name"] = f"automigrator@{socket.gethostname()}:{os.getpid()}"[:63]


def lock_engine(lock_url: str | URL, url: URL) -> Engine:
    """The engine of ``lock_url=``: the same kind of database as ``url``."""
    parsed = parse_url(lock_url)
    if parsed.get_backend_name() != url.get_backend_name():
        raise ConfigurationError(
            f"lock_url {display(parsed)!r} is a {parsed.get_backend_name()} URL but url is "
            f"{url.get_backend_name()}: lock_url must reach the same database as url, "
            "directly. Fix lock_url (AUTOMIGRATOR_LOCK_URL, --lock-url)."
        )
    return create_engine(parsed)


def mismatch(ours: URL, theirs: URL) -> Literal["database", "host"] | None:
    """How far ``theirs`` (env.py's connection) is from ``ours``, if it is.

    ``"database"``: another kind of database, another database name or
    SQLite file. ``"host"``: the same name on another host, which a pooler
    or a service name may explain (so only worth a warning). Ports are not
    compared: a pooler's port differs from the server's.
    """
    if ours.get_backend_name() != theirs.get_backend_name():
        return "database"
    if ours.get_backend_name() == "sqlite":
        if is_memory_sqlite(ours) or is_memory_sqlite(theirs):
            return None if is_memory_sqlite(ours) == is_memory_sqlite(theirs) else "database"
        same = Path(ours.database or "").resolve() == Path(theirs.database or "").resolve()
        return None if same else "database"
    if (ours.database or "") != (theirs.database or ""):
        return "database"
    hosts = {(host or "localhost").lower() for host in (ours.host, theirs.host)}
    return None if len(hosts) == 1 or hosts <= _LOOPBACK else "host"


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def is_memory_sqlite(url: URL) -> bool:
    """An in-memory SQLite database: private to its process, no file to lock or copy."""
    database = url.database
    return url.get_backend_name() == "sqlite" and (
        not database or database == ":memory:" or database.startswith("file::memory:")
    )


def sqlite_file(url: URL) -> str:
    """The file of a SQLite URL, also in URI form (``sqlite:///file:app.db?mode=ro&uri=true``)."""
    database = url.database or ""
    uri = str(url.query.get("uri", "")).lower() in ("true", "1")
    if database.startswith("file:") and uri:
        # sqlite3's URI filename: the path is between "file:" and any "?".
        # Without uri=true the driver opens "file:..." as a plain name.
        database = database.removeprefix("file:").split("?", 1)[0]
        if database.startswith("//localhost/"):
            database = database.removeprefix("//localhost")
        database = database.removeprefix("//") if database.startswith("///") else database
    return database


# Every connection of ours has a deadline on connecting, and a dead peer is
# noticed: libpq's keepalives and TCP user timeout end a connection whose
# server vanished (no FIN, no RST) within about 30 s; PyMySQL/mysqlclient
# time out reads and writes. A value the URL sets itself is kept.
_BOUNDS: dict[str, dict[str, object]] = {
    "psycopg": {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30000,
        # Our statements repeat (a waiter's poll): psycopg would prepare them
        # on one server connection, which a pooler in transaction mode does
        # not keep (PgBouncer before 1.21: "prepared statement does not exist").
        "prepare_threshold": None,
    },
    "pymysql": {"connect_timeout": 10, "read_timeout": 60, "write_timeout": 60},
    "mysqldb": {"connect_timeout": 10, "read_timeout": 60, "write_timeout": 60},
}
_BOUNDS["psycopg2"] = {k: v for k, v in _BOUNDS["psycopg"].items() if k != "prepare_threshold"}


# What env.py's connection gets of those, through the URL it reads: its
# statements may run for hours, so no read or write timeout (MySQL drivers
# offer no keepalive: there a silent network is bounded by the server's
# wait_timeout on its side only); our repeated-statement setting stays ours.
_ENV_PY_BOUNDS: tuple[str, ...] = ("connect_timeout", "keepalives", "keepalives_idle")
_ENV_PY_BOUNDS += ("keepalives_interval", "keepalives_count", "tcp_user_timeout")


def for_env_py(url: URL) -> URL:
    """``url`` with our connect timeout and keepalives added (a value it sets wins).

    So that a revision's connection on a silent network (no FIN, no RST)
    ends within about 30 s on PostgreSQL instead of at the kernel's hours.
    """
    bounds = _bounded(url)
    added = {key: str(bounds[key]) for key in _ENV_PY_BOUNDS if key in bounds}
    return url.update_query_dict(added) if added else url


def _bounded(url: URL) -> dict[str, object]:
    bounds = _BOUNDS.get(url.get_driver_name(), {})
    return {key: value for key, value in bounds.items() if key not in url.query}


@dataclass(frozen=True)
class VersionTable:
    """Where the revisions are stored: Alembic's version table (env.py's
    ``version_table`` and ``version_table_schema``)."""

    name: str = "alembic_version"
    schema: str | None = None

    def __post_init__(self) -> None:
        for field, value, optional in (("name", self.name, False), ("schema", self.schema, True)):
            if (value is None and optional) or (isinstance(value, str) and value.strip()):
                continue
            raise ConfigurationError(
                f"VersionTable({field}={value!r}): name the table"
                + (", or leave schema=None for the default schema." if optional else ".")
            )

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def atomic_sqlite_revisions(connection: Connection) -> None:
    """Make each revision on ``connection`` (SQLite) one transaction: all of it or none.

    SQLite's DDL is transactional, but Python's sqlite3 driver opens a
    transaction only before INSERT, UPDATE or DELETE: a revision's CREATE and
    ALTER statements commit one by one, and a process killed between them
    (or before the version row) leaves the revision half applied for the
    next start to trip on. Alembic begins a transaction per revision where
    DDL is not transactional and commits it after the version row; here
    each such begin also sends ``BEGIN`` (SQLAlchemy's documented recipe for
    pysqlite), so the revision's statements and its version row commit
    together. A transaction already under way on the connection gets its
    ``BEGIN`` now. ``PRAGMA foreign_keys`` cannot change inside a
    transaction: a revision that needs it off sets it in env.py, before
    the migrations run.
    """

    def begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    sa.event.listen(connection, "begin", begin)
    driver = connection.connection.dbapi_connection
    if connection.in_transaction() and not getattr(driver, "in_transaction", True):
        connection.exec_driver_sql("BEGIN")


def read_revisions(conn: Connection, table: VersionTable) -> tuple[str, ...] | None:
    """The version table's rows, sorted; None when the table does not exist.

    The common case (table present) costs one query. Only when it fails do we
    ask the inspector whether the table is missing; if another process created
    it in between, we read it again.
    """
    version = sa.table(table.name, sa.column("version_num"), schema=table.schema)
    # Plain SQL: compiling a select is paid afresh in every process, at every
    # start (docs/performance.md, "The ledger at head").
    name = conn.dialect.identifier_preparer.format_table(version)
    query = f"SELECT version_num FROM {name}"
    try:
        with conn.begin_nested() if conn.in_transaction() else conn.begin():
            rows = conn.exec_driver_sql(query).scalars().all()
    except DBAPIError:
        if conn.invalidated:
            raise
        if not sa.inspect(conn).has_table(table.name, schema=table.schema):
            return None
        # Another process created it between our two reads: read it now.
        with conn.begin_nested() if conn.in_transaction() else conn.begin():
            rows = conn.exec_driver_sql(query).scalars().all()
    return tuple(sorted(rows))


def check_schema_exists(conn: Connection, table: VersionTable) -> None:
    """PostgreSQL: refuse, naming any quarantine left by a purge, when the schema is gone.

    Only asked when there is no version table (a fresh database, or a lost
    schema): never on the at-head path.
    """
    if conn.dialect.name != "postgresql":
        return
    if table.schema is not None:
        found = conn.execute(
            sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": table.schema}
        ).scalar()
        missing = not found
    else:
        missing = conn.execute(sa.text("SELECT current_schema()")).scalar() is None
    if missing:
        raise ConfigurationError(
            f"The schema {table.schema or 'of the search_path'} does not exist: "
            f"{lost_schema_hint(conn)}"
        )


def lost_schema_hint(conn: Connection) -> str:
    """What to do when the schema is gone: names any quarantine schemas found."""
    found = (
        conn.execute(
            sa.text(
                "SELECT nspname FROM pg_namespace "
                "WHERE nspname LIKE '%!_quarantine!_%' ESCAPE '!' ORDER BY nspname"
            )
        )
        .scalars()
        .all()
    )
    if not found:
        return "create the schema, or fix search_path."
    return (
        f"found the quarantine schema(s) {', '.join(found)} left by a purge: rename the "
        "newest back (ALTER SCHEMA ... RENAME TO ...), or create an empty schema."
    )


def has_other_tables(conn: Connection, table: VersionTable, ours: str | None = None) -> bool:
    """True when the version table's schema holds tables besides the version table
    (and ``ours``, the ledger: alone, it makes no schema)."""
    names = sa.inspect(conn).get_table_names(schema=table.schema)
    return any(name not in (table.name, ours) for name in names)


# Markers in driver messages that mean "your settings are wrong", which no
# amount of retrying will fix.
_CONFIG_MARKERS = (
    "password authentication failed",
    "authentication failed",
    "access denied",
    "does not exist",
    "unknown database",
    "no password supplied",
    "unable to open database file",
    "invalid dsn",
    "permission denied",
)
# Access denied to the database, bad credentials, unknown database, a table
# or column access denied.
_CONFIG_MYSQL_CODES = {1044, 1045, 1049, 1142, 1143, 1698}


def translate_error(exc: DBAPIError, url: URL | None, *, doing: str) -> AutomigratorError:
    """Turn a driver error met while ``doing`` into our error tree."""
    where = f" at {display(url)}" if url is not None else ""
    detail = redact(first_line(exc), url)
    if "not allowed in statement pooling mode" in str(exc.orig):
        return PoolerError(
            f"The database URL{where} goes through PgBouncer in statement pooling mode, "
            f"which allows no transaction ({detail}); migrations need transactions. Give "
            "automigrator a URL that reaches the server directly, or a pool in session or "
            "transaction mode; this is not retried."
        )
    sqlite = _sqlite_file_error(exc, url)
    if sqlite is not None:
        return sqlite
    if _is_configuration(exc):
        return ConfigurationError(
            f"The database{where} refused the connection while {doing}: {detail}. Check the "
            "user, password and database name in the URL; this is not retried."
        )
    if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError):
        return DatabaseUnavailableError(
            f"The database{where} could not be reached while {doing}: {detail}."
        )
    # Anything else (a ProgrammingError: a missing column, a function the
    # server lacks) will fail the same way on every try.
    return ConfigurationError(
        f"The database{where} rejected a statement while {doing}: {detail}. Check the "
        "user's privileges and the version table settings; this is not retried."
    )


def as_error(exc: Exception, url: URL) -> AutomigratorError:
    """Any exception of an attempt in our tree, chained to it.

    A driver error outside a revision is the database's (translated); anything
    else that escaped is the migration's.
    """
    if isinstance(exc, AutomigratorError):
        return exc
    if isinstance(exc, DBAPIError):
        error = translate_error(exc, url, doing="migrating")
    else:
        error = MigrationError(redact(f"{type(exc).__name__}: {exc}", url))
    error.__cause__ = exc
    return error


def _sqlite_file_error(exc: DBAPIError, url: URL | None) -> ConfigurationError | None:
    # SQLite has no user or password to check: say what is wrong with the file.
    if url is None or url.get_backend_name() != "sqlite" or not url.database:
        return None
    if "unable to open database file" not in str(exc.orig):
        return None
    path = Path(url.database)
    if url.database == ":memory:" or url.database.startswith("file:"):
        return None
    folder = path.absolute().parent
    if not folder.is_dir():
        why = f"its folder {folder} does not exist (a start makes the file, not its folder)"
    else:
        why = f"it cannot be opened or created in {folder} (check the permissions)"
    return ConfigurationError(
        f"The SQLite database {path} in the URL: {why}. Create the folder, or fix the path in "
        "the URL (AUTOMIGRATOR_URL, --url, url=); nothing was changed."
    )


def _is_configuration(exc: DBAPIError) -> bool:
    orig = exc.orig
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _CONFIG_MYSQL_CODES:
        return True
    text = str(orig).lower()
    return any(marker in text for marker in _CONFIG_MARKERS)
