"""Our lines are shown by default, and only where the application set up nothing."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from automigrator.process._logging import ServerLogHandler, show_by_default


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def bare_logging() -> Iterator[logging.Logger]:
    """No root handler (as under a plain server); everything put back after.

    Entered in the test's body: pytest adds its capture handlers to the root
    logger after the fixtures are set up.
    """
    ours, root = logging.getLogger("automigrator"), logging.getLogger()
    saved = (list(root.handlers), list(ours.handlers), ours.level, root.level)
    root.handlers[:], ours.handlers[:] = [], []
    ours.setLevel(logging.NOTSET)
    root.setLevel(logging.WARNING)  # Python's default, whatever earlier tests set
    try:
        yield ours
    finally:
        root.handlers[:], ours.handlers[:] = saved[0], saved[1]
        ours.setLevel(saved[2])
        root.setLevel(saved[3])


def test_lines_go_to_the_servers_own_log() -> None:
    server, error = logging.getLogger("uvicorn"), logging.getLogger("uvicorn.error")
    collect = Collect()
    server.addHandler(collect)
    try:
        with bare_logging() as ours:
            show_by_default()
            ours.info("Applied %d/%d", 1, 3)
    finally:
        server.removeHandler(collect)
    assert error.propagate  # uvicorn's handlers sit on "uvicorn"
    assert collect.lines == ["automigrator: Applied 1/3"]


def test_an_app_that_set_up_logging_keeps_control() -> None:
    mine = Collect()
    with bare_logging() as ours:
        logging.getLogger().addHandler(mine)
        show_by_default()
        assert ours.handlers == []
        assert ours.level == logging.NOTSET  # its INFO lines stay off, as the root says
        ours.info("not shown")
    assert mine.lines == []


def test_the_handler_steps_aside_once_the_app_sets_up_logging(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mine = Collect()
    with bare_logging() as ours:
        show_by_default()
        assert [type(h) for h in ours.handlers] == [ServerLogHandler]
        ours.info("first")
        logging.getLogger().addHandler(mine)
        ours.info("second")
    err = capsys.readouterr().err
    assert "automigrator: first" in err
    assert "second" not in err  # shown once, by the application's handler
    assert mine.lines == ["second"]


PLUGIN_PROBE = """
import logging, sys, anyio
logging.basicConfig(level=logging.INFO)  # an app that logs at INFO
if sys.argv[3] == "wanted":
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.INFO)
from automigrator import AutoMigrator
anyio.run(AutoMigrator(sys.argv[1], url=sys.argv[2]).run)
"""


@pytest.mark.skipif(
    importlib.util.find_spec("alembic.runtime.plugins") is None,
    reason="this Alembic has no plugins, so no plugin set-up lines (they came in 1.17)",
)
def test_alembics_plugin_lines_stay_out_of_an_info_log_unless_asked_for(
    ini: Path, sqlite_url: URL
) -> None:
    def start(choice: str) -> str:
        # A database of its own each time: both starts migrate, importing Alembic.
        url = sqlite_url.set(database=f"{sqlite_url.database}.{choice}")
        argv = [sys.executable, "-c", PLUGIN_PROBE, str(ini), str(url), choice]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stderr

    quiet = start("default")
    assert "automigrator:Schema ready" in quiet
    assert "setup plugin" not in quiet
    assert "setup plugin" in start("wanted")  # the app's own setting wins
