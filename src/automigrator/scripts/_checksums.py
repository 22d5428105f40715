"""A revision file's checksum: what it does, not how it is written.

A checksum is kept for each applied revision so that an edit to it
afterwards is noticed. It must not fire when nobody changed what the file
does: a formatter run over the history (ruff, black; another line length,
another quote style), CRLF line endings from a Windows checkout, comments,
blank lines, parentheses, trailing commas. So it is taken over the module's
syntax tree, not its bytes, with every string that stands alone as a
statement removed: docstrings (the module's holds Alembic's "Revision ID /
Revises / Create Date" header, which people do touch up), and strings used
as comments, which black re-indents as docstrings at the top of any block.

The top-level ``downgrade()`` is left out too: an applied revision's
downgrade has not run, and fixing it later must not read as an edit of what
was applied. (If anything else in the file refers to ``downgrade``, it is
kept: then it is part of what ran.) Everything else counts: ``upgrade()``,
the module-level helpers, constants and imports it uses, and ``revision``,
``down_revision``, ``branch_labels`` and ``depends_on``.

The tree is serialised by a walker of our own, not ``ast.dump()``, whose
text changed in Python 3.13 (it leaves out None and empty-list defaults).
Checksums are compared across upgrades of Python, and a mismatch that
nobody can explain is worse than none (Liquibase's change of algorithm gave
its users exactly that). Each node is its class name and its fields sorted
by name; fields that are None or empty are skipped, so a field that a newer
Python adds with an empty default (``type_params`` in 3.12) changes
nothing. Each checksum carries the algorithm's name, :data:`ALGORITHM`, so
that a future change of the serialisation is recognised as such rather than
read as an edit.
"""

from __future__ import annotations

import ast
import hashlib

from ._revisiontext import parse

ALGORITHM = "am1"
"""The serialisation's name, stored in front of each checksum."""

# Fields that say nothing about what the code does: the load/store context
# (implied by the position), type comments, and Constant's u-prefix marker.
_SKIPPED_FIELDS = frozenset(("ctx", "type_comment", "kind"))
# Nodes whose ``value`` field is the literal itself, None included.
_LITERALS = (ast.Constant, ast.MatchSingleton)


def checksum(source: str | bytes) -> str | None:
    """The checksum of a revision file's meaning, or None if it does not parse.

    ``"am1:"`` and a SHA-256 hex digest of the file's syntax tree, without
    docstrings and without the top-level ``downgrade()`` (see the module's
    docstring for why). Bytes are decoded as Python decodes a source file
    (a coding cookie, a byte-order mark). A file that does not parse gets
    None rather than an exception: whether that is an error is the
    caller's call.

    Args:
        source: The file's text, or its bytes as read from disk.
    """
    if isinstance(source, str):
        # Python skips a byte-order mark in a file; text read with plain
        # "utf-8" keeps it as a character, which the parser refuses.
        source = source.removeprefix("\ufeff")
    try:
        tree = parse(source)
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: nesting too deep for the parser (a file Python
        # could not import either).
        return None
    digest = hashlib.sha256("".join(_tokens(tree)).encode("ascii"))
    return f"{ALGORITHM}:{digest.hexdigest()}"


def source_hash(data: bytes) -> str:
    """The SHA-256 hex digest of a file's bytes.

    A cheap first comparison: when the bytes are unchanged, so is the
    meaning, and the file need not be parsed; only when they differ is
    :func:`checksum` worth its cost.

    Args:
        data: The file's bytes as read from disk.
    """
    return hashlib.sha256(data).hexdigest()


def _tokens(tree: ast.Module) -> list[str]:
    """The module as a flat list of ASCII tokens, in one unambiguous order,
    without what the checksum leaves out (bare strings, and ``downgrade()``
    unless something refers to it).

    A node is ``(ClassName field=value ...)``, a list ``[item, ...]``, a
    scalar ``type:ascii(value)``: every token is framed, so two different
    trees cannot give the same text. Fields that are None (but a literal's
    value) or empty lists are skipped. One walk does it all: stripping the
    tree first, then serialising it, walked it three times (most of a
    checksum's cost after the parse).
    """
    # Each top-level statement apart: downgrade() is dropped afterwards, if
    # nothing anywhere (itself included) named it.
    statements: list[tuple[ast.stmt, list[str]]] = []
    named = False
    for statement in _meaningful(tree.body):
        out: list[str] = []
        named |= _walk(statement, out)
        statements.append((statement, out))
    kept = [
        out
        for statement, out in statements
        if named
        or not isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef)
        or statement.name != "downgrade"
    ]
    tokens = ["(Module"]
    if kept:
        tokens.append(" body=[")
        for out in kept:
            tokens += out
            tokens.append(",")
        tokens.append("]")
    if tree.type_ignores:  # only with type_comments=True, never ours; kept exact anyway
        _walk(tree.type_ignores, tokens, prefix=" type_ignores=")
    tokens.append(")")
    return tokens


