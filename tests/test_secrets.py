"""Nothing secret leaves: passwords in no output, private data not on anonymous endpoints.

A password holding every character a URL treats specially (``@ : / %``) goes
through each path that can echo it: a usage error, an unparsable URL, an ini
interpolation error, an unreachable server, a failing migration. A one-letter
password must not mangle the words around it. The health endpoint shows no
user, host, port, database name or row data.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, ConfigurationError, HealthApp, LogAndContinue, Timeouts
from tests.conftest import server_url
from tests.helpers import deployed, get, run_cli

PASSWORD = "p@ss:w/rd%25x"  # '%25' is a literal part of it, not an escape
FORMS = (PASSWORD, quote(PASSWORD, safe=""), "rd%25x", "w/rd", "%25x")


def secret_url(port: int = 1) -> str:
    url = URL.create(
        "postgresql+psycopg", username="app", password=PASSWORD, host="127.0.0.1", port=port
    )
    return url.set(database="app").render_as_string(hide_password=False)


def assert_hidden(text: str) -> None:
    for form in FORMS:
        assert form not in text, f"{form!r} leaked: {text}"


def test_no_password_in_usage_errors(ini: Path) -> None:
    # An option it does not know: argparse quotes what it did not take.
    run = run_cli("-c", str(ini), "upgrade", "--no-such-option", secret_url())

    assert run.returncode == 2
    assert "unrecognized arguments" in run.stderr
    assert_hidden(run.stdout + run.stderr)


def test_no_password_from_an_unparsable_url(ini: Path) -> None:
    broken = secret_url().replace("://", "//")  # the ':' forgotten

    run = run_cli("-c", str(ini), "--url", broken, "check")

    assert run.returncode == 2
    assert "Could not parse the database URL" in run.stderr
    assert_hidden(run.stderr)


def test_no_password_from_an_ini_interpolation_error(ini: Path) -> None:
    # Written raw into alembic.ini: '%' must be doubled there, and is not.
    text = ini.read_text()
    ini.write_text(text.replace("driver://user:pass@localhost/dbname", secret_url()))

    run = run_cli("-c", str(ini), "check")

    assert run.returncode == 2
    assert "Write a literal % as %%" in run.stderr
    assert_hidden(run.stderr)


def test_no_password_when_the_server_is_unreachable(ini: Path) -> None:
    run = run_cli("-c", str(ini), "--url", secret_url(port=1), "--connect-timeout", "0", "check")

    assert run.returncode == 13
    assert_hidden(run.stderr)


def test_a_one_letter_password_mangles_no_word(ini: Path) -> None:
    url = server_url("postgresql").set(password="x", database="no_such_database_exists")
    migrator = AutoMigrator(ini, url=url, timeouts=Timeouts(connect=0))

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "does not exist" in caught.value.message  # not "does not e***ist"
    assert "no_such_database_exists" in caught.value.message


def test_mariadbs_own_words_about_a_password_stay_whole(ini: Path) -> None:
    # MariaDB says "(using password: YES)": the words of the server, no secret.
    url = server_url("mariadb").set(password="sEcret-9")
    migrator = AutoMigrator(ini, url=url, timeouts=Timeouts(connect=0))

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    assert "(using password: YES)" in caught.value.message
    assert "sEcret-9" not in caught.value.message


def test_health_shows_no_database_details_or_row_data(tmp_path: Path) -> None:
    # MariaDB quotes the offending row in its error: Duplicate entry 'ann'.
    admin = server_url("mariadb")
    url = admin.set(database=f"am_{tmp_path.name[-8:].replace('-', '_')}")
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{url.database}`")
    try:
        ini = deployed(tmp_path, url)
        migrator = AutoMigrator(ini, url=url, on_failure=LogAndContinue())
        anyio.run(migrator.run)
        assert "ann" in str(migrator.status.error)  # the operator's log has it

        default = anyio.run(get, HealthApp(migrator))
        shown = anyio.run(get, HealthApp(migrator, show_error=True))
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE `{url.database}`")
        engine.dispose()

    assert default.json()["error_kind"] == "migration"
    assert "error" not in default.json()
    assert "Duplicate entry" in shown.json()["error"]
    for response in (default, shown):
        assert isinstance(response, httpx.Response)
        for private in ("ann", str(url.database), str(url.host), str(url.port), "root"):
            assert private not in response.text, f"{private!r} in {response.text}"
