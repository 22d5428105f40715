"""The names a revision file states, read from its text without running it.

``revision``, ``down_revision``, ``branch_labels`` and ``depends_on``: all
Alembic needs of a file to place it in the graph; and ``post_deploy``, which
tells a start to leave the revision for after the rollout. A quick scan of the lines
first; where it is unsure, Python's own parser decides; where the file
computes a value (or binds a name any other way), the answer is "not plain"
and the caller imports the file as Alembic would. Nothing here imports
Alembic.
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_REQUIRED = ("revision", "down_revision")
# After a name at the start of a line: an assignment, with or without an
# annotation or an augmented operator (we accept only the plain one).
_ASSIGNED = re.compile(r"[ \t]*(?::[^=\n]*)?(?P<op>[-+*/%&|^@]|//|<<|>>|\*\*)?=(?!=)")
_MAX_VALUE_LINES = 30
# A walrus binds the plain name right before it (spaces, a newline inside
# brackets or a backslash continuation may come between).
_WALRUS = re.compile(r"(?:\s|\\\n)*:=")
# The common value: None or a short string, alone on its line (a comment may
# follow). Anything else goes to ast.literal_eval.
_SIMPLE_VALUE = re.compile(r"[ \t]*(None|'[^'\\\n]*'|\"[^\"\\\n]*\")[ \t]*(?:#[^\n]*)?(?:\n|\Z)")


# CPython 3.11 keeps the AST constructor's recursion count in one global
# per interpreter: two threads building trees at once can corrupt it
# ("SystemError: AST constructor recursion depth mismatch", cpython#106905),
# when a collection in one runs a finalizer and the other thread runs
# meanwhile. Our parses (several migrators in a group, an abandoned
# thread) are made one at a time.
PARSE_LOCK = threading.Lock()


def parse(source: str | bytes) -> ast.Module:
    """``ast.parse``, one at a time in this process (see ``PARSE_LOCK``)."""
    with PARSE_LOCK:
        return ast.parse(source)


def parse_expression(source: str) -> ast.Expression:
    """``ast.parse(source, mode="eval")``, one at a time (see ``PARSE_LOCK``)."""
    with PARSE_LOCK:
        return ast.parse(source, mode="eval")


def read_file(path: Path) -> dict[str, Any] | None:
    """The names ``path`` states plainly, or None if unsure (or unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return read_names(text)


def read_names(text: str) -> dict[str, Any] | None:
    """The literal values of the names, or None if the text is not plain.

    A quick scan of the lines first; where it is unsure (a name assigned
    twice, a docstring showing an assignment), Python's own parser decides.
    """
    # post_deploy decides what a start leaves out: the few files that mention
    # it are read by Python's parser, never by the scan's quote counting.
    found = None if "post_deploy" in text else _scan(text)
    if found is None:
        found = _parse(text)
    if found is None or any(name not in found for name in _REQUIRED):
        return None  # e.g. a legacy file named after its revision
    if not isinstance(found["revision"], str):
        return None
    return found


def _scan(text: str) -> dict[str, Any] | None:
    # Every mention of a name must be one of the plain assignments at
    # the start of a line, or sit in a comment or a docstring. Anything else
    # (bound another way: imported, unpacked, chained, in a block, matched;
    # or merely used) and Python's parser decides.
    found: dict[str, Any] = {}
    for begin, end, name in _mentions(text):
        prefix = text[text.rfind("\n", 0, begin) + 1 : begin]
        assigned = None if _WALRUS.match(text, end) else _ASSIGNED.match(text, end)
        if assigned is not None and not prefix.strip(" \t"):
            if prefix or assigned["op"] or name in found:
                return None  # in a block, augmented, or assigned twice
            if _inside_triple_quotes(text, begin):
                return None  # a docstring that shows an assignment: let Python decide
            value = _literal_after(text, assigned.end())
            if value is _NOT_LITERAL:
                return None
            found[name] = value
        elif not _inert(text, prefix, begin):
            return None
    return found


def _mentions(text: str) -> Iterator[tuple[int, int, str]]:
    # Each whole-word mention of a name: (start, end, name). str.find, not a
    # regex: a regex alternation tried at every offset of a long file costs
    # more than all the rest of the scan.
    for word in ("revision", "branch_labels", "depends_on", "post_deploy"):
        start = text.find(word)
        while start >= 0:
            end = start + len(word)
            if word == "revision" and text.startswith("down_", start - 5):
                start -= 5
            before = text[start - 1] if start else " "
            after = text[end] if end < len(text) else " "
            if not (_in_word(before) or _in_word(after)):
                yield start, end, text[start:end]
            start = text.find(word, end)


def _in_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _inert(text: str, prefix: str, begin: int) -> bool:
    # A mention that binds nothing: after a comment sign that no quote
    # precedes on its line, or inside a docstring (judged by counting
    # triple quotes, so only when the file uses one kind of them).
    code, sign, _ = prefix.partition("#")
    if sign and "'" not in code and '"' not in code:
        return True
    if '"""' in text and "'''" in text:
        return False
    return _inside_triple_quotes(text, begin)


def _parse(text: str) -> dict[str, Any] | None:
    # The module's own statements, as Python runs them: each name's last
    # top-level assignment of a literal wins (an annotated one, then a plain
    # one, as an older edit of a newer template leaves). Any other binding of
    # a name (in a block, computed, augmented, imported as) means its value
    # is only known by running the file.
    try:
        tree = parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    found: dict[str, Any] = {}
    plain: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id in _NAMES):
            continue
        try:
            found[target.id] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        plain.add(id(target))
    for each in ast.walk(tree):
        bound = _binds(each)
        if bound is not None and bound in _NAMES and id(each) not in plain:
            return None
        if _names_post_deploy(each) and id(each) not in plain:
            return None  # globals()["post_deploy"] = ..., vars().update(post_deploy=...)
    return found


