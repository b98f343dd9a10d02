"""What relay's pages read, behind one small interface (store and runs functions only).

Every page reads through these functions, so a faster read path of the store can replace
them one by one. Each is bounded: searches carry a limit, so a page costs the same number
of requests at 1,000 runs as at 100,000. Nothing here writes.

Example:
    >>> q = Queries(load_settings())  # doctest: +SKIP
    >>> [r.key for r in q.consumers(q.resolve("processing/plain@latest"), 5)[0]]  # doctest: +SKIP
    [RunKey(step='training', variant='logreg', time='20190210094501')]
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from relayml import tags as tag
from relayml.config import Settings
from relayml.errors import ConfigError, UsageError
from relayml.keys import parse_reference
from relayml.runs import Run, get
from relayml.store import Store, get_store, quote

__all__ = ["Queries"]

DIFF_FILE = "code/uncommitted.diff"


class Queries:
    """Bounded, read-only look-ups of one project's store for the pages.

    Attributes:
        settings: the project's settings.
    """

    def __init__(self, settings: Settings, *, structure_ttl: float = 30.0) -> None:
        self.settings = settings
        self.structure_ttl = structure_ttl
        self._structure: dict[str, tuple[float, Any]] = {}

    def _remembered(self, name: str, compute: Callable[[], Any]) -> Any:
        """The project's structure (steps, variants) changes rarely: kept ``structure_ttl`` s."""
        now = time.monotonic()
        hit = self._structure.get(name)
        if hit is None or now - hit[0] > self.structure_ttl:
            hit = self._structure[name] = (now, compute())
        return hit[1]

    @property
    def store(self) -> Store:
        """The project's tracking store."""
        return get_store(self.settings)

    def _wrap(self, entities: list[Any]) -> list[Run]:
        return [Run(self.settings, e) for e in entities if tag.KEY in e.data.tags]

    # -- the project ----------------------------------------------------------------------

    @cached_property
    def pipeline(self) -> Any | None:
        """The project's declared pipeline, or None where its steps module cannot load."""
        from relayml.pipeline import load_pipeline

        try:
            return load_pipeline(self.settings.root, self.settings.module)
        except (ConfigError, UsageError, OSError, ImportError):
            return None

    def steps(self) -> list[str]:
        """The user steps in pipeline order (declared, else inferred from recorded upstream)."""
        return self._remembered("steps", self._steps)

    def _steps(self) -> list[str]:
        if self.pipeline is not None:
            return list(self.pipeline.order)
        found = [s for s in self.store.step_experiments() if s not in tag.INTERNAL_STEPS]
        ups: dict[str, set[str]] = {}
        for step in found:
            newest = self.store.search([step], "", limit=1)
            ups[step] = set(self._wrap(newest)[0].upstream_ids) if self._wrap(newest) else set()
        order: list[str] = []
        while len(order) < len(found):
            ready = sorted(s for s in found if s not in order and ups[s] <= set(order))
            order.extend(ready or sorted(s for s in found if s not in order))
        return order

    def variants(self, step: str) -> list[str]:
        """The variants of a step: declared ones, else those among its 200 newest runs."""
        return self._remembered(f"variants:{step}", lambda: self._variants(step))

    def _variants(self, step: str) -> list[str]:
        if self.pipeline is not None and step in self.pipeline.steps:
            return list(self.pipeline.steps[step].variants)
        seen = {r.variant: None for r in self._wrap(self.store.search([step], "", limit=200))}
        return sorted(seen)

    def newest(self, variants: dict[str, list[str]]) -> dict[tuple[str, str], Run | None]:
        """The newest run of each ``{step: [variant, ...]}``, whatever its status."""
        found = {
            (step, v): ids[0] if ids else None
            for step, names in variants.items()
            for v, (ids, _) in self.store.tagged(
                [step], tag.VARIANT, names, limit=1, cap=1, common=True
            ).items()
        }
        runs = self._by_id(list(variants), [i for i in found.values() if i])
        return {sv: runs.get(i) if i else None for sv, i in found.items()}

    def _by_id(self, steps: list[str] | None, run_ids: list[str]) -> dict[str, Run]:
        if not run_ids:
            return {}
        return {r.run_id: r for r in self._wrap(self.store.runs_by_id(steps, run_ids))}

    def registry(self) -> tuple[dict[str, int], list[dict[str, Any]], str | None]:
        """The project's registered model: ``{alias: version}``, its versions newest first,
        and the metric ``relay refresh`` last compared by (the team's headline metric)."""
        found = self.store.registered_model(self.settings.project)
        used = sorted(v for k, v in found["tags"].items() if k.startswith(tag.refresh_metric("")))
        return found["aliases"], found["versions"], (used[0] if used else None)

    def chains(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest chain records: ``{"id", "status", "data", "steps": [(step, key, how)]}``."""
        out = []
        for e in self.store.search([tag.CHAINS_EXPERIMENT], "", limit=limit):
            tags = e.data.tags
            names = [s for s in tags.get(tag.CHAIN_STEPS, "").split(",") if s]
            out.append(
                {
                    "id": e.info.run_id,
                    "status": e.info.status,
                    "data": tags.get(tag.DATA),
                    "started": e.info.start_time,
                    "steps": [
                        (
                            s,
                            tags.get(tag.chain_step(s, "key")),
                            tags.get(tag.chain_step(s, "status")),
                        )
                        for s in names
                    ],
                }
            )
        return out

    # -- runs -----------------------------------------------------------------------------

    def resolve(self, ref: str) -> Run:
        """The run a reference names (a key, ``@latest``, a date, or a run id).

        Raises:
            NotFound: no such run.
            UsageError: a malformed reference.
        """
        parsed = parse_reference(ref)
        if parsed.key is not None and parsed.time:  # a full key: one indexed look-up
            ids, _ = self.store.tagged(
                [parsed.key.step], tag.KEY, [str(parsed.key)], limit=1, cap=1
            )[str(parsed.key)]
            run = self.by_id(ids[0]) if ids else None
            if run is not None:
                return run
        return get(ref, project=self.settings)  # dates, @latest, run ids; and the errors

    def by_id(self, run_id: str) -> Run | None:
        """The active run with this id, or None."""
        entity = self.store.get_run(run_id)
        if entity is None or entity.info.lifecycle_stage != "active":
            return None
        return Run(self.settings, entity) if tag.KEY in entity.data.tags else None

    def consumers(
        self, runs: list[Run], limit: int, *, count_up_to: int = 500
    ) -> dict[str, tuple[list[Run], int]]:
        """For each run, the runs that consumed it (newest first, at most ``limit``) and how
        many did (counted up to ``count_up_to``), in a few requests for all of them."""
        out: dict[str, tuple[list[Run], int]] = {}
        for step in dict.fromkeys(r.step for r in runs):
            steps = [s for s in self.steps() if s != step]
            ids = [r.run_id for r in runs if r.step == step]
            found = self.store.tagged(steps, tag.upstream(step), ids, limit=limit, cap=count_up_to)
            by_id = self._by_id(steps, [i for got, _ in found.values() for i in got])
            for rid, (got, total) in found.items():
                out[rid] = ([by_id[i] for i in got if i in by_id], total)
        return out

    def on_data(
        self, digest: str, step: str, limit: int, *, count_up_to: int = 500
    ) -> tuple[list[Run], int]:
        """Runs of a step on a data version, newest first, at most ``limit``; and how many
        there are (counted up to ``count_up_to``)."""
        found = self.store.tagged([step], tag.DATA, [digest], limit=limit, cap=count_up_to)
        ids, total = found[digest]
        by_id = self._by_id([step], ids)
        return [by_id[i] for i in ids if i in by_id], total

    def history(self, step: str, variant: str, limit: int = 500) -> list[Run]:
        """The newest FINISHED runs of a variant (at most ``limit``), newest first."""
        flt = f"tags.`relay.variant` = {quote(variant)} AND attributes.status = 'FINISHED'"
        return self._wrap(self.store.search([step], flt, limit=limit))

    def refresh_decisions(self, limit: int = 200) -> list[dict[str, str]]:
        """The newest refresh decisions: their tags and start time (ms)."""
        out = []
        for e in self.store.search([tag.REFRESH_EXPERIMENT], "", limit=limit):
            tags = {k: v for k, v in e.data.tags.items() if k.startswith(tag.REFRESH)}
            if tags.get(tag.REFRESH_DECISION) not in (None, "skipped"):
                out.append({**tags, "started": str(e.info.start_time)})
        return out

    def snapshot_rows(self, digest: str) -> int | None:
        """The row count of a load snapshot by its digest, where one was stored."""
        flt = f"tags.`relay.digest` = {quote(digest)}"
        for e in self.store.search([tag.SNAPSHOTS_EXPERIMENT], flt, limit=1):
            rows = e.data.tags.get(tag.ROWS)
            return int(rows) if rows and rows.isdigit() else None
        return None

    def experiment_ids(self) -> dict[str, str]:
        """``{step: experiment_id}`` (for links to MLflow's pages)."""
        return self.store.step_experiments()

    def artifacts(self, run: Run) -> list[tuple[str, int]]:
        """``(path, size)`` of every artifact file of a run."""
        return self.store.list_artifacts(run.run_id)

    def uncommitted_diff(self, run: Run, paths: list[str]) -> str | None:
        """The uncommitted changes the run was made with (``code/uncommitted.diff``), if any."""
        if DIFF_FILE not in paths:
            return None
        with tempfile.TemporaryDirectory(prefix="relay-ui-") as tmp:
            local = self.store.download(run.run_id, DIFF_FILE, Path(tmp))
            return local.read_text(encoding="utf-8", errors="replace")

    def code_diff(self, a: str, b: str) -> str | None:
        """``git diff a b`` of the project's steps module, where git has both commits."""
        module = self.settings.root / f"{self.settings.module.replace('.', '/')}.py"
        try:
            done = subprocess.run(
                ["git", "diff", "--no-color", a, b, "--", module.name],
                cwd=module.parent,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None
