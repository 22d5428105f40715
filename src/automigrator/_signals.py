"""Stop waiting when the server is asked to stop.

uvicorn (and gunicorn's uvicorn worker) catch SIGTERM and SIGINT themselves
and only set a flag, which they read after the lifespan start-up has finished.
A replica waiting minutes for the lock or for the database would ignore a
shutdown until ``lock_timeout``. While we *wait* (never while we migrate), we
chain our handler in front of the server's: the server still sees the signal,
and our wait is cancelled at once. The previous handler is put back after.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import anyio

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any]


@contextmanager
def cancelled_by_shutdown(scope: anyio.CancelScope) -> Iterator[list[int]]:
    """Cancel ``scope`` when SIGINT or SIGTERM arrives; yields the signals received.

    Only where the signal can be chained: in the main thread, on asyncio, and
    when a Python handler is installed (a default SIGTERM ends the process
    anyway, and an ignored one must stay ignored).
    """
    received: list[int] = []
    loop = _running_asyncio_loop()
    if threading.current_thread() is not threading.main_thread() or loop is None:
        yield received
        return
    installed: dict[int, tuple[_Handler, _Handler]] = {}

    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: _Handler = previous) -> Any:
            received.append(signum)
            # A signal handler may run in the middle of the event loop's own
            # code: hand the cancel to the loop instead of calling it here.
            loop.call_soon_threadsafe(scope.cancel)
            return previous(signum, frame)

        signal.signal(sig, handler)
        installed[sig] = (handler, previous)
    try:
        yield received
    finally:
        for number, (ours, theirs) in installed.items():
            # Put the server's handler back, unless someone replaced ours meanwhile.
            if signal.getsignal(number) is ours:
                signal.signal(number, theirs)


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # trio, or no loop at all
        return None