# A string alone as a statement does nothing: a docstring, or a comment
# written as a string. Formatters treat the first one of any block as a
# docstring (black re-indents one at the top of an ``if`` or ``with``), so
# every one goes, from every statement list, not only the module's,
# classes' and functions'.
_STATEMENT_LISTS = frozenset(("body", "orelse", "finalbody"))
# Per node class: its fields that count, sorted by name, with their tokens.
_FIELDS: dict[type[ast.AST], tuple[tuple[str, str], ...]] = {}


def _fields_of(cls: type[ast.AST]) -> tuple[tuple[str, str], ...]:
    fields = _FIELDS.get(cls)
    if fields is None:
        names = sorted(name for name in cls._fields if name not in _SKIPPED_FIELDS)
        fields = _FIELDS[cls] = tuple((name, f" {name}=") for name in names)
    return fields


_ABSENT = object()


def _walk(root: object, out: list[str], prefix: str = "") -> bool:
    """Append ``root``'s tokens to ``out`` (after ``prefix``); whether a name
    ``downgrade`` was met. Iterative, not recursive: a long chain of ``+``
    nests deeper than Python's recursion limit."""
    if prefix:
        out.append(prefix)
    named = False
    stack: list[object] = [root]  # tokens (str) and things still to expand
    while stack:
        item = stack.pop()
        if type(item) is str:
            out.append(item)
        elif isinstance(item, ast.AST):
            cls = type(item)
            out.append("(" + cls.__name__)
            if isinstance(item, ast.Name) and item.id == "downgrade":
                named = True  # upgrade() calling it, a decorator, a dict of steps
            stack.append(")")
            pending: list[object] = []
            for name, token in _fields_of(cls):
                value = getattr(item, name, _ABSENT)
                if value is _ABSENT:
                    continue
                if value is None:
                    if not isinstance(item, _LITERALS):
                        continue
                elif type(value) is list:
                    if name in _STATEMENT_LISTS:
                        value = _meaningful(value)
                    elif cls is ast.JoinedStr:
                        value = _joined_parts(value)
                    if not value:
                        continue
                pending.append(token)
                pending.append(_expand(value))
            stack.extend(reversed(pending))
        else:
            assert isinstance(item, list)  # _expand gives nothing else
            out.append("[")
            stack.append("]")
            for element in reversed(item):
                stack.append(",")
                stack.append(_expand(element))
    return named


def _meaningful(statements: list[ast.stmt]) -> list[ast.stmt]:
    """``statements`` without the strings that stand alone."""
    if not any(_is_docstring(s) for s in statements):
        return statements
    return [s for s in statements if not _is_docstring(s)]


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _joined_parts(values: list[ast.expr]) -> list[object]:
    """An f-string's parts, with its literal text in maximal non-empty runs.

    Python 3.12.1 ends a nested format spec with an empty ``Constant('')``
    that 3.11 and 3.13 do not; merging and dropping empty text makes every
    version agree (and changes nothing that the f-string does).
    """
    parts: list[object] = []
    text: list[str] = []
    for value in values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            text.append(value.value)
            continue
        if "".join(text):
            parts.append(ast.Constant("".join(text)))
        text = []
        parts.append(value)
    if "".join(text):
        parts.append(ast.Constant("".join(text)))
    return parts


def _expand(value: object) -> object:
    """A field's value ready for the stack: nodes and lists as they are, scalars as tokens."""
    if isinstance(value, ast.AST | list):
        return value
    if type(value) is int:
        # Hex: a long hex literal parses to an int whose decimal text
        # Python 3.11+ refuses to make (its digit limit).
        return f"int:{value:#x}"
    # !a (ascii), not repr(): repr() escapes only what the running Python's
    # Unicode tables call unprintable, and those tables change with Python.
    return f"{type(value).__name__}:{value!a}"
