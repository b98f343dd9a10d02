"""The model registry and logged models, behind :class:`relayml.store.Store`.

Part of the MLflow boundary: the only code that calls MLflow's registry API (registered
models, versions, aliases, their tags) and its logged-model API. Everything here uses
``MlflowClient``'s public methods; lookups that find nothing return None or an empty list
instead of raising MLflow's exceptions, so callers never import MLflow.

Example:
    >>> from relayml.store import get_store
    >>> store = get_store(relay.open_project())
    >>> store.model_version_by_alias("fraud", "no-such-alias") is None
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml.errors import RelayError
from relayml.store.backend import quote, tag_value

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from relayml.config import Settings

__all__ = ["RegistryMethods"]


class RegistryMethods:
    """The registry and logged-model methods of :class:`relayml.store.Store` (a mixin)."""

    if TYPE_CHECKING:
        settings: Settings

        @property
        def client(self) -> MlflowClient: ...

        def activate(self) -> None: ...

        def _read(self, call: Callable[[Any], Any], *, missing: Any) -> Any: ...

        def get_run(self, run_id: str) -> Any: ...

    # -- registered models and versions ----------------------------------------------------

    def register_model_version(self, model_uri: str, name: str) -> int:
        """Register a bundle as a new version of model ``name`` (created on first use).

        MLflow's ``register_model`` resolves ``models:/m-...`` URIs to their logged model and
        source run; it reads the process-wide URI, so the store activates itself first.

        Returns:
            The new version number.

        Raises:
            RelayError: MLflow refused (the URI names no model, ...).

        Example:
            >>> store.register_model_version("models:/m-0123abcd", "fraud")  # doctest: +SKIP
            3
        """
        import mlflow
        from mlflow.exceptions import MlflowException

        self.activate()
        try:
            mv = mlflow.register_model(model_uri, name)
        except MlflowException as e:
            raise RelayError(f"register {model_uri!r} as {name!r}: {e.message}") from e
        return int(mv.version)

    def set_registered_model_alias(self, name: str, alias: str, version: int | str) -> None:
        """Point a registry alias of model ``name`` at ``version``.

        Example:
            >>> store.set_registered_model_alias("fraud", "champion", 3)  # doctest: +SKIP
        """
        self.client.set_registered_model_alias(name, alias, str(version))

    def model_version_by_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        """``{name, version, run_id}`` of the version an alias points at, or None.

        Example:
            >>> store.model_version_by_alias("fraud", "champion")["version"]  # doctest: +SKIP
            3
        """
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:  # no such model or alias
            return None
        return {"name": mv.name, "version": int(mv.version), "run_id": mv.run_id}

    def set_model_version_tags(self, name: str, version: int, tags: Mapping[str, str]) -> None:
        """Set tags on a registered model version.

        Example:
            >>> store.set_model_version_tags("fraud", 3, {"relay.data": "ab12"})  # doctest: +SKIP
        """
        for k, v in tags.items():
            self.client.set_model_version_tag(name, str(version), k, v)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        """Set a tag on a registered model.

        Example:
            >>> store.set_registered_model_tag("fraud", "note", "weekly")  # doctest: +SKIP
        """
        self.client.set_registered_model_tag(name, key, value)

    def delete_model_version(self, name: str, version: int) -> bool:
        """Delete a registered model version; False when it was already gone.

        Example:
            >>> store.delete_model_version("fraud", 3)  # doctest: +SKIP
            True
        """
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_model_version(name, str(version))
        except MlflowException:
            return False
        return True

    def model_versions(self, run_id: str) -> list[dict[str, Any]]:
        """``{name, version, aliases}`` of registered model versions made from a run.

        Example:
            >>> store.model_versions(run_id)  # doctest: +SKIP
            [{'name': 'fraud', 'version': 3, 'aliases': ['champion']}]
        """
        found = self._read(lambda r: r.model_versions(run_id), missing=None)
        if found is not None:
            return list(found)
        out = []
        try:
            versions = self.client.search_model_versions(f"run_id = {quote(run_id)}")
        except Exception:
            return []
        for v in versions:  # search results carry no aliases: read each version
            try:
                full = self.client.get_model_version(v.name, v.version)
            except Exception:  # deleted meanwhile
                full = v
            out.append(
                {"name": v.name, "version": int(v.version), "aliases": sorted(full.aliases or [])}
            )
        return sorted(out, key=lambda v: (v["name"], v["version"]))

    def registered_model(self, name: str) -> dict[str, Any]:
        """A registered model's aliases, tags and versions (all empty when it does not exist).

        Returns:
            ``{"aliases": {alias: version}, "tags": {...}, "versions": [{"version",
            "run_id", "tags"}, ...]}``, newest version first (at most 200).

        Example:
            >>> store.registered_model("fraud")["aliases"]  # doctest: +SKIP
            {'champion': 3}
        """
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
            found = self.client.search_model_versions(f"name = {quote(name)}", max_results=200)
        except MlflowException:
            return {"aliases": {}, "tags": {}, "versions": []}
        versions = [
            {"version": int(v.version), "run_id": v.run_id, "tags": dict(v.tags or {})}
            for v in found
        ]
        return {
            "aliases": {a: int(v) for a, v in (model.aliases or {}).items()},
            "tags": dict(model.tags or {}),
            "versions": sorted(versions, key=lambda v: -v["version"]),
        }

    def registered_model_tags(self, name: str) -> dict[str, str]:
        """The tags of a registered model (empty when it does not exist).

        Example:
            >>> store.registered_model_tags("fraud")  # doctest: +SKIP
            {'relay.refresh.metric.champion': 'test_roc_auc'}
        """
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_registered_model(name).tags or {})
        except MlflowException:
            return {}

    # -- logged models (MLflow 3) ----------------------------------------------------------

    def logged_models(self, run_id: str) -> list[Any]:
        """Logged models whose source run is ``run_id``, in any experiment.

        Each answers ``model_id``, ``experiment_id`` and ``artifact_location``.

        Example:
            >>> [m.model_id for m in store.logged_models(run_id)]  # doctest: +SKIP
            ['m-0123abcd']
        """
        exps = [e.experiment_id for e in self.client.search_experiments()]
        out: list[Any] = []
        for i in range(0, len(exps), 50):  # search_logged_models takes a bounded list
            try:
                page = self.client.search_logged_models(
                    experiment_ids=exps[i : i + 50],
                    filter_string=f"source_run_id = {quote(run_id)}",
                )
            except Exception:
                continue
            out.extend(page)
        return out

    def delete_logged_model(self, model_id: str) -> None:
        """Mark a logged model (MLflow 3) deleted; its files stay until purged.

        Example:
            >>> store.delete_logged_model("m-0123abcd")  # doctest: +SKIP
        """
        self.client.delete_logged_model(model_id)

    def create_logged_model(
        self, run_id: str, *, name: str, tags: Mapping[str, str] | None = None
    ) -> tuple[str, str]:
        """A new logged model (MLflow 3) of a run, in the run's experiment and with its params.

        Returns:
            ``(model_id, artifact_location)``; the model stays PENDING until
            :meth:`finalize_logged_model`.

        Example:
            >>> model_id, where = store.create_logged_model(run_id, name="model")  # doctest: +SKIP
        """
        run = self.get_run(run_id)
        if run is None:
            raise RelayError(f"no run {run_id!r} in {self.settings.tracking_uri}")
        model = self.client.create_logged_model(
            experiment_id=str(run.info.experiment_id),
            name=name,
            source_run_id=run_id,
            tags={k: tag_value(k, v) for k, v in (tags or {}).items()},
            params={k: str(v) for k, v in run.data.params.items()},
        )
        return model.model_id, model.artifact_location

    def log_model_artifacts(self, model_id: str, folder: Path) -> None:
        """Upload a saved model folder as the artifacts of a logged model.

        Example:
            >>> store.log_model_artifacts(model_id, Path("model"))  # doctest: +SKIP
        """
        self.client.log_model_artifacts(model_id, str(folder))

    def link_logged_model(self, run_id: str, model_id: str) -> None:
        """Record a logged model as an output of its run, with the run's metrics, as
        ``mlflow.<flavor>.log_model`` does (MLflow's UI shows them on the model's page).

        Example:
            >>> store.link_logged_model(run_id, model_id)  # doctest: +SKIP
        """
        from mlflow.entities import LoggedModelOutput, Metric

        self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        run = self.get_run(run_id)
        metrics = run.data.metrics if run is not None else {}
        if metrics:
            now = int(time.time() * 1000)
            self.client.log_batch(
                run_id,
                metrics=[
                    Metric(k, float(v), now, 0, run_id=run_id, model_id=model_id)
                    for k, v in metrics.items()
                ],
            )

    def finalize_logged_model(self, model_id: str, *, ready: bool) -> None:
        """Mark a logged model READY (complete) or FAILED.

        Example:
            >>> store.finalize_logged_model(model_id, ready=True)  # doctest: +SKIP
        """
        self.client.finalize_logged_model(model_id, "READY" if ready else "FAILED")
