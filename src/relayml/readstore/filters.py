"""Parse the MLflow filter strings relayml writes into clauses a SQL read path can run.

Only the subset relayml uses is understood: clauses joined by ``AND``, each
``tags.`K` = 'v'`` (also ``!=``, ``LIKE``, ``ILIKE``), ``params.`K` = 'v'``,
``metrics.K > 0.5`` and ``attributes.status|start_time|end_time|run_name|run_id <op> value``.
Anything else raises :class:`~relayml.readstore.records.Unsupported`, and the store asks
MLflow's client, which understands the whole language.

Example:
    >>> [c.key for c in parse("tags.`relay.variant` = 'plain' AND attributes.start_time >= 1")]
    ['relay.variant', 'start_time']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relayml.readstore.records import Unsupported

__all__ = ["ATTRIBUTES", "Clause", "parse", "parse_order"]

# attribute name in a filter → (column of the runs table, numeric?)
ATTRIBUTES = {
    "status": ("status", False),
    "start_time": ("start_time", True),
    "end_time": ("end_time", True),
    "run_name": ("name", False),
    "run_id": ("run_uuid", False),
}
_KINDS = {
    **{k: "tags" for k in ("tags", "tag")},
    **{k: "params" for k in ("params", "param")},
    **{k: "metrics" for k in ("metrics", "metric")},
    **{k: "attributes" for k in ("attributes", "attribute")},
}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<ident>(?P<kind>[a-z]+)\.(?:`(?P<quoted>[^`]+)`|(?P<bare>[A-Za-z0-9_.\-]+)))
      | (?P<op>!=|<=|>=|=|<|>|\bNOT\s+ILIKE\b|\bNOT\s+LIKE\b|\bILIKE\b|\bLIKE\b)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<and>\bAND\b)
    )""",
    re.VERBOSE | re.IGNORECASE,
)


@dataclass(frozen=True)
class Clause:
    """One comparison: ``kind`` is tags, params, metrics or attributes."""

    kind: str
    key: str
    op: str
    value: str | float | int


def parse(text: str) -> list[Clause]:
    """The clauses of a filter string (empty for an empty filter).

    Raises:
        Unsupported: anything outside the subset (OR, IN, parentheses, unknown attributes).

    Example:
        >>> parse("params.`C` = '10.0'")[0].value
        '10.0'
    """
    tokens = _tokens(text)
    clauses: list[Clause] = []
    i = 0
    while i < len(tokens):
        if clauses:
            if tokens[i] != ("and", "AND"):
                raise Unsupported(f"filter {text!r}")
            i += 1
        if i + 3 > len(tokens):
            raise Unsupported(f"filter {text!r}")
        (k1, ident), (k2, op), (k3, value) = tokens[i : i + 3]
        if k1 != "ident" or k2 != "op" or k3 not in ("string", "number"):
            raise Unsupported(f"filter {text!r}")
        clauses.append(_clause(ident, op.upper(), k3, value))
        i += 3
    return clauses


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise Unsupported(f"filter {text!r}")
        kind = next(k for k in ("ident", "op", "string", "number", "and") if m.group(k))
        out.append((kind, "AND" if kind == "and" else m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _clause(ident: str, op: str, vkind: str, raw: str) -> Clause:
    m = re.fullmatch(r"([a-z]+)\.(?:`([^`]+)`|(.+))", ident, re.IGNORECASE)
    assert m is not None
    kind = _KINDS.get(m.group(1).lower())
    key = m.group(2) or m.group(3)
    op = " ".join(op.split())
    if kind is None:
        raise Unsupported(f"identifier {ident!r}")
    value: str | float | int
    if vkind == "string":
        value = raw[1:-1]  # as MLflow: the quotes go, backslashes stay
    else:
        value = float(raw) if any(c in raw for c in ".eE") else int(raw)
    if kind in ("tags", "params"):
        if vkind != "string" or op not in ("=", "!=", "LIKE", "ILIKE"):
            raise Unsupported(f"{ident} {op}")
    elif kind == "metrics":
        if vkind != "number" or op not in ("=", "!=", "<", "<=", ">", ">="):
            raise Unsupported(f"{ident} {op}")
    else:
        if key not in ATTRIBUTES:
            raise Unsupported(f"attribute {key!r}")
        numeric = ATTRIBUTES[key][1]
        if numeric != (vkind == "number") or (not numeric and op not in ("=", "!=", "LIKE")):
            raise Unsupported(f"{ident} {op}")
        if numeric and op in ("LIKE", "ILIKE"):
            raise Unsupported(f"{ident} {op}")
    return Clause(kind, key, op, value)


def parse_order(order_by: list[str] | tuple[str, ...]) -> bool:
    """Whether the order is MLflow's default (newest first), the only one a reader runs.

    Raises:
        Unsupported: any other order.

    Example:
        >>> parse_order(["attributes.start_time DESC"])
        True
    """
    normal = [" ".join(o.split()).lower() for o in order_by]
    if normal in ([], ["attributes.start_time desc"], ["start_time desc"]):
        return True
    raise Unsupported(f"order {order_by!r}")
