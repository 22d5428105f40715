"""Start-up cost: at head (P1), from scratch (P2) and memory (P5), against plain Alembic.

Histories: synthetic ones of 10, 100 and 1000 revisions (tables, columns,
indexes, a branch and its merge every 100 revisions), Optuna's real history
with its own env.py (which imports Optuna's models), and the real histories
of MLflow and Dagster as their PyPI packages ship them (the tests' corpus,
``tests/corpus.py``). Databases: SQLite and PostgreSQL. Every figure is the
median over fresh processes, with the spread (min-max); only the start-up is
timed, not the imports (the CLI row is a whole process, as a prestart
container runs it); the driver is imported before the clock.

P1 at head: the app's own lifespan without automigrator; with it, the heads
remembered from an earlier start ("remembered") or not ("cold", as a fresh
container: the heads are read from the files' text, without Alembic);
``command.upgrade(cfg, "heads")`` with Alembic imported before the clock;
Alembic's import on its own row; the ``alembic upgrade head`` CLI. Overhead =
with minus without. P2: an empty database brought to head, automigrator vs
``command.upgrade``. P5: peak RSS of the at-head start with and without
automigrator.

``nox -s bench -- startup [--repeats N] [--databases sqlite,postgresql]``
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import URL
from tests.corpus import alembic_heads, corpus_project, stamp

from automigrator.scripts._headcache import FILE_NAME
from benchmarks.history import make_history
from benchmarks.replicas import ROOT, available, fresh_database

SYNTHETIC = (10, 100, 1000)


def optuna_history(root: Path) -> Path | None:
    """Optuna's migrations (PyPI package), copied as a project; None if not installed."""
    try:
        import optuna.storages._rdb as rdb
    except ImportError:
        return None
    source = Path(rdb.__file__).parent
    shutil.copytree(source / "alembic", root / "alembic")
    ini = root / "alembic.ini"
    shutil.copy(source / "alembic.ini", ini)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini)
    parser["alembic"]["script_location"] = "%(here)s/alembic"
    with ini.open("w") as out:
        parser.write(out)
    return ini


def histories(scratch: Path) -> Iterator[tuple[str, Path, bool]]:
    """(name, ini, stamped): a stamped history is put at head, not migrated."""
    for count in SYNTHETIC:
        with contextlib.redirect_stdout(io.StringIO()):
            yield (
                f"synthetic {count}",
                make_history(scratch / f"h{count}", count, merges=True),
                False,
            )
    ini = optuna_history(scratch / "optuna")
    if ini is None:
        print("optuna is not installed: its real history is skipped (pip install optuna)")
    else:
        yield "optuna (real, 10, its env.py)", ini, False
    # The tests' corpus: real files in a project of Alembic's generic template
    # (their packages' env.py wants the packages' own settings), at head by a
    # stamp. Their files import the package, as real ones do.
    for name in ("mlflow", "dagster"):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                ini = corpus_project(name, scratch / name)
        except LookupError as exc:
            print(f"{name}: its real history is skipped: {exc}")
            continue
        count = len(list((ini.parent / "migrations" / "versions").glob("*.py")))
        yield f"{name} (real, {count})", ini, True
        if name == "mlflow":  # one real history, as the other notations name it
            for written in ("pkg:dir", "version_locations"):
                yield f"{name} (real, {count}, {written})", renamed(ini, written), True


def renamed(ini: Path, written: str) -> Path:
    """The same project, its scripts named as Prefect's config does (``pkg:dir``,
    the folder inside a package) or through ``version_locations``."""
    root = ini.parent.parent / f"{ini.parent.name}-{written.replace(':', '-')}"
    package = root / "amcorpus"
    shutil.copytree(ini.parent, package)
    (package / "__init__.py").write_text("")
    config = root / "alembic.ini"
    parser = configparser.ConfigParser(interpolation=None)  # its logging sections kept
    parser.read(ini)
    section = parser["alembic"]
    if written == "pkg:dir":
        section["script_location"] = "amcorpus:migrations"
    else:
        (package / "migrations" / "versions").rename(root / "history")
        section["script_location"] = "%(here)s/amcorpus/migrations"
        section["path_separator"] = "os"
        section["version_locations"] = "%(here)s/history"
    with config.open("w") as out:
        parser.write(out)
    return config


