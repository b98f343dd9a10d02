"""Heavy work on a Dask cluster: hyper-parameter searches and batch scoring.

The project chooses where heavy work runs (``settings.executor``):

- ``"local"`` (the default): in the calling process, as plain scikit-learn does;
- ``"dask://HOST:PORT"``: on the Dask cluster whose scheduler listens at ``tcp://HOST:PORT``
  (``[execution] backend = "dask"`` and ``scheduler = "tcp://HOST:PORT"`` in relay.toml, the
  ``RELAY_EXECUTOR`` environment variable, or ``--executor`` on the command line);
- ``"dask://local"``: a throw-away ``distributed.LocalCluster`` on this machine, started for the
  duration of the work (handy to try the Dask path without a cluster).

Two kinds of work go there:

- :func:`joblib_backend`: a context manager that sends joblib-parallel work (a scikit-learn
  ``GridSearchCV(n_jobs=-1)``) to the cluster; ``Context.parallel()`` in a variant uses it;
- :func:`predict_partitions`: batch scoring of a CSV or Parquet file partition by partition on
  the workers, with output identical to :func:`relayml.serving.batch.predict_file`.

Workers need the same Python packages as the client (``pip install 'relayml[dask]'`` and the
libraries the project's models use). They need no access to the tracking store: the bundle is
loaded once by the client and shipped to the workers, and the rows go through the client.

This module never writes to MLflow.

Example:
    >>> scheduler_address("dask://10.0.0.5:8786")
    'tcp://10.0.0.5:8786'
    >>> scheduler_address("local") is None
    True
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from distributed import Client

    from relayml.config import Settings

__all__ = [
    "dask_client",
    "is_dask",
    "joblib_backend",
    "predict_partitions",
    "project_executor",
    "scheduler_address",
]

LOCAL = "dask://local"
_PREFIX = "dask://"


def is_dask(executor: str | None) -> bool:
    """Whether an executor string names a Dask cluster.

    Example:
        >>> is_dask("dask://127.0.0.1:8786"), is_dask("local")
        (True, False)
    """
    return bool(executor) and str(executor).startswith((_PREFIX, "tcp://"))


def scheduler_address(executor: str | None) -> str | None:
    """The ``tcp://HOST:PORT`` address of an executor string, or None for local work.

    ``dask://local`` also gives None: the caller starts a LocalCluster.

    Raises:
        ConfigError: an executor that is neither ``local`` nor ``dask://HOST:PORT``.

    Example:
        >>> scheduler_address("dask://sched.internal:8786")
        'tcp://sched.internal:8786'
    """
    value = (executor or "local").strip()
    if value == "local" or value == LOCAL:
        return None
    if value.startswith("tcp://"):
        value = _PREFIX + value.removeprefix("tcp://")
    if not value.startswith(_PREFIX):
        raise ConfigError(
            f"unknown executor {executor!r}: use 'local' or 'dask://HOST:PORT' "
            "(RELAY_EXECUTOR, --executor, or [execution] in relay.toml)"
        )
    hostport = value.removeprefix(_PREFIX).removeprefix("tcp://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"executor {executor!r}: expected dask://HOST:PORT, e.g. dask://127.0.0.1:8786"
        )
    return f"tcp://{host}:{port}"


def project_executor(project: Any = None) -> str:
    """The executor of a project (``RELAY_EXECUTOR`` first); ``local`` outside any project.

    Example:
        >>> project_executor("examples/fraud")  # doctest: +SKIP
        'local'
    """
    if os.environ.get("RELAY_EXECUTOR"):
        return os.environ["RELAY_EXECUTOR"]
    from relayml.runs import open_project

    try:
        return open_project(project).executor
    except ConfigError:
        return "local"


def _executor_of(where: Settings | str | None) -> str:
    if where is None:
        return os.environ.get("RELAY_EXECUTOR") or "local"
    if isinstance(where, str):
        return where
    return where.executor


@contextmanager
def dask_client(where: Settings | str | None = None, *, timeout: float = 15.0) -> Iterator[Client]:
    """A ``distributed.Client`` connected to the project's Dask scheduler, closed afterwards.

    Args:
        where: Settings (its ``executor``), an executor string, or None (``RELAY_EXECUTOR``).
            ``dask://local`` starts a LocalCluster for the duration of the block.
        timeout: seconds to wait for the scheduler.

    Raises:
        ConfigError: the executor is local or malformed, dask is not installed, or the
            scheduler does not answer.

    Example:
        >>> with dask_client("dask://127.0.0.1:8786") as client:  # doctest: +SKIP
        ...     client.submit(sum, [1, 2]).result()
        3
    """
    executor = _executor_of(where)
    if not is_dask(executor):
        raise ConfigError(
            f'executor is {executor!r}; set [execution] backend = "dask" and scheduler = '
            '"tcp://HOST:PORT" in relay.toml, or RELAY_EXECUTOR=dask://HOST:PORT'
        )
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise ConfigError(
            "the Dask executor needs dask.distributed: pip install 'relayml[dask]'"
        ) from e
    address = scheduler_address(executor)
    if address is None:
        with (
            LocalCluster(processes=True, dashboard_address=None) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            yield client
        return
    try:
        client = Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address}: {e}; start one with "
            f"'dask scheduler' (and 'dask worker {address}' on each machine), or fix "
            "[execution] scheduler / RELAY_EXECUTOR"
        ) from None
    try:
        yield client
    finally:
        client.close()


@contextmanager
def joblib_backend(where: Settings | str | None = None) -> Iterator[Client | None]:
    """Send joblib-parallel work inside the block to the Dask cluster.

    scikit-learn's searches parallelise through joblib, so ``GridSearchCV(n_jobs=-1)`` fitted
    inside the block runs its fits on the cluster's workers. ``n_jobs=1`` stays sequential
    (joblib's rule): pass ``-P n_jobs=-1`` to spread a search. With a local executor the block
    runs unchanged and yields None.

    Example:
        >>> with joblib_backend("dask://127.0.0.1:8786"):  # doctest: +SKIP
        ...     GridSearchCV(model, grid, n_jobs=-1).fit(X, y)
    """
    if not is_dask(_executor_of(where)):
        yield None
        return
    import joblib

    with dask_client(where) as client, joblib.parallel_config(backend="dask", client=client):
        yield client


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
