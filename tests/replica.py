"""One replica for the concurrency tests: waits for 'go' on stdin, migrates, prints JSON."""

from __future__ import annotations

import json
import logging
import sys

import anyio

from automigrator import AutoMigrator


def main() -> None:
    ini, url = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    migrator = AutoMigrator(ini, url=url)
    print("ready", flush=True)
    sys.stdin.readline()  # the start gate: every replica is released at once
    status = anyio.run(migrator.run)
    print(json.dumps(status.to_dict()), flush=True)


if __name__ == "__main__":
    main()
