"""Revision checksums: blind to formatting, sensitive to what upgrade() does.

Over the real histories of tests/corpus.py and the example app: ruff run
over a whole history (three styles) changes no checksum; random formatting
changes keep it; random changes to ``upgrade()`` change it. A pinned value
holds the serialisation equal across Python versions (the matrix runs it on
each).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automigrator.scripts import _checksums
from automigrator.scripts._checksums import ALGORITHM, checksum, source_hash
from tests.corpus import CORPUS
from tests.helpers import ROOT

EXAMPLE_VERSIONS = ROOT / "examples" / "fastapi_app" / "migrations" / "versions"


def history(name: str) -> Path:
    """The version folder of a corpus package (found without importing it), or the example's."""
    if name == "fastapi_app":
        return EXAMPLE_VERSIONS
    package, folder = CORPUS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise LookupError(f"{package} is not installed (pyproject.toml's test extra has it)")
    return Path(spec.origin).parent / folder


def revision_files(folder: Path) -> list[Path]:
    # Alembic's filter leaves out __init__.py.
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("__init__"))


@functools.cache
def corpus_files() -> tuple[Path, ...]:
    files = [f for name in [*CORPUS, "fastapi_app"] for f in revision_files(history(name))]
    assert len(files) > 150  # the histories are all there
    return tuple(files)


def checksums(folder: Path) -> dict[str, str | None]:
    return {p.name: checksum(p.read_bytes()) for p in revision_files(folder)}


# --- ruff over whole histories --------------------------------------------------

STYLES = {
    "default": [],
    "line-length-60": ["--line-length", "60"],
    "single-quotes": ["--config", "format.quote-style='single'"],
}


# Prefect formats its own files with ruff's defaults: there, only the other
# styles change anything.
CASES = [(n, s) for n in CORPUS for s in STYLES if (n, s) != ("prefect", "default")]


@pytest.mark.parametrize(("name", "style"), CASES)
def test_ruff_format_keeps_every_checksum(name: str, style: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed: pyproject.toml's test extra has it")
    folder = tmp_path / name
    shutil.copytree(history(name), folder, ignore=shutil.ignore_patterns("__pycache__"))
    before_bytes = {p.name: p.read_bytes() for p in revision_files(folder)}
    before = checksums(folder)
    assert None not in before.values()

    subprocess.run(
        # --isolated: ruff's defaults, whatever config sits above tmp_path.
        [sys.executable, "-m", "ruff", "format", "--isolated", "--no-cache", *STYLES[style]],
        cwd=folder,
        check=True,
        capture_output=True,
    )

    changed = [p.name for p in revision_files(folder) if p.read_bytes() != before_bytes[p.name]]
    assert changed, "ruff changed no file: this case proves nothing"
    assert checksums(folder) == before


def test_unparse_keeps_every_checksum() -> None:
    # ast.unparse() rewrites every file in one more style (the mutation
    # property below relies on it being formatting only).
    for path in corpus_files():
        text = path.read_text(encoding="utf-8")
        assert checksum(ast.unparse(ast.parse(text))) == checksum(text), path


# --- random formatting changes keep the checksum ---------------------------------


def _offset(lines: list[str], lineno: int, col: int) -> int:
    """A character offset in the text from ast's (1-based line, UTF-8 byte column)."""
    before = sum(len(line) + 1 for line in lines[: lineno - 1])
    return before + len(lines[lineno - 1].encode()[:col].decode())


def _splice(text: str, node: ast.stmt, new: str) -> str:
    lines = text.split("\n")
    assert node.end_lineno is not None
    assert node.end_col_offset is not None
    start = _offset(lines, node.lineno, node.col_offset)
    end = _offset(lines, node.end_lineno, node.end_col_offset)
    return text[:start] + new + text[end:]


def _docstrings(tree: ast.Module) -> list[ast.Expr]:
    found = []
    for node in ast.walk(tree):
        documented = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        if isinstance(node, documented) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                found.append(first)
    return found


def _downgrade(tree: ast.Module) -> ast.FunctionDef | None:
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "downgrade"]
    return defs[-1] if defs else None


def add_comments(text: str, comment: str) -> str:
    """A comment line before every statement that starts its line (never inside a string)."""
    lines = text.split("\n")
    starts = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.stmt):
            line = lines[node.lineno - 1].encode()
            if not line[: node.col_offset].strip():
                starts.add(node.lineno)
    for lineno in sorted(starts, reverse=True):
        lines.insert(lineno - 1, f"# {comment}")
    return "\n".join(lines) + f"\n# {comment}\n"


