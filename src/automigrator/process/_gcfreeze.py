"""Keep the garbage collector's full passes short while a migration runs.

A migration runs in a worker thread, but a full (generation 2) collection
stops every thread, the event loop's included, for as long as it takes to
walk every object in the process: tens of milliseconds in an application with
a long history loaded (``nox -s bench -- lag``; docs/performance.md). Objects that
were alive before the migration began will be alive after it; freezing them
(``gc.freeze()``) takes them out of those passes, which then walk only what
the migration made. The migrator freezes again after importing the scripts
and every 100 revisions; cyclic garbage made meanwhile then waits for the
end of the run to be collected (a little more peak memory; measured in
docs/performance.md). Everything is unfrozen after.

Not done when the application manages freezing itself (a gunicorn
``preload`` app calls ``gc.freeze()`` before forking) or has the collector
off. CPython 3.12 starts with a few hundred objects of its own in the
permanent generation (375 for 3.12.1): what counts as the application's
freeze is anything beyond what was frozen when this module was imported.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Frozen before the application could freeze anything (the interpreter's own).
_AT_IMPORT = gc.get_freeze_count()
# While migrating, freeze what the migration made every so many revisions.
_REFREEZE_EVERY = 100


class FrozenHeap:
    """Handle of a freeze: ``more()`` freezes what was made since, if we own it."""

    def __init__(self, owned: bool) -> None:
        self.owned = owned

    def more(self) -> None:
        """Freeze what was made since (e.g. the revision modules just imported)."""
        if self.owned:
            gc.freeze()

    def after_revision(self, applied: int) -> None:
        """``applied`` revisions are done: every 100, what they made stays out of GC passes."""
        if applied % _REFREEZE_EVERY == 0:
            self.more()


# Our blocks in progress, in any thread: the heap is unfrozen when the last
# one ends. Counted here rather than asked of gc.get_freeze_count(), which
# walks every frozen object (a whole application's heap, milliseconds) at
# each call: it is asked only when no block of ours is under way.
_LOCK = threading.Lock()
_blocks = 0


@contextmanager
def frozen_heap() -> Iterator[FrozenHeap]:
    """Freeze what is alive now for the duration of the block, if nobody else does."""
    global _blocks
    with _LOCK:
        if not _blocks and (not gc.isenabled() or gc.get_freeze_count() > _AT_IMPORT):
            ours = False  # the application's own freeze, or no collector
        else:
            if not _blocks:
                gc.freeze()
            _blocks += 1
            ours = True
    if not ours:
        yield FrozenHeap(owned=False)
        return
    heap = FrozenHeap(owned=True)
    try:
        yield heap
    finally:
        heap.owned = False  # a handle kept past the block freezes nothing more
        with _LOCK:
            _blocks -= 1
            if not _blocks:
                gc.unfreeze()
