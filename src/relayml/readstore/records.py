"""Plain run records: what a read path returns, shaped like MLflow's run entities.

A :class:`RunRecord` answers ``record.info.run_id``, ``record.data.tags`` (a dict) and the
other fields relayml reads from ``mlflow.entities.Run``, without importing MLflow. This module
imports nothing but the standard library.

Example:
    >>> info = RunInfo("a" * 32, "1", "r", "FINISHED", 1000, 2000, "active", "file:///tmp/a")
    >>> RunRecord(info, RunData({"relay.step": "load"}, {}, {})).data.tags["relay.step"]
    'load'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DatasetRecord", "RunData", "RunInfo", "RunRecord", "Unsupported"]


class Unsupported(Exception):
    """A read path cannot answer this query exactly; the store asks MLflow's client instead."""


@dataclass(frozen=True)
class RunInfo:
    """The attributes of a run (``mlflow.entities.RunInfo``'s fields relayml reads)."""

    run_id: str
    experiment_id: str
    run_name: str | None
    status: str
    start_time: int
    end_time: int | None
    lifecycle_stage: str
    artifact_uri: str

    @property
    def run_uuid(self) -> str:
        """MLflow's older name of :attr:`run_id`."""
        return self.run_id


@dataclass(frozen=True)
class RunData:
    """Tags, params and latest metric values of a run, as dicts."""

    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset input of a run (``mlflow.log_input``)."""

    name: str
    digest: str
    source_type: str
    source: str
    context: str | None


@dataclass(frozen=True)
class RunRecord:
    """A run read without MLflow: ``info``, ``data`` and its dataset inputs."""

    info: RunInfo
    data: RunData
    datasets: tuple[DatasetRecord, ...] = field(default=())

    @classmethod
    def from_mlflow(cls, entity: Any) -> RunRecord:
        """The record of an ``mlflow.entities.Run`` (to compare the two paths).

        Example:
            >>> RunRecord.from_mlflow(client.get_run(run_id)).info.status  # doctest: +SKIP
            'FINISHED'
        """
        i = entity.info
        info = RunInfo(
            i.run_id, str(i.experiment_id), i.run_name, i.status, i.start_time,
            i.end_time, i.lifecycle_stage, i.artifact_uri,
        )  # fmt: skip
        data = RunData(dict(entity.data.tags), dict(entity.data.params), dict(entity.data.metrics))
        datasets = []
        for di in entity.inputs.dataset_inputs if entity.inputs else []:
            d = di.dataset
            context = next((t.value for t in di.tags if t.key == "mlflow.data.context"), None)
            datasets.append(DatasetRecord(d.name, d.digest, d.source_type, d.source, context))
        return cls(info, data, tuple(sorted(datasets, key=_dataset_order)))

    def comparable(self) -> tuple[Any, ...]:
        """A value equal for equal runs whatever path read them (NaN equals NaN)."""
        metrics = {k: "nan" if math.isnan(v) else v for k, v in self.data.metrics.items()}
        return (self.info, self.data.tags, self.data.params, metrics, self.datasets)


def _dataset_order(d: DatasetRecord) -> tuple[str, str, str]:
    return (d.name, d.digest, d.context or "")


def sorted_datasets(items: list[DatasetRecord]) -> tuple[DatasetRecord, ...]:
    """Datasets in a fixed order (MLflow returns them in insertion order per path)."""
    return tuple(sorted(items, key=_dataset_order))