def replace_docstrings(text: str, new: str) -> str:
    # From the last to the first, so earlier positions stay valid.
    for doc in reversed(_docstrings(ast.parse(text))):
        text = _splice(text, doc, repr(new))
    return text


def replace_downgrade(text: str, new: str) -> str:
    node = _downgrade(ast.parse(text))
    assert node is not None
    return _splice(text, node, f"def downgrade() -> None:\n    op.execute({new!r})\n    pass")


def crlf(text: str, _: str) -> str:
    return text.replace("\n", "\r\n")


FORMATTINGS: dict[str, Callable[[str, str], str]] = {
    "comments": add_comments,
    "docstrings": replace_docstrings,
    "downgrade": replace_downgrade,
    "crlf": crlf,  # last: the others count lines by "\n"
}


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_formatting_keeps_the_checksum(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(corpus_files()), label="file")
    original = path.read_text(encoding="utf-8")
    tree = ast.parse(original)
    usable = [
        name
        for name in FORMATTINGS
        if (name != "docstrings" or _docstrings(tree))
        and (name != "downgrade" or _downgrade(tree))
    ]
    chosen = data.draw(st.lists(st.sampled_from(usable), min_size=1, unique=True), label="changes")
    text = original
    for name in FORMATTINGS:  # in the dict's order
        if name in chosen:
            # No control characters: "\r" or "\n" would end a comment.
            words = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1)
            text = FORMATTINGS[name](text, data.draw(words, label=name))
    assert text != original
    assert checksum(text) == checksum(original) is not None
    assert checksum(text.encode()) == checksum(original)


# --- random changes to upgrade() change it ----------------------------------------


def _upgrade(tree: ast.Module) -> ast.FunctionDef:
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade"]
    assert defs
    return defs[-1]


def _constants(tree: ast.Module) -> list[ast.Constant]:
    docstrings = {id(d.value) for d in _docstrings(tree)}
    return [
        n
        for n in ast.walk(_upgrade(tree))
        if isinstance(n, ast.Constant) and id(n) not in docstrings
    ]


def _keywords(tree: ast.Module) -> list[ast.keyword]:
    return [n for n in ast.walk(_upgrade(tree)) if isinstance(n, ast.keyword) and n.arg]


def _statements(tree: ast.Module) -> list[int]:
    """Indexes of upgrade()'s statements, its docstring left out."""
    body = _upgrade(tree).body
    docstrings = {id(d) for d in _docstrings(tree)}
    return [i for i, stmt in enumerate(body) if id(stmt) not in docstrings]


def _other_value(value: object) -> str | bytes | int | float | complex | None:
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, bytes):
        return value + b"x"
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1.0 if math.isfinite(value) and value + 1.0 != value else 0.0
    if isinstance(value, complex):
        return value + 1j
    return 0 if value is None else None  # None, Ellipsis


Mutation = tuple[str, int, int]


def mutations(tree: ast.Module) -> list[Mutation]:
    """Every change this test can make to the file's upgrade()."""
    found: list[Mutation] = [("constant", i, 0) for i in range(len(_constants(tree)))]
    found += [("keyword", i, 0) for i in range(len(_keywords(tree)))]
    statements = _statements(tree)
    if len(statements) >= 2:
        found += [("delete", i, 0) for i in statements]
        body = _upgrade(tree).body
        found += [
            ("swap", i, j)
            for i in statements
            for j in statements
            if i < j and ast.dump(body[i]) != ast.dump(body[j])
        ]
    return found


def mutate(tree: ast.Module, mutation: Mutation) -> None:
    kind, i, j = mutation
    body = _upgrade(tree).body
    if kind == "constant":
        constant = _constants(tree)[i]
        constant.value = _other_value(constant.value)
    elif kind == "keyword":
        keyword = _keywords(tree)[i]
        keyword.arg = f"{keyword.arg}_renamed"
    elif kind == "delete":
        del body[i]
    else:
        body[i], body[j] = body[j], body[i]