def _names_post_deploy(node: ast.AST) -> bool:
    """A mention of ``post_deploy`` that may bind it some other way than a plain
    assignment: the name itself, the string ``"post_deploy"``, a keyword."""
    if isinstance(node, ast.Name):
        return node.id == "post_deploy"
    if isinstance(node, ast.Constant):
        return node.value == "post_deploy"
    return isinstance(node, ast.keyword) and node.arg == "post_deploy"


_NAMES = frozenset(("revision", "down_revision", "branch_labels", "depends_on", "post_deploy"))


def _binds(node: ast.AST) -> str | None:
    """The name a node binds, if it binds one we read."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
        return node.id
    if isinstance(node, ast.alias):
        return node.asname or node.name.partition(".")[0]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return next((n for n in node.names if n in _NAMES), None)
    if isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
        return node.name  # except ... as name; case name / case [*name]
    if isinstance(node, ast.MatchMapping):
        return node.rest  # case {**name}
    return None


_NOT_LITERAL = object()


def _literal_after(text: str, start: int) -> Any:
    simple = _SIMPLE_VALUE.match(text, start)
    if simple is not None:
        token = simple[1]
        return None if token == "None" else token[1:-1]
    # The value may run over several lines (a tuple of parents): take lines
    # until what we have is a complete literal expression.
    end = start
    for _ in range(_MAX_VALUE_LINES):
        newline = text.find("\n", end)
        end = len(text) if newline < 0 else newline
        source = text[start:end].strip()
        if source:
            try:
                return ast.literal_eval(parse_expression(source))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                pass
        if newline < 0:
            break
        end += 1
    return _NOT_LITERAL


def _inside_triple_quotes(text: str, offset: int) -> bool:
    before = text[:offset]
    return before.count('"""') % 2 == 1 or before.count("'''") % 2 == 1


def as_tuple(value: Any) -> tuple[Any, ...]:
    """A name's value as a tuple: None is empty, a string one item."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in ``edges`` (each revision to its parents), as a path; None if none."""
    # Depth-first, without recursion: histories run to thousands of revisions.
    done: set[str] = set()
    for start in edges:
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(edges[start])]
        while stack:
            parent = next(stack[-1], None)
            if parent is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                stack.pop()
                continue
            if parent in on_path:
                return [*path[path.index(parent) :], parent]
            if parent in edges and parent not in done:
                path.append(parent)
                on_path.add(parent)
                stack.append(iter(edges[parent]))
    return None
