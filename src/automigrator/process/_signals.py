"""Shutdown signals and the worker threads a wait may abandon.

**Signals.** uvicorn (and gunicorn's uvicorn worker) catch SIGTERM and
SIGINT themselves and only set a flag, which they read after the lifespan
start-up has finished. A replica waiting minutes for the lock or for the
database would ignore a shutdown until the lock timeout. For the whole run
we chain our handler in front of the server's (the server still sees the
signal) and record it; a *wait* (never a migration) is cancelled by it at
once, or as it begins if the signal came first. The previous handler is put
back after the run.

**Abandonable work.** A connect to a host that never answers can only be
left behind, not stopped: the driver's own timeouts end it later
(PostgreSQL's libpq may try several times, ten seconds each). In one of
anyio's worker threads, which are not daemon threads, it would keep the
process alive after a SIGTERM had ended the start-up: Python joins such
threads before exiting. So such work runs in a daemon thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any]

# anyio 4.1 renamed ``cancellable`` to ``abandon_on_cancel``; the 3.7 line
# that real lockfiles still pin (Starlette admits it) knows only the old name.
_ABANDON = (
    "abandon_on_cancel"
    if "abandon_on_cancel" in inspect.signature(anyio.to_thread.run_sync).parameters
    else "cancellable"
)


class _Listening:
    """The chained handlers of this process, while some run listens."""

    def __init__(self) -> None:
        self.runs = 0  # runs listening now (a group's members nest)
        self.received: list[int] = []
        self.scopes: set[anyio.CancelScope] = set()
        self.installed: dict[int, tuple[_Handler, _Handler]] = {}


_LISTENING = _Listening()


@contextmanager
def listening() -> Iterator[None]:
    """Around a whole run: record SIGINT/SIGTERM from its first instant.

    A signal that arrives before a wait begins (between the first log line
    and the first connection, say) still stops that wait as it starts,
    instead of being seen by the server alone, after the start-up.
    Only where the signal can be chained: in the main thread, on asyncio,
    and when a Python handler is installed (a default SIGTERM ends the
    process anyway, and an ignored one must stay ignored).
    """
    loop = _running_asyncio_loop()
    if threading.current_thread() is not threading.main_thread() or loop is None:
        yield
        return
    state = _LISTENING
    if state.runs == 0:
        state.received = []
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if callable(previous):
                ours = _chained(loop, previous)
                signal.signal(sig, ours)
                state.installed[sig] = (ours, previous)
    state.runs += 1
    try:
        yield
    finally:
        state.runs -= 1
        if state.runs == 0:
            for number, (ours, theirs) in state.installed.items():
                # Put the server's handler back, unless someone replaced ours meanwhile.
                if signal.getsignal(number) is ours:
                    signal.signal(number, theirs)
            state.installed.clear()


def _chained(loop: asyncio.AbstractEventLoop, previous: _Handler) -> _Handler:
    def handler(signum: int, frame: FrameType | None) -> Any:
        _LISTENING.received.append(signum)
        for scope in tuple(_LISTENING.scopes):
            # A signal handler may run in the middle of the event loop's own
            # code: hand the cancel to the loop instead of calling it here.
            loop.call_soon_threadsafe(scope.cancel)
        return previous(signum, frame)

    return handler


@contextmanager
def cancelled_by_shutdown(scope: anyio.CancelScope) -> Iterator[list[int]]:
    """Cancel ``scope`` when SIGINT or SIGTERM arrives, or has arrived in this run.

    Yields the signals received. Outside :func:`listening` it listens for
    the duration of the block only.
    """
    with listening():
        if _LISTENING.received:
            scope.cancel()
        _LISTENING.scopes.add(scope)
        try:
            yield _LISTENING.received
        finally:
            _LISTENING.scopes.discard(scope)


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # trio, or no loop at all
        return None


T = TypeVar("T")


async def abandonable(work: Callable[[], T]) -> T:
    """``work()`` in a daemon thread; a cancellation returns at once and leaves it running."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio: its worker threads, abandoned on cancel
        abandon: dict[str, Any] = {_ABANDON: True}
        return await anyio.to_thread.run_sync(work, **abandon)
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
