"""``python -m automigrator``: the command line (see ``automigrator.cli``)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
