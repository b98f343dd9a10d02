"""Row hashes kept beside a snapshot (its sidecar), so that ``relay diff`` reads 2 columns, not all.

A snapshot whose load variant declares a key gets a sidecar, written while the snapshot
streams: its key columns and one ``UBIGINT`` column, ``__rowhash``, DuckDB's ``hash(...)`` of
every other column's values in the snapshot's column order (the hash ``relay diff`` computes
over the snapshot itself, so equal rows give equal hashes either way). The snapshot, its
digest and what users read do not change; the sidecar is an extra file.

* Naming rule: the sidecar of ``NAME.parquet`` is ``NAME.rowhash.parquet`` in the same folder
  (a snapshot holder run keeps ``snapshot.parquet`` and ``snapshot.rowhash.parquet``).
* Its Parquet metadata names the key, the hashed columns, the hash scheme (DuckDB's version:
  another version may hash differently) and the snapshot's digest. :func:`sidecar_for` returns
  a sidecar only when all four match what a diff needs, so a stale or foreign sidecar is
  ignored and the diff hashes the snapshot itself, with the same result.

This module writes no snapshot and does no MLflow tracking.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> from relayml.data import snapshot_frame
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> s = snapshot_frame(pd.DataFrame({"id": [1, 2], "v": [0.5, 1.5]}), d / "a.parquet",
    ...                    key=["id"])
    >>> sidecar_path(s.path).name
    'a.rowhash.parquet'
    >>> sidecar_for(s.path, ["id"], ["v"]) == sidecar_path(s.path)
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["HASH_COLUMN", "RowHasher", "scheme", "sidecar_for", "sidecar_path"]

HASH_COLUMN = "__rowhash"
SUFFIX = ".rowhash.parquet"


def scheme() -> str:
    """The hash scheme recorded in a sidecar: sidecars are compared only within one scheme.

    Example:
        >>> scheme().startswith("duckdb-hash/")
        True
    """
    import duckdb

    return f"duckdb-hash/{duckdb.__version__}"


def sidecar_path(snapshot: Path) -> Path:
    """Where the sidecar of a snapshot file lives (``NAME.parquet`` -> ``NAME.rowhash.parquet``).

    Example:
        >>> sidecar_path(Path("cache/snapshot.parquet")).as_posix()
        'cache/snapshot.rowhash.parquet'
    """
    snapshot = Path(snapshot)
    stem = snapshot.name.removesuffix(".parquet").removesuffix(".pq")
    return snapshot.with_name(stem + SUFFIX)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class RowHasher:
    """Hashes each canonical batch of a snapshot into its sidecar (temp file + rename).

    Args:
        key: the key columns; a batch lacking one turns the hasher off (no sidecar).
        out: the sidecar to write (see :func:`sidecar_path`).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "s.rowhash.parquet"
        >>> h = RowHasher(["id"], out)
        >>> h.update(pa.record_batch({"id": [1, 2], "v": [0.5, None]}))
        >>> h.finish("0" * 32)
        >>> pq.read_table(out).column_names
        ['id', '__rowhash']
    """

    def __init__(self, key: Sequence[str], out: Path) -> None:
        self.key = list(key)
        self.out = Path(out)
        self.columns: list[str] | None = None
        self._sql = ""
        self._con = None
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._off = False

    def update(self, batch: pa.RecordBatch) -> None:
        """Hash one batch's rows and append them to the sidecar."""
        if self._off:
            return
        if self.columns is None and not self._start(batch.schema):
            return
        # ``batch`` is found by DuckDB's replacement scan (zero-copy; cheaper than register)
        table = self._con.sql(self._sql).to_arrow_table()  # type: ignore[union-attr]
        if self._writer is None:
            self._open(table.schema)
        self._writer.write_table(table)  # type: ignore[union-attr]

    def _start(self, schema: pa.Schema) -> bool:
        import duckdb

        if not self.key or any(k not in schema.names for k in self.key):
            self._off = True
            return False
        self.columns = [c for c in schema.names if c not in self.key]
        keys = ", ".join(_quote(k) for k in self.key)
        values = ", ".join(_quote(c) for c in self.columns)
        hashed = f"hash({values})" if self.columns else "CAST(0 AS UBIGINT)"
        self._sql = f"SELECT {keys}, {hashed} AS {HASH_COLUMN} FROM batch"
        self._con = duckdb.connect()
        self._con.execute("SET threads = 1")  # it runs beside the writer: one core is its share
        return True

    def _open(self, schema: pa.Schema) -> None:
        fd, name = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp")
        os.close(fd)
        self._tmp = Path(name)
        compression = {k: "zstd" for k in self.key} | {HASH_COLUMN: "none"}
        self._writer = pq.ParquetWriter(
            self._tmp, schema, compression=compression, use_dictionary=False
        )

    def finish(self, digest: str) -> None:
        """Close the sidecar, record its key, columns, scheme and the snapshot's digest, and
        rename it into place (nothing is written when the hasher is off)."""
        if self._off or self.columns is None:
            self.abort()
            return
        if self._writer is None:
            return
        self._writer.add_key_value_metadata(
            {
                b"relayml.rowhash.key": json.dumps(self.key).encode(),
                b"relayml.rowhash.columns": json.dumps(self.columns).encode(),
                b"relayml.rowhash.scheme": scheme().encode(),
                b"relayml.digest": digest.encode(),
            }
        )
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.out)  # type: ignore[arg-type]
        self._close()

    def abort(self) -> None:
        """Drop the half-written sidecar (the snapshot failed)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._close()

    def _close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _meta(path: Path) -> dict[bytes, bytes]:
    return pq.read_metadata(path).metadata or {}


def sidecar_for(snapshot: Path, key: Sequence[str], columns: Sequence[str]) -> Path | None:
    """The sidecar of a snapshot when it serves a diff on ``key`` over ``columns``, else None.

    It must exist beside the snapshot (see :func:`sidecar_path`), hash exactly ``columns`` in
    that order, be keyed on ``key``, use this DuckDB's hash scheme and carry the snapshot's
    digest.

    Example:
        >>> sidecar_for(Path("nowhere.parquet"), ["id"], ["v"]) is None
        True
    """
    side = sidecar_path(snapshot)
    if not key or not side.exists():
        return None
    try:
        meta, own = _meta(side), _meta(Path(snapshot))
    except (OSError, pa.ArrowException):
        return None
    want = {
        b"relayml.rowhash.key": json.dumps(list(key)).encode(),
        b"relayml.rowhash.columns": json.dumps(list(columns)).encode(),
        b"relayml.rowhash.scheme": scheme().encode(),
    }
    if any(meta.get(k) != v for k, v in want.items()):
        return None
    digest = meta.get(b"relayml.digest")
    return side if digest and digest == own.get(b"relayml.digest") else None
