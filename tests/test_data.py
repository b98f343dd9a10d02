"""Tests of relayml.data: sources, streamed snapshots, digests, redaction, bad input.

SQLite always runs; PostgreSQL runs against ``RELAY_TEST_POSTGRES_URL`` (skipped with a reason
when unset or unreachable, failed instead when ``RELAY_REQUIRE_POSTGRES=1``).
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relayml
from relayml.data import (
    Digester,
    combine_digests,
    digest_table,
    read_snapshot,
    redact,
    snapshot_file,
    snapshot_frame,
    snapshot_query,
    with_password,
)
from relayml.errors import ConfigError, SourceError

N_ROWS = 12_000
BASE_TS = dt.datetime(2019, 2, 9, 0, 0, 0)
PASSWORD = "S3cr3t-Pw_91"


def make_frame(n: int = N_ROWS) -> pd.DataFrame:
    """Deterministic test data: ints, floats with NULLs, timestamps, strings with NULLs/quotes."""
    rng = np.random.default_rng(7)
    amount = np.round(rng.normal(100, 30, n), 2)
    amount[::97] = np.nan
    label = [
        None if i % 89 == 0 else f"name {i} o'brien" if i % 500 == 1 else f"L{i % 13}"
        for i in range(n)
    ]
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "amount": amount,
            "ts": pd.to_datetime([BASE_TS + dt.timedelta(minutes=i) for i in range(n)]),
            "label": pd.array(label, dtype=object),
        }
    )


def _rows(df: pd.DataFrame) -> list[tuple]:
    return [
        (
            int(r.id),
            None if pd.isna(r.amount) else float(r.amount),
            r.ts.strftime("%Y-%m-%d %H:%M:%S"),
            None if pd.isna(r.label) else r.label,
        )
        for r in df.itertuples(index=False)
    ]


@dataclass
class DB:
    kind: str
    url: str
    table: str


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory, frame: pd.DataFrame) -> DB:
    path = tmp_path_factory.mktemp("sqlite") / "src.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE tx (id INTEGER, amount REAL, ts TIMESTAMP, label TEXT)")
        c.executemany("INSERT INTO tx VALUES (?, ?, ?, ?)", _rows(frame))
    return DB("sqlite", f"sqlite:///{path}", "tx")


@pytest.fixture(scope="module")
def pg_db(frame: pd.DataFrame, postgres_url: str) -> Iterator[DB]:
    import sqlalchemy as sa

    url = postgres_url
    table = f"relay_test_tx_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {table} (id BIGINT, amount DOUBLE PRECISION, ts TIMESTAMP, "
                "label TEXT)"
            )
        )
        raw = conn.connection.driver_connection
        with raw.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            for row in _rows(frame):
                copy.write_row(row)
    try:
        yield DB("postgres", url, table)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> DB:
    return request.getfixturevalue(f"{request.param}_db" if request.param == "sqlite" else "pg_db")


def _ts_param(db: DB, when: dt.datetime) -> object:
    # SQLite stores timestamps as text; PostgreSQL binds a real timestamp.
    return when.strftime("%Y-%m-%d %H:%M:%S") if db.kind == "sqlite" else when


def _pw_url(url: str) -> str:
    """The PostgreSQL URL with a password (the test server trusts any)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


# ---------------------------------------------------------------------------------------------
# Sources: bound parameters, retrieval time, progress, empty result
# ---------------------------------------------------------------------------------------------


def test_snapshot_whole_table(db: DB, frame: pd.DataFrame, tmp_path: Path) -> None:
    seen: list[int] = []
    snap = snapshot_query(
        db.url,
        f"SELECT * FROM {db.table} ORDER BY id",
        {},
        tmp_path / "s.parquet",
        batch_size=5_000,
        progress=seen.append,
    )
    assert snap.rows == N_ROWS
    assert snap.schema == {
        "id": "int64",
        "amount": "double",
        "ts": "timestamp[us]",
        "label": "large_string",
    }
    assert snap.bytes == snap.path.stat().st_size > 0
    assert snap.query == f"SELECT * FROM {db.table} ORDER BY id"
    assert seen[-1] == N_ROWS and seen == sorted(seen)
    back = read_snapshot(snap.path)
    assert back["id"].tolist() == frame["id"].tolist()
    assert back["label"].isna().sum() == frame["label"].isna().sum()
    assert snap.digest == digest_table(back)