@functools.cache
def mutable_files() -> tuple[Path, ...]:
    files = tuple(p for p in corpus_files() if mutations(ast.parse(p.read_bytes())))
    assert len(files) > 100
    return files


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_change_to_upgrade_changes_the_checksum(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(mutable_files()), label="file")
    source = path.read_bytes()
    mutation = data.draw(st.sampled_from(mutations(ast.parse(source))), label="mutation")
    tree = ast.parse(source)
    mutate(tree, mutation)
    # Both through ast.unparse: the mutation is the only difference.
    before = checksum(ast.unparse(ast.parse(source)))
    after = checksum(ast.unparse(tree))
    assert before is not None
    assert after is not None
    assert after != before


# --- single cases ------------------------------------------------------------------

REVISION = '''\
"""Add a column.

Revision ID: {revision}
Revises: 0001
Create Date: 2024-01-01 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT = 0


def upgrade() -> None:
    op.add_column("t", sa.Column("n", sa.Integer(), server_default=str(DEFAULT)))


def downgrade() -> None:
    op.drop_column("t", "n")
'''
BASE = REVISION.format(revision="0002")


@pytest.mark.parametrize(
    "text",
    [
        "def upgrade(:\n    pass\n",
        b"x = '\xff'\n",  # not UTF-8, no coding cookie
        "x = 1\x00\n",
        b"\x00",
        "x = " + "1" * 5000,  # past the int digit limit: the parser refuses it
    ],
)
def test_text_that_does_not_parse_gives_none(text: str | bytes) -> None:
    assert checksum(text) is None


def test_the_algorithm_is_named() -> None:
    value = checksum(BASE)
    assert value is not None
    name, digest = value.split(":")
    assert name == ALGORITHM
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_different_literals_give_different_checksums() -> None:
    literals = ["1", "1.0", "'1'", "b'1'", "True", "1j", "None", "...", "2", "-1", "0x10", "16.0"]
    values = {checksum(f"x = {literal}\n") for literal in literals}
    assert None not in values
    # 0x10 is 16: the value counts, not how it is written.
    assert len(values) == len(literals)
    assert checksum("x = 0x10\n") == checksum("x = 16\n")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('revision = "0002"', 'revision = "0003"'),
        ('down_revision = "0001"', 'down_revision = "0000"'),
        ("branch_labels = None", 'branch_labels = ("feature",)'),
        ("depends_on = None", 'depends_on = "0000"'),
        ("DEFAULT = 0", "DEFAULT = 1"),  # a module constant that upgrade() uses
        ("import sqlalchemy as sa", "import sqlalchemy_utils as sa"),
        ("server_default=str(DEFAULT)", "default=str(DEFAULT)"),
    ],
)
def test_what_runs_changes_the_checksum(old: str, new: str) -> None:
    assert old in BASE
    assert checksum(BASE.replace(old, new)) != checksum(BASE)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Revision ID: 0002", "Revision ID: 0002 (amended)"),
        ("Add a column.", "Add the n column."),
        ('op.drop_column("t", "n")', 'op.drop_column("t", "n", schema=None)'),
        ("def downgrade() -> None:", "def downgrade() -> None:\n    '''Undo it.'''"),
        ("\n\n\ndef upgrade", "\n# why\n\ndef upgrade"),
    ],
)
def test_docstrings_and_downgrade_do_not_count(old: str, new: str) -> None:
    assert old in BASE
    assert checksum(BASE.replace(old, new)) == checksum(BASE)


def test_downgrade_counts_when_upgrade_calls_it() -> None:
    text = BASE.replace("    op.add_column(", "    downgrade()\n    op.add_column(")
    changed = text.replace('op.drop_column("t", "n")', 'op.drop_column("t", "m")')
    assert checksum(changed) != checksum(text)


def test_byte_order_mark_and_bytes_agree_with_text() -> None:
    expected = checksum(BASE)
    assert checksum(BASE.encode()) == expected
    assert checksum(b"\xef\xbb\xbf" + BASE.encode()) == expected
    assert checksum("\ufeff" + BASE) == expected
    # A coding cookie: the bytes are decoded as Python decodes the file.
    latin = "# -*- coding: latin-1 -*-\nx = 'é'\n"
    assert checksum(latin.encode("latin-1")) == checksum(latin)


def test_a_deep_expression_is_walked_without_recursion() -> None:
    # Deeper than Python's recursion limit once parsed (the parser's own
    # limit, in C, is about 3000 here).
    text = "x = " + " + ".join(["1"] * (sys.getrecursionlimit() + 500)) + "\n"
    assert checksum(text) is not None
    assert checksum(text) != checksum(text.replace("1 + 1\n", "1 + 2\n"))


