"""The scripts' heads remembered between starts, keyed on the files themselves.

Reading the graph from the revision files' text costs far more than listing
them (docs/performance.md has the figures), and importing Alembic more again.
So the heads are kept in ``<script folder>/__pycache__/automigrator-heads.json``
(beside env.py's own bytecode), with everything Alembic's answer depended on:

- the config: the config file's bytes, the working folder (Alembic resolves a
  relative ``script_location`` against it) and Alembic's installed version;
- the version locations, ``sourceless`` and ``recursive_version_locations``,
  as Alembic resolved them when the heads were read;
- the name, size, modification and change times (ns) of every file under
  those locations, recursively.

Beside them, in ``automigrator-prints.json`` (same key), each revision's
fingerprint (``_fingerprints``: its file, parents, the hash of its bytes, its
checksum once computed): the ledger's check reads none of the files. And in
the heads' record, the keys of the ledger checks found clean
(``_integrity.audit_key``: the database's revisions and the ledger's latest
rows): a start at head whose ledger reads the same as a clean check's does
not load the fingerprints at all. Kept apart so that such a start parses a
few hundred bytes, not a record per revision.

On the next start the record is valid only if the config is the same and a
fresh listing of the recorded locations gives the same files: then Alembic
would see the same revisions. Nothing here imports Alembic. Only graphs whose
every file was read plainly are remembered (a file that had to be imported
may compute its names at run time). A cache that cannot be written (a
read-only image) or read (damaged) is skipped without complaint.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path
from stat import S_ISDIR
from typing import Any

logger = logging.getLogger("automigrator")

FILE_NAME = "automigrator-heads.json"
PRINTS_FILE_NAME = "automigrator-prints.json"
_FORMAT = 4  # 3: with the fingerprints; 4: fingerprints in a file of their own, clean checks
_AUDITS_KEPT = 8  # databases sharing the scripts (tenants, test databases) each keep theirs


def config_key(config_file: Path) -> str | None:
    """A key of the config as Alembic would read it; None if it cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        digest.update(config_file.read_bytes())
        digest.update(f"\0{os.getcwd()}\0{_alembic_stamp()}\0{_FORMAT}".encode())
    except OSError:
        return None
    return digest.hexdigest()


def options_key(options: dict[str, str | None], config_file: str | None) -> str:
    """A key of a ``Config`` built in code: the options Alembic finds the scripts by.

    With the bytes of its config file, if it names one.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(options, sort_keys=True).encode())
    if config_file is not None:
        with contextlib.suppress(OSError):
            digest.update(Path(config_file).read_bytes())
    digest.update(f"\0{os.getcwd()}\0{_alembic_stamp()}\0{_FORMAT}".encode())
    return digest.hexdigest()


def _alembic_stamp() -> str:
    # Alembic's version without importing it: its package file's size and
    # time change with every install.
    spec = importlib.util.find_spec("alembic")
    if spec is None or spec.origin is None:
        return "none"
    stat = os.stat(spec.origin)
    return f"{spec.origin}:{stat.st_size}:{stat.st_mtime_ns}"


def files_key(locations: list[str], *, sourceless: bool, recursive: bool) -> str | None:
    """A key of every file under the version locations; None if one cannot be listed."""
    parts = [f"{sourceless}|{recursive}"]
    try:
        for location in locations:
            parts.append(f"location {location}")
            _add_tree(parts, location, "", with_pycache=sourceless)
    except OSError:
        return None
    # One update of the whole listing: a thousand small ones cost more.
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


def _add_tree(parts: list[str], root: str, rel: str, *, with_pycache: bool) -> None:
    # Every file and folder, recursively, whatever recursive_version_locations
    # says: a key that covers more than Alembic reads is still a correct key.
    # Names, then a stat each, none kept: scandir's entries each keep their
    # stat, 0.9 MB of peak memory at 1000 files for the same system calls.
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        stat = os.stat(path)  # follows links, as Alembic's reads do
        if S_ISDIR(stat.st_mode):
            if name == "__pycache__" and not with_pycache:
                continue
            _add_tree(parts, path, f"{rel}{name}/", with_pycache=with_pycache)
        else:
            # The change time too: a copy that keeps size and modification
            # time (rsync -a, tar, a fixed-time image build) cannot set it.
            parts.append(f"{rel}{name}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}")


def recall(cache_file: Path, config: str) -> tuple[tuple[str, ...], Any] | None:
    """The remembered heads and their record, if the config and the files are as they were."""
    try:
        record: Any = json.loads(cache_file.read_text(encoding="utf-8"))
        if record.get("config") != config:
            return None
        locations = [str(location) for location in record["locations"]]
        key = files_key(
            locations, sourceless=bool(record["sourceless"]), recursive=bool(record["recursive"])
        )
        heads = tuple(str(head) for head in record["heads"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if key is None or record.get("files") != key:
        return None
    return heads, record


def recall_prints(cache_file: Path, record: Any) -> Any:
    """The fingerprints remembered with ``record`` (a valid heads' record); None
    if they were not, or not with these very files."""
    try:
        prints: Any = json.loads(
            cache_file.with_name(PRINTS_FILE_NAME).read_text(encoding="utf-8")
        )
        if (prints.get("config"), prints.get("files")) != (record["config"], record["files"]):
            return None
        return prints.get("revisions")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def audited(record: Any, key: str) -> bool:
    """Whether a ledger check of ``key`` was found clean with these files."""
    found = record.get("audited") if isinstance(record, dict) else None
    return isinstance(found, list) and key in found


def remember_audit(cache_file: Path, record: Any, key: str) -> dict[str, Any]:
    """Keep ``key`` among the clean checks of ``record`` (a valid heads' record);
    the record kept."""
    kept = [k for k in record.get("audited") or () if k != key and isinstance(k, str)]
    new = {**record, "audited": [key, *kept][:_AUDITS_KEPT]}
    _write(cache_file, new)
    return new


def remember(
    cache_file: Path,
    config: str,
    heads: tuple[str, ...],
    *,
    locations: list[str],
    sourceless: bool,
    recursive: bool,
    revisions: dict[str, Any] | None = None,
    files: str | None = None,
) -> dict[str, Any] | None:
    """Keep ``heads`` (and the ``revisions``' fingerprints), read from the files under
    ``locations``, for the next start; the record kept (None if none could be).

    ``files``: the files' key (``files_key``) taken *before* they were read,
    where the caller has it. A file edited while it was being read (or since)
    then leaves a record the next listing finds stale; a key taken now would
    bless the edit with the fingerprints of the bytes before it.
    """
    key = files or files_key(locations, sourceless=sourceless, recursive=recursive)
    if key is None:
        return None
    if revisions is not None:  # first: heads never stand beside older fingerprints
        _write(
            cache_file.with_name(PRINTS_FILE_NAME),
            {"config": config, "files": key, "revisions": revisions},
        )
    record = {
        "config": config,
        "locations": locations,
        "sourceless": sourceless,
        "recursive": recursive,
        "files": key,
        "heads": list(heads),
        "audited": [],
    }
    _write(cache_file, record)
    return record


def _write(path: Path, record: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".automigrator-", suffix=".tmp")
    except OSError as exc:
        logger.debug("Not remembering the heads in %s: %s", path, exc)
        return
    try:
        # Written whole, then renamed: a reader never sees half a file, and
        # replicas writing at once each leave a complete one.
        # dumps, not dump: dump encodes in Python, a few writes per value
        # (5 ms for a thousand revisions' fingerprints), dumps in C.
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(record))
        os.replace(tmp, path)
    except OSError as exc:
        logger.debug("Not remembering the heads in %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
