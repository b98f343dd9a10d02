"""The project's view of the MLflow tracking store: experiments by name, run search, writes
and artifacts (:class:`Store`, :func:`get_store`).

Experiments are found by name (``<project>/<step>``) and created on first use; runs are
searched inside the tracking store with MLflow filter strings and paging, never by listing
every run and filtering in Python. Reads go through a read path that needs no MLflow import
(:mod:`relayml.readstore`: REST on a server, read-only SQL on a known database schema) and
fall back to MLflow's client; MLflow itself is imported only when a command writes or the
read path cannot answer. The registry and logged models are in
:mod:`relayml.store.registry`, purging in :mod:`relayml.store.deletion`.

Example:
    >>> store = get_store(relay.open_project())
    >>> [e.data.tags["relay.step"] for e in store.search(["load"], limit=1)]
    ['load']
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.config import Settings
from relayml.errors import RelayError
from relayml.readstore import Reader, RunRecord, Unsupported, open_reader
from relayml.readstore.files import local_path, walk
from relayml.readstore.follow import follow
from relayml.redaction import redact
from relayml.store.backend import (
    DUPLICATE_KEY,
    PAGE,
    ensure_indexes,
    experiment_description,
    file_lock,
    open_client,
    param_value,
    prepare_sqlite,
    quote,
    seed_sqlite,
    tag_value,
)
from relayml.store.deletion import DeletionMethods
from relayml.store.registry import RegistryMethods

if TYPE_CHECKING:
    from mlflow.entities import Run as MlflowRun
    from mlflow.tracking import MlflowClient

__all__ = ["Store", "activate_uris", "active_uris", "get_store"]

_STORES: dict[tuple[str, str, str], Store] = {}
_CURRENT: dict[tuple[str, str], Store] = {}  # current_store(): one per MLflow URI
_LOCK = threading.Lock()


def get_store(settings: Settings) -> Store:
    """The store of a project's tracking URI (one per process and URI).

    Example:
        >>> store = get_store(relay.open_project())
        >>> store is get_store(relay.open_project()), store.settings.project
        (True, 'fraud')
    """
    ident = (settings.tracking_uri, settings.project, settings.artifact_location)
    with _LOCK:
        if ident not in _STORES:
            _STORES[ident] = Store(settings)
        store = _STORES[ident]
    follow(store)
    return store


def active_uris() -> tuple[str, str]:
    """The tracking and registry URIs MLflow's process-wide (fluent) API points at.

    Example:
        >>> tracking, registry = active_uris()
        >>> tracking == registry or bool(registry)
        True
    """
    import mlflow

    return mlflow.get_tracking_uri(), mlflow.get_registry_uri()


def activate_uris(tracking_uri: str | None, registry_uri: str | None = None) -> None:
    """Point MLflow's fluent API at these URIs (a fresh process given its parent's store).

    A URI left None is left as it is. :meth:`Store.activate` does this for a project.

    Example:
        >>> activate_uris(*active_uris())
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if registry_uri:
        mlflow.set_registry_uri(registry_uri)


