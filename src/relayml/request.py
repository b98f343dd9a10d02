"""A step run request: validated params, chosen upstream runs, the code that will run.

:func:`prepare` validates a request without touching the tracking store's runs (unknown
names and wrong types fail here, before anything is created). It does not execute anything:
:mod:`relayml.runner` does.

Example:
    >>> from relayml.request import prepare
    >>> req = prepare("training", "logreg", {"C": "10"})
    >>> req.params["C"], req.upstream["processing"].step
    (10.0, 'processing')
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from relayml import tags as tag
from relayml.codeinfo import CodeState, canonical, code_state, digest
from relayml.config import Settings
from relayml.errors import NotFound, UsageError
from relayml.fingerprint import code_parts, parts_digest
from relayml.keys import format_time
from relayml.pipeline import Pipeline, load_pipeline
from relayml.runs import Project, Run, get, open_project
from relayml.steps import Variant

__all__ = ["Request", "logged_params", "pipeline_of", "prepare"]


def pipeline_of(settings: Settings) -> Pipeline:
    """The project's steps (its steps module imported once per process).

    Example:
        >>> pipeline_of(relay.open_project()).get("processing").upstream
        ('load',)
    """
    return load_pipeline(settings.root, settings.module)


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

    Example:
        >>> req = prepare("processing", "plain")
        >>> req.step, req.params, sorted(req.upstream)
        ('processing', {'test_size': 0.25, 'seed': 42}, ['load'])
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


def logged_params(req: Request) -> dict[str, Any]:
    """The params a run of ``req`` logs to MLflow: its params, and ``as_of`` for a repeated load.

    Example:
        >>> logged_params(prepare("load", "transactions", as_of="2019-02-02"))
        {'days': 0, 'as_of': '2019-02-02T00:00:00+00:00'}
    """
    params = dict(req.params)
    if req.as_of:
        params["as_of"] = req.as_of.isoformat()
    return params


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
        >>> req = prepare("training", "logreg", {"C": "10"})
        >>> req.params["C"], req.upstream["processing"] == relay.get("processing@latest")
        (10.0, True)
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