def test_a_huge_hex_literal_is_hashed() -> None:
    # Its decimal text is past Python 3.11+'s digit limit.
    text = "x = 0x" + "f" * 5000 + "\n"
    assert checksum(text) is not None
    assert checksum(text) != checksum(text.replace("f\n", "e\n"))


def test_empty_and_split_fstring_text_count_as_one() -> None:
    # Python 3.12.1 ends a nested format spec with an empty Constant that
    # other versions do not make: this Python may not, so the trees are built by hand.
    def spec(*parts: ast.expr) -> list[str]:
        value = ast.FormattedValue(ast.Name("x"), -1, ast.JoinedStr(list(parts)))
        return _checksums._tokens(ast.Module([ast.Expr(ast.JoinedStr([value]))], []))

    width = ast.FormattedValue(ast.Name("w"), -1, None)
    assert spec(ast.Constant(">"), width, ast.Constant("")) == spec(ast.Constant(">"), width)
    assert spec(ast.Constant(">"), ast.Constant("1"), width) == spec(ast.Constant(">1"), width)
    assert spec(ast.Constant(">"), width) != spec(ast.Constant("<"), width)


def test_source_hash_is_the_bytes_sha256() -> None:
    data = BASE.encode()
    assert source_hash(data) == hashlib.sha256(data).hexdigest()
    assert source_hash(data.replace(b"\n", b"\r\n")) != source_hash(data)


# Every kind of node a revision file may hold, and the f-string forms whose
# trees differ between Python versions (3.12.1 ends a nested format spec with
# an empty Constant). Pinned: the matrix runs this on 3.10 to 3.13, and a new
# Python that changes the value needs a new ALGORITHM, not a new pin.
SAMPLE = '''\
"""doc"""
from __future__ import annotations
import typing as t
from . import x as y
def f(a, /, b: int = 1, *args: t.Any, c, d=2, **kw) -> None:
    """doc"""
    global g
    x: int = 1
    y: "int"
    async def h():
        await z
        async for q in r: pass
        async with s as (u, v): pass
        return [i for i in range(3) if i async for j in k]
    lambda p, *, k=3: p
    try:
        pass
    except (A, B) as e:
        raise C from e
    else:
        pass
    finally:
        pass
    with open(u"x") as fh, open(b"y"): yield from fh
    del a[1:2:3], b.c
    assert x, "m"
    return [i for i in range(3) if i], {i: j for i, j in z}, {*s}, (i for i in ()), ...
class K(B, metaclass=M):
    """doc"""
    @dec
    def m(self) -> K: return self
match command:
    case [1, 2.0, *rest]: pass
    case {"k": v, **other}: pass
    case P(a=1, b=[x, y]) | None | True: pass
    case str() as s if s: pass
x = f"{a!r:>{w}} {b=} {c:{d}.{e}} {{}} {f:%Y}" f""
y = rb"\\x00", 1j,0xFF, 1_000, 1e10, -0.0, float("nan")
x = 2**9999 * 12345678901234567890123
s = "é\\u2603\\U0001F600\\x00 \\ud800"
a = b = c
a += 1; a @= b; a //= c
if a if b else c:
    pass
elif not a and b or c:
    pass
while a < b <= c is not d in e not in f:
    break
else:
    pass
for (a, b), *c in d: pass
print(*a, **b, sep="")
x = a[1, ::2, ...]
(w := 5)
nonlocal_ = None
'''
SAMPLE_CHECKSUM = "am1:911ea88628de0c73b64015064373e274d5447a1ab8a5d8f4dff8f62ea7192dbb"


def test_the_serialisation_is_pinned() -> None:
    assert checksum(SAMPLE) == SAMPLE_CHECKSUM


def test_a_string_standing_alone_in_any_block_is_form_not_meaning() -> None:
    # black re-indents (and re-quotes) a string at the top of an if/with/for
    # block as it would a docstring; a string statement does nothing anywhere.
    before = (
        "def upgrade():\n"
        "    if True:\n"
        "        '''   add the column\n"
        "        '''\n"
        "        op.add_column('t', sa.Column('c', sa.Integer))\n"
    )
    after = (
        "def upgrade():\n"
        "    if True:\n"
        '        """add the column"""\n'
        "        op.add_column('t', sa.Column('c', sa.Integer))\n"
        "        'a note'\n"
    )
    changed = after.replace("'c'", "'d'")

    assert checksum(before) == checksum(after)
    assert checksum(after) != checksum(changed)
