"""The at-head fast path: heads read without importing, equal to Alembic's own."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, History, MigrationState, SchemaAheadError
from automigrator.scripts import _plainheads
from automigrator.scripts._configfile import read_settings
from automigrator.scripts._revisiontext import read_names
from automigrator.scripts._textgraph import load
from tests.conftest import revisions
from tests.project import ALEMBIC, CHAIN, Rev, write_revision

# How a revision file can state its names. The last styles are not plain
# (computed, or shown again in the docstring): the fast path must import those.
STYLES = (
    "plain",
    "annotated",
    "multiline",
    "list",
    "reassigned",
    "commented",
    "computed",
    "docstring_decoy",
)


@dataclass(frozen=True)
class FakeRev:
    id: str
    down: tuple[str, ...]
    labels: tuple[str, ...]
    depends: tuple[str, ...]
    style: str
    folder: int  # which version location
    subfolder: bool  # in a subfolder (with recursive_version_locations)
    compiled: bool  # only its .pyc is shipped (with sourceless = true)


def render(rev: FakeRev) -> str:
    down: object = None if not rev.down else rev.down[0] if len(rev.down) == 1 else rev.down
    doc = f'"""step {rev.id}\n\nRevision ID: {rev.id}\nRevises: {", ".join(rev.down)}\n'
    if rev.style == "docstring_decoy":
        doc += "\nrevision = 'decoy'\n"
    doc += '"""\n'
    if rev.style == "annotated":
        names = (
            f"revision: str = {rev.id!r}\n"
            f"down_revision: Union[str, Sequence[str], None] = {down!r}\n"
            f"branch_labels: Union[str, Sequence[str], None] = {rev.labels or None!r}\n"
            f"depends_on: Union[str, Sequence[str], None] = {rev.depends or None!r}\n"
        )
    elif rev.style == "reassigned":
        # A newer template's annotated lines, then an older edit's plain ones:
        # the last assignment wins, as in Python.
        names = (
            "# -*- coding: utf-8 -*-\n"
            "revision: str = 'placeholder'\n"
            "down_revision: Union[str, Sequence[str], None] = None\n"
            f"revision = {rev.id!r}\n"
            f"down_revision = {down!r}\n"
            f"branch_labels: Optional[Sequence[str]] = ({rev.labels or None!r})\n"
            f"depends_on = {rev.depends or None!r}\n"
        )
    elif rev.style == "commented":
        names = (
            f"revision: str = {rev.id!r}  # pragma: allowlist secret\n"
            f"down_revision: Union[str, Sequence[str], None] = {down!r}  # = {rev.id!r}\n"
            f"branch_labels = {rev.labels or None!r}; depends_on = {rev.depends or None!r}\n"
        )
    elif rev.style == "multiline":
        parents = "".join(f"    {d!r},\n" for d in rev.down)
        names = (
            f"revision = {rev.id!r}  # the id\n"
            f"down_revision = (\n{parents})\n"
            f"branch_labels = {list(rev.labels)!r}\n"
            f"depends_on = None if {not rev.depends} else {rev.depends!r}\n"
        )
    elif rev.style == "computed":
        half = len(rev.id) // 2
        names = (
            f"revision = {rev.id[:half]!r} + {rev.id[half:]!r}\n"
            f"down_revision = {down!r}\n"
            f"branch_labels = {rev.labels!r}\n"
            f"depends_on = {rev.depends!r}\n"
        )
    else:
        as_list = rev.style == "list"
        names = (
            f"revision = {rev.id!r}\n"
            f"down_revision = {list(rev.down) if as_list else down!r}\n"
            f"branch_labels = {rev.labels or None!r}\n"
            f"depends_on = {rev.depends or None!r}\n"
        )
    imports = "from typing import Optional, Sequence, Union\n\nfrom alembic import op\n\n"
    body = "\n\ndef upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    return doc + imports + names + body


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[FakeRev], bool, int, bool]:
    count = draw(st.integers(1, 20))
    folders = draw(st.integers(1, 2))
    recursive = draw(st.booleans())
    sourceless = draw(st.booleans())
    ids = [
        f"{i:02d}{draw(st.text('abcdef0123456789', min_size=6, max_size=6))}" for i in range(count)
    ]
    revs: list[FakeRev] = []
    for i, rev_id in enumerate(ids):
        earlier = ids[:i]
        if not earlier or draw(st.integers(0, 9)) == 0:
            down: tuple[str, ...] = ()  # a base (several bases: several branches)
        else:
            down = tuple(
                draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3, unique=True))
            )
        labels = (f"label{i}",) if draw(st.integers(0, 5)) == 0 else ()
        depends: tuple[str, ...] = ()
        if draw(st.booleans()) and earlier:
            depends = tuple(draw(st.lists(st.sampled_from(earlier), max_size=1)))
        revs.append(
            FakeRev(
                rev_id,
                down,
                labels,
                tuple(d for d in depends if d not in down),
                draw(st.sampled_from(STYLES)),
                draw(st.integers(0, folders - 1)),
                recursive and draw(st.integers(0, 4)) == 0,
                sourceless and draw(st.booleans()),
            )
        )
    return revs, recursive, folders, sourceless


