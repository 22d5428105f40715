"""The revisions a change adds: the revision files git sees as new since a ref.

For CI: ``automigrator lint --changed-from origin/main`` judges only the
revisions the branch adds, not every revision ever written. git is asked
for the files added since ``ref`` in the version folders (committed or not,
and the untracked ones); the graph says which revision each file holds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from alembic.script import ScriptDirectory

from ..errors import ConfigurationError
from ..scripts._alembic_compat import parents, version_locations


def added_revisions(script: ScriptDirectory, ref: str) -> tuple[str, ...]:
    """The revisions whose files are new since git ``ref``, in no particular order."""
    files: set[Path] = set()
    for folder in version_locations(script):
        files.update(_new_files(Path(folder), ref))
    by_path = {
        Path(rev.path).resolve(): rev.revision
        for rev in script.walk_revisions()
        if rev is not None and rev.path
    }
    return tuple(sorted(by_path[path] for path in files if path in by_path))


def starts(script: ScriptDirectory, added: tuple[str, ...]) -> tuple[str, ...]:
    """Where a lint of ``added`` starts: the revisions they follow that are not new."""
    new = set(added)
    return tuple(sorted({p for rev in added for p in parents(script, rev) if p not in new}))


def _new_files(folder: Path, ref: str) -> list[Path]:
    if not folder.is_dir():
        return []
    added = _git(folder, "diff", "--name-only", "--diff-filter=A", "--relative", ref, "--", ".")
    untracked = _git(folder, "ls-files", "--others", "--exclude-standard", "--", ".")
    return [
        (folder / name).resolve()
        for name in (*added.splitlines(), *untracked.splitlines())
        if name.endswith(".py")
    ]


def _git(folder: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(
            f"--changed-from needs git, which could not be run in {folder}: {exc}."
        ) from exc
    if done.returncode != 0:
        raise ConfigurationError(
            f"--changed-from: git {' '.join(args[:1])} failed in {folder}: "
            f"{done.stderr.strip()[:300]}. Give a ref git knows there (a branch, a tag, a "
            "commit; in CI fetch it first, e.g. git fetch origin main), or use --since REV."
        )
    return done.stdout