def test_retrieval_time_is_a_bound_parameter(db: DB, tmp_path: Path) -> None:
    cut = BASE_TS + dt.timedelta(minutes=999)
    snap = snapshot_query(
        db.url,
        f"SELECT * FROM {db.table} WHERE ts <= :retrieval_time ORDER BY id",
        {"retrieval_time": _ts_param(db, cut)},
        tmp_path / "s.parquet",
        batch_size=300,
    )
    assert snap.rows == 1_000
    assert read_snapshot(snap.path)["ts"].max() == pd.Timestamp(cut)


@pytest.mark.parametrize(
    ("value", "rows"),
    [
        ("x'; DROP TABLE {table}; --", 0),
        ("' OR '1'='1", 0),
        ("name 1 o'brien", 1),
        ("L3", None),
    ],
)
def test_params_stay_literals(db: DB, tmp_path: Path, value: str, rows: int | None) -> None:
    value = value.format(table=db.table)
    snap = snapshot_query(
        db.url,
        f"SELECT id, label FROM {db.table} WHERE label = :label",
        {"label": value},
        tmp_path / "s.parquet",
    )
    if rows is not None:
        assert snap.rows == rows
    else:
        assert snap.rows > 0
    assert set(read_snapshot(snap.path)["label"]) <= {value}
    # the table survived the injection attempt
    again = snapshot_query(
        db.url, f"SELECT COUNT(*) AS n FROM {db.table}", {}, tmp_path / "n.parquet"
    )
    assert read_snapshot(again.path)["n"].tolist() == [N_ROWS]


def test_empty_result(db: DB, tmp_path: Path) -> None:
    out = tmp_path / "empty.parquet"
    snap = snapshot_query(db.url, f"SELECT * FROM {db.table} WHERE id < :lo", {"lo": -1}, out)
    assert snap.rows == 0
    assert list(snap.schema) == ["id", "amount", "ts", "label"]
    if db.kind == "postgres":  # the server knows the types of an empty result
        assert snap.schema["ts"] == "timestamp[us]"
    assert pq.read_table(out).num_rows == 0
    assert re.fullmatch(r"[0-9a-f]{32}", snap.digest)


def test_missing_parameter_is_an_error(db: DB, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="retrieval_time"):
        snapshot_query(
            db.url,
            f"SELECT * FROM {db.table} WHERE ts <= :retrieval_time",
            {},
            tmp_path / "s.parquet",
        )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Digest: batch-size independence, sensitivity, cross-source equality
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1_000, 4_097, 100_000])
def test_digest_same_for_any_batch_size(db: DB, tmp_path: Path, batch_size: int) -> None:
    sql = f"SELECT * FROM {db.table} ORDER BY id"
    ref = snapshot_query(db.url, sql, {}, tmp_path / "ref.parquet", batch_size=N_ROWS)
    snap = snapshot_query(db.url, sql, {}, tmp_path / "s.parquet", batch_size=batch_size)
    assert snap.digest == ref.digest


def test_change_past_row_10000_changes_digest(db: DB, tmp_path: Path) -> None:
    sql = f"SELECT * FROM {db.table} ORDER BY id"
    base = snapshot_query(db.url, sql, {}, tmp_path / "a.parquet")
    changed = snapshot_query(
        db.url,
        f"SELECT id, CASE WHEN id = 11000 THEN amount + 0.01 ELSE amount END AS amount, ts, label "
        f"FROM {db.table} ORDER BY id",
        {},
        tmp_path / "b.parquet",
    )
    assert changed.rows == base.rows
    assert changed.digest != base.digest


def test_mlflow_digest_misses_what_ours_sees(frame: pd.DataFrame) -> None:
    import mlflow.data

    other = frame.copy()
    other.loc[11_000, "amount"] += 0.01
    assert mlflow.data.from_pandas(frame).digest == mlflow.data.from_pandas(other).digest
    assert digest_table(frame) != digest_table(other)