def write_project(
    root: Path, revs: list[FakeRev], recursive: bool, folders: int, sourceless: bool
) -> Config:
    locations = [root / f"versions{n}" for n in range(folders)]
    for location in locations:
        (location / "sub").mkdir(parents=True)
        # Files Alembic skips: ours must skip them too.
        (location / "__init__.py").write_text("revision = 'not_a_revision'\n")
        (location / "notes.txt").write_text("revision = 'nor_this'\n")
    for rev in revs:
        folder = locations[rev.folder] / ("sub" if rev.subfolder else "")
        source = folder / f"{rev.id}_step.py"
        source.write_text(render(rev))
        if rev.compiled:
            py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)))
            source.unlink()
    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", str(root))
    # Alembic 1.16 renamed the option that splits version_locations.
    cfg.set_main_option("path_separator" if ALEMBIC >= (1, 16) else "version_path_separator", "os")
    cfg.set_main_option("version_locations", ":".join(str(p) for p in locations))
    cfg.set_main_option("recursive_version_locations", str(recursive).lower())
    cfg.set_main_option("sourceless", str(sourceless).lower())
    return cfg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_heads_equal_alembics_for_random_graphs(
    graph: tuple[list[FakeRev], bool, int, bool],
) -> None:
    revs, recursive, folders, sourceless = graph
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_project(Path(tmp), revs, recursive, folders, sourceless)
        expected = tuple(sorted(ScriptDirectory.from_config(cfg).get_heads()))
        read = load(cfg)
        assert read is not None
        assert read.heads == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# toml configs came in Alembic 1.16.
@given(graphs(), st.sampled_from(["ini", "toml"] if ALEMBIC >= (1, 16) else ["ini"]))
def test_heads_computed_without_alembic_equal_alembics(
    graph: tuple[list[FakeRev], bool, int, bool], config_format: str
) -> None:
    # Alembic's default layout (one versions folder, recursive or not), as a
    # config file on disk: the cold start's path, which never imports Alembic.
    revs, recursive, _, _ = graph
    revs = [replace(rev, folder=0, compiled=False) for rev in revs]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root / "migrations", revs, recursive, 1, sourceless=False)
        (root / "migrations" / "versions0").rename(root / "migrations" / "versions")
        # A revision in a subfolder: part of the graph only when recursive.
        stray = FakeRev("ffstray0", (revs[-1].id,), (), (), "plain", 0, True, False)
        (root / "migrations" / "versions" / "sub" / "ff_stray.py").write_text(render(stray))
        flag = str(recursive).lower()
        if config_format == "ini":
            config = root / "alembic.ini"
            config.write_text(
                "[alembic]\nscript_location = %(here)s/migrations\n"
                f"recursive_version_locations = {flag}\n"
            )
            expected_cfg = Config(str(config), stdout=io.StringIO())
        else:
            config = root / "pyproject.toml"
            config.write_text(
                '[tool.alembic]\nscript_location = "%(here)s/migrations"\n'
                f"recursive_version_locations = {flag}\n"
            )
            expected_cfg = Config(toml_file=str(config), stdout=io.StringIO())
        expected = tuple(sorted(ScriptDirectory.from_config(expected_cfg).get_heads()))

        plain = _plainheads.read(read_settings(config))

        if all(read_names(render(rev)) is not None for rev in [*revs, stray]):
            assert plain is not None
            assert plain.heads == expected
        else:
            assert plain is None  # only running a file tells its names: Alembic must say


