"""Executes one step run: code version, params, upstream, snapshots, outputs, status.

:func:`prepare` validates a request without touching the tracking store's runs (unknown
names and wrong types fail here, before anything is created); :func:`execute` runs it inside
an MLflow run; :func:`run` does both.

Run keys are unique even when two processes start the same variant in the same second: a
new run is created with its key, then the store is searched for that key; a run that finds
another run holding the same key withdraws (its run is deleted before any work) and tries
again one second later. Whichever search comes last sees both runs, so two runs can never
both keep a key.

Example:
    >>> import relayml as relay
    >>> run = relay.run("processing", "plain", params={"fill": "median"})  # doctest: +SKIP
    >>> run.key  # doctest: +SKIP
    RunKey(step='processing', variant='plain', time='20190209101500')
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.checks import Checks
from relayml.codeinfo import CodeState, canonical, code_state, digest
from relayml.config import Settings
from relayml.errors import (
    ChecksFailed,
    NotFound,
    RelayError,
    SourceError,
    StepFailed,
    UnknownName,
    UsageError,
)
from relayml.fingerprint import SCHEME, code_parts, parts_digest
from relayml.keys import RunKey, format_time, parse_key
from relayml.outputs import as_dict, cache_dir, check_name, handed_down, is_frame, stage_outputs
from relayml.redaction import redact
from relayml.runs import Project, Run, get, open_project
from relayml.steps import Pipeline, Variant, load_pipeline
from relayml.store import Store, get_store, quote
from relayml.trust import current_user

if TYPE_CHECKING:
    import pandas as pd

    from relayml.checks import CheckReport
    from relayml.data import Snapshot

__all__ = ["Context", "Request", "execute", "pipeline_of", "prepare", "run"]

CODE_PARTS = "code/fingerprint.json"  # the parts of relay.code, also in the tag relay.code.parts
CODE_PARTS_TAG_MAX = 8000  # MLflow's limit on a tag value; longer parts are in the artifact only


def pipeline_of(settings: Settings) -> Pipeline:
    """The project's steps (its steps module imported once per process)."""
    return load_pipeline(settings.root, settings.module)


# -- the request -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A validated step run, not yet executed.

    Attributes:
        settings: the project.
        variant: the variant to run.
        params: coerced params, defaults included.
        upstream: the chosen upstream run of each upstream step.
        code: the project's git state, recorded for reproduction (not part of the key);
            None: read when the run is created.
        as_of: the retrieval time to repeat (load steps), or None for now.
        checks: run the data checks declared on a load variant (``--no-checks``: False).
    """

    settings: Settings
    pipeline: Pipeline
    variant: Variant
    params: dict[str, Any]
    upstream: dict[str, Run]
    code: CodeState | None
    as_of: datetime | None = None
    checks: bool = True

    @property
    def step(self) -> str:
        """The step's name."""
        return self.variant.step

    @cached_property
    def code_parts(self) -> dict[str, str]:
        """The parts of the code that runs (see :mod:`relayml.fingerprint`)."""
        return code_parts(self.settings, self.step, self.variant.source, self.pipeline.module_file)

    @property
    def code_fingerprint(self) -> str:
        """Digest of :attr:`code_parts`: exactly the code that runs, not the git commit."""
        return parts_digest(self.code_parts)

    @property
    def params_digest(self) -> str:
        """Digest of the canonical encoding of every param (defaults included)."""
        return digest(canonical(self.params))

    @property
    def fingerprint(self) -> str:
        """What a reusable run must match: step, variant, params, upstream ids, code."""
        ups = {s: r.run_id for s, r in sorted(self.upstream.items())}
        asof = format_time(self.as_of) if self.as_of else ""
        return digest(
            self.step,
            self.variant.name,
            self.params_digest,
            canonical(ups),
            self.code_fingerprint,
            asof,
        )

    @property
    def data_parts(self) -> dict[str, str]:
        """``{load key: digest}`` of every load run behind the upstream runs."""
        parts: dict[str, str] = {}
        for r in self.upstream.values():
            parts.update(json.loads(r.tags.get(tag.DATA_PARTS, "{}")))
        return parts


