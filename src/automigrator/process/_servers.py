"""The server we run under, where it decides what a failed start-up costs.

A migration that fails in the background (``block_startup=False``) fails
after the server has started: nothing stops the process, and an app that
stays alive and never ready is a zombie no liveness probe restarts. So the
process asks its own server to stop (``stop_this_server``), as a failed
start would have.

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


def stop_this_server() -> bool:
    """Ask the server this process runs to shut down, as SIGTERM does; False (nothing
    sent) where no handler of SIGTERM is installed: there would be no graceful
    shutdown, only the end of the process (a test's, a REPL's)."""
    handler = signal.getsignal(signal.SIGTERM)
    if handler in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False
    os.kill(os.getpid(), signal.SIGTERM)
    return True