# How a config may split version_locations (Alembic's Config.get_version_locations_list):
# a separator option, or none (the legacy split on spaces and commas).
SEPARATORS = {"os": ":", "space": " ", "newline": "\n    ", "legacy": ", "}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.sampled_from(sorted(SEPARATORS)), st.booleans())
def test_heads_from_version_locations_without_alembic_equal_alembics(
    graph: tuple[list[FakeRev], bool, int, bool], separator: str, package: bool
) -> None:
    # Several folders named by version_locations, written as files or as
    # Alembic's package notation (pkg:dir, found without importing pkg):
    # the cold start's path for Prefect's own config, never importing Alembic.
    # ":" (os on POSIX) splits pkg:dir itself: a config cannot use both.
    assume(not (package and separator == "os"))
    revs, recursive, folders, _ = graph
    revs = [replace(rev, compiled=False) for rev in revs]
    name = f"amtest_{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("raise RuntimeError('imported')\n")
        write_project(root / name / "migrations", revs, recursive, folders, sourceless=False)
        where = [f"migrations/versions{n}" for n in range(folders)]
        located = [f"{name}:{w}" if package else f"%(here)s/{name}/{w}" for w in where]
        option = "" if separator == "legacy" else f"path_separator = {separator}\n"
        if ALEMBIC < (1, 16) and option:
            option = option.replace("path_separator", "version_path_separator")
        config = root / "alembic.ini"
        script = f"{name}:migrations" if package else f"%(here)s/{name}/migrations"
        config.write_text(
            "[alembic]\n"
            + f"script_location = {script}\n"
            + f"version_locations = {SEPARATORS[separator].join(located)}\n"
            + option
            + f"recursive_version_locations = {str(recursive).lower()}\n"
        )
        sys.path.insert(0, tmp)
        try:
            plain = _plainheads.read(read_settings(config))  # before Alembic imports pkg
            with warnings.catch_warnings():  # the legacy split is deprecated
                warnings.simplefilter("ignore")
                cfg = Config(str(config), stdout=io.StringIO())
                if package:
                    (root / name / "__init__.py").write_text("")  # Alembic imports it
                expected = tuple(sorted(ScriptDirectory.from_config(cfg).get_heads()))
        finally:
            sys.path.remove(tmp)
            sys.modules.pop(name, None)

        if all(read_names(render(rev)) is not None for rev in revs):
            assert plain is not None
            assert plain.heads == expected
        else:
            assert plain is None


def test_plain_files_are_read_not_imported() -> None:
    text = textwrap.dedent(
        '''\
        """Revision ID: abc"""
        import this_module_does_not_exist
        revision: str = "abc"
        down_revision: Union[str, None] = (
            "p1",
            "p2",
        )
        branch_labels = None
        '''
    )
    assert read_names(text) == {
        "revision": "abc",
        "down_revision": ("p1", "p2"),
        "branch_labels": None,
    }


@pytest.mark.parametrize(
    "text",
    [
        "revision = make_id()\ndown_revision = None\n",  # computed
        "if True:\n    revision = 'a'\ndown_revision = None\n",  # in a block
        "revision = 'a'\nrevision += 'b'\ndown_revision = None\n",  # augmented
        "down_revision = None\n",  # legacy: the id is in the file name
        '"""\nrevision = "a"\n"""\ndown_revision = None\n',  # only in a docstring
        "from x import y as revision\ndown_revision = None\n",  # imported
        "revision = 'a'\ndown_revision = None\nfor down_revision in 'bc': pass\n",  # a loop
        "revision = 'a'\ndown_revision = None\ndef revision(): pass\n",  # a function
        "revision = 'a'\n(down_revision := 'b')\n",  # a walrus
        # Bound again where no line starts with the name: Python says 'b'.
        "revision = 'a'\ndown_revision = None\nfrom ids import revision\n",
        "revision = 'a'\ndown_revision = None\nx = 1; revision = make_id()\n",
        "revision = 'a'\ndown_revision = None\nx = revision = make_id()\n",
        "revision = 'a'\ndown_revision = None\nrevision, x = make_id(), 1\n",
        "revision = 'a'\ndown_revision = None\nmatch 1:\n    case revision: pass\n",
        "revision = 'a'\ndown_revision = None\nmatch {}:\n    case {**revision}: pass\n",
        "revision = 'a'\ndown_revision = None\ntry: pass\nexcept E as revision: pass\n",
    ],
)
def test_files_that_are_not_plain_are_left_to_python(text: str) -> None:
    assert read_names(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("revision = 'a'\nrevision = 'b'\ndown_revision = None\n", ("b", None)),
        ("revision = 'a'; down_revision = None\n", ("a", None)),
        (
            "revision: str = 'a'\ndown_revision: str | None = None\ndown_revision = 'p'\n",
            ("a", "p"),
        ),
        (
            '"""\nrevision = "x"\n"""\nrevision = "a"\ndown_revision = ("p",\n "q")\n',
            ("a", ("p", "q")),
        ),
        # Names only used, not bound: the same values, by the parser.
        ("revision = 'a'\ndown_revision = None\nprint(revision, 'down_revision')\n", ("a", None)),
        ("revision = 'a'\ndown_revision = 'p'  # revision = 'b' in a comment\n", ("a", "p")),
    ],
)
def test_files_python_would_read_plainly_are_read_by_its_parser(
    text: str, expected: tuple[str, object]
) -> None:
    names = read_names(text)
    assert names is not None
    assert (names["revision"], names["down_revision"]) == expected