def set_ini_url(ini: Path, url: URL) -> None:
    """The CLI reads the URL from the ini: write it there."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini)
    parser["alembic"]["sqlalchemy.url"] = url.render_as_string(False).replace("%", "%%")
    with ini.open("w") as out:
        parser.write(out)


def forget(ini: Path) -> None:
    for found in ini.parent.rglob(FILE_NAME):
        found.unlink()


def probe(what: str, ini: Path, url: URL, *extra: str) -> dict[str, float]:
    argv = [sys.executable, "-m", "benchmarks.probe", what, str(ini), url.render_as_string(False)]
    # The project's folder on the path: a package named in pkg:dir is found there.
    path = os.pathsep.join(p for p in (str(ini.parent), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [*argv, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )
    if out.returncode != 0:
        raise SystemExit(f"probe {what} failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


def cli(ini: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        cwd=ini.parent,
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ini.parent)},
    )
    return time.perf_counter() - started


def summary(values: list[float], scale: float = 1000.0) -> str:
    spread = f"{min(values) * scale:.1f}-{max(values) * scale:.1f}"
    return f"{statistics.median(values) * scale:>8.1f}  {spread:>15}"


def p1_and_p5(ini: Path, url: URL, repeats: int, label: str, *, stamped: bool) -> None:
    set_ini_url(ini, url)
    if stamped:
        # Alembic resolves pkg:dir by importing pkg: the project's folder on its path.
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ini.parent), before) if p)
        try:
            stamp(url, alembic_heads(ini))
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before
    else:
        probe("app+automigrator", ini, url)  # brings the database to head
    probe("app+automigrator", ini, url)  # at head: remembers the heads
    rows: dict[str, list[float]] = {}
    peaks: dict[str, list[float]] = {"app": [], "app+automigrator": []}
    for _ in range(repeats):  # interleaved, so a slow moment hits every row
        result = probe("app", ini, url)
        rows.setdefault("app alone", []).append(result["seconds"])
        peaks["app"].append(result["peak_kb"])
        result = probe("app+automigrator", ini, url)
        rows.setdefault("app + automigrator, remembered", []).append(result["seconds"])
        peaks["app+automigrator"].append(result["peak_kb"])
        forget(ini)
        rows.setdefault("app + automigrator, cold", []).append(
            probe("app+automigrator", ini, url)["seconds"]
        )
        rows.setdefault("import alembic (once per process)", []).append(
            probe("import-alembic", ini, url)["seconds"]
        )
        rows.setdefault('command.upgrade(cfg, "heads") (*)', []).append(
            probe("command.upgrade", ini, url)["seconds"]
        )
        rows.setdefault("alembic upgrade head (CLI process)", []).append(cli(ini))
    base = statistics.median(rows["app alone"])
    upgrade = statistics.median(rows['command.upgrade(cfg, "heads") (*)'])
    print(f"\nP1 at head: {label}                          median ms   min-max ms")
    for name, values in rows.items():
        extra = ""
        if name.startswith("app + automigrator"):
            overhead = statistics.median(values) - base
            extra = f"   overhead {overhead * 1000:.1f} ms; command.upgrade is " + (
                f"{upgrade / overhead:.0f}x that" if overhead > 0 else "slower"
            )
        print(f"  {name:<36}{summary(values)}{extra}")
    without = statistics.median(peaks["app"]) / 1024
    with_ = statistics.median(peaks["app+automigrator"]) / 1024
    print(
        f"P5 peak RSS: {label}: app alone {without:.1f} MB, with automigrator "
        f"{with_:.1f} MB (+{with_ - without:.1f} MB)"
    )


def p2(ini: Path, kind: str, scratch: Path, repeats: int, label: str) -> None:
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(repeats):
        with fresh_database(kind, scratch) as url:
            ours.append(probe("app+automigrator", ini, url, "alembic")["seconds"])
        with fresh_database(kind, scratch) as url:
            theirs.append(probe("command.upgrade", ini, url)["seconds"])
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"\nP2 from scratch: {label}                     median ms   min-max ms")
    print(f"  {'app + automigrator':<36}{summary(ours)}   {ratio:.3f}x command.upgrade")
    name = 'command.upgrade(cfg, "heads")'
    print(f"  {name:<36}{summary(theirs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--only", default="", help="the histories whose name holds this")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU(s), Python {sys.version.split()[0]}, {args.repeats} repeats")
    print(
        "(*) Alembic already imported before the clock; its import is measured on its own.\n"
        "    An at-head start, remembered or cold, never imports it (plain files, Alembic's\n"
        "    default layout); cold = nothing remembered, as in a fresh container."
    )
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        projects = [p for p in histories(scratch) if args.only in p[0]]
        for kind in args.databases.split(","):
            why = available(kind, scratch)
            if why is not None:
                print(f"\n{kind}: not measured: {why}")
                continue
            for name, ini, stamped in projects:
                label = f"{name}, {kind}"
                with fresh_database(kind, scratch) as url:
                    p1_and_p5(ini, url, args.repeats, label, stamped=stamped)
                if name in ("synthetic 100", "synthetic 1000"):
                    p2(ini, kind, scratch, max(3, args.repeats // 2), label)


if __name__ == "__main__":
    main()
