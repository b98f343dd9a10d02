"""``relay reproduce``: re-run a training run's chain from what was recorded (commit, diff,
params, data snapshot) and check the metrics.

Each step runs at the recorded code against the same tracking store: in this process when the
working tree holds exactly that code, else as ``relay run`` in a subprocess at the recorded
commit (a temporary ``git worktree``) with the recorded uncommitted diff applied.

Example:
    >>> nothing_rerun = Reproduction(relay.get("load@latest"), reproduced={}, checks=[])
    >>> nothing_rerun.ok, nothing_rerun.differing
    (True, [])
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relayml import runner
from relayml import tags as tag
from relayml.codeinfo import code_state
from relayml.config import Settings
from relayml.errors import RelayError, StepFailed, UsageError
from relayml.runs import Project, Run, get, open_project
from relayml.store import Store, get_store

__all__ = ["MetricCheck", "Reproduction", "chain_of", "reproduce"]


@dataclass(frozen=True)
class MetricCheck:
    """One metric of a reproduced run next to the recorded one."""

    step: str
    name: str
    recorded: float | None
    reproduced: float | None
    agrees: bool


@dataclass
class Reproduction:
    """The result of :func:`reproduce`.

    Attributes:
        run: the recorded run that was reproduced.
        reproduced: ``{step: run}`` of the new runs (tagged ``relay.reproduces``).
        checks: every metric, recorded vs reproduced.
        data: with ``refetch``: ``{recorded, refetched, agrees, run}`` of the repeated load.
        notes: what was done differently (HEAD instead of a missing commit, ...).
    """

    run: Run
    reproduced: dict[str, Run]
    checks: list[MetricCheck]
    data: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def differing(self) -> list[str]:
        """Names (``step.metric``) that do not agree, plus ``data`` when the digest moved."""
        out = [f"{c.step}.{c.name}" for c in self.checks if not c.agrees]
        if self.data is not None and not self.data["agrees"]:
            out.append("data digest")
        return out

    @property
    def ok(self) -> bool:
        """Everything agrees."""
        return not self.differing

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "run": str(self.run.key),
            "reproduced": {s: str(r.key) for s, r in self.reproduced.items()},
            "checks": [c.__dict__ for c in self.checks],
            "data": self.data,
            "ok": self.ok,
            "differing": self.differing,
            "notes": self.notes,
        }


def reproduce(
    ref: str | Run,
    *,
    tolerance: float = 1e-9,
    refetch: bool = False,
    allow_head: bool = False,
    echo: Callable[[str], None] | None = None,
    project: Project = None,
) -> Reproduction:
    """Re-run a run's chain from what was recorded and compare the metrics.

    The recorded load run is re-used as the data (its snapshot, not a fresh query); every
    later step of the chain is run again with the recorded params, at the recorded commit
    (in a temporary ``git worktree`` when it differs from the working tree) with the recorded
    uncommitted diff applied. A step whose code is the working tree's runs in this process;
    one at another commit runs as ``relay run`` in a subprocess in that worktree. The new
    runs go to the same tracking store, tagged ``relay.reproduces=<run id>``.

    Args:
        ref: the run to reproduce (usually a training run).
        tolerance: relative and absolute tolerance of a metric match.
        refetch: also repeat the load as of its recorded retrieval time and check that the
            data digest still matches (rows changed or deleted in the source show here).
        allow_head: a recorded commit that no longer exists: use the current code instead.
        echo: called with progress lines.
        project: the project (default: around the working folder).

    Raises:
        UsageError: the recorded commit no longer exists (without ``allow_head``).
        StepFailed: a reproduced step failed.

    Example:
        >>> result = relay.reproduce("training/logreg@latest", allow_head=True)
        >>> result.ok, result.differing, sorted(result.reproduced)
        (True, [], ['processing', 'training'])
    """
    settings = open_project(project)
    run = ref if isinstance(ref, Run) else get(ref, project=settings)
    say = echo or (lambda line: None)
    chain = chain_of(run)
    roots = [r for r in chain if not r.upstream_ids]
    again = [r for r in chain if r.upstream_ids]
    if not again and not refetch:
        raise UsageError(f"{run.key} is a load run: nothing to re-run; use --refetch")
    notes: list[str] = []
    todo = again + (roots if refetch else [])
    code = {r.run_id: _code_of(r, settings, allow_head, notes) for r in todo}
    result = Reproduction(run, {}, [], notes=notes)
    store = get_store(settings)
    with ExitStack() as stack:
        places: dict[Any, Path] = {}

        def place(r: Run) -> Path:
            spec = code[r.run_id]
            if spec not in places:
                places[spec] = _checkout(stack, settings, spec, say)
            return places[spec]

        if refetch:
            for r in roots:
                result.data = _refetch(store, settings, r, place(r), say)
        mapping = {r.run_id: r.run_id for r in roots}
        for r in again:
            ups = {s: mapping.get(i, i) for s, i in r.upstream_ids.items()}
            say(f"re-running {r.key} ...")
            new = _rerun(settings, place(r), r, ups, as_of=None)
            store.set_tag(new.run_id, tag.REPRODUCES, r.run_id)
            mapping[r.run_id] = new.run_id
            result.reproduced[r.step] = new.refresh()
            result.checks += _checks(r, new, tolerance)
    return result


def chain_of(run: Run) -> list[Run]:
    """The run and its ancestors, upstream first.

    Raises:
        UsageError: an ancestor was deleted.

    Example:
        >>> [r.step for r in chain_of(relay.get("training/logreg@latest"))]
        ['load', 'processing', 'training']
    """
    seen: dict[str, Run] = {}

    def visit(r: Run) -> None:
        if r.run_id in seen:
            return
        for u in r.upstream.values():
            visit(u)
        missing = set(r.upstream_ids) - set(r.upstream)
        if missing:
            raise UsageError(
                f"{r.key}: its upstream run(s) of {', '.join(sorted(missing))} were deleted; "
                "the chain cannot be reproduced"
            )
        seen[r.run_id] = r

    visit(run)
    return list(seen.values())


@dataclass(frozen=True)
class _Code:
    commit: str | None  # None: the working tree as it is
    diff_run: str | None  # run holding code/uncommitted.diff


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=check)


def _code_of(r: Run, settings: Settings, allow_head: bool, notes: list[str]) -> _Code:
    commit = r.tags.get(tag.GIT_COMMIT)
    dirty = r.tags.get(tag.GIT_DIRTY) == "true"
    if not commit:
        if not allow_head:
            raise UsageError(
                f"{r.key} recorded no git commit (the project was not a git repository); "
                "add --allow-head to reproduce with the current code"
            )
        notes.append(f"{r.key}: no commit recorded; used the current code")
        return _Code(None, None)
    exists = _git(settings.root, "cat-file", "-e", f"{commit}^{{commit}}", check=False)
    if exists.returncode != 0:
        if not allow_head:
            raise UsageError(
                f"{r.key} was run at commit {commit[:12]}, which no longer exists in "
                f"{settings.root} (rebased or garbage-collected?); add --allow-head to "
                "reproduce with the current code (HEAD) instead"
            )
        notes.append(f"{r.key}: commit {commit[:12]} is gone; used the current code (HEAD)")
        return _Code(None, None)
    now = code_state(settings.root)
    if now.commit == commit and not dirty and not now.dirty:
        return _Code(None, None)  # the working tree is exactly the recorded code
    return _Code(commit, r.run_id if dirty else None)


def _checkout(
    stack: ExitStack, settings: Settings, spec: _Code, say: Callable[[str], None]
) -> Path:
    """The project folder to run in: the working tree, or a temporary worktree."""
    if spec.commit is None:
        return settings.root
    top = Path(_git(settings.root, "rev-parse", "--show-toplevel").stdout.strip())
    rel = settings.root.resolve().relative_to(top.resolve())
    tmp = Path(tempfile.mkdtemp(prefix="relay-reproduce-"))
    tree = tmp / "tree"
    say(f"checking out {spec.commit[:12]} in a temporary worktree")
    _git(top, "worktree", "add", "--detach", "--quiet", str(tree), spec.commit)

    def cleanup() -> None:
        _git(top, "worktree", "remove", "--force", str(tree), check=False)
        _git(top, "worktree", "prune", check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    stack.callback(cleanup)
    folder = tree / rel
    if spec.diff_run:
        store = get_store(settings)
        got = store.download(spec.diff_run, "code/uncommitted.diff", tmp / "diff")
        proc = _git(tree, "apply", "--whitespace=nowarn", str(got), check=False)
        if proc.returncode != 0:
            raise RelayError(
                f"the recorded uncommitted diff does not apply on {spec.commit[:12]}: "
                f"{proc.stderr.strip()[:300]}"
            )
    for entry in settings.root.iterdir():  # untracked data files, .env, ... (not .relay)
        target = folder / entry.name
        if entry.name not in {".relay", ".git"} and not target.exists():
            target.symlink_to(entry, target_is_directory=entry.is_dir())
    return folder


def _rerun(
    settings: Settings, cwd: Path, r: Run, upstream: Mapping[str, str], *, as_of: str | None
) -> Run:
    """Run the recorded variant and params again: here when ``cwd`` is the working tree
    (its code is the recorded one), else as ``relay run`` in a subprocess in ``cwd``."""
    params = {k: v for k, v in r.params.items() if k != "as_of"}
    if cwd == settings.root:
        try:
            return runner.run(
                r.step, r.variant, params, upstream=dict(upstream), as_of=as_of, project=settings
            )
        except StepFailed as e:
            raise StepFailed(f"reproducing {r.key} failed: {e}") from e
    args = [sys.executable, "-m", "relayml", "run", r.step, r.variant, "--json"]
    for k, v in params.items():
        args += ["-P", f"{k}={v}"]
    for up in upstream.values():
        args += ["--from", up]
    if as_of:
        args += ["--as-of", as_of]
    env = {k: v for k, v in os.environ.items() if k not in {"RELAY_PROJECT", "MLFLOW_TRACKING_URI"}}
    env["RELAY_TRACKING_URI"] = settings.tracking_uri
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise StepFailed(f"reproducing {r.key} failed: {tail[0]}")
    try:
        info = json.loads(proc.stdout)
    except ValueError as e:
        raise RelayError(f"reproducing {r.key}: unreadable output {proc.stdout[-300:]!r}") from e
    return get(info["run_id"], project=settings)


def _checks(old: Run, new: Run, tolerance: float) -> list[MetricCheck]:
    out = []
    fresh = new.refresh().metrics
    for name, value in sorted(old.metrics.items()):
        got = fresh.get(name)
        agrees = got is not None and (
            math.isclose(value, got, rel_tol=tolerance, abs_tol=tolerance)
            or (math.isnan(value) and math.isnan(got))
        )
        out.append(MetricCheck(old.step, name, value, got, agrees))
    return out


def _refetch(
    store: Store, settings: Settings, load: Run, cwd: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    when = load.tags.get(tag.RETRIEVAL_TIME) or load.tags.get(tag.AS_OF)
    if not when:
        raise UsageError(f"{load.key} recorded no retrieval time; it cannot be fetched again")
    say(f"repeating {load.key} as of {when} ...")
    new = _rerun(settings, cwd, load, {}, as_of=when)
    store.set_tag(new.run_id, tag.REPRODUCES, load.run_id)
    return {
        "load": str(load.key),
        "run": str(new.key),
        "recorded": load.data_version,
        "refetched": new.data_version,
        "agrees": load.data_version == new.data_version,
        "retrieval_time": when,
    }
