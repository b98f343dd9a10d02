"""A resolved chain (:class:`Chain`, one :class:`Planned` step each) and its record.

Each resolved chain is logged as a run of the experiment ``<project>/chains`` (tags
``relay.chain.<step>``, the data version, the final metrics and model URI), so MLflow's UI
shows coherent paths side by side; :func:`records` lists them.

Example:
    >>> from relayml.chain_result import records
    >>> records()[0].data.tags["relay.chain.steps"]
    'load,processing,training'
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.chain_links import Link
from relayml.codeinfo import canonical, digest
from relayml.config import Settings
from relayml.runs import Project, Run, open_project
from relayml.store import Store, get_store, quote

if TYPE_CHECKING:
    from mlflow.entities import Run as MlflowRun

    from relayml.readstore import RunRecord

__all__ = ["FAILED", "NEW", "REUSED", "Chain", "Planned", "record", "records"]

RECORD_TAG = tag.CHAIN_RECORD  # on a chain's final run: the id of the chain's record


REUSED, NEW, FAILED = "reused", "new", "failed"


@dataclass
class Planned:
    """One step of a resolved chain.

    Attributes:
        step: the step's name.
        variant: the variant's name.
        status: ``reused``, ``new`` (run, or to run in a dry run) or ``failed``.
        run: the run (None for a step still to run in a dry run).
        reason: why the step is new, or where a reused run came from.
        passed_over: ``(key, why)`` of newer runs of the step/variant that were not reused
            (filled with ``explain``).
    """

    step: str
    variant: str
    status: str
    run: Run | None = None
    reason: str = ""
    passed_over: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "step": self.step,
            "variant": self.variant,
            "status": self.status,
            "key": str(self.run.key) if self.run else None,
            "run_id": self.run.run_id if self.run else None,
            "run_status": self.run.status if self.run else None,
            "reason": self.reason,
            "passed_over": [{"key": k, "why": w} for k, w in self.passed_over],
        }


@dataclass
class Chain:
    """A coherent path of runs, one per step, from the load run(s) to the final run.

    Attributes:
        steps: the planned steps in dependency order.
        record_id: the run id of the chain's record in ``<project>/chains``, None for a dry
            run (:attr:`record` fetches the record itself).
        dry_run: nothing was run.
        notes: remarks about the whole chain, each said once (e.g. that runs recorded with
            an older reuse rule were not reused).

    Example:
        >>> c = relay.chain("load=transactions@latest", "processing=plain", "training=logreg")
        >>> [p.status for p in c.steps], c.complete
        (['reused', 'reused', 'reused'], True)
        >>> c.runs["processing"].upstream["load"] == c["load"], c.final == c["training"]
        (True, True)
        >>> c.model_uri.startswith("models:/"), 0 <= c.metrics["test_roc_auc"] <= 1
        (True, True)
    """

    steps: list[Planned]
    record_id: str | None = None
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def record(self) -> MlflowRun | RunRecord | None:
        """The chain's record run (an ``mlflow.entities.Run``, fetched from the store)."""
        runs = list(self.runs.values())
        if self.record_id is None or not runs:
            return None
        return runs[0].store.get_run(self.record_id)

    def __getitem__(self, step: str) -> Run:
        run = self.runs.get(step)
        if run is None:
            raise KeyError(f"step {step!r} has no run in this chain")
        return run

    @property
    def runs(self) -> dict[str, Run]:
        """``{step: Run}`` of the steps that have a run."""
        return {p.step: p.run for p in self.steps if p.run is not None}

    @property
    def final(self) -> Run | None:
        """The run of the last step (None in a dry run where it is still to run)."""
        return self.steps[-1].run

    @property
    def complete(self) -> bool:
        """Every step has a FINISHED run."""
        return all(p.run is not None and p.status != FAILED for p in self.steps)

    @property
    def model_uri(self) -> str | None:
        """The model URI of the last run in the chain that logged a model."""
        for p in reversed(self.steps):
            if p.run is not None and p.run.model_uri:
                return p.run.model_uri
        return None

    @property
    def data_version(self) -> str | None:
        """The data version of the final run (the digest of the load snapshots behind it)."""
        final = self.final
        return final.data_version if final else None

    @property
    def metrics(self) -> dict[str, float]:
        """The final run's metrics."""
        final = self.final
        return final.metrics if final else {}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what ``relay chain --json`` prints)."""
        return {
            "steps": [p.to_dict() for p in self.steps],
            "complete": self.complete,
            "dry_run": self.dry_run,
            "data_version": self.data_version,
            "model_uri": self.model_uri,
            "metrics": self.metrics,
            "record": self.record_id,
            "notes": self.notes,
        }


def record(
    settings: Settings,
    store: Store,
    result: Chain,
    links: list[Link],
    error: str | None = None,
) -> str:
    """Log the chain as a run of ``<project>/chains``, or find the identical record; its id.

    The final run determines the whole chain (its recorded upstream, and theirs), so the
    record's id is kept on the final run as the tag ``relay.chain.record``: a chain whose
    steps were all reused finds its record without a search. A chain with a new step cannot
    have a record yet.
    """
    runs = result.runs
    ident = digest(canonical({s: r.run_id for s, r in runs.items()}), error or "")
    final = result.steps[-1]
    if error is None and all(p.status == REUSED for p in result.steps):
        assert final.run is not None
        known = final.run.tags.get(RECORD_TAG)
        if known:
            return known
        found = store.search(  # recorded before the tag existed
            [tag.CHAINS_EXPERIMENT],
            f"tags.`relay.chain.id` = {quote(ident)} AND attributes.status = 'FINISHED'",
            limit=1,
        )
        if found:
            _remember_record(store, final.run.run_id, found[0].info.run_id)
            return found[0].info.run_id
    tags = {
        tag.PROJECT: settings.project,
        tag.CHAIN_ID: ident,
        tag.CHAIN_STEPS: ",".join(p.step for p in result.steps),
        tag.CHAIN_REQUEST: " ".join(str(x) for x in links),
        "mlflow.note.content": _note(result),
    }
    for p in result.steps:
        if p.run is not None:
            tags[tag.chain_step(p.step)] = p.run.run_id
            tags[tag.chain_step(p.step, "key")] = str(p.run.key)
            tags[tag.chain_step(p.step, "status")] = p.status
    if result.data_version:
        tags[tag.DATA] = result.data_version
    if result.model_uri:
        tags[tag.MODEL] = result.model_uri
    if error:
        tags[tag.ERROR] = error[:4000]
    params: dict[str, Any] = {}
    for p in result.steps:
        params[f"{p.step}.variant"] = p.variant
        if p.run is not None:
            params.update({f"{p.step}.{k}": v for k, v in p.run.params.items()})
    now = int(time.time() * 1000)
    name = f"chain {final.run.key}" if final.run else f"chain {final.step}/{final.variant}"
    entity = store.create_run(tag.CHAINS_EXPERIMENT, start_ms=now, run_name=name, tags=tags)
    run_id: str = entity.info.run_id
    metrics = result.metrics if error is None else {}
    store.log(run_id, params=params, metrics=metrics)
    store.finish(run_id, "FAILED" if error else "FINISHED")
    if error is None and final.run is not None:
        _remember_record(store, final.run.run_id, run_id)
    return run_id


def _remember_record(store: Store, final_id: str, record_id: str) -> None:
    """Tag the final run with its chain's record; a shortcut, so losing a race is fine.

    Two processes recording the same chain at once may both set the tag; MLflow's tag insert
    is not an upsert under concurrency (a unique-key violation), and either record will do.
    """
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        store.set_tag(final_id, RECORD_TAG, record_id)


def _note(result: Chain) -> str:
    lines = ["relay chain:"]
    for p in result.steps:
        lines.append(f"- {p.step}: {p.run.key if p.run else '(none)'} ({p.status})")
    return "\n".join(lines)


def records(project: Project = None, *, limit: int = 100) -> list[MlflowRun | RunRecord]:
    """The chain records of a project, newest first (``mlflow.entities.Run`` objects).

    Example:
        >>> record = records()[0]
        >>> record.data.tags["relay.chain.training.key"] == str(relay.get("training@latest").key)
        True
    """
    settings = open_project(project)
    return get_store(settings).search([tag.CHAINS_EXPERIMENT], "", limit=limit)
