"""Deleting for good, behind :class:`relayml.store.Store`: artifact folders where they live,
and the rows of runs and logged models already marked deleted.

Part of the MLflow boundary. MLflow has no public API to purge a row marked deleted: its own
``mlflow gc`` calls private methods of the backend store (``_hard_delete_run``,
``_get_deleted_runs``, ``_hard_delete_logged_model``, ``_get_deleted_logged_models``). Those
calls are made here and nowhere else, in :meth:`DeletionMethods._backend` and the methods
below it; when MLflow renames them, this is the one place to follow it. A tracking server
offers none of them (its own ``mlflow gc`` purges, see :func:`relayml.store.purge_deleted`).

Example:
    >>> from relayml.store import get_store
    >>> store = get_store(relay.open_project())  # the embedded SQLite store purges
    >>> store.can_purge, store.deleted_run_ids(older_than_ms=365 * 86_400_000)
    (True, [])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relayml.errors import UsageError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from relayml.config import Settings

__all__ = ["DeletionMethods"]


class DeletionMethods:
    """The deletion methods of :class:`relayml.store.Store` (a mixin)."""

    if TYPE_CHECKING:
        settings: Settings

        @property
        def client(self) -> MlflowClient: ...

        def artifact_files(self, uri: str) -> list[tuple[str, int]] | None: ...

    def delete_artifacts(self, artifact_uri: str) -> int:
        """Delete a folder of artifacts where it lives; returns the bytes it held.

        On a tracking server with proxied artifacts (``mlflow-artifacts:``) this goes through
        the server's ``mlflow-artifacts`` API (HTTP DELETE), so the server's disk or bucket
        is freed; other remote stores (``s3://``, ...) through MLflow's artifact repository.

        Example:
            >>> store.delete_artifacts("mlflow-artifacts:/1/0123abcd")  # doctest: +SKIP
            1834201
        """
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        size = sum(n for _, n in self.artifact_files(artifact_uri) or [])
        repo = get_artifact_repository(artifact_uri, tracking_uri=self.settings.tracking_uri)
        repo.delete_artifacts()
        return size

    @property
    def can_purge(self) -> bool:
        """Whether rows marked deleted can be purged from this process (not on a server)."""
        return hasattr(self._tracking_store(), "_hard_delete_run")

    def check_purge(self) -> None:
        """Raise :class:`~relayml.errors.UsageError` where rows cannot be purged from here.

        Example:
            >>> store.check_purge()  # doctest: +SKIP
        """
        if not self.can_purge:
            raise UsageError(
                f"the tracking store {self.settings.tracking_uri} cannot purge runs from this "
                "machine; on a tracking server run 'mlflow gc --backend-store-uri ...' on the "
                "server"
            )

    def hard_delete_run(self, run_id: str) -> bool:
        """Purge the row of a run marked deleted (and its tags, params, metrics, inputs).

        Returns False when it was gone already (purged by another process).

        Raises:
            UsageError: the store cannot purge from here (a tracking server).

        Example:
            >>> store.hard_delete_run(run_id)  # doctest: +SKIP
            True
        """
        return self._quietly(lambda b: b._hard_delete_run(run_id))

    def hard_delete_logged_model(self, model_id: str) -> bool:
        """Purge the row of a logged model (False when it was gone already).

        Example:
            >>> store.hard_delete_logged_model("m-0123abcd")  # doctest: +SKIP
            True
        """
        return self._quietly(lambda b: b._hard_delete_logged_model(model_id))

    def deleted_run_ids(self, older_than_ms: int = 0) -> list[str]:
        """Ids of runs marked deleted at least ``older_than_ms`` milliseconds ago.

        Example:
            >>> store.deleted_run_ids(older_than_ms=86_400_000)  # doctest: +SKIP
            ['9f2c...']
        """
        return list(self._backend()._get_deleted_runs(older_than=older_than_ms))

    def deleted_logged_models(self, older_than_ms: int = 0) -> list[Any]:
        """Logged models marked deleted at least ``older_than_ms`` ago (``model_id``,
        ``experiment_id``, ``artifact_location``); empty where MLflow cannot list them.

        Example:
            >>> [m.model_id for m in store.deleted_logged_models()]  # doctest: +SKIP
            ['m-0123abcd']
        """
        backend = self._backend()
        try:
            ids = backend._get_deleted_logged_models(older_than=older_than_ms)
        except Exception:  # an older schema or store without logged models
            return []
        out = []
        for model_id in ids:
            try:
                out.append(backend.get_logged_model(model_id, allow_deleted=True))
            except Exception:  # purged meanwhile
                continue
        return out

    # -- MLflow's private purge path: only here ---------------------------------------------

    def _tracking_store(self) -> Any:
        # MlflowClient keeps its backend store on a private attribute; `mlflow gc` builds
        # the same object from the backend URI.
        return self.client._tracking_client.store

    def _backend(self) -> Any:
        """The backend store, checked to offer MLflow's (private) hard-delete methods."""
        self.check_purge()
        return self._tracking_store()

    def _quietly(self, call: Callable[[Any], Any]) -> bool:
        from mlflow.exceptions import MlflowException

        backend = self._backend()
        try:
            call(backend)
        except MlflowException:  # purged meanwhile by another process
            return False
        return True
