"""The scripts' heads remembered between starts, keyed on the files themselves.

Reading the graph from 1000 revision files costs about 0.1 s; listing them
costs about 2 ms. So the heads are kept in
``<script_location>/__pycache__/automigrator-heads.json`` (beside env.py's own
bytecode), under a key made of everything Alembic's answer depends on: the
version locations, the ``sourceless`` and ``recursive_version_locations``
options, Alembic's version, and the name, size and modification time (ns)
of every file under each version location. Any change to a file, a new file,
a removed one, changes the key, and the heads are read again.

Only graphs whose every file was read plainly are remembered: a file that had
to be imported may compute its names at run time. A cache that cannot be
written (a read-only image) is skipped without complaint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import alembic
from alembic.script import ScriptDirectory

logger = logging.getLogger("automigrator")

FILE_NAME = "automigrator-heads.json"
_FORMAT = 1


def fingerprint(script: ScriptDirectory) -> str | None:
    """A key that changes whenever Alembic could see other revisions; None if unlistable."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        f"{_FORMAT}|{alembic.__version__}|{script.sourceless}|"
        f"{script.recursive_version_locations}".encode()
    )
    try:
        for location in script._version_locations:
            digest.update(f"\0location {location}".encode())
            _add_tree(digest, str(location), "", with_pycache=script.sourceless)
    except OSError:
        return None
    return digest.hexdigest()


def _add_tree(digest: hashlib.blake2b, root: str, rel: str, *, with_pycache: bool) -> None:
    # Every file and folder, recursively, whatever recursive_version_locations
    # says: a key that covers more than Alembic reads is still a correct key.
    with os.scandir(root) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=True):
            if entry.name == "__pycache__" and not with_pycache:
                continue
            _add_tree(digest, entry.path, f"{rel}{entry.name}/", with_pycache=with_pycache)
        else:
            stat = entry.stat(follow_symlinks=True)
            digest.update(f"\0{rel}{entry.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())


def cache_path(script: ScriptDirectory) -> Path:
    return Path(script.dir) / "__pycache__" / FILE_NAME


def recall(script: ScriptDirectory) -> tuple[str, ...] | None:
    """The remembered heads, if the files are as they were when remembered."""
    key = fingerprint(script)
    if key is None:
        return None
    try:
        data = json.loads(cache_path(script).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    heads = data.get("heads")
    if not isinstance(heads, list) or not all(isinstance(h, str) for h in heads):
        return None
    return tuple(heads)


def remember(script: ScriptDirectory, heads: tuple[str, ...]) -> None:
    """Keep the heads for the next start, if the folder can be written."""
    key = fingerprint(script)
    if key is None:
        return
    path = cache_path(script)
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".automigrator-", suffix=".tmp")
    except OSError as exc:
        logger.debug("Not remembering the heads in %s: %s", path, exc)
        return
    try:
        # Written whole, then renamed: a reader never sees half a file, and
        # replicas writing at once each leave a complete one.
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"key": key, "heads": list(heads)}, out)
        os.replace(tmp, path)
    except OSError as exc:
        logger.debug("Not remembering the heads in %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