BOOBY_TRAP = "raise RuntimeError('a revision file was imported')"


def test_at_head_start_imports_no_revision_file(
    ini: Path, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    anyio.run(AutoMigrator(ini, url=db_url).run)
    # The same files, now failing if anything imports them. (An edit of what
    # ran, so the ledger would refuse it: here it only warns. Its checksum
    # parses the files; parsing runs nothing.)
    for rev in CHAIN:
        path = ini.parent / "migrations" / "versions" / f"{rev.id}.py"
        path.write_text(path.read_text() + f"\n{BOOBY_TRAP}\n")

    status = anyio.run(AutoMigrator(ini, url=db_url, history=History(on_edit="warn")).run)

    assert status.state is MigrationState.READY
    assert status.revisions_after == ("r3",)


def test_a_new_revision_file_is_seen_and_applied(ini: Path, db_url: URL) -> None:
    anyio.run(AutoMigrator(ini, url=db_url).run)
    write_revision(
        ini.parent,
        Rev("r4", "r3", "add age", 'op.add_column("users", sa.Column("age", sa.Integer))'),
    )

    status = anyio.run(AutoMigrator(ini, url=db_url).run)

    assert [a.revision for a in status.applied] == ["r4"]
    assert revisions(db_url) == {"r4"}


def cache_file(ini: Path) -> Path:
    return ini.parent / "migrations" / "__pycache__" / "automigrator-heads.json"


def test_remembered_heads_follow_an_edited_file(ini: Path, sqlite_url: URL) -> None:
    anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    assert anyio.run(AutoMigrator(ini, url=sqlite_url).run).state is MigrationState.READY
    assert cache_file(ini).is_file()
    # The same file, the same size, another revision id: a stale answer would
    # call the database (at r3) up to date.
    path = ini.parent / "migrations" / "versions" / "r3.py"
    path.write_text(path.read_text().replace("'r3'", "'rX'"))

    with pytest.raises(SchemaAheadError, match="r3"):
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)


