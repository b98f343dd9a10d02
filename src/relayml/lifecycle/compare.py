"""``relay compare``: rank runs by a metric, only between runs on the same data version.

Reads runs through :mod:`relayml.runs`; writes nothing.

Example:
    >>> ranking = relay.compare("training", metric="test_roc_auc")
    >>> ranking.best.step, ranking.lower_is_better
    ('training', False)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from relayml import tags as tag
from relayml.config import Settings
from relayml.errors import MixedData, NotFound, UsageError
from relayml.runner import pipeline_of
from relayml.runs import Project, Run, RunList, get, open_project, runs

__all__ = ["Ranking", "compare"]

_LOWER_HINTS = ("loss", "error", "rmse", "mse", "mae", "mape", "logloss")


@dataclass
class Ranking:
    """Runs on one data version, best first by one metric.

    Attributes:
        data_version: the data version shared by every run (None: runs without one).
        metric: the metric ranked on.
        runs: the runs that have the metric, best first.
        missing: runs on this data version that lack the metric.
        lower_is_better: True when smaller values rank first.
    """

    data_version: str | None
    metric: str
    runs: RunList
    missing: RunList = field(default_factory=RunList)
    lower_is_better: bool = False

    def __repr__(self) -> str:
        v = (self.data_version or "none")[:12]
        return f"<Ranking {self.metric} on {v}: {len(self.runs)} runs>"

    @property
    def best(self) -> Run | None:
        """The best run, or None when no run has the metric."""
        return self.runs[0] if self.runs else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what ``relay compare --json`` prints)."""
        return {
            "data_version": self.data_version,
            "metric": self.metric,
            "lower_is_better": self.lower_is_better,
            "runs": [
                {
                    "rank": i + 1,
                    "key": str(r.key),
                    "run_id": r.run_id,
                    "variant": r.variant,
                    "value": r.metrics[self.metric],
                    "params": r.params,
                    "upstream": r.to_dict()["upstream"],
                }
                for i, r in enumerate(self.runs)
            ],
            "missing_metric": [str(r.key) for r in self.missing],
        }


@overload
def compare(
    step: str | None = None,
    *,
    metric: str,
    refs: Sequence[str | Run] | None = None,
    data: str | None = None,
    by_data: Literal[False] = False,
    lower_is_better: bool | None = None,
    variant: str | None = None,
    limit: int | None = 1000,
    project: Project = None,
) -> Ranking: ...


@overload
def compare(
    step: str | None = None,
    *,
    metric: str,
    refs: Sequence[str | Run] | None = None,
    data: str | None = None,
    by_data: Literal[True],
    lower_is_better: bool | None = None,
    variant: str | None = None,
    limit: int | None = 1000,
    project: Project = None,
) -> list[Ranking]: ...


@overload
def compare(
    step: str | None = None,
    *,
    metric: str,
    refs: Sequence[str | Run] | None = None,
    data: str | None = None,
    by_data: bool = False,
    lower_is_better: bool | None = None,
    variant: str | None = None,
    limit: int | None = 1000,
    project: Project = None,
) -> Ranking | list[Ranking]: ...


