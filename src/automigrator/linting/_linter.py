"""The lint: which pending operations would lock a busy table or break the old version.

Each pending revision is rendered offline (``_alembic_run.render_offline``, as
``automigrator plan --sql`` does), and the Alembic operations it invokes are
recorded on the way. The operation rules (``_rules``) judge those on
every dialect; on PostgreSQL, squawk (``_squawk``), where installed, judges
the rendered SQL too. Operations on a table the plan creates first are
exempt (no one uses it yet); a revision's file may allow a rule
(``# automigrator: allow=drop-column``). Then the live database is asked how
big the tables are (``_tablesizes``): a rule that only costs a lock while the
table is scanned passes on a table under the threshold.

At start-up (``lint="warn"``, the default) the findings are logged, kept in
the status and announced as a ``lint`` event; ``lint="refuse"`` raises
:class:`~automigrator.UnsafeMigrationError` before any DDL, which the failure
policy sees like any failure. It runs under the lock, only when something is
pending: a start at head stays one query.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .._findings import LintFinding
from .._plan import Plan
from .._settings import MigratorSettings
from ..database._connections import display
from ..database._redaction import redact
from ..errors import ConfigurationError, UnsafeMigrationError, first_line
from ..run._reporting import Reporter
from ..scripts._pending import PendingRevision
from ..scripts._scripts import Scripts

if TYPE_CHECKING:
    from ..scripts._alembic_compat import Destination

logger = logging.getLogger("automigrator")

_ALLOW = re.compile(r"#\s*automigrator:\s*allow\s*=\s*([\w:,\- ]+)")


@dataclass(frozen=True)
class LintReport:
    """What the lint found in the pending revisions, each finding with its verdict."""

    database: str
    """The URL, password hidden."""
    revisions: tuple[str, ...]
    """The revisions linted, in the order an upgrade applies them."""
    findings: tuple[LintFinding, ...]
    not_linted: tuple[tuple[str, str], ...]
    """(revision, why): revisions that could not be rendered offline; their
    operations before that point were still checked."""
    squawk: str | None
    """The squawk that judged the SQL, or None (not PostgreSQL, not installed, off)."""
    threshold: int
    """Tables with fewer rows pass the rules that depend on size."""

    @property
    def flagged(self) -> tuple[LintFinding, ...]:
        """The findings that count: neither allowed nor on a small table."""
        return tuple(f for f in self.findings if f.verdict == "flagged")

    def verdicts(self) -> dict[str, str]:
        """Each linted revision, as the ledger records it: ``breaking`` if a rule says
        the app's version before it breaks on it (a dropped or renamed column, a NOT
        NULL column it does not write; not a lock, nor a missing lock timeout),
        else ``compatible``. A revision that could not be rendered has none."""
        from . import _rules

        breaking = {f.revision for f in self.findings if _rules.breaks_old_version(f)}
        unknown = {revision for revision, _ in self.not_linted}
        return {
            rev: "breaking" if rev in breaking else "compatible"
            for rev in self.revisions
            if rev not in unknown
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "database": self.database,
            "revisions": list(self.revisions),
            "findings": [f.to_dict() for f in self.findings],
            "flagged": len(self.flagged),
            "not_linted": [{"revision": r, "why": why} for r, why in self.not_linted],
            "squawk": self.squawk,
            "threshold": self.threshold,
        }


class Linter:
    """Lints the revisions an upgrade would apply, before it applies them."""

    def __init__(
        self,
        scripts: Scripts,
        engine: Engine,
        settings: MigratorSettings,
    ) -> None:
        self.scripts, self.engine = scripts, engine
        self.settings = settings  # the migrator's own: never copied

    def report(
        self,
        current: tuple[str, ...],
        *,
        target: Destination | None = None,
        live: bool = True,
        each: bool = False,
    ) -> LintReport:
        """Lint the revisions from ``current`` to ``target`` (default: the settings'; blocking:
        run it in a thread).

        ``live``: read the tables' sizes from the database. ``each``: judge
        every revision as if the database stood just before it (for CI, with
        no live database: a table only its own revision creates is exempt).
        A post-deploy revision (``post_deploy = True``) may break the old
        version: it runs once that version is gone.
        """
        from ..scripts import _alembic_run, _postdeploy  # these import Alembic
        from . import _rules, _squawk

        operations: dict[str, list[Any]] = {}
        with self.scripts.set_up():
            pending = _alembic_run.render_offline(
                self.scripts.config,
                self.scripts.imported(),
                self.settings.target if target is None else target,
                current,
                url=self.scripts.url,
                sql=True,
                operations=operations,
                reads=self.engine if live else None,
            )
        dialect = self.engine.dialect.name
        existing = _LiveTypes(self.engine) if live and dialect == "postgresql" else None
        created: set[str] = set()
        new_by: dict[str, set[str]] = {}  # the tables each revision may touch freely
        found: list[LintFinding] = []
        for step in pending:
            if each:
                created = set()
            found += _rules.check(
                operations.get(step.revision, ()),
                dialect=dialect,
                lock_timeout=self.settings.ddl.lock_timeout is not None,
                created=created,
                revision=step.revision,
                path=step.path,
                existing=existing,
            )
            new_by[step.revision] = set(created)
        squawk = _squawk.find() if dialect == "postgresql" else None
        if squawk is not None:
            raw = {r: _raw_sql(ops) for r, ops in operations.items()}
            known = _Known(operations, self.engine if live else None)
            try:
                found += self._squawked(squawk, pending, found, new_by, raw, known)
            except _squawk.SquawkError as exc:
                logger.warning("Lint: squawk was not used (%s); the operation rules apply", exc)
                squawk = None
        allowed = {step.revision: _allowances(step.path) for step in pending}
        for step in pending:
            _check_allowances(step.path, allowed[step.revision], _squawk.find())
        found = [_allowed(f, allowed[f.revision]) for f in found]
        script = self.scripts.imported()
        marked = {s.revision for s in pending if _postdeploy.is_post_deploy(script, s.revision)}
        # A start applies a post-deploy revision only where an ordinary one
        # follows it: during the rollout, so it is judged as that. Runs with
        # the post-deploy revisions (the Job after the rollout) and CI (each
        # revision as it will run) let them do what they are for.
        after = each or self.settings.switch.post_deploy
        found = [_in_post_deploy(f, after=after) if f.revision in marked else f for f in found]
        if live:
            found = self._weighed(found)
        # A revision names what it likes (an index, a column): never a password.
        found = [_redacted(f, self.engine.url) for f in found]
        return LintReport(
            database=display(self.engine.url),
            revisions=tuple(step.revision for step in pending),
            findings=tuple(found),
            not_linted=tuple((s.revision, s.not_renderable) for s in pending if s.not_renderable),
            squawk=squawk,
            threshold=self.settings.lint.rows,
        )

    def without_database(
        self, *, since: str = "base", changed_from: str | None = None
    ) -> LintReport:
        """Lint, without a database, every revision after ``since`` (``"base"``: all),
        or the ones git sees as added since ``changed_from``; each as if the database
        stood just before it with big tables (blocking)."""
        if changed_from is not None:
            return self.changed(changed_from)
        return self.report(() if since == "base" else (since,), live=False, each=True)

    def changed(self, ref: str) -> LintReport:
        """Lint, without a database, the revisions whose files git sees as added since
        ``ref``, each as if the database stood just before it (blocking)."""
        from . import _changes

        script = self.scripts.imported()
        added = set(_changes.added_revisions(script, ref))
        if not added:
            return LintReport(display(self.engine.url), (), (), (), None, self.settings.lint.rows)
        report = self.report(_changes.starts(script, tuple(added)), live=False, each=True)
        return replace(
            report,
            revisions=tuple(r for r in report.revisions if r in added),
            findings=tuple(f for f in report.findings if f.revision in added),
            not_linted=tuple(n for n in report.not_linted if n[0] in added),
        )

    def _squawked(
        self,
        binary: str,
        pending: list[PendingRevision],
        found: list[LintFinding],
        new_by: dict[str, set[str]],
        raw: dict[str, list[str]],
        known: _Known,
    ) -> list[LintFinding]:
        """squawk's findings beyond the operation rules'; raises ``SquawkError``."""
        # The operation rules know what each op.* call means (a varchar only
        # widened, a table made earlier); squawk, which sees only SQL, has
        # the last word on raw SQL (op.execute) and adds the rules we lack.
        from . import _rules, _squawk

        hits = _squawk.run(binary, {s.revision: s.sql for s in pending if s.sql})
        paths = {s.revision: s.path for s in pending}
        more: list[LintFinding] = []
        for revision, revision_hits in hits.items():
            for hit in revision_hits:
                if hit.table is None:  # DROP INDEX names no table: the plan or the database does
                    hit = replace(hit, table=known.table_of_index(hit.statement))
                if hit.table is not None and _among(hit.table, new_by[revision]):
                    continue
                if known.recreated(revision, hit.statement):
                    continue  # dropped and made again in one revision: the new one is judged
                rule = _squawk.SAME_AS.get(hit.rule)
                bounded = self.settings.ddl.lock_timeout is not None
                if bounded and (rule == "no-lock-timeout" or hit.rule in _squawk.BRIEF_LOCK):
                    continue  # automigrator sets it on the connection, where SQL cannot show it
                if rule is None:
                    more.append(
                        LintFinding(
                            revision=revision,
                            rule=f"squawk:{hit.rule}",
                            table=hit.table,
                            why=hit.message.rstrip("."),
                            instead=hit.help or f"see squawk's rule {hit.rule}",
                            # squawk's rules are about the table's lock, but for
                            # its few about old clients: weighed by the table's
                            # size as ours are (squawk itself cannot know it).
                            weighed=hit.table is not None and hit.rule not in _squawk.OLD_VERSION,
                            old_version=hit.rule in _squawk.OLD_VERSION,
                            source="squawk",
                            path=paths[revision],
                        )
                    )
                    continue
                if not any(hit.statement in text for text in raw.get(revision, ())):
                    continue  # an op.* call: the operation rules judged it
                seen = found + more
                if any(
                    f.revision == revision and f.rule == rule and _same(f.table, hit.table)
                    for f in seen
                ):
                    continue
                made = _rules.finding(rule, hit.table, revision=revision, path=paths[revision])
                more.append(replace(made, source="squawk"))
        return more

    def _weighed(self, found: list[LintFinding]) -> list[LintFinding]:
        from ._tablesizes import row_counts

        tables = sorted(
            {_split(f.table) for f in found if f.weighed and f.verdict == "flagged" and f.table},
            key=str,
        )
        counts = row_counts(self.engine, tables, self.settings.lint.rows)
        weighed = []
        for f in found:
            if f.weighed and f.verdict == "flagged" and f.table:
                size = counts.get(_split(f.table))
                if size is not None:
                    small = size[1] != "more_than" and size[0] < self.settings.lint.rows
                    f = replace(
                        f, rows=size[0], rows_are=size[1], verdict="small" if small else "flagged"
                    )
            weighed.append(f)
        return weighed

    async def before_upgrade(self, plan: Plan, reporter: Reporter) -> dict[str, str]:
        """At start-up, under the lock and before any DDL: lint ``plan``'s pending revisions.

        Logs and reports the findings; with ``lint="refuse"``, raises
        :class:`~automigrator.UnsafeMigrationError` if any is flagged (or if the
        lint could not run at all). Returns each linted revision's verdict
        (:meth:`LintReport.verdicts`, for the ledger); none when nothing was linted.
        """
        if self.settings.lint.mode == "off" or plan.kind == "empty":
            return {}  # an empty database has no table to lock, no old version to break
        baseline = self.settings.baseline
        current = plan.start(baseline.revision if baseline is not None else None)
        target = plan.upgrade_target(self.settings.target)
        try:
            report = await anyio.to_thread.run_sync(lambda: self.report(current, target=target))
        except Exception as exc:  # the lint informs; only "refuse" makes it a gate
            if self.settings.lint.mode == "refuse":
                raise UnsafeMigrationError.unlinted(exc) from exc
            logger.warning("Lint: could not check the pending revisions: %s", first_line(exc))
            return {}
        for f in report.findings:
            logger.log(logging.WARNING if f.verdict == "flagged" else logging.INFO, "Lint: %s", f)
        for revision, why in report.not_linted:
            logger.warning(
                "Lint: revision %s cannot be rendered offline (%s): its operations after that "
                "point were not checked",
                revision,
                why,
            )
        if report.flagged:
            reporter.linted(report.flagged)
            if self.settings.lint.mode == "refuse":
                raise UnsafeMigrationError(findings=report.flagged)
        return report.verdicts()


def _raw_sql(operations: list[Any]) -> list[str]:
    from alembic.operations import ops

    from ._squawk import folded

    return [folded(str(op.sqltext)) for op in operations if isinstance(op, ops.ExecuteSQLOp)]


def _allowances(path: str) -> set[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return set()
    return {
        rule.strip() for match in _ALLOW.findall(text) for rule in match.split(",") if rule.strip()
    }


def _check_allowances(path: str, names: set[str], squawk: str | None) -> None:
    """A name in an allow comment that is no rule is a mistake to name, never ignored.

    Our rules are known here; squawk's (``squawk:<rule>``, or bare) are
    asked of squawk. Without squawk, only the ``squawk:`` form is taken on
    trust: its findings cannot appear either.
    """
    from . import _rules, _squawk

    for name in sorted(names):
        bare = name.removeprefix("squawk:")
        if name in _rules.RULES:
            continue
        known = _squawk.knows(squawk, bare) if squawk is not None else None
        if known or (known is None and name.startswith("squawk:")):
            continue
        raise ConfigurationError(
            f"{path}: '# automigrator: allow={name}' names no rule (a misspelling?). Our "
            f"rules: {', '.join(sorted(_rules.RULES))}; squawk's are written "
            "squawk:<rule>. Fix or remove the comment."
        )


def _in_post_deploy(f: LintFinding, *, after: bool) -> LintFinding:
    # What breaks the old version is what a post-deploy revision is for; a
    # lock on a big table still stalls the new version, and stays flagged.
    f = replace(f, post_deploy=True)
    if f.verdict != "flagged" or not f.old_version:
        return f
    if after:
        return replace(f, verdict="post_deploy")
    return replace(
        f,
        why=f"{f.why}; it is a post-deploy revision, but an ordinary revision after it "
        "makes this start apply it during the rollout",
        instead="if it is an earlier release's whose post-deploy run never came, apply it "
        f"first ('automigrator upgrade --post-deploy --target {f.revision}'), then deploy; "
        "if it is this release's, put the ordinary revisions before it",
    )


def _allowed(f: LintFinding, allowed: set[str]) -> LintFinding:
    names = {f.rule, f.rule.removeprefix("squawk:")}
    return replace(f, verdict="allowed") if names & allowed else f


def _redacted(f: LintFinding, url: sa.URL) -> LintFinding:
    def hidden(text: str | None) -> str | None:
        return None if text is None else redact(text, url)

    return replace(
        f,
        table=hidden(f.table),
        target=hidden(f.target),
        why=redact(f.why, url),
        instead=redact(f.instead, url),
    )


def _split(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    return (schema or None, name)


def _same(a: str | None, b: str | None) -> bool:
    # squawk sees "public.t" where the operation said "t" (the default schema).
    if a is None or b is None:
        return a is b
    one_qualified = ("." in a) != ("." in b)
    return a == b or (one_qualified and a.rpartition(".")[2] == b.rpartition(".")[2])


def _among(table: str, tables: set[str]) -> bool:
    return any(_same(table, t) for t in tables)


class _LiveTypes:
    """The live database's type of a column, read once per table (None where the
    database will not say: a table the plan creates, a lost connection)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tables: dict[str, dict[str, Any]] = {}

    def __call__(self, table: str, column: str) -> Any:
        if table not in self.tables:
            schema, name = _split(table)
            try:
                with self.engine.connect() as conn:
                    columns = sa.inspect(conn).get_columns(name, schema=schema)
            except Exception:  # the lint's sizes say what went wrong, if it matters
                columns = []
            self.tables[table] = {c["name"]: c["type"] for c in columns}
        return self.tables[table].get(column)