def test_same_digest_from_every_source(
    sqlite_db: DB, frame: pd.DataFrame, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    digests = {
        "sqlite": snapshot_query(
            sqlite_db.url, "SELECT * FROM tx ORDER BY id", {}, tmp_path / "sqlite.parquet"
        ).digest,
        "frame": snapshot_frame(frame, tmp_path / "frame.parquet").digest,
        "digest_table": digest_table(frame),
    }
    csv = tmp_path / "src.csv"
    frame.to_csv(csv, index=False, date_format="%Y-%m-%d %H:%M:%S")
    digests["csv"] = snapshot_file(csv, tmp_path / "csv.parquet", batch_size=1_000).digest
    parquet = tmp_path / "src.parquet"
    frame.to_parquet(parquet, index=False)
    digests["parquet"] = snapshot_file(parquet, tmp_path / "pq.parquet", batch_size=999).digest
    pg = request.getfixturevalue("pg_db")  # skips (or fails) here only if PostgreSQL is missing
    digests["postgres"] = snapshot_query(
        pg.url, f"SELECT * FROM {pg.table} ORDER BY id", {}, tmp_path / "pg.parquet"
    ).digest
    assert len(set(digests.values())) == 1, digests


def test_same_digest_from_every_source_without_postgres(
    sqlite_db: DB, frame: pd.DataFrame, tmp_path: Path
) -> None:
    sql = snapshot_query(sqlite_db.url, "SELECT * FROM tx ORDER BY id", {}, tmp_path / "a.parquet")
    assert sql.digest == snapshot_frame(frame, tmp_path / "b.parquet").digest


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 60))
    ints = draw(
        st.lists(st.one_of(st.none(), st.integers(-(2**40), 2**40)), min_size=n, max_size=n)
    )
    floats = draw(st.lists(st.one_of(st.none(), st.floats(allow_nan=True)), min_size=n, max_size=n))
    texts = draw(st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=n, max_size=n))
    flags = draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n))
    return pa.table(
        {
            "i": pa.array(ints, pa.int64()),
            "f": pa.array(floats, pa.float64()),
            "s": pa.array(texts, pa.string()),
            "b": pa.array(flags, pa.bool_()),
        }
    )


@settings(max_examples=150, deadline=None)
@given(table=tables(), chunk=st.integers(1, 25))
def test_digest_independent_of_batching(table: pa.Table, chunk: int) -> None:
    d = Digester(table.schema)
    for batch in table.to_batches(max_chunksize=chunk):
        d.update(batch)
    assert d.hexdigest() == digest_table(table)
    assert d.rows == table.num_rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(table=tables(), data=st.data())
def test_any_single_change_changes_digest(table: pa.Table, data: st.DataObject) -> None:
    if table.num_rows == 0:
        return
    col = data.draw(st.sampled_from(table.column_names))
    row = data.draw(st.integers(0, table.num_rows - 1))
    values = table.column(col).to_pylist()
    old = values[row]
    new = data.draw(
        {
            "i": st.one_of(st.none(), st.integers(-(2**40), 2**40)),
            "f": st.one_of(st.none(), st.floats(allow_nan=False)),
            "s": st.one_of(st.none(), st.text(max_size=5)),
            "b": st.one_of(st.none(), st.booleans()),
        }[col].filter(
            lambda v: (
                not (v == old and type(v) is type(old) and str(v) == str(old))
                and not (v is None and old is None)
            )
        )
    )
    if isinstance(old, float) and isinstance(new, float) and old != old and new != new:
        return
    values[row] = new
    changed = table.set_column(
        table.column_names.index(col), col, pa.array(values, table.schema.field(col).type)
    )
    assert digest_table(changed) != digest_table(table)


def test_digest_normalizes_types() -> None:
    narrow = pa.table(
        {
            "i": pa.array([1, None, 3], pa.int16()),
            "f": pa.array([0.5, 1.5, None], pa.float32()),
            "t": pa.array([0, 1_000, None], pa.timestamp("ms", tz="Europe/Paris")),
            "s": pa.array(["a", "b", None]).dictionary_encode(),
        }
    )
    wide = pa.table(
        {
            "i": pa.array([1, None, 3], pa.int64()),
            "f": pa.array([0.5, 1.5, None], pa.float64()),
            "t": pa.array([0, 1_000_000, None], pa.timestamp("us")),
            "s": pa.array(["a", "b", None], pa.large_string()),
        }
    )
    assert digest_table(narrow) == digest_table(wide)


def test_digest_distinguishes_null_from_zero_and_string_boundaries() -> None:
    assert digest_table(pa.table({"a": [0, 1]})) != digest_table(pa.table({"a": [None, 1]}))
    assert digest_table(pa.table({"s": ["ab", "c"]})) != digest_table(pa.table({"s": ["a", "bc"]}))
    assert digest_table(pa.table({"s": ["", "x"]})) != digest_table(pa.table({"s": [None, "x"]}))
    assert digest_table(pa.table({"a": [1]})) != digest_table(pa.table({"b": [1]}))


