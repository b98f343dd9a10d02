"""Batch scoring on a Dask cluster, partition by partition.

:func:`predict_partitions` scores a CSV or Parquet file partition by partition on the workers
of the project's executor (:mod:`relayml.cluster`), with output identical to
:func:`relayml.serving.batch.predict_file`.

Workers need the same Python packages as the client (``pip install 'relayml[dask]'`` and the
libraries the project's models use). They need no access to the tracking store: the bundle is
loaded once by the client and shipped to the workers, and the rows go through the client.

This module never writes to MLflow.

Example:
    >>> predict_partitions("models:/m-1", "in.csv", "out.parquet",
    ...                    executor="dask://127.0.0.1:8786")  # doctest: +SKIP
    PosixPath('out.parquet')
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml.cluster import dask_client
from relayml.errors import UsageError

if TYPE_CHECKING:
    from relayml.config import Settings

__all__ = ["predict_partitions"]


# -- batch scoring ------------------------------------------------------------------------


def predict_partitions(
    model_uri: str,
    input: Path | str,
    output: Path | str,
    *,
    executor: Settings | str | None = None,
    key_column: str | None = None,
    partition_rows: int = 250_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Score a CSV or Parquet file of raw records on a Dask cluster, partition by partition.

    The client streams the input in partitions of ``partition_rows`` rows, the workers score
    them (a few partitions in flight per worker), and the client writes the results in input
    order. The output has the same columns, order and values as
    :func:`relayml.serving.batch.predict_file` gives for the same model and input; it is
    written to a temporary file renamed at the end.

    Args:
        model_uri: the bundle (``models:/fraud@champion``, ``runs:/ID/model``, a folder).
        input: ``.csv`` or ``.parquet`` file of raw records.
        output: ``.csv`` or ``.parquet`` file to write.
        executor: Settings, an executor string (``dask://HOST:PORT``, ``dask://local``) or
            None (``RELAY_EXECUTOR``).
        key_column: column copied beside the predictions (default as in ``predict_file``).
        partition_rows: rows per partition sent to a worker.
        progress: called with the number of rows written so far after each partition.

    Returns:
        The number of rows written.

    Raises:
        UsageError: unknown suffix, missing file or column, bad records.
        ConfigError: no Dask executor configured, or the scheduler does not answer.

    Example:
        >>> predict_partitions("models:/fraud@champion", "new.parquet", "out.parquet",
        ...                    executor="dask://127.0.0.1:8786")  # doctest: +SKIP
        5000000
    """
    import cloudpickle
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from relayml.serving.batch import PARQUET_SUFFIXES, scoring_input

    input, output = Path(input), Path(output)
    bundle, batches, key_column = scoring_input(
        model_uri, input, output, partition_rows, key_column
    )
    payload = _pickled_bundle(bundle, cloudpickle)
    token = str(hash(payload))
    tmp = output.with_name(f".{output.name}.part")
    writer: Any = None
    written = 0
    with dask_client(executor) as client:
        shipped = client.scatter(payload, broadcast=True)
        limit = 2 * max(1, sum(client.nthreads().values()))
        pending: deque[Any] = deque()
        started = 0
        try:

            def drain(keep: int) -> None:
                nonlocal writer, written
                while len(pending) > keep:
                    table = _result(pending.popleft(), input)
                    if writer is None:
                        writer = (
                            pq.ParquetWriter(tmp, table.schema)
                            if output.suffix.lower() in PARQUET_SUFFIXES
                            else pacsv.CSVWriter(tmp, table.schema)
                        )
                    writer.write_table(table)
                    written += table.num_rows
                    if progress is not None:
                        progress(written)

            for batch in batches:
                part = pa.Table.from_batches([batch])
                data = client.scatter(part, hash=False)  # data, not part of the task graph
                pending.append(
                    client.submit(
                        _score_partition, shipped, token, data, key_column, started, pure=False
                    )
                )
                started += part.num_rows
                drain(limit)
            drain(0)
            if writer is None:
                raise UsageError(f"input {input}: no rows to score")
            writer.close()
            writer = None
            os.replace(tmp, output)
        finally:
            for fut in pending:
                fut.cancel()
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
    return written


def _pickled_bundle(bundle: Any, cloudpickle: Any) -> bytes:
    """The bundle as bytes that unpickle on a worker without the bundle's code folder.

    Classes of the bundle's runtime module (written by relayml.bundle into a temp folder) and
    of modules loaded from a model's ``code`` folder are pickled by value.
    """
    by_value = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        ours = name == "relay_bundle_runtime" or "/code/" in file.replace(os.sep, "/")
        if ours and "site-packages" not in file:
            by_value.append(module)
    for module in by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(bundle)
    finally:
        for module in by_value:
            cloudpickle.unregister_pickle_by_value(module)


_ON_WORKER: dict[str, Any] = {}


def _bundle_on_worker(token: str, payload: bytes) -> Any:
    """The unpickled bundle, once per worker process and bundle."""
    if token not in _ON_WORKER:
        import cloudpickle

        _ON_WORKER.clear()
        _ON_WORKER[token] = cloudpickle.loads(payload)
    return _ON_WORKER[token]


def _score_partition(payload: bytes, token: str, part: Any, key_column: str | None, start: int):
    """Score one partition on a worker; returns an Arrow table (key column + predictions)."""

    from relayml.errors import BundleInputError
    from relayml.serving.batch import prediction_table

    bundle = _bundle_on_worker(token, payload)
    try:
        return prediction_table(bundle, part, key_column, start)
    except BundleInputError as e:
        return ("error", start, str(e))


def _result(future: Any, input: Path) -> Any:
    value = future.result()
    if isinstance(value, tuple) and value and value[0] == "error":
        _, start, message = value
        raise UsageError(f"input {input}, rows {start}..: {message}")
    return value
