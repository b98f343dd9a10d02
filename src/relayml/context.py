"""The ``ctx`` a variant receives: logging, data access (queries, files), progress.

A :class:`Context` belongs to one run; :mod:`relayml.runner` creates it and records what it
gathered (snapshots, check reports) when the variant returns.

Example:
    >>> from relayml.context import Context
    >>> sorted(n for n in vars(Context) if n.startswith("log_"))
    ['log_artifact', 'log_metric', 'log_metrics', 'log_text']
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml.checks import Checks
from relayml.config import Settings, Source
from relayml.errors import ChecksFailed, UnknownName, UsageError
from relayml.keys import RunKey
from relayml.store import Store

if TYPE_CHECKING:
    import pandas as pd

    from relayml.checks import CheckReport
    from relayml.data import Snapshot

__all__ = ["Context", "warn"]


@dataclass
class Context:
    """What a variant's ``ctx`` parameter receives: logging, data access, the run's identity.

    A variant asks for it by naming a parameter ``ctx``. Here one is added to the project's
    steps module and run:

    Example:
        >>> with open("steps.py", "a") as f:
        ...     _ = f.write('''
        ... @load.variant("big")
        ... def big(ctx: relay.Context, amount: float = 500.0):
        ...     sql = "SELECT * FROM transactions WHERE Amount > :amount AND ts <= :retrieval_time"
        ...     frame = ctx.query("fraud", sql, amount=amount)
        ...     ctx.log_metric("max_amount", float(frame["Amount"].max()))
        ...     return frame
        ... ''')
        >>> run = relay.run("load", "big", {"amount": 1000})
        >>> run.rows > 0, run.metrics["max_amount"] > 1000
        (True, True)
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
            >>> with open("steps.py", "a") as f:
            ...     _ = f.write('''
            ... @training.variant("constant")
            ... def constant(ctx: relay.Context, processing, value: float = 0.5):
            ...     for epoch in range(3):
            ...         ctx.log_metric("loss", value / (epoch + 1), step=epoch)
            ...     return {}
            ... ''')
            >>> relay.run("training", "constant").metrics["loss"]  # the last value
            0.1666...
        """
        self._store.log(self.run_id, metrics={name: value}, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log several metrics at once.

        Example:
            >>> with open("steps.py", "a") as f:
            ...     _ = f.write('''
            ... @training.variant("sizes")
            ... def sizes(ctx: relay.Context, processing):
            ...     ctx.log_metrics({"train": len(processing["train"]), "test": 0})
            ...     return {}
            ... ''')
            >>> sorted(relay.run("training", "sizes").metrics)
            ['test', 'train']
        """
        self._store.log(self.run_id, metrics=dict(metrics), step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder as an artifact of the run.

        Example:
            >>> with open("steps.py", "a") as f:
            ...     _ = f.write('''
            ... @training.variant("report")
            ... def report(ctx: relay.Context, processing):
            ...     path = ctx.settings.root / "columns.csv"
            ...     processing["train"].columns.to_series().to_csv(path, index=False)
            ...     ctx.log_artifact(path, "reports")
            ...     ctx.log_text("a short note", "notes/readme.txt")
            ...     return {}
            ... ''')
            >>> [a for a in relay.run("training", "report").artifacts if "code/" not in a]
            ['notes/readme.txt', 'reports/columns.csv']
        """
        self._store.upload(self.run_id, Path(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write a text artifact (a report, a note).

        Example:
            >>> with open("steps.py", "a") as f:
            ...     _ = f.write('''
            ... @training.variant("noted")
            ... def noted(ctx: relay.Context, processing):
            ...     ctx.log_text(f"{len(processing['test'])} test rows", "note.txt")
            ...     return {}
            ... ''')
            >>> "note.txt" in relay.run("training", "noted").artifacts
            True
        """
        self._store.log_text(self.run_id, text, artifact_file)

    def query(self, source: str, sql: str, **params: Any) -> pd.DataFrame:
        """Run a SQL query on a named source; the result is the run's snapshot.

        Parameters are bound, never formatted into the SQL. ``:retrieval_time`` is bound to the
        run's retrieval time unless given.

        Example:
            >>> with open("steps.py", "a") as f:
            ...     _ = f.write('''
            ... @load.variant("first")
            ... def first(ctx: relay.Context, n: int = 10):
            ...     sql = "SELECT * FROM transactions WHERE ts <= :retrieval_time LIMIT :n"
            ...     return ctx.query("fraud", sql, n=n)
            ... ''')
            >>> relay.run("load", "first", {"n": 25}).rows
            25
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
            snap = data.snapshot_query(
                url, sql, params, out, progress=tick, observe=watch, key=self._key
            )
        return self._keep(source, snap)

    def read(self, source_or_path: str | Path) -> pd.DataFrame:
        """Read a CSV or Parquet file (a named file source or a path) as the run's snapshot.

        Example:
            >>> import pandas as pd
            >>> pd.DataFrame({"id": [1, 2, 3], "segment": list("abc")}).to_csv("customers.csv")
            >>> with open("steps.py", "a") as f:
            ...     _ = f.write('''
            ... @load.variant("customers")
            ... def customers(ctx: relay.Context):
            ...     return ctx.read("customers.csv")
            ... ''')
            >>> relay.run("load", "customers").rows
            3
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
            snap = data.snapshot_file(path, out, progress=tick, observe=watch, key=self._key)  # type: ignore[arg-type]
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
            stats = summarizer.update(batch)
            if checker is not None:
                checker.update(batch, stats)

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
            warn(f"{self.key}: {name} returned 0 rows")
        frame = data.read_snapshot(snap.path)
        self._snapshots.append((name, snap, id(frame)))
        return frame

    def _source(self, name: str) -> Source:
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
            >>> with open("steps.py", "a") as f:
            ...     _ = f.write('''
            ... @training.variant("tree")
            ... def tree(ctx: relay.Context, processing, cv: int = 2):
            ...     from sklearn.model_selection import GridSearchCV
            ...     from sklearn.tree import DecisionTreeClassifier
            ...     train = processing["train"]
            ...     search = GridSearchCV(DecisionTreeClassifier(), {"max_depth": [2, 4]}, cv=cv)
            ...     with ctx.parallel():
            ...         search.fit(train.drop(columns="Class"), train["Class"])
            ...     ctx.log_metric("max_depth", search.best_params_["max_depth"])
            ...     return {}
            ... ''')
            >>> relay.run("training", "tree").metrics["max_depth"] in (2, 4)
            True
        """
        if self.settings.executor == "local":
            yield
            return
        from relayml.cluster import joblib_backend

        with joblib_backend(self.settings):
            yield

    def progress(
        self, items: Iterable[Any], description: str = "", total: int | None = None
    ) -> Iterable[Any]:
        """Iterate with a progress bar (hidden when progress is off).

        Example:
            >>> with open("steps.py", "a") as f:
            ...     _ = f.write('''
            ... @training.variant("folds")
            ... def folds(ctx: relay.Context, processing, k: int = 3):
            ...     for fold in ctx.progress(range(k), "folds"):
            ...         ctx.log_metric("fold", fold, step=fold)
            ...     return {}
            ... ''')
            >>> relay.run("training", "folds", {"k": 4}).metrics["fold"]
            3.0
        """
        if not self.show_progress:
            return items
        from rich.progress import track

        return track(items, description=description, total=total, transient=True)


def warn(message: str) -> None:
    import sys

    print(f"Warning: {message}", file=sys.stderr)