def test_combine_digests_is_order_independent() -> None:
    a = digest_table(pa.table({"x": [1]}))
    b = digest_table(pa.table({"x": [2]}))
    assert combine_digests({"a": a, "b": b}) == combine_digests({"b": b, "a": a})
    assert combine_digests({"a": a, "b": b}) != combine_digests({"a": b, "b": a})
    assert len(combine_digests({"a": a})) == 32 and len(combine_digests({})) == 32


# ---------------------------------------------------------------------------------------------
# Passwords and redaction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://user:pw@host:5432/db", "postgresql+psycopg://user:***@host:5432/db"),
        ("postgresql://user:p%40ss@host/db", "postgresql://user:***@host/db"),
        ("mysql://u:x@h/db?password=abc&ssl=1", "mysql://u:***@h/db?password=***&ssl=1"),
        (
            "postgresql://host/db?sslmode=require&pwd=abc",
            "postgresql://host/db?sslmode=require&pwd=***",
        ),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("host=h dbname=d password=abc", "host=h dbname=d password=***"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_with_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TEST_PW", "p@ss:w/rd")
    url = with_password("postgresql+psycopg://me@db:5432/x", "RELAY_TEST_PW")
    from sqlalchemy.engine import make_url

    assert make_url(url).password == "p@ss:w/rd"
    assert "p@ss" not in redact(url) and "***" in redact(url)
    assert with_password("sqlite:////tmp/x.db", None) == "sqlite:////tmp/x.db"
    monkeypatch.delenv("RELAY_TEST_PW")
    with pytest.raises(ConfigError, match="RELAY_TEST_PW"):
        with_password("postgresql+psycopg://me@db:5432/x", "RELAY_TEST_PW")


def test_password_never_leaks_from_a_snapshot(pg_db: DB, tmp_path: Path) -> None:
    url = _pw_url(pg_db.url)
    snap = snapshot_query(
        url, f"SELECT * FROM {pg_db.table} WHERE id < :n", {"n": 10}, tmp_path / "s.parquet"
    )
    assert snap.rows == 10
    assert PASSWORD not in repr(snap)
    assert "***" in snap.source
    assert PASSWORD.encode() not in snap.path.read_bytes()
    meta = pq.read_metadata(snap.path).metadata or {}
    assert b"relayml.source" in meta and PASSWORD.encode() not in b"".join(meta.values())


@pytest.mark.parametrize(
    ("sql", "port", "match"),
    [
        ("SELEC * FROM {table}", None, "syntax error"),
        ("SELECT * FROM relay_no_such_table", None, "relay_no_such_table.*does not exist"),
        ("SELECT 1", 1, "(?i)connect|refused"),
    ],
)
def test_password_never_leaks_from_errors(
    pg_db: DB, tmp_path: Path, sql: str, port: int | None, match: str
) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(_pw_url(pg_db.url))
    if port is not None:
        url = url.set(port=port)
    with pytest.raises(SourceError, match=match) as info:
        snapshot_query(
            url.render_as_string(hide_password=False),
            sql.format(table=pg_db.table),
            {},
            tmp_path / "s.parquet",
        )
    text = str(info.value) + repr(info.value) + repr(info.value.__cause__)
    assert PASSWORD not in text
    assert "***" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Bad input: a clear SourceError and nothing left in the output folder
# ---------------------------------------------------------------------------------------------

BAD_SQL = {
    "sqlite": [
        ("SELEC * FROM {table}", "syntax error"),
        ("SELECT * FROM relay_no_such_table", "no such table: relay_no_such_table"),
        ("SELECT nope FROM {table}", "no such column: nope"),
    ],
    "postgres": [
        ("SELEC * FROM {table}", "syntax error"),
        ("SELECT * FROM relay_no_such_table", 'relation "relay_no_such_table" does not exist'),
        ("SELECT nope FROM {table} WHERE id < :n", 'column "nope" does not exist'),
    ],
}


@pytest.mark.parametrize("case", range(3))
def test_bad_query(db: DB, tmp_path: Path, case: int) -> None:
    sql, match = BAD_SQL[db.kind][case]
    out_dir = tmp_path / "out"
    with pytest.raises(SourceError, match=match):
        snapshot_query(db.url, sql.format(table=db.table), {"n": 5}, out_dir / "s.parquet")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_unreachable_sqlite(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    with pytest.raises(SourceError, match=r"x\.db does not exist"):
        snapshot_query(
            f"sqlite:///{tmp_path}/missing/dir/x.db", "SELECT 1", {}, out_dir / "s.parquet"
        )
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_unreachable_postgres(pg_db: DB, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(pg_db.url).set(host="127.0.0.1", port=1).render_as_string(hide_password=False)
    out_dir = tmp_path / "out"
    with pytest.raises(SourceError, match=r"(?i)connection refused"):
        snapshot_query(url, "SELECT 1", {}, out_dir / "s.parquet")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_bad_url(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot parse database URL"):
        snapshot_query("not a url", "SELECT 1", {}, tmp_path / "s.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad.csv", b"a,b\n1,2\n3,4,5\n", "Expected 2 columns, got 3"),
        ("bad.parquet", b"this is not parquet at all", "(?i)parquet magic bytes not found"),
        ("bad.txt", b"a,b\n1,2\n", "unknown file type '.txt'"),
        ("empty.csv", b"", "Empty CSV file"),
        ("fake.csv.gz", b"a,b\n1,2\n", "(?i)inflate failed|gzip"),
    ],
)
def test_bad_file(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    src = tmp_path / name
    src.write_bytes(content)
    out_dir = tmp_path / "out"
    with pytest.raises(SourceError, match=match):
        snapshot_file(src, out_dir / "s.parquet")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        snapshot_file(tmp_path / "nope.csv", tmp_path / "s.parquet")
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_nothing_and_keeps_old_snapshot(tmp_path: Path) -> None:
    src = tmp_path / "drift.csv"
    lines = ["a,b"] + [f"{i},{i}" for i in range(200_000)] + ["oops,1"]
    src.write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = snapshot_frame(pd.DataFrame({"a": [1]}), out_dir / "s.parquet")
    seen: list[int] = []
    with pytest.raises(SourceError, match="oops"):
        snapshot_file(src, out_dir / "s.parquet", batch_size=1_000, progress=seen.append)
    assert seen, "the failure should come after some batches were written"
    assert list(out_dir.iterdir()) == [out_dir / "s.parquet"]
    assert digest_table(read_snapshot(out_dir / "s.parquet")) == old.digest


def test_empty_csv_with_header(tmp_path: Path) -> None:
    src = tmp_path / "e.csv"
    src.write_text("a,b\n")
    snap = snapshot_file(src, tmp_path / "e.parquet")
    assert snap.rows == 0 and list(snap.schema) == ["a", "b"]
    assert pq.read_table(snap.path).column_names == ["a", "b"]


def test_read_snapshot_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.parquet"):
        read_snapshot(tmp_path / "nope.parquet")


@pytest.mark.parametrize("batch_size", [0, -5])
def test_bad_batch_size_is_a_usage_error_and_writes_nothing(
    db: DB, tmp_path: Path, batch_size: int
) -> None:
    out = tmp_path / "out" / "s.parquet"
    with pytest.raises(relayml.UsageError, match="batch_size must be at least 1"):
        snapshot_query(db.url, f"SELECT * FROM {db.table}", {}, out, batch_size=batch_size)
    csv = tmp_path / "a.csv"
    csv.write_text("a\n1\n")
    with pytest.raises(relayml.UsageError, match="batch_size must be at least 1"):
        snapshot_file(csv, out, batch_size=batch_size)
    assert not out.parent.exists()


def test_digester_refuses_a_batch_of_another_schema() -> None:
    d = Digester()
    d.update(pa.record_batch({"a": [1]}))
    with pytest.raises(SourceError, match="batch schema differs from the first one"):
        d.update(pa.record_batch({"b": ["x"]}))


def test_observer_sees_every_batch_in_order_and_its_error_stops_the_snapshot(
    tmp_path: Path,
) -> None:
    src = tmp_path / "a.csv"
    src.write_text("a\n" + "\n".join(str(i) for i in range(50_000)) + "\n")
    seen: list[int] = []
    snap = snapshot_file(src, tmp_path / "s.parquet", batch_size=1_000,
                         observe=lambda b: seen.extend(b.column("a").to_pylist()))  # fmt: skip
    assert seen == list(range(50_000)) and snap.rows == 50_000

    def boom(batch: pa.RecordBatch) -> None:
        raise RuntimeError("observer broke")

    out = tmp_path / "out" / "t.parquet"
    with pytest.raises(SourceError, match="observer broke"):
        snapshot_file(src, out, batch_size=1_000, observe=boom)
    assert list(out.parent.iterdir()) == []
