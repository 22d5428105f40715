"""One replica for the concurrency tests: waits for 'go' on stdin, migrates, prints JSON."""

from __future__ import annotations

import json
import logging
import os
import sys

import anyio

from automigrator import (
    AutoMigrator,
    Chain,
    LogAndContinue,
    PurgeAndRetry,
    RestoreBackup,
    Retry,
    Timeouts,
)
from automigrator.policies import FailurePolicy

# AM_POLICY=appliance: the documented recipe for unattended boxes. AM_LOCK_TIMEOUT
# and AM_LOCK_URL set Timeouts(lock=) and lock_url=.
POLICIES: dict[str, FailurePolicy] = {
    "appliance": Chain(Retry(delay=0.1), PurgeAndRetry(keep=3), LogAndContinue()),
    "restore": RestoreBackup(),
}


def main() -> None:
    ini, url = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    policy = POLICIES.get(os.environ.get("AM_POLICY", ""))
    migrator = AutoMigrator(
        ini,
        url=url,
        on_failure=policy,
        timeouts=Timeouts(lock=float(os.environ.get("AM_LOCK_TIMEOUT", "300"))),
        lock_url=os.environ.get("AM_LOCK_URL"),
    )
    print("ready", flush=True)
    sys.stdin.readline()  # the start gate: every replica is released at once
    status = anyio.run(migrator.run)
    print(json.dumps(status.to_dict()), flush=True)


if __name__ == "__main__":
    main()
