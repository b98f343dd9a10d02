"""Dask execution: a grid search and batch scoring on a 2-worker LocalCluster, same results.

The cluster is a ``distributed.LocalCluster(n_workers=2, threads_per_worker=1,
processes=True)`` started by the test; the project reaches it through ``RELAY_EXECUTOR``
(as ``--executor`` and ``[execution] scheduler`` do).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from relayml.cluster import scheduler_address  # noqa: E402
from relayml.config import Settings  # noqa: E402
from relayml.errors import ConfigError  # noqa: E402
from relayml.executor import predict_partitions  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A 2-worker LocalCluster; yields ``dask://HOST:PORT``."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield "dask://" + c.scheduler_address.removeprefix("tcp://")


@pytest.mark.parametrize(
    ("executor", "address"),
    [("local", None), ("dask://local", None), ("dask://h:8786", "tcp://h:8786"),
     ("tcp://10.0.0.1:8786", "tcp://10.0.0.1:8786")],
)  # fmt: skip
def test_scheduler_address(executor: str, address: str | None) -> None:
    assert scheduler_address(executor) == address


@pytest.mark.parametrize("bad", ["spark://x:1", "dask://nohost", "dask://h:port"])
def test_bad_executor_names_the_fix(bad: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        scheduler_address(bad)


def test_config_turns_execution_into_an_executor(tmp_path: Path) -> None:
    data = {"project": {"name": "p"}, "execution": {"backend": "dask", "scheduler": "tcp://s:1"}}
    assert Settings.from_dict(data, root=tmp_path).executor == "dask://s:1"


def test_unreachable_scheduler_is_one_clear_error(relay, project: Path, monkeypatch) -> None:
    from relayml.cluster import dask_client

    from conftest import free_port

    with (
        pytest.raises(ConfigError, match="cannot reach the Dask scheduler"),
        dask_client(f"dask://127.0.0.1:{free_port()}", timeout=2),
    ):
        pass


def test_grid_search_and_batch_scoring_match_local(
    relay, project: Path, cluster: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pandas as pd

    from relayml.serving.batch import predict_file

    # the example's liblinear is unseeded (it draws from numpy's global generator): seed it
    # here so that two runs of the search can be compared exactly
    steps = project / "steps.py"
    steps.write_text(
        steps.read_text().replace(
            'LogisticRegression(solver="liblinear", max_iter=1000)',
            'LogisticRegression(solver="liblinear", max_iter=1000, random_state=seed)',
        )
    )
    assert relay("run", "load", "transactions").code == 0
    assert relay("run", "processing", "plain").code == 0
    grid = ["-P", "n_jobs=-1", "-P", "cv=3", "--json"]
    local = relay("run", "training", "logreg", *grid)
    assert local.code == 0, local
    monkeypatch.setenv("RELAY_EXECUTOR", "local")  # restored afterwards; --executor sets it
    seen_before = _tasks_run(cluster)
    remote = relay("run", "training", "logreg", *grid, "--executor", cluster)
    assert remote.code == 0, remote
    assert _tasks_run(cluster) > seen_before  # the fits ran on the workers
    a, b = json.loads(local.out), json.loads(remote.out)
    assert a["metrics"] == b["metrics"]
    print(f"\ngrid search: local and Dask metrics equal ({len(a['metrics'])} metrics)")

    # batch scoring: the load's raw table, as Parquet and CSV, locally and partitioned on Dask
    import relayml as relay_api

    run = relay_api.get(b["key"], project=project)
    raw = relay_api.get("load@latest", project=project).load()
    raw = pd.concat([raw] * 3, ignore_index=True)
    for suffix in (".parquet", ".csv"):
        source = tmp_path / f"raw{suffix}"
        if suffix == ".csv":
            raw.to_csv(source, index=False)
        else:
            raw.to_parquet(source)
        here, there = tmp_path / f"local{suffix}", tmp_path / f"dask{suffix}"
        n_local = predict_file(run.model_uri, source, here)
        if suffix == ".csv":
            n_dask = predict_partitions(
                run.model_uri, source, there, executor=cluster, partition_rows=1000
            )
        else:  # through the CLI: relay predict --executor
            result = relay("predict", b["key"], "-i", str(source), "-o", str(there),
                           "--batch-size", "1000", "--executor", cluster)  # fmt: skip
            assert result.code == 0, result
            n_dask = len(pd.read_parquet(there))
        assert n_local == n_dask == len(raw)
        assert here.read_bytes() == there.read_bytes() if suffix == ".csv" else True
        left = pd.read_parquet(here) if suffix == ".parquet" else pd.read_csv(here)
        right = pd.read_parquet(there) if suffix == ".parquet" else pd.read_csv(there)
        pd.testing.assert_frame_equal(left, right)
        print(f"batch scoring {suffix}: {n_dask} rows, identical to local")


def _tasks_run(executor: str) -> int:
    from relayml.cluster import dask_client

    with dask_client(executor) as client:
        counts = client.run(lambda dask_worker: len(dask_worker.state.log))
    return sum(counts.values())