def prepare(
    step: str,
    variant: str,
    params: Mapping[str, Any] | None = None,
    *,
    upstream: Iterable[str | Run] | Mapping[str, str | Run] | None = None,
    as_of: datetime | str | None = None,
    require_clean: bool = False,
    checks: bool = True,
    project: Project = None,
) -> Request:
    """Validate a step run request; nothing is written.

    Args:
        step: the step's name.
        variant: the variant's name.
        params: parameter values (strings are coerced to the declared types).
        upstream: references (or Runs) of upstream runs; each upstream step not given
            defaults to its ``@latest``.
        as_of: repeat a load for an earlier retrieval time.
        require_clean: refuse when the project has uncommitted changes.
        checks: run the load variant's data checks (False: skip them, recorded on the run).
        project: the project (default: around the working folder).

    Raises:
        UsageError: unknown step/variant/parameter, a wrong type, an upstream run that is not
            FINISHED or of another step, a dirty tree with ``require_clean``.

    Example:
        >>> req = prepare("training", "logreg", {"C": "10"})  # doctest: +SKIP
        >>> req.params["C"], req.upstream["processing"].key  # doctest: +SKIP
        (10.0, RunKey(step='processing', variant='plain', time='20190209101500'))
    """
    settings = open_project(project)
    pipeline = pipeline_of(settings)
    var = pipeline.variant(step, variant)
    bound = var.bind(params)
    chosen = _choose_upstream(settings, pipeline, step, upstream)
    when = _as_of(as_of)
    if when is not None and pipeline.get(step).upstream:
        raise UsageError(f"--as-of applies to load steps (steps without upstream), not {step!r}")
    code = code_state(settings.root)
    if require_clean and code.dirty:
        raise UsageError(
            f"the project has uncommitted changes in {settings.root}; commit them, or drop "
            "--require-clean to record the diff as code/uncommitted.diff"
        )
    return Request(settings, pipeline, var, bound, chosen, code, when, checks)


def _as_of(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"invalid --as-of {value!r}: expected an ISO date or time like 2019-02-09T00:00:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _choose_upstream(
    settings: Settings,
    pipeline: Pipeline,
    step: str,
    given: Iterable[str | Run] | Mapping[str, str | Run] | None,
) -> dict[str, Run]:
    wanted = pipeline.get(step).upstream
    refs: list[str | Run] = list(given.values() if isinstance(given, Mapping) else given or [])
    chosen: dict[str, Run] = {}
    for ref in refs:
        r = ref if isinstance(ref, Run) else get(ref, project=settings)
        if r.step not in wanted:
            valid = ", ".join(wanted) or "none"
            raise UsageError(
                f"--from {r.key}: step {step!r} does not consume step {r.step!r} "
                f"(its upstream steps: {valid})"
            )
        if r.step in chosen:
            raise UsageError(f"--from names two runs of step {r.step!r}")
        chosen[r.step] = r
    for up in wanted:
        if up not in chosen:
            try:
                chosen[up] = get(f"{up}@latest", project=settings)
            except NotFound:
                raise NotFound(
                    f"step {step!r} needs a finished run of {up!r} and there is none; "
                    f"run 'relay run {up} VARIANT' first"
                ) from None
    for r in chosen.values():
        if r.status != "FINISHED":
            raise UsageError(
                f"upstream run {r.key} is {r.status}, not FINISHED; pick another with --from"
            )
    return chosen


# -- the context handed to variants -------------------------------------------------------