def compare(
    step: str | None = None,
    *,
    metric: str,
    refs: Sequence[str | Run] | None = None,
    data: str | None = None,
    by_data: bool = False,
    lower_is_better: bool | None = None,
    variant: str | None = None,
    limit: int | None = 1000,
    project: Project = None,
) -> Ranking | list[Ranking]:
    """Rank runs by a metric, only between runs trained on the same data version.

    Args:
        step: the step whose FINISHED runs are ranked (default: the pipeline's last step);
            ignored when ``refs`` are given.
        metric: the metric to rank on.
        refs: explicit runs (references or Runs) to rank instead of a step's runs.
        data: only runs on this data version (a digest, a unique digest prefix, or a reference
            to a run whose data version is used).
        by_data: runs span several data versions: return one ranking per version instead
            of refusing.
        lower_is_better: rank smaller values first (default: True for names that look like a
            loss or an error, else False).
        variant: only runs of this variant.
        limit: look at most at this many runs (newest first).
        project: the project (default: around the working folder).

    Returns:
        One :class:`Ranking`; a list of them (newest data version first) with ``by_data``.

    Raises:
        MixedData: the runs span several data versions and ``by_data`` is False; the message
            names each version with its number of runs and how to choose.
        UsageError: no run to rank, or none has the metric.

    Example:
        >>> ranking = relay.compare(
        ...     "training", metric="test_roc_auc", data="load/transactions@latest"
        ... )
        >>> ranking.metric, ranking.best.step, ranking.best.variant
        ('test_roc_auc', 'training', 'logreg')
    """
    settings = open_project(project)
    if not metric:
        raise UsageError("name the metric to rank on with --metric NAME")
    lower = lower_is_better
    if lower is None:
        lower = any(h in metric.lower() for h in _LOWER_HINTS)
    if refs:
        found = RunList(r if isinstance(r, Run) else get(r, project=settings) for r in refs)
        what = "the given runs"
        if data:
            version = _resolve_data(data, settings, found[0].step)
            found = RunList(r for r in found if r.data_version == version)
    else:
        if step is None:
            step = pipeline_of(settings).order[-1]
        version = _resolve_data(data, settings, step) if data else None
        found = runs(
            step, variant=variant, status="FINISHED", data=version, limit=limit, project=settings
        )
        what = f"the finished runs of {step!r}"
        if version:
            what += f" on data {version[:12]}"
    if not found:
        raise UsageError(f"no runs to compare: {what} is empty")
    groups: dict[str | None, RunList] = {}
    for r in found:
        groups.setdefault(r.data_version, RunList()).append(r)
    if len(groups) > 1 and not by_data:
        raise MixedData(_mixed_message(groups, what, step))
    rankings = [_rank(v, rs, metric, lower) for v, rs in groups.items()]
    if all(not rk.runs for rk in rankings):
        have = sorted({m for r in found for m in r.metrics})
        raise UsageError(
            f"no run of {what} has the metric {metric!r} (metrics: {', '.join(have) or 'none'})"
        )
    return rankings if by_data else rankings[0]


def _rank(version: str | None, found: RunList, metric: str, lower: bool) -> Ranking:
    have = [r for r in found if metric in r.metrics and not math.isnan(r.metrics[metric])]
    have.sort(key=lambda r: r.metrics[metric], reverse=not lower)
    missing = RunList(r for r in found if r not in have)
    return Ranking(version, metric, RunList(have), missing, lower)


def _mixed_message(groups: Mapping[str | None, RunList], what: str, step: str | None) -> str:
    parts = []
    for v, rs in groups.items():
        loads = sorted({k for r in rs for k in r.data_keys})
        origin = f" from {', '.join(loads[:2])}{'...' if len(loads) > 2 else ''}" if loads else ""
        parts.append(f"{(v or 'none')[:12]} ({len(rs)} run{'s' * (len(rs) != 1)}{origin})")
    first = next((v for v in groups if v), None)
    cmd = f"relay compare {step} " if step else "relay compare "
    return (
        f"{what} span {len(groups)} data versions: {'; '.join(parts)}. Scores are only "
        f"comparable on the same data: pick one with '{cmd}--data {(first or '')[:12]} ...', "
        "or add --by-data for one ranking per data version"
    )


def _resolve_data(value: str, settings: Settings, step: str | None) -> str:
    """A full data version from a digest, a unique digest prefix, or a run reference."""
    if "@" in value or tag.is_run_id(value):
        if "@" in value:
            run = get(value, project=settings)
            if not run.data_version:
                raise UsageError(f"run {run.key} has no data version")
            return run.data_version
        return value
    if not re.match(r"^[0-9a-f]{4,31}$", value):
        raise UsageError(
            f"--data {value!r}: expected a data version (hex digest or prefix) or a run reference"
        )
    found = runs(step, limit=None, project=settings) if step else runs(limit=None, project=settings)
    versions = sorted({r.data_version for r in found if (r.data_version or "").startswith(value)})
    if not versions:
        raise NotFound(f"no run of {step or 'any step'!r} is on a data version starting {value!r}")
    if len(versions) > 1:
        raise UsageError(f"data version prefix {value!r} is ambiguous: {', '.join(versions)}")
    return versions[0]