def current_store() -> Store:
    """A store on the tracking URI MLflow's fluent API uses now, for code outside a project
    (one per process and URI).

    Example:
        >>> current_store().settings.tracking_uri  # doctest: +SKIP
        'sqlite:///mlflow.db'
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    with _LOCK:
        if ("", uri) not in _CURRENT:
            settings = Settings(root=Path.cwd(), project="", tracking_uri=uri)
            _CURRENT[("", uri)] = Store(settings, read_path=False)
        return _CURRENT[("", uri)]


class Store(RegistryMethods, DeletionMethods):
    """A project's view of the MLflow tracking store.

    Attributes:
        settings: the project's settings.
        client: the underlying ``MlflowClient`` (for what this class does not wrap), created
            on first use.
        reader: the read path that needs no MLflow import, or None (see
            :mod:`relayml.readstore`); ``read_path=False`` reads with MLflow's client only.
    """

    def __init__(self, settings: Settings, *, read_path: bool = True) -> None:
        self.settings = settings
        self._client: MlflowClient | None = None
        self._reader: Reader | None = None
        self._read_path = read_path
        self._reader_opened = not read_path  # False: MLflow's client answers every read
        self._experiments: dict[str, str] = {}
        self._artifact_uris: dict[str, str] = {}  # run id → artifact URI, known or looked up

    @property
    def has_client(self) -> bool:
        """Whether MLflow's client was created (MLflow imported) in this process."""
        return self._client is not None

    @property
    def reader(self) -> Reader | None:
        """The read path (opened on first use; None where only MLflow's client reads)."""
        if not self._reader_opened:
            self._reader_opened = True
            self._reader = open_reader(self.settings.tracking_uri)
        return self._reader

    @property
    def client(self) -> MlflowClient:
        """MLflow's client on the project's store (imports MLflow on first use)."""
        if self._client is None:
            self._client = self._open_client()
        return self._client

    def _open_client(self) -> MlflowClient:
        uri = self.settings.tracking_uri
        self.activate()
        if uri.startswith("sqlite:///"):
            path = Path(uri.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(path.with_name(path.name + ".init-lock")):
                # MLflow creates and migrates the tables on first use; two processes doing
                # it at once fail ("table ... already exists"), so they take turns.
                seed_sqlite(path)
                prepare_sqlite(path)
                client = open_client(uri)
                client.search_experiments(max_results=1)  # the schema exists from here
                ensure_indexes(uri)
        else:
            client = open_client(uri)
            if uri.startswith("postgresql"):
                client.search_experiments(max_results=1)
                ensure_indexes(uri)
        if self._read_path and self._reader is None:
            self._reader_opened = False  # the client may just have created the schema
        return client

    def activate(self) -> None:
        """Point MLflow's process-wide (fluent) API at this store, for model logging.

        ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` to the environment,
        where relayml would later read it as the user's override of every project's
        ``relay.toml``; the environment is put back as it was.
        """
        import mlflow

        names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        before = {name: os.environ.get(name) for name in names}
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        mlflow.set_registry_uri(self.settings.tracking_uri)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    # -- experiments -----------------------------------------------------------------------

    def experiment_id(self, step: str, *, create: bool = True) -> str | None:
        """The id of the experiment ``<project>/<step>``, created on first use.

        Returns None when it does not exist and ``create`` is False.
        """
        name = self.settings.experiment(step)
        if name in self._experiments:
            return self._experiments[name]
        known = self._read(lambda r: r.experiment(name), missing=False)
        if known is None and not create:
            return None
        if known and known[1] == "active":  # a deleted one is restored by the client below
            self._experiments[name] = known[0]
            return known[0]
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        if exp is None:
            if not create:
                return None
            location = self.settings.artifact_location if self.settings.is_local_store else None
            if location:
                location = f"{location.rstrip('/')}/{self.settings.project}/{step}"
            try:
                exp_id = self.client.create_experiment(
                    name,
                    artifact_location=location,
                    tags={
                        tag.PROJECT: self.settings.project,
                        tag.STEP: step,
                        **experiment_description(self.settings.project, step),
                    },
                )
            except MlflowException as e:  # another process created it meanwhile
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise RelayError(f"cannot create experiment {name!r}: {e}") from e
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    def step_experiments(self) -> dict[str, str]:
        """All step experiments of the project: ``{step: experiment_id}``.

        Relay's own bookkeeping experiments (``chains``, ``snapshots``, ``refresh``) included.
        """
        prefix = f"{self.settings.project}/"
        found = self._read(lambda r: r.experiments(prefix), missing=None)
        if found is None:
            exps = self.client.search_experiments(filter_string=f"name LIKE {quote(prefix + '%')}")
            found = {e.name: e.experiment_id for e in exps}
        out = {}
        for name, exp_id in found.items():
            if name.startswith(prefix):
                self._experiments[name] = exp_id
                out[name.removeprefix(prefix)] = exp_id
        return out

    def _read(self, call: Any, *, missing: Any) -> Any:
        """``call(reader)``, or ``missing`` when there is no read path or it cannot answer."""
        reader = self.reader
        if reader is None:
            return missing
        try:
            return call(reader)
        except Unsupported:
            return missing

    # -- searching -------------------------------------------------------------------------

    def search(
        self,
        steps: Sequence[str] | None,
        filter_string: str = "",
        *,
        order_by: Sequence[str] = ("attributes.start_time DESC",),
        limit: int | None = None,
        deleted: bool = False,
    ) -> list[MlflowRun | RunRecord]:
        """Search runs of the given steps (None: every step) inside the tracking store.

        The runs are :class:`~relayml.readstore.RunRecord` objects from the read path, or
        ``mlflow.entities.Run`` objects from MLflow's client: both answer ``.info`` and
        ``.data`` alike.

        Args:
            steps: step names; unknown steps simply have no runs.
            filter_string: an MLflow filter string (``tags.relay.variant = 'plain'``).
            order_by: MLflow order clauses; newest first by default.
            limit: the most runs to return (None: all, fetched page by page).
            deleted: search deleted runs instead of active ones.

        Example:
            >>> store.search(["training"], "tags.`relay.variant` = 'rf'", limit=1)  # doctest: +SKIP
        """
        if steps is None:
            ids = list(self.step_experiments().values())
        else:
            ids = [i for s in steps if (i := self.experiment_id(s, create=False))]
        if not ids:
            return []
        records = self._read(
            lambda r: r.search(ids, filter_string, order_by=order_by, limit=limit, deleted=deleted),
            missing=None,
        )
        if records is not None:
            return records
        from mlflow.entities import ViewType

        view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
        out: list[MlflowRun | RunRecord] = []
        token = None
        while True:
            page = PAGE if limit is None else min(PAGE, limit - len(out))
            result = self.client.search_runs(
                ids,
                filter_string=filter_string,
                run_view_type=view,
                max_results=page,
                order_by=list(order_by),
                page_token=token,
            )
            out.extend(result)
            token = result.token
            if not token or (limit is not None and len(out) >= limit):
                return out

    def get_run(self, run_id: str) -> MlflowRun | RunRecord | None:
        """The run with this id (active or deleted), or None when there is none.

        Both kinds answer ``.info`` (``run_id``, ``experiment_id``, ``status``,
        ``lifecycle_stage``, ``artifact_uri``, ...) and ``.data`` (``tags``, ``params``,
        ``metrics`` as dicts).

        Example:
            >>> store.get_run(run_id).data.params["C"]  # doctest: +SKIP
            '1.0'
        """
        found = self._read(lambda r: r.get_run(run_id), missing=False)
        if found is not False:
            return found
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None

    def mlflow_run(self, run_id: str) -> MlflowRun:
        """The run as MLflow's own ``mlflow.entities.Run``, read with MLflow's client.

        Example:
            >>> store.mlflow_run(run_id).info.run_id == run_id  # doctest: +SKIP
            True
        """
        return self.client.get_run(run_id)

    # -- logged models and the registry (MLflow's public client API) -----------------------

    # -- writing ---------------------------------------------------------------------------

    def prepare_writes(self) -> None:
        """Load MLflow's client now: a write follows, and what the caller stamps next (a
        run's start and heartbeat) must not age by the seconds importing MLflow takes.

        Example:
            >>> store.prepare_writes()  # doctest: +SKIP
        """
        self.client  # noqa: B018 - the import and the client are the point

    def create_run(
        self, step: str, *, start_ms: int, run_name: str, tags: Mapping[str, str]
    ) -> MlflowRun:
        """Create a RUNNING run in the step's experiment."""
        exp_id = self.experiment_id(step)
        entity = self.client.create_run(
            exp_id,
            start_time=start_ms,
            tags={k: tag_value(k, v) for k, v in tags.items()},
            run_name=run_name,
        )
        self._artifact_uris[entity.info.run_id] = entity.info.artifact_uri
        return entity

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int = 0,
    ) -> None:
        """Log params, metrics and tags in one batch call (secrets redacted by value)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, param_value(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, tag_value(k, v)) for k, v in (tags or {}).items()],
        )

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Set one tag (secrets redacted by value)."""
        self.client.set_tag(run_id, key, tag_value(key, value))

    def finish(self, run_id: str, status: str) -> None:
        """End a run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)

    def upload(self, run_id: str, local: Path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder's contents as artifacts of a run."""
        repo = self._artifact_repository(run_id)
        if local.is_dir():
            repo.log_artifacts(str(local), artifact_path)
        else:
            repo.log_artifact(str(local), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write a text artifact (secrets redacted by value)."""
        import tempfile

        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="relay-text-") as tmp:
            path = Path(tmp) / name
            path.write_text(redact(text), encoding="utf-8")
            self.upload(run_id, path, folder or None)

    def _artifact_repository(self, run_id: str) -> Any:
        """The artifact repository of a run: a run this process created, or one whose URI it
        already looked up, costs no request to the tracking store."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        uri = self._artifact_uris.get(run_id)
        if uri is None:
            entity = self.client.get_run(run_id)
            uri = self._artifact_uris[run_id] = entity.info.artifact_uri
        return get_artifact_repository(uri, tracking_uri=self.settings.tracking_uri)

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        """Download an artifact file or folder of a run into ``dst``; returns the local path."""
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def run_artifacts(self, run_id: str) -> list[tuple[str, int]]:
        """``(path, size)`` of every artifact file of a run, sorted; read without MLflow
        where the artifacts are local files or proxied by a tracking server.

        Example:
            >>> store.run_artifacts(run_id)[:1]  # doctest: +SKIP
            [('code/source.json', 812)]
        """
        uri = self._artifact_uris.get(run_id)
        if uri is None:
            entity = self.get_run(run_id)
            if entity is None:
                return []
            uri = self._artifact_uris[run_id] = entity.info.artifact_uri
        found = self.artifact_files(uri)
        return found if found is not None else sorted(self.list_artifacts(run_id))

    def artifact_files(self, uri: str) -> list[tuple[str, int]] | None:
        """``(path, size)`` of every file under an artifact URI, sorted, read without MLflow
        (local folders, a server's proxied artifacts); None where only MLflow can list.

        Example:
            >>> store.artifact_files("file:///tmp/fraud/artifacts/1a2b")  # doctest: +SKIP
            [('artifacts/outputs/output.parquet', 52311)]
        """
        folder = local_path(uri)
        if folder is not None:
            return walk(folder)
        listing = getattr(self.reader, "list_artifacts", None)
        if listing is not None:
            try:
                return listing(uri)
            except Unsupported:
                pass
        return None

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[tuple[str, int]]:
        """``(path, size)`` of every artifact file of a run, recursively (MLflow's client)."""
        out = []
        for info in self.client.list_artifacts(run_id, path):
            if info.is_dir:
                out.extend(self.list_artifacts(run_id, info.path))
            else:
                out.append((info.path, info.file_size or 0))
        return out

    def log_dataset(
        self,
        run_id: str,
        *,
        name: str,
        digest: str,
        source: str,
        schema: str | None,
        profile: str | None,
        context: str,
    ) -> None:
        """Record an input dataset on a run (``mlflow.log_input`` semantics, any digest)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(
            name=name,
            digest=digest,
            source_type="relay",
            source=redact(source),
            schema=schema,
            profile=profile,
        )
        from mlflow.exceptions import MlflowException

        inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])]
        for attempt in range(3):
            try:
                self.client.log_inputs(run_id, inputs)
                return
            except MlflowException as e:
                # two runs logging the same new dataset at once: MLflow checks, then inserts,
                # and the later insert breaks the unique key; the retry finds the dataset
                if attempt == 2 or not any(m in str(e) for m in DUPLICATE_KEY):
                    raise

    def delete_run(self, run_id: str) -> None:
        """Mark a run deleted (MLflow's soft delete)."""
        self.client.delete_run(run_id)

    def withdraw(self, run_id: str, why: str) -> None:
        """Withdraw a run created before any work (a lost claim or a key collision).

        The run is tagged ``relay.withdrawn``, its key moves to ``relay.withdrawn.key`` (so
        no withdrawn run keeps the key of a live one), then it ends KILLED and is deleted.

        Example:
            >>> store.withdraw(run_id, "reusing processing/plain@20190209101500")  # doctest: +SKIP
        """
        entity = self.client.get_run(run_id)
        key = entity.data.tags.get(tag.KEY)
        self.log(run_id, tags={tag.WITHDRAWN: why, tag.WITHDRAWN_KEY: key or ""})
        if key is not None:
            self.client.delete_tag(run_id, tag.KEY)
        self.finish(run_id, "KILLED")
        self.delete_run(run_id)

    def tagged(
        self,
        steps: Sequence[str],
        key: str,
        values: Sequence[str],
        *,
        limit: int,
        cap: int = 500,
        common: bool = False,
    ) -> dict[str, tuple[list[str], int]]:
        """For each value, the newest active runs of the steps tagged ``key = value``.

        ``common``: each value is held by a large share of the runs (a variant): walk the runs
        newest first instead of sorting every match.

        Returns:
            ``{value: (run ids newest first, at most limit; how many there are, up to cap)}``.
            On SQLite and PostgreSQL two small indexed queries per value in the tracking
            database (no run is loaded); through a tracking server, one capped search.

        Example:
            >>> store.tagged(["training"], "relay.variant", ["rf"], limit=5)  # doctest: +SKIP
            {'9f2c...': (['a1b2...', ...], 37)}
        """
        ids = [int(i) for s in steps if (i := self.experiment_id(s, create=False))]
        out: dict[str, tuple[list[str], int]] = {v: ([], 0) for v in values}
        if not ids or not values:
            return out
        newest = getattr(self.reader, "newest_tagged", None)  # the SQL read path
        if newest is None:  # a tracking server, or a schema the read path does not know
            for v in values:
                found = self.search(steps, f"tags.`{key}` = {quote(v)}", limit=cap)
                out[v] = ([e.info.run_id for e in found[:limit]], len(found))
            return out
        for v in values:
            out[v] = newest(ids, key, v, limit=limit, cap=cap, common=common)
        return out

    def runs_by_id(self, steps: Sequence[str] | None, run_ids: Sequence[str]) -> list[MlflowRun]:
        """The active runs with these ids, newest first: one read each through the read path
        (primary-key look-ups), else one MLflow search per 100 ids.

        Example:
            >>> [e.info.run_id for e in store.runs_by_id(None, [run_id])]  # doctest: +SKIP
            ['9f2c...']
        """
        out: list[MlflowRun] = []
        unique = list(dict.fromkeys(run_ids))
        if self.reader is not None:
            wanted = None if steps is None else {self.experiment_id(s, create=False) for s in steps}
            found = (self.get_run(i) for i in unique)
            out = [
                e
                for e in found
                if e is not None
                and e.info.lifecycle_stage == "active"
                and (wanted is None or str(e.info.experiment_id) in wanted)
            ]
            return sorted(out, key=lambda e: -e.info.start_time)
        for i in range(0, len(unique), 100):
            chunk = ", ".join(quote(r) for r in unique[i : i + 100])
            out += self.search(steps, f"attributes.run_id IN ({chunk})")
        return sorted(out, key=lambda e: -e.info.start_time)
