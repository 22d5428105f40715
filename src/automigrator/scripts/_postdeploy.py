"""Post-deploy revisions: the ones a start leaves for after the rollout.

A revision file that says ``post_deploy = True`` holds a change the old
version of the application, still serving during a rolling deploy, cannot
live with (a dropped or renamed column: the contract half of expand /
contract). A start applies what the new version needs and leaves such
revisions pending; ``automigrator upgrade --post-deploy``, run once the
rollout is done, applies them.

Only the pending post-deploy revisions that no pending ordinary revision
needs are left: one that an ordinary revision follows (an earlier release's,
whose post-deploy run never came) is applied at start-up with it, since the
version serving then was written for the change.
"""

from __future__ import annotations

from typing import Any

from alembic.script import ScriptDirectory

from ..errors import ConfigurationError
from ._alembic_compat import parents

ATTRIBUTE = "post_deploy"


def is_post_deploy(script: ScriptDirectory, revision: str) -> bool:
    """Whether ``revision``'s file says ``post_deploy = True``.

    Read from the module Alembic (or the plan's text reader) loaded; any
    value but True or False is a mistake to name, never taken for either.
    """
    found = script.get_revision(revision)
    value: Any = getattr(getattr(found, "module", None), ATTRIBUTE, False)
    if isinstance(value, bool):
        return value
    path = getattr(found, "path", revision)
    raise ConfigurationError(
        f"{path}: {ATTRIBUTE} = {value!r}: write '{ATTRIBUTE} = True' to leave this revision "
        "for 'automigrator upgrade --post-deploy' after the rollout, or remove the line. "
        "Nothing was changed."
    )


def split(
    script: ScriptDirectory, pending: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``pending`` (in upgrade order) split into what a start applies and what it leaves.

    Returns (applied now, left for the post-deploy run, the upgrade's
    destination: the newest revisions applied now). What is applied now is
    every ordinary pending revision and every pending revision they follow;
    the rest, all post-deploy, is left. Nothing left: ``(pending, (), ())``.
    """
    marked = {revision for revision in pending if is_post_deploy(script, revision)}
    if not marked:
        return pending, (), ()
    inside = set(pending)
    needed: set[str] = set()
    stack = [revision for revision in pending if revision not in marked]
    while stack:
        revision = stack.pop()
        if revision not in needed:
            needed.add(revision)
            stack.extend(p for p in parents(script, revision) if p in inside)
    left = tuple(revision for revision in pending if revision not in needed)
    if not left:
        return pending, (), ()
    below = {p for revision in needed for p in parents(script, revision)}
    newest = tuple(sorted(revision for revision in needed if revision not in below))
    return tuple(r for r in pending if r in needed), left, newest
