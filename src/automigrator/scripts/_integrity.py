"""The revision files against the ledger: edited applied revisions, unrecorded ones, a dirty flag.

Every plan reads the ledger's latest row of each revision (one query after
the version table's) and compares it here with the revision files'
fingerprints, remembered with the heads: nothing is parsed unless a file's
bytes changed, and then only that file (a reformatted file has the same
checksum). What it finds:

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

from collections.abc import Mapping
from dataclasses import dataclass

from ..database._ledger import APPLIED, DIRTY, LedgerEntry
from ..errors import EditedRevisionError
from ._checksums import ALGORITHM
from ._fingerprints import Fingerprint, ancestry


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


def _unrecorded(entry: LedgerEntry | None) -> bool:
    # In the database, but the ledger's last word on it is not that it is
    # (no row; or failed, undone: then applied another way, by hand).
    return entry is None or entry.outcome not in APPLIED | DIRTY


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


def audit(
    latest: Mapping[str, LedgerEntry] | None,
    fingerprints: Mapping[str, Fingerprint],
    db_revisions: tuple[str, ...],
) -> Audit:
    """Compare the ledger's latest rows with the files, for a database at ``db_revisions``."""
    rows = latest or {}
    applied = ancestry(db_revisions, fingerprints)
    edited: list[Edit] = []
    unchecked: list[str] = []
    computed = False
    for revision, entry in rows.items():
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
            edited.append(Edit(revision, fingerprint.path, entry, now))
    dirty = [e for e in rows.values() if e.outcome in DIRTY]
    return Audit(
        ledger=latest is not None,
        edited=tuple(sorted(edited, key=lambda edit: edit.recorded.id)),
        unrecorded=tuple(sorted(rev for rev in applied if _unrecorded(rows.get(rev)))),
        dirty=min(dirty, key=lambda e: e.id) if dirty else None,
        checksums_computed=computed,
        unchecked=tuple(sorted(unchecked)),
    )
