"""The revision files against the ledger: edited applied revisions, unrecorded ones, a dirty flag.

Every plan reads the ledger's latest row of each revision (one narrow query
after the version table's) and compares it here with the revision files'
fingerprints, remembered with the heads: nothing is parsed unless a file's
bytes changed, and then only that file (a reformatted file has the same
checksum). A check that found nothing is remembered with the heads by its
key (``audit_key``: the database's revisions and those rows): the next start
whose ledger reads the same, with the same files, knows the answer without
loading a fingerprint (at 1000 revisions that is most of the cost of a start
at head; docs/performance.md). Whole rows are read only to describe a
refusal. What it finds:

- an applied revision whose file was edited since it ran (or whose id now
  names another file): refused before any DDL with ``History(on_edit=
  "refuse")``, the default; a warning with ``"warn"``; not looked at with
  ``"off"``;
- applied revisions the ledger has no row for (a database migrated before
  the ledger, or by hand with Alembic): adopted under the lock;
- a revision left ``running`` or ``partial``: refused under the lock until a
  person resolves it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..database._ledger import APPLIED, DIRTY, Latest, LedgerEntry
from ..errors import EditedRevisionError
from ..process._gcfreeze import frozen_heap
from ._checksums import ALGORITHM
from ._fingerprints import Fingerprint, ancestry

if TYPE_CHECKING:
    from ._scripts import Scripts

Rows = Callable[[Collection[int]], Mapping[int, LedgerEntry]]
"""Whole ledger rows by id (``Ledger.by_id``): read only to describe a finding."""


@dataclass(frozen=True)
class Edit:
    """An applied revision whose file is not the one that ran."""

    revision: str
    path: str
    """The file now."""
    recorded: LedgerEntry
    """The ledger's row: the checksum and file when it ran (or was adopted, accepted)."""
    checksum: str | None
    """The file's checksum now (None: it does not parse)."""

    @property
    def renamed(self) -> bool:
        """The id now names a file of another name (and another meaning)."""
        script = self.recorded.script
        return bool(script) and script != _name(self.path)

    def describe(self) -> str:
        """What changed, with both checksums and the file."""
        then = self.recorded
        ran = f"{then.outcome} at {then.at}" + (f" by {then.host}" if then.host else "")
        if self.renamed:
            return (
                f"revision {self.revision} now names another file, {self.path} (it was "
                f"{then.script} when it ran: {ran}); checksum now {self.checksum}, "
                f"then {then.checksum}"
            )
        return (
            f"revision {self.revision} ({self.path}) was edited after it ran ({ran}): "
            f"checksum now {self.checksum}, then {then.checksum}"
        )


def _unrecorded(entry: Latest | None) -> bool:
    # In the database, but the ledger's last word on it is not that it is
    # (no row; or failed, undone: then applied another way, by hand).
    return entry is None or entry.outcome not in APPLIED | DIRTY


def _id(entry: Latest) -> int:
    return entry.id


def _name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Audit:
    """What the ledger says of the database's revisions against the files."""

    ledger: bool
    """Whether the ledger exists."""
    edited: tuple[Edit, ...] = ()
    unrecorded: tuple[str, ...] = ()
    """Revisions the database holds that the ledger has no row for: adopted under the lock."""
    dirty: LedgerEntry | None = None
    """A revision left running or partial (refused under the lock)."""
    checksums_computed: bool = False
    """A file's checksum was computed (its bytes changed): worth remembering."""
    unchecked: tuple[str, ...] = ()
    """Applied revisions recorded without a checksum of ours (sourceless files):
    never compared."""

    @property
    def clean(self) -> bool:
        """Nothing found: the ledger is there and agrees with the files, all of it checked."""
        return self.ledger and not (self.edited or self.unrecorded or self.dirty or self.unchecked)

    def edit_refusal(self) -> EditedRevisionError | None:
        """The error that refuses a start for the edited revisions, or None."""
        if not self.edited:
            return None
        first = self.edited[0]
        more = "".join(f"; {edit.describe()}" for edit in self.edited[1:])
        return EditedRevisionError(
            f"The {first.describe()}{more}. An applied revision never runs again: the "
            "database keeps what the file did then, so the edit would never reach it (nor "
            "any database already past it). Put the file back as it was (git log -p "
            f"{first.path}) and make the change in a new revision; or, if the database "
            "already matches the edited file, accept it: automigrator resolve "
            f'{first.revision} --accept-checksum --reason "...". Nothing was run.',
            revisions=tuple(edit.revision for edit in self.edited),
        )