@dataclass
class Context:
    """What a variant's ``ctx`` parameter receives: logging, data access, the run's identity.

    Example:
        >>> @load.variant("transactions")  # doctest: +SKIP
        ... def transactions(ctx, days: int = 30):
        ...     df = ctx.query("fraud", "SELECT * FROM tx WHERE ts <= :retrieval_time")
        ...     ctx.log_metric("rows", len(df))
        ...     return df
    """

    key: RunKey
    run_id: str
    settings: Settings
    retrieval_time: datetime
    params: dict[str, Any]
    _store: Store
    _snapshots: list[tuple[str, Snapshot, int]] = field(default_factory=list)
    _tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="relay-run-")))
    show_progress: bool = True
    _checks: Checks | None = None  # the load variant's checks (None: not a load, or skipped)
    _key: tuple[str, ...] = ()
    _summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    _reports: list[CheckReport] = field(default_factory=list)

    def log_metric(self, name: str, value: float, step: int = 0) -> None:
        """Log one metric of the run.

        Example:
            >>> ctx.log_metric("test_roc_auc", 0.97)  # doctest: +SKIP
        """
        self._store.log(self.run_id, metrics={name: value}, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log several metrics at once.

        Example:
            >>> ctx.log_metrics({"precision": 0.8, "recall": 0.7})  # doctest: +SKIP
        """
        self._store.log(self.run_id, metrics=dict(metrics), step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder as an artifact of the run."""
        self._store.upload(self.run_id, Path(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write a text artifact (a report, a note)."""
        self._store.log_text(self.run_id, text, artifact_file)

    def query(self, source: str, sql: str, **params: Any) -> pd.DataFrame:
        """Run a SQL query on a named source; the result is the run's snapshot.

        Parameters are bound, never formatted into the SQL. ``:retrieval_time`` is bound to the
        run's retrieval time unless given.

        Example:
            >>> ctx.query("fraud", "SELECT * FROM tx WHERE ts <= :retrieval_time")  # doctest: +SKIP
        """
        from relayml import data

        src = self._source(source)
        if not src.url:
            raise UsageError(f"source {source!r} is a file; use ctx.read({source!r})")
        if ":retrieval_time" in sql and "retrieval_time" not in params:
            params["retrieval_time"] = self.retrieval_time.replace(tzinfo=None)
        url = data.with_password(src.url, src.password_env)
        out = self._tmp / f"{source}-{len(self._snapshots)}.parquet"
        with self._progress(f"{source}: rows") as tick, self._watch(source, out) as watch:
            snap = data.snapshot_query(url, sql, params, out, progress=tick, observe=watch)
        return self._keep(source, snap)

    def read(self, source_or_path: str | Path) -> pd.DataFrame:
        """Read a CSV or Parquet file (a named file source or a path) as the run's snapshot.

        Example:
            >>> ctx.read("customers")  # doctest: +SKIP
        """
        from relayml import data

        name = str(source_or_path)
        if name in self.settings.sources and self.settings.sources[name].path:
            path = self.settings.sources[name].path
        else:
            path = Path(source_or_path)
            if not path.is_absolute():
                path = self.settings.root / path
            name = path.stem
        out = self._tmp / f"{name}-{len(self._snapshots)}.parquet"
        with self._progress(f"{name}: rows") as tick, self._watch(name, out) as watch:
            snap = data.snapshot_file(path, out, progress=tick, observe=watch)  # type: ignore[arg-type]
        return self._keep(name, snap)

    @contextmanager
    def _watch(self, name: str, out: Path) -> Iterator[Callable[[Any], None]]:
        """Summarize (and check) a snapshot's batches as they stream; judge it at the end.

        Raises:
            ChecksFailed: a declared (or default) check failed; the report is kept for the run.
        """
        from relayml.checks import Checker
        from relayml.data_summary import Summarizer

        summarizer = Summarizer()
        checker = Checker(self._checks, self._key) if self._checks is not None else None

        def watch(batch: Any) -> None:
            summarizer.update(batch)
            if checker is not None:
                checker.update(batch)

        yield watch
        summary = summarizer.result()
        self._summaries[name] = summary
        if checker is None:
            return
        report = checker.finish(summary, out)
        report.snapshot = name
        self._reports.append(report)
        self.raise_failed_checks()

    def raise_failed_checks(self) -> None:
        """Raise :class:`~relayml.errors.ChecksFailed` when a snapshot broke its checks."""
        failed = [r for r in self._reports if not r.ok]
        if failed:
            names = sorted({f.name for r in failed for f in r.failures})
            raise ChecksFailed(
                f"{self.key} failed its data checks ({', '.join(names)}); the report is "
                f"checks/report.txt (relay show {self.key}); --no-checks skips them",
                failed,
            )

    def _keep(self, name: str, snap: Snapshot) -> pd.DataFrame:
        from relayml import data

        if snap.rows == 0:
            _warn(f"{self.key}: {name} returned 0 rows")
        frame = data.read_snapshot(snap.path)
        self._snapshots.append((name, snap, id(frame)))
        return frame

    def _source(self, name: str):
        try:
            return self.settings.sources[name]
        except KeyError:
            raise UnknownName(
                "source", name, self.settings.sources, where="in relay.toml"
            ) from None

    @contextmanager
    def _progress(self, label: str) -> Iterator[Callable[[int], None]]:
        if not self.show_progress:
            yield lambda rows: None
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description} {task.completed:,}"),
            TimeElapsedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task(label, total=None)
            yield lambda rows: bar.update(task, completed=rows)

    @contextmanager
    def parallel(self) -> Iterator[None]:
        """Run joblib-parallel work (a grid search's ``n_jobs``) on the project's executor.

        Locally it changes nothing; with ``[execution] backend = "dask"`` the work inside the
        block is distributed on the Dask cluster through joblib.

        Example:
            >>> with ctx.parallel():  # doctest: +SKIP
            ...     search.fit(X, y)
        """
        if self.settings.executor == "local":
            yield
            return
        from relayml.cluster import joblib_backend

        with joblib_backend(self.settings):
            yield

    def progress(self, items: Iterable[Any], description: str = "", total: int | None = None):
        """Iterate with a progress bar (hidden when progress is off).

        Example:
            >>> for fold in ctx.progress(range(5), "folds"):  # doctest: +SKIP
            ...     ...
        """
        if not self.show_progress:
            return items
        from rich.progress import track

        return track(items, description=description, total=total, transient=True)


# -- executing --------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def execute(
    req: Request, *, show_progress: bool = True, created: tuple[str, RunKey] | None = None
) -> Run:
    """Execute a prepared request inside a new MLflow run and return the finished Run.

    Args:
        req: the prepared request.
        show_progress: show progress bars on the terminal.
        created: ``(run_id, key)`` of a RUNNING run already created for ``req`` (a claim
            held through :func:`relayml.claims.claim`); default: create one.

    Raises:
        StepFailed: the variant (or its data source) raised or called ``sys.exit``; the run is
            FAILED with the traceback as the artifact ``error/traceback.txt`` (and the exit
            code as the tag ``relay.exit_code``).
        KeyboardInterrupt: Ctrl-C or SIGTERM; the run is KILLED.
    """
    settings = req.settings
    if req.code is None:
        req = replace(req, code=code_state(settings.root))
    func = req.variant.load()  # a variant from the pipeline cache imports the module now
    store = get_store(settings)
    run_id, key = created or _create_run(store, req)
    beat = _Heartbeat(store, run_id, settings.stale_after)
    retrieval = req.as_of or key.moment
    ctx = Context(key, run_id, settings, retrieval, req.params, store, show_progress=show_progress)
    if not req.pipeline.get(req.step).upstream and req.checks:  # a load: its data is checked
        ctx._checks = req.variant.checks or Checks()
    ctx._key = req.variant.key
    try:
        with _sigterm_raises(), beat, _early_proof(req) as proof:
            _record_code(store, run_id, req)
            args = _arguments(req, ctx)
            returned = func(**args)
            _finish(store, req, ctx, as_dict(returned), proof)
    except KeyboardInterrupt:
        _end(store, run_id, "KILLED", "interrupted (Ctrl-C or SIGTERM)")
        raise
    except (Exception, SystemExit) as e:  # sys.exit() in a variant fails its run, too
        tb = traceback.format_exc()
        with _quiet():
            store.log_text(run_id, tb, "error/traceback.txt")
            if isinstance(e, SystemExit):
                store.set_tag(run_id, tag.EXIT_CODE, str(e.code))
        with _quiet():
            _log_checks(store, ctx)
        msg = redact(_short(e))
        _end(store, run_id, "FAILED", msg)
        if isinstance(e, RelayError) and not isinstance(e, SourceError):
            raise
        raise StepFailed(f"{key} failed: {msg} (traceback: relay show {key})") from e
    finally:
        shutil.rmtree(ctx._tmp, ignore_errors=True)
    entity = store.get_run(run_id)
    assert entity is not None
    return Run(settings, entity)


def run(
    step: str,
    variant: str,
    params: Mapping[str, Any] | None = None,
    *,
    upstream: Iterable[str | Run] | Mapping[str, str | Run] | None = None,
    as_of: datetime | str | None = None,
    require_clean: bool = False,
    show_progress: bool = False,
    checks: bool = True,
    project: Project = None,
) -> Run:
    """Run one variant of a step and return its finished :class:`~relayml.runs.Run`.

    Args:
        step: the step's name.
        variant: the variant's name.
        params: parameter values; defaults fill the rest.
        upstream: references of upstream runs (default: ``@latest`` of each upstream step).
        as_of: repeat a load for an earlier retrieval time.
        require_clean: refuse to run with uncommitted changes.
        show_progress: show progress bars on the terminal.
        checks: run the load variant's data checks (False: skip them, recorded on the run).
        project: the project (default: around the working folder).

    Example:
        >>> import relayml as relay
        >>> load = relay.run("load", "transactions")  # doctest: +SKIP
        >>> relay.run("processing", "plain", upstream=[str(load.key)]).status  # doctest: +SKIP
        'FINISHED'
    """
    req = prepare(
        step,
        variant,
        params,
        upstream=upstream,
        as_of=as_of,
        require_clean=require_clean,
        checks=checks,
        project=project,
    )
    return execute(req, show_progress=show_progress)


def _base_tags(req: Request, key: RunKey) -> dict[str, str]:
    tags = {
        tag.PROJECT: req.settings.project,
        tag.STEP: req.step,
        tag.VARIANT: req.variant.name,
        tag.KEY: str(key),
        tag.TIME: key.time,
        tag.HEARTBEAT: f"{time.time():.3f}",
        tag.CODE: req.code_fingerprint,
        tag.CODE_SCHEME: SCHEME,
        tag.PARAMS: req.params_digest,
        tag.FINGERPRINT: req.fingerprint,
        "mlflow.user": current_user(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": str(req.pipeline.module_file or req.settings.module),
    }
    recorded = canonical(req.code_parts)
    if len(recorded) <= CODE_PARTS_TAG_MAX:
        tags[tag.CODE_PARTS] = recorded
    if req.code is not None and req.code.commit:
        tags[tag.GIT_COMMIT] = req.code.commit
        tags["mlflow.source.git.commit"] = req.code.commit
        tags[tag.GIT_DIRTY] = str(req.code.dirty).lower()
    for s, r in req.upstream.items():
        tags[tag.upstream(s)] = r.run_id
        tags[tag.upstream_key(s)] = str(r.key)
    parts = req.data_parts
    if parts:
        tags.update(_data_tags(parts))
    if req.as_of:
        tags[tag.AS_OF] = req.as_of.isoformat()
    tags["mlflow.note.content"] = run_description(key, req.upstream, tags.get(tag.DATA))
    return tags


def run_description(key: RunKey, upstream: Mapping[str, Run], data: str | None) -> str:
    """The run's description in MLflow's UI: its key, upstream keys and data version, with
    links to relay's pages (origin-relative: they work behind ``relay ui``).

    Example:
        >>> run_description(parse_key("load/t@20190209000000"), {}, None).splitlines()[0]
        'relay run **load/t@20190209000000**: [relay page](/relay/run/load/t@20190209000000)'
    """
    lines = [f"relay run **{key}**: [relay page](/relay/run/{key})"]
    for step, r in sorted(upstream.items()):
        lines.append(f"- upstream {step}: [{r.key}](/relay/run/{r.key})")
    if data:
        lines.append(f"- data version [{data[:16]}](/relay/data/{data})")
    lines.append(f"- lineage: [/relay/lineage/{key}](/relay/lineage/{key})")
    return "\n".join(lines)


def _data_tags(parts: Mapping[str, str]) -> dict[str, str]:
    from relayml.data import combine_digests

    version = next(iter(parts.values())) if len(parts) == 1 else combine_digests(parts)
    return {
        tag.DATA: version,
        tag.DATA_KEYS: ",".join(sorted(parts)),
        tag.DATA_PARTS: canonical(dict(sorted(parts.items()))),
    }


def _create_run(store: Store, req: Request) -> tuple[str, RunKey]:
    """Create the run under a key no other active run holds (see the module docstring)."""
    store.prepare_writes()  # before the start time and heartbeat are stamped
    now = time.time()
    key = RunKey.at(req.step, req.variant.name, datetime.fromtimestamp(now, UTC))
    millis = int(now * 1000) % 1000
    for _ in range(60):
        start_ms = int(key.moment.timestamp()) * 1000 + millis
        entity = store.create_run(
            req.step, start_ms=start_ms, run_name=str(key), tags=_base_tags(req, key)
        )
        run_id = entity.info.run_id
        holders = store.search([req.step], f"tags.`relay.key` = {quote(str(key))}", limit=3)
        if [e.info.run_id for e in holders] == [run_id]:
            store.log(run_id, params=_logged_params(req))
            return run_id, key
        store.withdraw(run_id, "key collision")
        key = _after_newest(store, key)
        time.sleep(random.uniform(0.0, 0.05))
    raise RelayError(f"could not allocate a unique key for {req.step}/{req.variant.name}")


def _after_newest(store: Store, key: RunKey) -> RunKey:
    """The key to try after a collision: one second after the newest key of the variant.

    When many runs of a variant start each second their keys run ahead of the clock; jumping
    past the newest one costs one search instead of a collision per taken second.
    """
    found = store.search([key.step], f"tags.`relay.variant` = {quote(key.variant)}", limit=1)
    newest = found[0].data.tags.get(tag.KEY) if found else None
    later = parse_key(newest) if newest else key
    return max(key, later, key=lambda k: k.time).next_second()


def _logged_params(req: Request) -> dict[str, Any]:
    params = dict(req.params)
    if req.as_of:
        params["as_of"] = req.as_of.isoformat()
    return params


def _record_code(store: Store, run_id: str, req: Request) -> None:
    store.log_text(run_id, json.dumps(req.code_parts, indent=1, sort_keys=True), CODE_PARTS)
    if req.code is not None and req.code.dirty:
        store.log_text(run_id, req.code.diff, "code/uncommitted.diff")


def _arguments(req: Request, ctx: Context) -> dict[str, Any]:
    args: dict[str, Any] = dict(req.params)
    if req.variant.wants_ctx:
        args["ctx"] = ctx
    for name in req.variant.inputs:
        args[name] = handed_down(req.upstream[name])
    return args


def _finish(
    store: Store, req: Request, ctx: Context, outputs: dict[str, Any], proof: Any = None
) -> None:
    """Persist snapshots and outputs, record the data version, bundle a model, end FINISHED.

    Outputs are written locally first: a refused one (a bad name, no data format) fails the
    run before any snapshot or output is uploaded.
    """
    import pandas as pd

    from relayml import data

    for name in outputs:
        check_name(name, str(ctx.key))
    snaps = list(ctx._snapshots)
    by_frame = {fid: name for name, _, fid in snaps}
    if not req.pipeline.get(req.step).upstream:  # a root step: its DataFrames are data
        for name, value in outputs.items():
            if isinstance(value, pd.DataFrame) and id(value) not in by_frame:
                out = ctx._tmp / f"out-{name}.parquet"
                with ctx._watch(name, out) as watch:
                    snap = data.snapshot_frame(value, out, observe=watch)
                snaps.append((name, snap, id(value)))
                by_frame[id(value)] = name
    ctx.raise_failed_checks()  # the variant may have caught ChecksFailed: it still fails
    staged = ctx._tmp / "outputs"
    manifest = stage_outputs(
        outputs,
        staged,
        skip=[out for out, v in outputs.items() if id(v) in by_frame],
        allow_pickle=req.settings.allow_pickle,
        where=str(ctx.key),
    )
    holders: dict[str, str] = {}
    for name, snap, _ in snaps:
        holders[name] = _store_snapshot(store, req.settings, snap)
        summary = ctx._summaries.get(name)
        _log_snapshot(store, ctx.run_id, name, snap, holders[name], ctx.retrieval_time, summary)
    _log_checks(store, ctx)
    tags: dict[str, str] = {}
    if snaps and not req.pipeline.get(req.step).upstream:
        tags[tag.CHECKS] = "skipped" if not req.checks else "passed"
        if req.variant.key:
            tags[tag.DATA_KEY] = ",".join(req.variant.key)
    if snaps:
        digests = {name: snap.digest for name, snap, _ in snaps}
        own = next(iter(digests.values())) if len(digests) == 1 else data.combine_digests(digests)
        tags.update(_data_tags({str(ctx.key): own}))
        tags[tag.RETRIEVAL_TIME] = ctx.retrieval_time.isoformat()
    else:
        _log_upstream_datasets(store, ctx.run_id, req)
    for out, v in outputs.items():
        if id(v) in by_frame:
            manifest[out] = f"snapshot:{holders[by_frame[id(v)]]}"
    if any(staged.iterdir()):
        store.upload(ctx.run_id, staged, "outputs")
    tags[tag.OUTPUTS] = canonical(manifest)
    store.log(ctx.run_id, tags=tags)
    if "model" in outputs:
        uri = _bundle(store, req, ctx, outputs, proof)
        if uri:
            store.set_tag(ctx.run_id, tag.MODEL, uri)
    store.finish(ctx.run_id, "FINISHED")


def _store_snapshot(store: Store, settings: Settings, snap: Snapshot) -> str:
    """The holder run of a snapshot's bytes: an existing one with the same digest, or new."""
    found = store.search(
        [tag.SNAPSHOTS_EXPERIMENT],
        f"tags.`relay.digest` = {quote(snap.digest)} AND attributes.status = 'FINISHED'",
        limit=1,
    )
    if found:
        return found[0].info.run_id
    entity = store.create_run(
        tag.SNAPSHOTS_EXPERIMENT,
        start_ms=int(time.time() * 1000),
        run_name=f"snapshot {snap.digest[:12]}",
        tags={
            tag.PROJECT: settings.project,
            tag.DIGEST: snap.digest,
            tag.ROWS: str(snap.rows),
            tag.BYTES: str(snap.bytes),
        },
    )
    holder = entity.info.run_id
    staged = snap.path.with_name("snapshot.parquet")
    snap.path.replace(staged)
    try:
        store.upload(holder, staged)
    except Exception:
        store.finish(holder, "FAILED")
        store.delete_run(holder)
        raise
    store.finish(holder, "FINISHED")
    local = cache_dir(settings.root, holder) / "snapshot.parquet"
    local.parent.mkdir(parents=True, exist_ok=True)
    staged.replace(local)
    return holder


def _log_snapshot(
    store: Store,
    run_id: str,
    name: str,
    snap: Snapshot,
    holder: str,
    retrieval: datetime,
    summary: Mapping[str, Any] | None = None,
) -> None:
    info = {
        "name": name,
        "source": snap.source,
        "query": snap.query,
        "retrieval_time": retrieval.isoformat(),
        "rows": snap.rows,
        "bytes": snap.bytes,
        "schema": snap.schema,
        "digest": snap.digest,
        "uri": f"runs:/{holder}/snapshot.parquet",
    }
    store.log_text(run_id, json.dumps(info, indent=2), f"snapshots/{name}.json")
    profile: dict[str, Any] = {"num_rows": snap.rows, "bytes": snap.bytes}
    if summary is not None:
        summary = {"rows": snap.rows, "bytes": snap.bytes, **summary}
        store.log_text(run_id, json.dumps(summary, indent=1), f"snapshots/{name}.summary.json")
        profile["columns"] = summary["columns"]
    if snap.query:
        store.log_text(run_id, snap.query, f"snapshots/{name}.sql")
    store.log(
        run_id,
        tags={
            tag.snapshot(name): holder,
            tag.snapshot(name, "digest"): snap.digest,
            tag.snapshot(name, "rows"): str(snap.rows),
            tag.snapshot(name, "bytes"): str(snap.bytes),
            tag.snapshot(name, "source"): snap.source,
        },
    )
    store.log_dataset(
        run_id,
        name=name,
        digest=snap.digest,
        source=canonical({"uri": info["uri"], "source": snap.source, "query": snap.query}),
        schema=_mlflow_schema(snap.schema),
        profile=canonical(profile),
        context="load",
    )


def _log_checks(store: Store, ctx: Context) -> None:
    """The check reports of a load run: ``checks/<name>.json`` and ``checks/report.txt``."""
    if not ctx._reports:
        return
    for report in ctx._reports:
        store.log_text(ctx.run_id, json.dumps(report.to_dict(), indent=1, default=str),
                       f"checks/{report.snapshot}.json")  # fmt: skip
    store.log_text(ctx.run_id, "\n\n".join(r.text() for r in ctx._reports), "checks/report.txt")
    if any(not r.ok for r in ctx._reports):
        store.set_tag(ctx.run_id, tag.CHECKS, "failed")
        for name, summary in ctx._summaries.items():  # kept to see what the data held
            store.log_text(ctx.run_id, json.dumps(summary, indent=1),
                           f"snapshots/{name}.summary.json")  # fmt: skip


def _mlflow_schema(schema: Mapping[str, str]) -> str:
    kinds = {
        "int64": "long",
        "int32": "integer",
        "double": "double",
        "float": "float",
        "bool": "boolean",
        "string": "string",
        "large_string": "string",
    }
    cols = [
        {"name": n, "type": kinds.get(t, "datetime" if t.startswith("timestamp") else "string")}
        for n, t in schema.items()
    ]
    return canonical({"mlflow_colspec": cols})


def _log_upstream_datasets(store: Store, run_id: str, req: Request) -> None:
    """Downstream runs log the datasets of the load runs they descend from as inputs."""
    seen: set[tuple[str, str]] = set()
    for up in req.upstream.values():
        for di in up.mlflow.inputs.dataset_inputs if up.mlflow.inputs else []:
            ds = di.dataset
            if (ds.name, ds.digest) in seen:
                continue
            seen.add((ds.name, ds.digest))
            store.log_dataset(
                run_id,
                name=ds.name,
                digest=ds.digest,
                source=ds.source,
                schema=ds.schema,
                profile=ds.profile,
                context=req.step,
            )


def _ancestors(runs: Iterable[Run]) -> Iterator[Run]:
    """Breadth-first walk up the upstream runs."""
    queue = list(runs)
    seen: set[str] = set()
    while queue:
        r = queue.pop(0)
        if r.run_id in seen:
            continue
        seen.add(r.run_id)
        yield r
        queue.extend(r.upstream.values())


def _early_proof(req: Request) -> contextlib.AbstractContextManager[Any]:
    """The load proof of the bundle this step may log (an upstream run has a processor),
    started now: its child interpreter imports MLflow while the step fits."""
    if not any("processor" in r.outputs for r in _ancestors(req.upstream.values())):
        return contextlib.nullcontext()
    from relayml.bundle_proof import LoadProof

    return LoadProof()


def _bundle(
    store: Store, req: Request, ctx: Context, outputs: dict[str, Any], proof: Any = None
) -> str | None:
    """Log the model of a training run bundled with the nearest upstream processor."""
    from relayml.bundle import log_bundle
    from relayml.outputs import load_output

    processor = None
    raw_example = None
    provenance = {"training": str(ctx.key)}
    for r in _ancestors(req.upstream.values()):
        provenance.setdefault(r.step, str(r.key))
        if processor is None and "processor" in r.outputs:
            processor = load_output(r, "processor")
        if raw_example is None and not r.upstream_ids:
            frames = [n for n, how in r.outputs.items() if is_frame(how)]
            if frames:
                raw_example = load_output(r, frames[0]).head(5)
    tags = {tag.provenance(k): v for k, v in provenance.items()}
    if tag.DATA in (d := _data_tags(req.data_parts) if req.data_parts else {}):
        tags[tag.DATA] = d[tag.DATA]
    return log_bundle(
        processor,
        outputs["model"],
        raw_example=raw_example,
        run_id=ctx.run_id,
        threshold=outputs.get("threshold"),
        tags=tags,
        proof=proof,
    )


def _end(store: Store, run_id: str, status: str, message: str) -> None:
    with _quiet():
        store.set_tag(run_id, tag.ERROR, message[:4000])
    store.finish(run_id, status)


def _short(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"the variant called sys.exit({e.code!r})"
    text = str(e).strip().split("\n")[0] or type(e).__name__
    return f"{type(e).__name__}: {text}" if not isinstance(e, RelayError) else text


def _warn(message: str) -> None:
    import sys

    print(f"Warning: {message}", file=sys.stderr)


def _quiet() -> contextlib.suppress:
    """Best effort: a logging error must never hide the step's own outcome."""
    return contextlib.suppress(Exception)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a step runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Heartbeat:
    """A daemon thread that stamps ``relay.heartbeat`` while the step runs.

    A run whose heartbeat stops (the process was SIGKILLed) is shown as STALE and never
    reused.
    """

    def __init__(self, store: Store, run_id: str, stale_after: float) -> None:
        self.store, self.run_id = store, run_id
        self.every = max(0.5, min(30.0, stale_after / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="relay-heartbeat")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with _quiet():
                self.store.set_tag(self.run_id, tag.HEARTBEAT, f"{time.time():.3f}")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # MLflow's git probe must not warn
