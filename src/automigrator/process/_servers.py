"""The server we run under, where it decides what a failed start-up costs.

A migration that fails in the background (``block_startup=False``) fails
after the server has started: nothing stops the process, and an app that
stays alive and never ready is a zombie. So a process that is the server
asks it to stop (``stop_this_server``), as a failed start would have; a
worker, which its server would only start again in a loop, fails its
liveness instead (the gate answers 503 on every path).

uvicorn 0.30 to 0.49, with ``--workers``, starts a worker whose start-up
failed again, for ever (0.50 stops the parent instead: uvicorn#3001). A
failing revision would then run, and be rolled back, every second or two in
every worker. The ledger keeps it from running again (``History``'s
``rerun_failed_after``); this says, loudly and at each start, which server
loops and what ends the loop.
"""

from __future__ import annotations

import os
import signal
import sys

# The multiprocess manager that restarts dead workers came in 0.30 (#2183);
# 0.50 stops the parent when a worker fails to start (#3001).
_LOOPING_UVICORN = ((0, 30), (0, 50))


def looping_server() -> str | None:
    """``"uvicorn 0.49.0"`` in a worker of a server that restarts a worker whose
    start-up failed, for ever; else None."""
    # Asked of what is already imported: a spawned worker has multiprocessing
    # loaded, and importing it here cost every start 1.7 ms.
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None or multiprocessing.parent_process() is None:
        return None
    uvicorn = sys.modules.get("uvicorn")
    version = str(getattr(uvicorn, "__version__", ""))
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None
    low, high = _LOOPING_UVICORN
    return f"uvicorn {version}" if low <= major_minor < high else None


def stop_this_server() -> str | None:
    """Ask the server this process runs to shut down, as SIGTERM does; None if sent,
    else why not: a worker that its server would start again (uvicorn's
    ``--workers``, gunicorn's), which would loop; or no handler of SIGTERM
    installed (no server to shut down gracefully: a test, a REPL)."""
    restarted = _restarted_worker()
    if restarted is not None:
        return restarted
    handler = signal.getsignal(signal.SIGTERM)
    if handler in (signal.SIG_DFL, signal.SIG_IGN, None):
        return "nothing here handles SIGTERM to shut a server down"
    os.kill(os.getpid(), signal.SIGTERM)
    return None


def _restarted_worker() -> str | None:
    # gunicorn's arbiter and uvicorn's multiprocess supervisor (0.30 and
    # later) start a worker that exited again; granian's (unless told to
    # respawn) and hypercorn's do not.
    if "gunicorn.workers.base" in sys.modules:
        return "a gunicorn worker, which its arbiter would start again"
    multiprocessing = sys.modules.get("multiprocessing")
    spawned = multiprocessing is not None and multiprocessing.parent_process() is not None
    others = ("granian", "hypercorn")
    if spawned and "uvicorn" in sys.modules and not any(m in sys.modules for m in others):
        return "a uvicorn worker, which uvicorn would start again"
    return None
