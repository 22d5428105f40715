"""The scripts' heads from the files' text alone: a cold start at head without Alembic.

A new container starts with nothing remembered (often with a read-only
script folder), and importing Alembic to build the graph is most of
such a start (figures in docs/performance.md). When the files are plain
(not ``sourceless``) and their folders can be told without Alembic (the
``versions`` folder under ``script_location``, or ``version_locations``
split as Alembic splits it, ``pkg:dir`` found without importing ``pkg``:
``_configfile``), and every file states its names plainly, the heads are
computed here the way Alembic computes them: the revisions that no other
names as a ``down_revision``. Anything this module does not fully
understand (a computed name, an id used twice, a parent that does not
exist, a cycle) returns None, and the caller asks Alembic. Property tests
hold the answer equal to Alembic's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._configfile import Settings
from ._fingerprints import Fingerprint, of_bytes, parents_of
from ._headcache import files_key
from ._revisiontext import as_tuple, cycle, read_names

# Alembic's own filter of revision file names (script/base.py,
# ``_only_source_rev_file``): a .py file not starting with ".#" or "__init__".
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
# SQLAlchemy's asbool, which Alembic's boolean options go through.
_TRUE = frozenset(("true", "yes", "on", "y", "t", "1"))
_FALSE = frozenset(("false", "no", "off", "n", "f", "0"))


@dataclass(frozen=True)
class PlainHeads:
    """Heads computed without Alembic, and where they were read from."""

    heads: tuple[str, ...]
    """Sorted, as the rest of the package keeps heads."""
    folders: tuple[Path, ...]
    """The version folders Alembic would read, in its order."""
    recursive: bool
    fingerprints: dict[str, Fingerprint]
    """Each revision's file, parents and bytes' hash (read with the names)."""
    files: str | None
    """The files' key (``_headcache.files_key``), taken before they were read."""


def read(settings: Settings) -> PlainHeads | None:
    """The heads of the scripts ``settings`` points at; None when Alembic must say."""
    recursive = _plain_layout(settings.layout)
    folders = settings.version_folders()
    if recursive is None or folders is None:
        return None
    if not all(folder.is_dir() for folder in folders):
        return None  # Alembic would see no revisions there: let it report that
    parents: dict[str, tuple[str, ...]] = {}
    depends: list[str] = []
    labels: set[str] = set()
    prints: dict[str, Fingerprint] = {}
    places = [str(folder.absolute()) for folder in folders]
    key = files_key(places, sourceless=False, recursive=recursive)
    files: list[str] = []
    for folder in folders:
        found = _revision_files(folder, recursive=recursive)
        if found is None:
            return None
        files.extend(found)
    for path in files:
        try:
            data = _whole(path)
            names = read_names(data.decode("utf-8"))
        except (OSError, UnicodeDecodeError):
            return None
        if names is None or names["revision"] in parents:
            return None  # computed names, or an id used twice (Alembic keeps one)
        prints[names["revision"]] = of_bytes(names["revision"], parents_of(names), path, data)
        parents[names["revision"]] = tuple(str(p) for p in as_tuple(names["down_revision"]))
        depends.extend(str(d) for d in as_tuple(names.get("depends_on")))
        labels.update(str(label) for label in as_tuple(names.get("branch_labels")))
    if not parents:
        return None
    if any(p not in parents for ps in parents.values() for p in ps):
        return None  # a parent that does not exist: Alembic's error, named by the caller
    if any(d not in parents and d not in labels for d in depends):
        return None
    if cycle({rev: list(ps) for rev, ps in parents.items()}) is not None:
        return None
    # depends_on does not make a head: Alembic discards a head only for the
    # revisions that name it as down_revision (RevisionMap.heads).
    named = {p for ps in parents.values() for p in ps}
    heads = tuple(sorted(rev for rev in parents if rev not in named))
    return PlainHeads(
        heads, tuple(folder.absolute() for folder in folders), recursive, prints, key
    )


def _whole(path: str) -> bytes:
    # os.open and os.read on a plain string: at 1000 files, open() and its
    # buffered reader were half of the read, and pathlib a fifth before that.
    # Read until the end says so: a read may return less than asked.
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


_CHUNK = 1 << 16


def _plain_layout(layout: Mapping[str, object]) -> bool | None:
    # Whether recursive_version_locations is on, for plain files; None where
    # they are not (sourceless) or for a value this module would have to guess.
    if _flag(layout.get("sourceless")) is not False:
        return None
    return _flag(layout.get("recursive_version_locations"))


def _flag(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _revision_files(versions: Path, *, recursive: bool) -> list[str] | None:
    # In Alembic's order (Script._list_py_dir): each folder's files sorted,
    # sub-folders sorted and walked top-down, __pycache__ skipped. None if
    # there is a symbolic link: Alembic skips a file it reaches twice by its
    # real path, and walks linked folders differently by Python version;
    # only it should judge those.
    found: list[str] = []
    folders = [str(versions)]
    while folders:
        folder = folders.pop(0)
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        if any(entry.is_symlink() for entry in entries):
            return None
        for entry in entries:
            if not entry.is_dir() and _REVISION_FILE.match(entry.name):
                found.append(entry.path)
        if recursive:
            below = [e for e in entries if e.is_dir() and not e.name.endswith("__pycache__")]
            folders[:0] = [e.path for e in below]
    return found
