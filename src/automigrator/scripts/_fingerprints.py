"""Each revision file's fingerprint: its name, its parents, a hash of its bytes, its checksum.

The ledger compares them with what it recorded when each revision ran. The
bytes' hash is the quick comparison (no parse); only a file whose bytes
changed has its checksum computed (``_checksums``: its meaning, not its
form) and compared. Fingerprints are read where the heads are read (the
files' text, or the graph) and remembered with them (``_headcache``, same
validity rule), so a start at head reads none of the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..database._ledger import RevisionFacts
from ._checksums import checksum, source_hash
from ._revisiontext import as_tuple


@dataclass
class Fingerprint:
    """One revision file, as the ledger compares it."""

    revision: str
    parents: tuple[str, ...]
    """Its ``down_revision`` and ``depends_on`` revisions: what it is applied after."""
    path: str
    source_hash: str
    known_checksum: str | None = field(default=None)
    """The checksum, once computed (or remembered)."""

    @property
    def script(self) -> str:
        """The file's name, as the ledger records it."""
        return os.path.basename(self.path)

    def checksum(self) -> str | None:
        """The checksum of the file's meaning; computed once (a parse), then kept."""
        if self.known_checksum is None:
            try:
                self.known_checksum = checksum(Path(self.path).read_bytes())
            except OSError:
                return None
        return self.known_checksum

    def facts(self) -> RevisionFacts:
        """What the ledger records of it (the checksum computed if not yet)."""
        return RevisionFacts(
            revision=self.revision,
            parents=self.parents,
            script=self.script,
            source_hash=self.source_hash,
            checksum=self.checksum(),
        )

    def to_record(self) -> list[Any]:
        """For the heads cache."""
        return [self.path, list(self.parents), self.source_hash, self.known_checksum]


def of_bytes(revision: str, parents: Iterable[Any], path: str, data: bytes) -> Fingerprint:
    """A revision's fingerprint from its file's bytes (read by the caller)."""
    return Fingerprint(
        revision, tuple(str(p) for p in parents), os.path.abspath(path), source_hash(data)
    )


def parents_of(names: Mapping[str, Any]) -> tuple[str, ...]:
    """``down_revision`` and ``depends_on`` from a file's names (labels included:
    the ancestry walk skips what is not a revision)."""
    return tuple(
        str(p) for p in (*as_tuple(names.get("down_revision")), *as_tuple(names.get("depends_on")))
    )


def of_script(script: Any) -> Fingerprint | None:
    """An Alembic ``Script``'s fingerprint; None if its file cannot be read."""
    path = getattr(script, "path", None)
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    parents = (*as_tuple(script.down_revision), *as_tuple(getattr(script, "dependencies", None)))
    return of_bytes(str(script.revision), parents, str(path), data)


def of_graph(script_directory: Any) -> dict[str, Fingerprint]:
    """Every revision of an Alembic ``ScriptDirectory`` (imported or read from text)."""
    found: dict[str, Fingerprint] = {}
    for script in script_directory.walk_revisions():
        fingerprint = of_script(script)
        if fingerprint is not None:
            found[fingerprint.revision] = fingerprint
    return found


def from_record(record: Any) -> dict[str, Fingerprint] | None:
    """The fingerprints the heads cache kept; None if it kept none (or damaged)."""
    if not isinstance(record, dict):
        return None
    try:
        return {
            str(rev): Fingerprint(
                str(rev), tuple(str(p) for p in parents), str(path), str(digest), known
            )
            for rev, (path, parents, digest, known) in record.items()
        }
    except (TypeError, ValueError):
        return None


def to_record(fingerprints: Mapping[str, Fingerprint]) -> dict[str, list[Any]]:
    """For the heads cache."""
    return {rev: fingerprint.to_record() for rev, fingerprint in fingerprints.items()}


def ancestry(tips: Iterable[str], fingerprints: Mapping[str, Fingerprint]) -> set[str]:
    """``tips`` and every revision they were applied after (the revisions a database
    at ``tips`` holds), as far as the fingerprints know them."""
    seen: set[str] = set()
    todo = [tip for tip in tips if tip in fingerprints]
    while todo:
        revision = todo.pop()
        if revision in seen:
            continue
        seen.add(revision)
        todo.extend(p for p in fingerprints[revision].parents if p in fingerprints)
    return seen
