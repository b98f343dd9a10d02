"""Where heavy work runs: the project's executor and a Dask client for it.

The project chooses where heavy work runs (``settings.executor``):

- ``"local"`` (the default): in the calling process, as plain scikit-learn does;
- ``"dask://HOST:PORT"``: on the Dask cluster whose scheduler listens at ``tcp://HOST:PORT``
  (``[execution] backend = "dask"`` and ``scheduler = "tcp://HOST:PORT"`` in relay.toml, the
  ``RELAY_EXECUTOR`` environment variable, or ``--executor`` on the command line);
- ``"dask://local"``: a throw-away ``distributed.LocalCluster`` on this machine, started for the
  duration of the work (handy to try the Dask path without a cluster).

:func:`joblib_backend` sends joblib-parallel work (a scikit-learn ``GridSearchCV(n_jobs=-1)``)
to the cluster; ``Context.parallel()`` in a variant uses it. Batch scoring on the cluster is
:mod:`relayml.executor`'s.

Example:
    >>> scheduler_address("dask://10.0.0.5:8786")
    'tcp://10.0.0.5:8786'
    >>> scheduler_address("local") is None
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from relayml.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client

    from relayml.config import Settings

__all__ = [
    "LOCAL",
    "dask_client",
    "is_dask",
    "joblib_backend",
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


def executor_of(where: Settings | str | None) -> str:
    """The executor string of Settings, a string, or None (``RELAY_EXECUTOR``, else local).

    Example:
        >>> executor_of("dask://local")
        'dask://local'
    """
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
    executor = executor_of(where)
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
    if not is_dask(executor_of(where)):
        yield None
        return
    import joblib

    with dask_client(where) as client, joblib.parallel_config(backend="dask", client=client):
        yield client
