"""Finding runs and navigating them: :func:`get`, :func:`runs` and the :class:`Run` object.

A :class:`Run` is a thin, navigable view of an MLflow run: ``run.params`` is a plain dict,
``run.upstream`` the runs it consumed, ``run.downstream`` the runs that consumed it,
``run.load("processor")`` one of its outputs as a Python object. Searches run inside the
tracking store (MLflow filter strings on ``relay.`` tags, paging).

Example:
    >>> run = relay.get("processing/plain@latest")
    >>> run.upstream["load"].key.step, run.upstream["load"].key.variant
    ('load', 'transactions')
    >>> [r.step for r in run.downstream]
    ['training']
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.config import Settings, load_settings
from relayml.errors import ConfigError, NotFound, UsageError
from relayml.keys import Reference, RunKey, day_bounds_ms, parse_reference
from relayml.lineage import Lineage, run_lineage
from relayml.outputs import load_output
from relayml.pipeline import load_pipeline
from relayml.store import Store, get_store, quote

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run as MlflowRun

    from relayml.readstore import RunRecord

__all__ = ["Project", "Run", "RunList", "get", "open_project", "runs"]

TAG = tag.PREFIX
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED", "STALE")

Project = Settings | str | Path | None


def open_project(where: Project = None) -> Settings:
    """The settings of a project given as Settings, a folder, or None (the working folder).

    Example:
        >>> relay.open_project(".").project
        'fraud'
    """
    if isinstance(where, Settings):
        return where
    return load_settings(Path(where) if where is not None else None)


class Run:
    """One step run, navigable.

    Attributes:
        run_id: the MLflow run id.
        key: the run's :class:`~relayml.keys.RunKey`.
        settings: the project it belongs to.

    Example:
        >>> run = relay.get("training/logreg@latest")
        >>> 0 <= run.metrics["test_roc_auc"] <= 1, run.params["penalty"], run.status
        (True, 'both', 'FINISHED')
    """

    def __init__(self, settings: Settings, entity: MlflowRun | RunRecord) -> None:
        self.settings = settings
        self._entity = entity
        self.run_id: str = entity.info.run_id
        tags = entity.data.tags
        self.key = RunKey(tags[tag.STEP], tags[tag.VARIANT], tags[tag.TIME])

    def __repr__(self) -> str:
        return f"<Run {self.key} {self.status} {self.run_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.run_id == self.run_id

    def __hash__(self) -> int:
        return hash(self.run_id)

    @property
    def store(self) -> Store:
        """The tracking store the run lives in."""
        return get_store(self.settings)

    @property
    def step(self) -> str:
        """The run's step."""
        return self.key.step

    @property
    def variant(self) -> str:
        """The run's variant."""
        return self.key.variant

    @property
    def tags(self) -> dict[str, str]:
        """All tags of the run (MLflow's and relay's)."""
        return dict(self._entity.data.tags)

    @property
    def params(self) -> dict[str, str]:
        """All params of the run, as MLflow stores them (strings)."""
        return dict(self._entity.data.params)

    @property
    def metrics(self) -> dict[str, float]:
        """The latest value of every metric of the run."""
        return dict(self._entity.data.metrics)

    @property
    def status(self) -> str:
        """FINISHED, FAILED, KILLED, RUNNING, or STALE (RUNNING but its heartbeat stopped)."""
        status = self._entity.info.status
        if status == "RUNNING" and self.heartbeat_age > self.settings.stale_after:
            return "STALE"
        return status

    @property
    def heartbeat_age(self) -> float:
        """Seconds since the run last said it was alive."""
        beat = self._entity.data.tags.get(tag.HEARTBEAT)
        last = float(beat) if beat else self._entity.info.start_time / 1000
        return time.time() - last

    @property
    def started(self) -> datetime:
        """When the run started (aware UTC)."""
        return datetime.fromtimestamp(self._entity.info.start_time / 1000, UTC)

    @property
    def duration(self) -> float | None:
        """Seconds the run took, or None while it runs."""
        end = self._entity.info.end_time
        return None if not end else (end - self._entity.info.start_time) / 1000

    @property
    def upstream_ids(self) -> dict[str, str]:
        """``{step: run_id}`` of the runs this run consumed, as recorded."""
        tags = self._entity.data.tags
        prefix = tag.UPSTREAM
        return {
            k.removeprefix(prefix): v
            for k, v in tags.items()
            if k.startswith(prefix) and not k.endswith(".key")
        }

    @cached_property
    def upstream(self) -> dict[str, Run]:
        """``{step: Run}`` of the runs this run consumed (deleted ones are left out)."""
        out = {}
        for step, run_id in self.upstream_ids.items():
            entity = self.store.get_run(run_id)
            if entity is not None and entity.info.lifecycle_stage == "active":
                out[step] = Run(self.settings, entity)
        return out

    @property
    def downstream(self) -> RunList:
        """The runs that consumed this one, newest first (searched in the tracking store)."""
        flt = f"tags.`relay.upstream.{self.step}` = {quote(self.run_id)}"
        found = self.store.search(None, flt)
        return _wrap(self.settings, found)

    @property
    def data_version(self) -> str | None:
        """The digest of the load snapshot(s) this run descends from."""
        return self._entity.data.tags.get(tag.DATA)

    @property
    def data_keys(self) -> list[str]:
        """The keys of the load runs behind :attr:`data_version`."""
        raw = self._entity.data.tags.get(tag.DATA_KEYS, "")
        return [k for k in raw.split(",") if k]

    @property
    def rows(self) -> int | None:
        """Rows of the run's snapshot(s) (a load run), else None.

        Example:
            >>> relay.get("load/transactions@latest").rows
            4500
        """
        counts = [
            int(v)
            for k, v in self._entity.data.tags.items()
            if k.startswith(tag.SNAPSHOT) and k.endswith(".rows")
        ]
        return sum(counts) if counts else None

    @cached_property
    def data_summary(self) -> dict[str, dict[str, Any]]:
        """``{snapshot name: summary}`` of a load run's data: rows, bytes, and per column
        type, nulls, min, max, mean, std, approximate quantiles and distinct count.

        Empty for runs that took no snapshot. A load that failed its checks keeps its summary.

        Example:
            >>> s = relay.get("load/transactions@latest").data_summary["fraud"]
            >>> s["rows"], s["columns"]["Amount"]["mean"] > 0
            (4500, True)
        """
        import tempfile

        store = self.store
        names = [
            p for p, _ in store.list_artifacts(self.run_id, "snapshots")
            if p.endswith(".summary.json")
        ]  # fmt: skip
        out: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="relay-summary-") as tmp:
            for path in sorted(names):
                got = store.download(self.run_id, path, Path(tmp))
                out[Path(path).name.removesuffix(".summary.json")] = json.loads(got.read_text())
        return out

    @property
    def outputs(self) -> dict[str, str]:
        """``{name: how it is stored}`` of the run's outputs."""
        manifest: dict[str, str] = json.loads(self._entity.data.tags.get(tag.OUTPUTS, "{}"))
        return manifest

    @property
    def model_uri(self) -> str | None:
        """The URI of the bundle logged by this run, if any."""
        return self._entity.data.tags.get(tag.MODEL)

    @property
    def active(self) -> bool:
        """False once the run is marked deleted (MLflow's soft delete)."""
        return self._entity.info.lifecycle_stage == "active"

    @property
    def artifacts(self) -> list[str]:
        """Paths of every artifact file of the run."""
        return [p for p, _ in self.store.run_artifacts(self.run_id)]

    @property
    def mlflow(self) -> MlflowRun:
        """The underlying ``mlflow.entities.Run`` (read with MLflow's client if the run was
        read without it)."""
        if type(self._entity).__module__.startswith("relayml."):
            self._entity = self.store.mlflow_run(self.run_id)
        return self._entity  # type: ignore[return-value]

    def load(self, name: str = "output") -> Any:
        """One output of the run as a Python object (DataFrame, fitted model, ...).

        Raises:
            NotFound: the run has no such output; the message lists those it has.
            UntrustedOutput: the output could run code when loaded (a pickle without the
                project's opt-in or from a user not in ``[outputs] trusted_users``).

        Example:
            >>> type(relay.get("processing/plain@latest").load("processor")).__name__
            'ColumnTransformer'
        """
        return load_output(self, name)

    def lineage(self) -> Lineage:
        """The upstream tree and the downstream tree of the run (see :mod:`relayml.chain`).

        Example:
            >>> keys = relay.get("training/logreg@latest").lineage().keys("upstream")
            >>> [k.split("@")[0] for k in keys]
            ['training/logreg', 'processing/plain', 'load/transactions']
        """
        return run_lineage(self)

    def refresh(self) -> Run:
        """A fresh copy of the run read again from the tracking store."""
        entity = self.store.get_run(self.run_id)
        if entity is None:
            raise NotFound(f"run {self.key} ({self.run_id}) no longer exists")
        return Run(self.settings, entity)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``relay runs --json`` prints)."""
        return {
            "key": str(self.key),
            "run_id": self.run_id,
            "step": self.step,
            "variant": self.variant,
            "status": self.status,
            "started": self.started.isoformat(),
            "params": self.params,
            "metrics": self.metrics,
            "upstream": {
                s: self._entity.data.tags.get(tag.upstream_key(s), i)
                for s, i in self.upstream_ids.items()
            },
            "data_version": self.data_version,
            "rows": self.rows,
        }


class RunList(list[Run]):
    """A list of runs, newest first, that also converts to a pandas DataFrame.

    Example:
        >>> frame = relay.runs("training").to_pandas()
        >>> len(frame), frame.loc[0, "variant"], "metrics.test_roc_auc" in frame.columns
        (1, 'logreg', True)
    """

    def to_pandas(self) -> pd.DataFrame:
        """One row per run: key, run_id, step, variant, status, ``params.*`` and ``metrics.*``."""
        import pandas as pd

        rows = []
        for r in self:
            row = {k: v for k, v in r.to_dict().items() if k not in {"params", "metrics"}}
            row.update({f"params.{k}": v for k, v in r.params.items()})
            row.update({f"metrics.{k}": v for k, v in r.metrics.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def keys(self) -> list[str]:
        """The run keys as strings."""
        return [str(r.key) for r in self]


def visible(entity: MlflowRun | RunRecord) -> bool:
    """Whether a run is a relay run users see: it has a key and is not a withdrawn claim.

    Example:
        >>> run = relay.get("load/transactions@latest")
        >>> visible(run.store.get_run(run.run_id))
        True
    """
    tags = entity.data.tags
    return tag.KEY in tags and tag.WITHDRAWN not in tags


def _wrap(settings: Settings, entities: Iterable[MlflowRun | RunRecord]) -> RunList:
    return RunList(Run(settings, e) for e in entities if visible(e))


def get(ref: str, *, project: Project = None, status: str | None = None) -> Run:
    """The run a reference names (see :mod:`relayml.keys` for the forms).

    Dates and ``@latest`` select the newest FINISHED run; a full key or a run id selects that
    run whatever its status.

    Raises:
        UsageError: a malformed reference.
        NotFound: no run matches; the message names the nearest existing keys.

    Example:
        >>> run = relay.get("processing/plain@latest")
        >>> relay.get(str(run.key)) == run, relay.get(run.run_id) == run
        (True, True)
        >>> relay.get(f"processing/plain@{run.key.moment:%Y-%m-%d}") == run
        True
    """
    settings = open_project(project)
    parsed = parse_reference(ref)
    store = get_store(settings)
    if parsed.run_id:
        entity = store.get_run(parsed.run_id)
        if entity is None or tag.KEY not in entity.data.tags:
            raise NotFound(f"no relay run with id {parsed.run_id}")
        if entity.data.tags.get(tag.PROJECT, settings.project) != settings.project:
            raise NotFound(f"run {parsed.run_id} belongs to another project")
        return Run(settings, entity)
    flt = _reference_filter(parsed, settings, status)
    found = store.search([parsed.step], flt, limit=1)  # type: ignore[list-item]
    if not found:
        raise NotFound(_not_found(parsed, settings, store))
    return Run(settings, found[0])


def _reference_filter(ref: Reference, settings: Settings, status: str | None) -> str:
    parts = []
    if ref.variant:
        parts.append(f"tags.`relay.variant` = {quote(ref.variant)}")
    if ref.time:
        parts.append(f"tags.`relay.key` = {quote(str(ref.key))}")
    elif status or ref.latest or ref.day:
        parts.append(f"attributes.status = {quote(status or 'FINISHED')}")
    if ref.day:
        lo, hi = day_bounds_ms(ref.day, settings.zone)
        parts.append(f"attributes.start_time >= {lo} AND attributes.start_time < {hi}")
    return " AND ".join(parts)


def _not_found(ref: Reference, settings: Settings, store: Store) -> str:
    steps = store.step_experiments()
    if ref.step not in steps:
        valid = sorted(s for s in steps if s not in tag.INTERNAL_STEPS)
        close = difflib.get_close_matches(ref.step or "", valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"no runs of step {ref.step!r}{hint} (steps with runs: {', '.join(valid) or 'none'})"
    what = "finished run" if not ref.time else "run"
    msg = f"no {what} matches {str(ref)!r}"
    recent = store.search([ref.step], "", limit=200)
    keys = [e.data.tags[tag.KEY] for e in recent if visible(e)]
    near = difflib.get_close_matches(str(ref), keys, n=3, cutoff=0.6)
    if near:
        msg += f"; nearest: {', '.join(near)}"
    elif keys:
        msg += f"; newest of the step: {keys[0]}"
    return msg


def runs(
    step: str | None = None,
    *,
    variant: str | None = None,
    on: date | str | None = None,
    since: date | str | None = None,
    until: date | str | None = None,
    params: Mapping[str, Any] | None = None,
    status: str | None = None,
    data: str | None = None,
    limit: int | None = 100,
    project: Project = None,
) -> RunList:
    """Search runs, newest first, inside the tracking store.

    Args:
        step: only runs of this step (default: every step).
        variant: only this variant.
        on: only runs started that day (project time zone); or use ``since``/``until``
            (inclusive days).
        params: only runs whose params equal these values (coerced to the variant's types
            when the variant is known).
        status: RUNNING, FINISHED, FAILED, KILLED or STALE.
        data: only runs on this data version: a digest, or a reference to a run whose
            data version is used.
        limit: the most runs to return (None: all).
        project: the project (default: the one around the working folder).

    Example:
        >>> [str(r.key.variant) for r in relay.runs("training", variant="logreg")]
        ['logreg']
        >>> relay.runs("training", params={"C": 10})
        []
    """
    settings = open_project(project)
    store = get_store(settings)
    parts: list[str] = []
    if variant:
        parts.append(f"tags.`relay.variant` = {quote(variant)}")
    if on is not None and (since is not None or until is not None):
        raise UsageError("use either --on or --since/--until, not both")
    lo = hi = None
    if on is not None:
        lo, hi = day_bounds_ms(_day(on), settings.zone)
    if since is not None:
        lo = day_bounds_ms(_day(since), settings.zone)[0]
    if until is not None:
        hi = day_bounds_ms(_day(until), settings.zone)[1]
    if lo is not None:
        parts.append(f"attributes.start_time >= {lo}")
    if hi is not None:
        parts.append(f"attributes.start_time < {hi}")
    for name, value in _coerced_params(settings, step, variant, params or {}).items():
        parts.append(f"params.`{name}` = {quote(value)}")
    stale_only = False
    if status:
        status = status.upper()
        if status not in STATUSES:
            raise UsageError(f"unknown status {status!r} (valid: {', '.join(STATUSES)})")
        stale_only = status == "STALE"
        parts.append(f"attributes.status = {quote('RUNNING' if stale_only else status)}")
    if data:
        parts.append(f"tags.`relay.data` = {quote(_data_version(data, settings))}")
    steps = [step] if step else [s for s in store.step_experiments() if s not in tag.INTERNAL_STEPS]
    found = _wrap(settings, store.search(steps, " AND ".join(parts), limit=limit))
    if status == "RUNNING":
        return RunList(r for r in found if r.status == "RUNNING")
    if stale_only:
        return RunList(r for r in found if r.status == "STALE")
    return found


def _day(value: date | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"invalid date {value!r}: expected YYYY-MM-DD") from None


def _data_version(value: str, settings: Settings) -> str:
    """A data version digest, given itself or a reference to a run that has one."""
    if "@" not in value:
        if len(value) < 8:
            raise UsageError(f"data version {value!r} is too short to be a digest")
        return value
    run = get(value, project=settings)
    if not run.data_version:
        raise UsageError(f"run {run.key} has no data version")
    return run.data_version


def _coerced_params(
    settings: Settings, step: str | None, variant: str | None, params: Mapping[str, Any]
) -> dict[str, str]:
    """Params as MLflow stored them: coerced through the declared types when known.

    ``--param C=10`` finds runs logged with ``C=10.0`` when the step's variants declare
    ``C: float``; with no step, or an undeclared name, the value is compared as given.
    """
    out = {k: str(v) for k, v in params.items()}
    if not (step and params):
        return out
    try:
        declared_step = load_pipeline(settings.root, settings.module).get(step)
    except (ConfigError, UsageError):
        return out
    variants = [declared_step.get(variant)] if variant else list(declared_step.variants.values())
    for k, v in params.items():
        for var in variants:
            if k in var.params:
                out[k] = str(var.params[k].coerce(v))
                break
    return out
