"""The compatibility tables name the tests that prove each row: those tests must exist.

A renamed or deleted test would otherwise leave a row claiming a proof that
is gone. Names that follow a ``path::test`` on the same table cell
(``test_a``, ``test_b``) belong to the same file.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import sqlalchemy as sa
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from automigrator.database._connections import sync_url

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "compatibility.md"]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+)(?:\[[^\]]*\])?)?`")
BARE = re.compile(r"`(test_\w+)`")


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def references(page: Path) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for line in page.read_text().splitlines():
        if not line.startswith("|"):
            continue
        for cell in line.split("|"):
            file = None
            for token in re.finditer(rf"{REFERENCE.pattern}|{BARE.pattern}", cell):
                if token.group(1):
                    file = token.group(1)
                    found.append((file, token.group(2)))
                elif file is not None:
                    found.append((file, token.group(3)))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_named_test_exists(page: Path) -> None:
    refs = references(page)
    missing = [
        f"{file}::{name}" if name else file
        for file, name in refs
        if not (ROOT / file).is_file() or (name and name not in functions_in(ROOT / file))
    ]

    assert len(refs) >= 20  # the tables are there and were read
    assert missing == []


def test_the_readmes_demo_urls_have_their_drivers_in_the_example_extra() -> None:
    # `nox -s demo` installs `.[example]` and nothing else: a URL the README
    # offers for DATABASE_URL must find its drivers there (the async one the
    # app uses, and the synchronous one automigrator reads through).
    readme = (ROOT / "README.md").read_text()
    offer = readme[readme.index("Set `DATABASE_URL`") :].split("\n\n", 1)[0]
    urls = re.findall(r"`(\w+\+\w+://[^`]+)`", offer)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["example"]
    }
    installed = packages_distributions()

    assert len(urls) >= 2
    for url in map(sa.make_url, urls):
        for driver in {url.get_driver_name(), sync_url(url).get_driver_name()}:
            # Not installed here (nox -s floors has no example extra): a driver's
            # module and its distribution share the name.
            names = installed.get(driver, [driver])
            assert {canonicalize_name(d) for d in names} & extra, (str(url), driver)


def test_the_testing_pages_code_is_the_code_the_suite_runs() -> None:
    # Shown whole on the page (a snippet include is blank on GitHub and on
    # PyPI), and equal to the marked sections of the test file that runs it.
    page = (ROOT / "docs" / "testing.md").read_text()
    source = (ROOT / "tests" / "test_testing_helpers.py").read_text()
    shown = re.findall(
        r"<!-- the code of tests/test_testing_helpers\.py:(\w+),[^>]*-->\n```python\n(.*?)\n```",
        page,
        flags=re.DOTALL,
    )

    assert [name for name, _ in shown] == ["testclient", "lifespanmanager", "models"]
    for name, code in shown:
        marked = re.search(
            rf"# --8<-- \[start:{name}\]\n(.*?)\n# --8<-- \[end:{name}\]", source, re.DOTALL
        )
        assert marked is not None, name
        assert code == marked.group(1).rstrip("\n"), name
