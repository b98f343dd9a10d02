"""Redaction of secrets by value: what relayml writes never holds a password it knows.

A password is *remembered* (:func:`remember`) as soon as relayml reads it: from a source's
``password_env``, from a URL with a password in it, from ``relay server --password-env``. From
then on :func:`redact` replaces every encoding of it (raw, percent-encoded the ways URLs and
SQLAlchemy write it, Python ``repr``/JSON-escaped, libpq-quoted) with ``***``, wherever it is:
in a URL, a database's error message, a traceback, a param. URL patterns
(``scheme://user:PASSWORD@host``, ``password=...``) are redacted as well, for passwords relayml
never read itself.

The store (params, tags, text artifacts), the runner (error messages and tracebacks) and the
CLI (the ``Error:`` line, and log records: :func:`redact_log_records`) all pass what they
write through :func:`redact`.

This module is vocabulary: it imports nothing from relayml. The remembered secrets live only in
this process's memory, never on disk.

Example:
    >>> remember("p@ss w0rd")
    >>> redact("postgresql://me:p%40ss%20w0rd@db/x failed: bad 'p@ss w0rd'")
    "postgresql://me:***@db/x failed: bad '***'"
"""

from __future__ import annotations

import json
import re
import threading
from urllib.parse import quote, quote_plus, unquote

__all__ = [
    "MASK",
    "MIN_LENGTH",
    "encodings",
    "forget",
    "redact",
    "redact_log_records",
    "remember",
    "remember_url",
]

#: What a secret is replaced with.
MASK = "***"
#: Shorter secrets are redacted only where a URL pattern shows them (redacting every
#: occurrence of two letters would garble every message, and they protect nothing).
MIN_LENGTH = 4

_SECRET_KEYS = r"password|passwd|pwd|pass|secret|token|api_key|apikey|access_key|sslpassword"
_USERINFO = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@")
_QUERY_SECRET = re.compile(rf"(?P<pre>(?:^|[?&;\s])(?:{_SECRET_KEYS})=)(?P<pw>[^&;\s]*)", re.I)

_KNOWN: set[str] = set()  # every encoding of every remembered secret
_LOCK = threading.Lock()


def encodings(secret: str) -> set[str]:
    """The ways ``secret`` can appear in a message, a URL or a traceback.

    Example:
        >>> sorted(encodings("a b@"))
        ['a b%40', 'a b@', 'a%20b%40', 'a+b%40']
    """
    escaped = secret.encode("unicode_escape").decode("ascii")  # repr without the quotes
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),  # safe="/"
        quote(secret, safe=" +"),  # SQLAlchemy's URL rendering
        quote_plus(secret),
        quote(secret, safe="").lower(),
        repr(secret)[1:-1],
        escaped,
        escaped.replace("'", "\\'"),
        escaped.replace('"', '\\"'),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        secret.replace("\\", "\\\\").replace("'", "\\'"),  # libpq keyword=value quoting
    }
    return {f for f in forms if f}


def remember(secret: str | None) -> None:
    """Redact ``secret`` (every encoding of it) from everything relayml writes from now on.

    Secrets shorter than :data:`MIN_LENGTH` are ignored (URL patterns still hide them).

    Example:
        >>> remember("hunter22")
        >>> redact("login with hunter22")
        'login with ***'
    """
    if not secret or len(secret) < MIN_LENGTH:
        return
    forms = encodings(secret) | encodings(unquote(secret))
    with _LOCK:
        _KNOWN.update(f for f in forms if len(f) >= MIN_LENGTH)


def forget(secret: str) -> None:
    """Stop redacting ``secret`` (a rotated password; tests that generate many).

    Example:
        >>> remember("tmp-secret")
        >>> forget("tmp-secret")
        >>> redact("tmp-secret")
        'tmp-secret'
    """
    forms = encodings(secret) | encodings(unquote(secret))
    with _LOCK:
        _KNOWN.difference_update(forms)


def remember_url(url: str | None) -> None:
    """Remember the password of a URL or connection string, if it has one.

    Example:
        >>> remember_url("postgresql://me:s3cr3t%20x@db/x")
        >>> redact("password was s3cr3t x")
        'password was ***'
    """
    if not url:
        return
    for rx in (_USERINFO, _QUERY_SECRET):
        for m in rx.finditer(url):
            remember(unquote(m["pw"]))
    scheme, sep, rest = url.partition("://")
    if sep and scheme and "@" in rest:
        # a password with an '@', a '/' or spaces in it, unencoded: drivers disagree where
        # the user-info ends (SQLAlchemy: the first '@'; libpq: the last one), so remember
        # the password of every reading
        for userinfo in {rest.split("@", 1)[0], rest.rsplit("@", 1)[0],
                         rest.split("/", 1)[0].rsplit("@", 1)[0]}:  # fmt: skip
            if ":" in userinfo and "/" not in userinfo.split(":", 1)[0]:
                remember(unquote(userinfo.split(":", 1)[1]))


def redact(text: str) -> str:
    """Hide every remembered secret and every URL password in ``text``.

    Args:
        text: a URL, a connection string, a message, a traceback.

    Returns:
        The same text with each secret replaced by ``***``.

    Example:
        >>> redact("postgresql+psycopg://user:s3cr3t@host:5432/db")
        'postgresql+psycopg://user:***@host:5432/db'
        >>> redact("postgresql://host/db?sslmode=require&password=s3cr3t")
        'postgresql://host/db?sslmode=require&password=***'
    """
    with _LOCK:
        known = sorted(_KNOWN, key=len, reverse=True)
    text = _replace(str(text), known)  # first by value: a pattern may see only part of one
    text = _USERINFO.sub(lambda m: f"{m['pre']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['pre']}{MASK}", text)
    return _replace(text, known)


def _replace(text: str, known: list[str]) -> str:
    # Each replacement shortens the text (secrets are longer than the mask), so this ends;
    # repeating catches a secret that a replacement put together from its neighbours.
    changed = True
    while changed:
        changed = False
        for secret in known:
            if secret in text:
                text = text.replace(secret, MASK)
                changed = True
    return text


def redact_log_records() -> None:
    """Redact every log record of this process (relay's, MLflow's, SQLAlchemy's) by value.

    Installs a log record factory once; the CLI calls it at start. A record whose message
    holds a secret gets the redacted text as its message (and no arguments).

    Example:
        >>> import logging
        >>> redact_log_records()
        >>> remember("hunter22")
        >>> logging.getLogger("demo").makeRecord("demo", 30, "f", 1, "pw %s", ("hunter22",),
        ...                                      None).getMessage()
        'pw ***'
    """
    import logging

    previous = logging.getLogRecordFactory()
    if getattr(previous, "_relay_redacts", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _KNOWN:
            try:
                message = record.getMessage()
            except Exception:  # a broken format: logging reports it itself later
                return record
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return record

    factory._relay_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
