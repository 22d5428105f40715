"""Types a database stores under another name than the models state: equal for drift.

Alembic's autogenerate compares a column's type as the dialect spells the
model's type with what the database reflects, with a few synonyms of its
own (MySQL's ``BOOL``/``TINYINT``, ``JSON``/``LONGTEXT``; PostgreSQL's
``FLOAT``/``DOUBLE PRECISION``). Some declarations the database turns into
another type when it creates the column, and reflects as that one; each is
named here, with the rule the database applies. Anything else, a length or
a precision change included, stays a difference for Alembic to judge.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import Dialect

# MySQL/MariaDB create TEXT(n) and BLOB(n) as the smallest of these that
# holds n characters (TEXT: up to 4 bytes each, by the character set) or n
# bytes (BLOB).
_SIZES = (("TINY", 255), ("", 65_535), ("MEDIUM", 16_777_215), ("LONG", 4_294_967_295))
# NCHAR and NVARCHAR as each dialect spells them, and what the database makes of them.
_NATIONAL = {
    "NATIONAL CHAR": "CHAR",
    "NCHAR": "CHAR",
    "NATIONAL VARCHAR": "VARCHAR",
    "NVARCHAR": "VARCHAR",
}
# NAME[(ARGS)][ CHARACTER SET ...][ COLLATE ...]; anything else is left to Alembic.
_SPELLING = re.compile(
    r"^\s*([A-Z][A-Z0-9_ ]*?)\s*(?:\(([^)]*)\))?\s*((?:CHARACTER SET|COLLATE)\b.*)?$", re.S
)


def same_type(dialect: Dialect, inspected: Any, declared: Any) -> bool:
    """True when the database made the column ``declared`` into ``inspected``.

    ``declared`` is the model's type (its variant for this dialect, if any),
    ``inspected`` the type the database reflects.
    """
    stored, stated = _spelled(inspected, dialect), _spelled(declared, dialect)
    if stored is None or stated is None:
        return False
    if dialect.name in ("mysql", "mariadb"):
        return _mysql(stored, stated)
    if dialect.name == "postgresql":
        return _postgresql(stored, stated)
    if dialect.name == "sqlite":
        return _sqlite(stored, stated, dialect)
    return False


_Spelled = tuple[str, tuple[int, ...], str]


def _spelled(type_: Any, dialect: Dialect) -> _Spelled | None:
    """``VARCHAR(3) CHARACTER SET utf8mb3`` -> ("VARCHAR", (3,), "CHARACTER SET UTF8MB3")."""
    try:
        text = str(type_.compile(dialect=dialect)).upper()
    except Exception:  # not a type this dialect can spell: Alembic's to judge
        return None
    match = _SPELLING.match(text)
    if match is None:
        return None
    name, args, rest = match.groups()
    numbers = tuple(int(a) for a in (args or "").split(",") if a.strip().isdigit())
    return " ".join(name.split()), numbers, rest or ""


def _mysql(stored: _Spelled, stated: _Spelled) -> bool:
    (have, have_args, have_rest), (want, want_args, _) = stored, stated
    if have == "DOUBLE":
        # FLOAT(p) with p > 24 is a DOUBLE; REAL and DOUBLE PRECISION are
        # DOUBLE (REAL is FLOAT under sql_mode REAL_AS_FLOAT: Alembic's).
        return want in ("REAL", "DOUBLE PRECISION") or (
            want == "FLOAT" and bool(want_args) and 24 < want_args[0] <= 53
        )
    for family in ("TEXT", "BLOB"):
        if want == family and len(want_args) == 1 and have.endswith(family):
            return _smallest(have.removesuffix(family), want_args[0], family == "TEXT")
    if _NATIONAL.get(want) == have:
        # NATIONAL CHAR/VARCHAR are CHAR/VARCHAR in MySQL's fixed utf8 (utf8mb3).
        return have_args == want_args and "UTF8" in have_rest
    return False


def _smallest(prefix: str, wanted: int, characters: bool) -> bool:
    # The stored size holds `wanted`, and the one below it would not; for
    # characters (1 to 4 bytes each, by the character set) either of two may.
    limits = dict(_SIZES)
    if prefix not in limits:
        return False
    sizes = [limit for _, limit in _SIZES]
    at = sizes.index(limits[prefix])
    below = sizes[at - 1] if at else -1
    return sizes[at] >= wanted and below < (wanted * 4 if characters else wanted)


def _postgresql(stored: _Spelled, stated: _Spelled) -> bool:
    (have, have_args, _), (want, want_args, _) = stored, stated
    if have == "REAL":
        # FLOAT(p) with p <= 24 is a REAL (a 4-byte float).
        return want == "FLOAT" and bool(want_args) and want_args[0] <= 24
    # NCHAR and NVARCHAR are accepted as CHAR and VARCHAR (and reflected so).
    return _NATIONAL.get(want) == have and have_args == want_args


# SQLite keeps the declared type's text, and SQLAlchemy reflects the names it
# does not know by SQLite's affinity rules (https://sqlite.org/datatype3.html,
# 3.1): a model's CLOB comes back as TEXT.
def _affinity(name: str) -> str:
    if "INT" in name:
        return "INTEGER"
    if any(word in name for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in name:
        return "BLOB"
    if any(word in name for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def _sqlite(stored: _Spelled, stated: _Spelled, dialect: Dialect) -> bool:
    have, want = stored[0], stated[0]
    known = getattr(dialect, "ischema_names", {})
    return want.split()[0] not in known and have == _affinity(want)
