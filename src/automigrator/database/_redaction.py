"""What may be shown: passwords, and for anonymous readers private data, taken out of text.

Every message that can carry a URL or a server's words goes through here
before it reaches a log, the status, the health endpoint or the terminal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

from sqlalchemy.engine import URL

# "user:password@" in any URL-like text; the password may hold ':' and '/'
# (unencoded), so it runs to the last '@' before white space.
_USERINFO = re.compile(r"(?P<user>[^\s:/@'\"]*):(?!//)(?P<password>[^\s'\"]*)@")
_PASSWORD_SETTING = re.compile(
    r"(?P<key>password\s*[=:]\s*)(?P<value>'[^']*'|\"[^\"]*\"|\S+)", re.I
)
# MySQL's and MariaDB's "Access denied ... (using password: YES)": their words.
_SERVERS_OWN_WORDS = re.compile(r"\(using password: (?:YES|NO)\)")


def mask_credentials(text: str) -> str:
    """Hide every ``user:password@`` and ``password=...`` in ``text``."""
    text = _USERINFO.sub(lambda m: f"{m['user']}:***@", text)
    kept = {m.start() for m in _SERVERS_OWN_WORDS.finditer(text)}
    return _PASSWORD_SETTING.sub(
        lambda m: m[0] if m.start() - len("(using ") in kept else f"{m['key']}***", text
    )


def redact(text: str, url: URL | None) -> str:
    """Remove passwords from text that came from a driver, a revision or a config.

    Credentials in any URL or ``password=`` setting, and the URL's own
    password wherever it stands as a word of its own (raw or percent-encoded),
    never inside another word: a password ``x`` leaves "exist" alone.
    """
    text = mask_credentials(text)
    if url is not None and url.password:
        password = str(url.password)
        # Raw, percent-encoded, and as a SQL string literal writes it ('' for ').
        for form in {password, quote(password, safe=""), password.replace("'", "''")}:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", "***", text)
    return text


def anonymize(text: str, urls: Iterable[URL]) -> str:
    """``text`` for anonymous readers: no URL, user, host, port, database or quoted data.

    For the health endpoint: what is left says what kind of thing failed.
    """
    text = redact(re.sub(r"\b[a-z][a-z0-9+.-]*://\S+", "<database URL>", text), None)
    # Quoted values (row data) and names; a double-quoted phrase (a driver
    # quoting its whole message) keeps its words.
    text = re.sub(r"'[^']*'|`[^`]*`|\"[^\"\s]*\"", "'?'", text)
    for url in urls:
        text = redact(text, url)
        for word in (url.username, url.host, url.database, url.port):
            if word:
                text = re.sub(rf"(?<![\w.-]){re.escape(str(word))}(?![\w-])", "?", text)
    return text