def audit_key(latest: Mapping[str, Latest], db_revisions: Collection[str]) -> str:
    """What a check's answer depends on besides the files: the database's revisions
    and each revision's latest row (its outcome and checksums, not its id)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{ALGORITHM}\0{','.join(sorted(db_revisions))}".encode())
    for revision in sorted(latest):
        row = latest[revision]
        digest.update(f"\n{revision}\0{row.outcome}\0{row.checksum}\0{row.source_hash}".encode())
    return digest.hexdigest()


def check(
    scripts: Scripts,
    latest: Mapping[str, Latest] | None,
    db_revisions: tuple[str, ...],
    rows: Rows,
) -> Audit:
    """``audit()``, or its remembered answer when a check of the same key found
    nothing with the same files; a clean answer is remembered. Whole rows are
    read (``rows``) only to describe what was found."""
    key = None if latest is None else audit_key(latest, db_revisions)
    if key is not None and scripts.audited(key):
        return Audit(ledger=True)
    prints = scripts.fingerprints()  # not frozen: may read the graph (the app's hook)
    # Frozen: a comparison per revision, and a parse per changed file
    # (process/_gcfreeze; never across a wait).
    with frozen_heap():
        found = audit(latest, prints, db_revisions)
    if found.checksums_computed:
        scripts.keep_checksums()
    if key is not None and found.clean:
        scripts.remember_audit(key)
    return described(found, rows)


def audit(
    latest: Mapping[str, Latest] | None,
    fingerprints: Mapping[str, Fingerprint],
    db_revisions: tuple[str, ...],
) -> Audit:
    """Compare the ledger's latest rows with the files, for a database at ``db_revisions``.

    What it finds holds the narrow rows (``Latest.as_entry``): ``described()``
    puts the whole rows in.
    """
    found = latest or {}
    applied = ancestry(db_revisions, fingerprints)
    edited: list[Edit] = []
    unchecked: list[str] = []
    computed = False
    for revision, entry in found.items():
        fingerprint = fingerprints.get(revision)
        if entry.outcome not in APPLIED or fingerprint is None:
            continue  # not in the database, or the code does not know it (the plan says so)
        if not (entry.checksum or "").startswith(f"{ALGORITHM}:"):
            unchecked.append(revision)  # sourceless, or another algorithm's: cannot tell
            continue
        if entry.source_hash == fingerprint.source_hash:
            continue  # the very bytes that ran: no parse
        computed = computed or fingerprint.known_checksum is None
        now = fingerprint.checksum()
        if now != entry.checksum:
            edited.append(Edit(revision, fingerprint.path, entry.as_entry(), now))
    dirty = min((e for e in found.values() if e.outcome in DIRTY), key=_id, default=None)
    return Audit(
        ledger=latest is not None,
        edited=tuple(sorted(edited, key=lambda edit: edit.recorded.id)),
        unrecorded=tuple(sorted(rev for rev in applied if _unrecorded(found.get(rev)))),
        dirty=None if dirty is None else dirty.as_entry(),
        checksums_computed=computed,
        unchecked=tuple(sorted(unchecked)),
    )


def described(found: Audit, rows: Rows) -> Audit:
    """``found`` with the whole rows of what it found (one read; none if nothing)."""
    ids = [edit.recorded.id for edit in found.edited]
    if found.dirty is not None:
        ids.append(found.dirty.id)
    if not ids:
        return found
    whole = rows(ids)  # a row deleted since keeps what the narrow read knew
    return replace(
        found,
        edited=tuple(
            replace(edit, recorded=whole.get(edit.recorded.id, edit.recorded))
            for edit in found.edited
        ),
        dirty=None if found.dirty is None else whole.get(found.dirty.id, found.dirty),
    )