_DROP_INDEX = re.compile(
    r"DROP\s+INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?(?:\S+\.)?\"?([\w$]+)\"?", re.I
)
_DROP_CONSTRAINT = re.compile(r"DROP\s+CONSTRAINT\s+(?:IF\s+EXISTS\s+)?\"?([\w$]+)\"?", re.I)
_ADD_CONSTRAINT = re.compile(r"ADD\s+CONSTRAINT\s+\"?([\w$]+)\"?", re.I)


class _Known:
    """What the plan's operations (and the live database) say of indexes and
    constraints that squawk's SQL leaves unsaid."""

    def __init__(self, operations: dict[str, list[Any]], engine: Engine | None) -> None:
        from alembic.operations import ops

        from ..scripts._alembic_reads import made_by

        self.engine = engine
        self.indexes: dict[str, str] = {}  # index name: its table
        self.constraints: dict[str, set[str]] = {}  # revision: the constraints it makes
        for revision, recorded in operations.items():
            made = self.constraints.setdefault(revision, set())
            for op in recorded:
                if isinstance(op, ops.CreateIndexOp | ops.DropIndexOp) and op.table_name:
                    self.indexes.setdefault(str(op.index_name), str(op.table_name))
                elif isinstance(op, ops.CreateTableOp):
                    _, named = made_by(op)
                    self.indexes.update(dict.fromkeys(named, str(op.table_name)))
                elif isinstance(op, ops.AddConstraintOp) and getattr(op, "constraint_name", None):
                    made.add(str(op.constraint_name))  # type: ignore[attr-defined]
                elif isinstance(op, ops.ExecuteSQLOp):
                    made.update(_ADD_CONSTRAINT.findall(str(op.sqltext)))

    def table_of_index(self, statement: str) -> str | None:
        """The table of the index a DROP INDEX statement drops, or None."""
        match = _DROP_INDEX.search(statement)
        if match is None:
            return None
        name = match.group(1)
        if name in self.indexes or self.engine is None:
            return self.indexes.get(name)
        try:
            with self.engine.connect() as conn:
                found = conn.execute(
                    sa.text("SELECT tablename FROM pg_indexes WHERE indexname = :n"), {"n": name}
                ).scalar()
        except Exception:  # unknown: the finding stays, "size unknown"
            return None
        return None if found is None else str(found)

    def recreated(self, revision: str, statement: str) -> bool:
        """Whether ``statement`` drops a constraint that its revision makes again."""
        match = _DROP_CONSTRAINT.search(statement)
        return match is not None and match.group(1) in self.constraints.get(revision, ())
