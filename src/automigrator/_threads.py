"""Blocking work that a wait may abandon, in a daemon thread.

A connect to a host that never answers can only be left behind, not
stopped: the driver's own timeouts end it later (PostgreSQL's libpq may
try several times, ten seconds each). In one of anyio's worker threads,
which are not daemon threads, it would keep the process alive after a
SIGTERM had ended the start-up: Python joins such threads before exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

T = TypeVar("T")


async def abandonable(work: Callable[[], T]) -> T:
    """``work()`` in a daemon thread; a cancellation returns at once and leaves it running."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio: its worker threads, abandoned on cancel
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the waiter was cancelled: nobody wants it
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:
            result, error = None, exc
        # A closed loop (RuntimeError) means the process is ending: nobody waits.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="automigrator connect", daemon=True).start()
    return await future