def test_remembered_heads_follow_an_edit_that_keeps_size_and_modification_time(
    ini: Path, sqlite_url: URL
) -> None:
    # As rsync -a, tar or a fixed-time image build leave a file: only the
    # change time, which no copy can set, tells the listing it moved.
    anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    assert anyio.run(AutoMigrator(ini, url=sqlite_url).run).state is MigrationState.READY
    path = ini.parent / "migrations" / "versions" / "r3.py"
    before = path.stat()
    path.write_text(path.read_text().replace("'r3'", "'rX'"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    with pytest.raises(SchemaAheadError, match="r3"):
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)


def test_heads_of_computed_files_are_not_remembered(ini: Path, sqlite_url: URL) -> None:
    path = ini.parent / "migrations" / "versions" / "r3.py"
    path.write_text(path.read_text().replace("revision = 'r3'", "revision = 'r' + '3'"))

    anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    status = anyio.run(AutoMigrator(ini, url=sqlite_url).run)

    assert status.state is MigrationState.READY
    assert not cache_file(ini).exists()


@pytest.mark.parametrize("damage", ["garbage", "not a folder"])
def test_a_damaged_or_unwritable_cache_is_ignored(ini: Path, sqlite_url: URL, damage: str) -> None:
    pycache = cache_file(ini).parent
    if damage == "garbage":
        pycache.mkdir()
        cache_file(ini).write_text("{not json")
    else:
        pycache.write_text("a file where the cache folder would go")

    first = anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    second = anyio.run(AutoMigrator(ini, url=sqlite_url).run)

    assert [first.state, second.state] == [MigrationState.READY, MigrationState.READY]
    assert revisions(sqlite_url) == {"r3"}


AT_HEAD_PROBE = """
import sys, anyio
from automigrator import AutoMigrator
migrator = AutoMigrator(sys.argv[1], url=sys.argv[2])
status = anyio.run(migrator.run)
print(status.state, "alembic" in sys.modules)
"""


def test_an_at_head_start_with_remembered_heads_does_not_import_alembic(
    ini: Path, db_url: URL
) -> None:
    def start() -> str:
        argv = [sys.executable, "-c", AT_HEAD_PROBE, str(ini), db_url.render_as_string(False)]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    assert start() == "ready True"  # migrates: Alembic runs env.py; the heads are remembered
    # The first start at head right after the migration, as a new pod's:
    # one query, Alembic never imported.
    assert start() == "ready False"
    assert start() == "ready False"


UNUSED_AT_HEAD = """
import sys, anyio
from automigrator import AutoMigrator
migrator = AutoMigrator(sys.argv[1], url=sys.argv[2])
status = anyio.run(migrator.run)
heavy = ["alembic", "filelock", "tomllib"]
if not sys.argv[2].startswith("sqlite"):
    heavy.append("sqlite3")
print(status.state, sorted(name for name in heavy if name in sys.modules))
"""


def test_an_at_head_start_loads_none_of_what_only_a_migration_uses(ini: Path, db_url: URL) -> None:
    # A start's memory is every module it imports (docs/performance.md, P5):
    # the lock's file locking, the TOML reader of a pyproject config and
    # SQLite's library for another database are a migration's, not a start
    # at head's.
    def start() -> str:
        argv = [sys.executable, "-c", UNUSED_AT_HEAD, str(ini), db_url.render_as_string(False)]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    start()  # migrates, and the heads are remembered
    assert start() == "ready []"


def test_a_cold_start_at_head_in_a_read_only_image_does_not_import_alembic(
    ini: Path, db_url: URL
) -> None:
    # A new container: the database is at head, nothing is remembered, and
    # nothing can be (the tests run as root, whom chmod does not stop: a
    # file stands where the cache's folder would go).
    anyio.run(AutoMigrator(ini, url=db_url).run)
    shutil.rmtree(cache_file(ini).parent)
    cache_file(ini).parent.write_text("not a folder")
    argv = [sys.executable, "-c", AT_HEAD_PROBE, str(ini), db_url.render_as_string(False)]

    runs = [subprocess.run(argv, capture_output=True, text=True, check=True) for _ in range(2)]

    assert [run.stdout.strip() for run in runs] == ["ready False", "ready False"]
    assert cache_file(ini).parent.read_text() == "not a folder"


def test_a_loader_patched_by_someone_else_is_kept_and_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another library wraps Alembic's loader after automigrator was imported:
    # reading the graph must hand it the files it cannot read plainly, and
    # leave it in place afterwards.
    import alembic.util

    ini = make_project_with(tmp_path, "computed")
    theirs_seen: list[str] = []
    alembic_loader = alembic.util.load_python_file

    def theirs(dir_: Any, filename: Any) -> Any:
        theirs_seen.append(str(filename))
        return alembic_loader(dir_, filename)

    monkeypatch.setattr(alembic.util, "load_python_file", theirs)

    graph = load(Config(str(ini)))

    assert graph is not None
    assert graph.heads == ("r3",)
    assert theirs_seen == ["r3.py"]  # the one computed file, through their loader
    assert alembic.util.load_python_file is theirs


def make_project_with(root: Path, style: str) -> Path:
    from tests.project import make_project

    ini = make_project(root / "p", CHAIN)
    if style == "computed":  # r3 names its parent through an expression
        path = ini.parent / "migrations" / "versions" / "r3.py"
        path.write_text(
            path.read_text().replace("down_revision = 'r2'", "down_revision = 'r' + '2'")
        )
    return ini


def test_a_config_object_has_its_heads_remembered_too(ini: Path, sqlite_url: URL) -> None:
    # As an application that builds its own Config passes it.
    def config() -> Config:
        built = Config(str(ini))
        built.set_main_option("script_location", str(ini.parent / "migrations"))
        return built

    anyio.run(AutoMigrator(config(), url=sqlite_url).run)
    again = AutoMigrator(config(), url=sqlite_url)

    assert cache_file(ini).exists()
    assert again.scripts.remembered_heads("head") == ("r3",)
    assert anyio.run(again.run).state is MigrationState.READY


def test_a_revision_file_longer_than_one_read_is_read_whole(tmp_path: Path) -> None:
    # The cold read takes a file in 64 KiB reads: a long one (a data
    # migration's rows, a long docstring) is fingerprinted from all its bytes.
    from tests.project import make_project

    rows = "\n".join(f"# row {i:06d} " + "x" * 60 for i in range(3000))  # about 220 KB
    ini = make_project(tmp_path / "p", (*CHAIN, Rev("r4", "r3", "long", f"{rows}\npass")))
    path = tmp_path / "p" / "migrations" / "versions" / "r4.py"
    assert path.stat().st_size > 3 * 65536

    plain = _plainheads.read(read_settings(ini))

    assert plain is not None
    assert plain.heads == ("r4",)
    assert plain.fingerprints["r4"].source_hash == hashlib.sha256(path.read_bytes()).hexdigest()
