"""The read path on a tracking server: MLflow's documented REST API with httpx.

Reads are plain JSON requests (``/api/2.0/mlflow/runs/search``, ``runs/get``,
``experiments/search``, ``experiments/get-by-name``, ``model-versions/search``,
``mlflow-artifacts/artifacts``), so ``relay runs`` against a server does not import MLflow.
Credentials come from MLflow's own environment variables (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_INSECURE_TLS``,
``MLFLOW_TRACKING_SERVER_CERT_PATH``). It must not import MLflow.

Example:
    >>> reader = RestReader("http://127.0.0.1:5000")  # doctest: +SKIP
    >>> reader.get_run("0123456789abcdef0123456789abcdef").info.status  # doctest: +SKIP
    'FINISHED'
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from relayml.readstore.records import (
    DatasetRecord,
    RunData,
    RunInfo,
    RunRecord,
    Unsupported,
    sorted_datasets,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["RestReader", "credentials"]

PAGE = 1000


def credentials() -> dict[str, Any]:
    """MLflow's credentials as the environment holds them now, as httpx request arguments.

    Read for every request, as MLflow's client does: a process that acts for another user
    (``MLFLOW_TRACKING_USERNAME`` changed) reads as that user from then on.

    Example:
        >>> import os
        >>> os.environ["MLFLOW_TRACKING_USERNAME"] = "alice"
        >>> credentials()["auth"][0]
        'alice'
        >>> del os.environ["MLFLOW_TRACKING_USERNAME"]
        >>> credentials()
        {}
    """
    env = os.environ
    if env.get("MLFLOW_TRACKING_TOKEN"):
        return {"headers": {"Authorization": f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"}}
    if env.get("MLFLOW_TRACKING_USERNAME"):
        return {"auth": (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))}
    return {}


class RestReader:
    """Read-only calls to an MLflow tracking server (see the module's docstring)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self._client: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        """The HTTP client (created on first use; TLS settings from MLflow's variables)."""
        if self._client is None:
            import httpx

            env = os.environ
            verify: Any = True
            if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
                verify = False
            elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
                verify = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
            self._client = httpx.Client(base_url=self.uri, verify=verify, timeout=120)
        return self._client

    def close(self) -> None:
        """Close the connections."""
        if self._client is not None:
            self._client.close()

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any] | None:
        """One API call; None for RESOURCE_DOES_NOT_EXIST. Other failures are Unsupported:
        MLflow's client then retries and reports them in its own words."""
        try:
            res = self.http.request(method, path, **credentials(), **kw)
        except Exception as e:
            raise Unsupported(f"{method} {path}: {e}") from e
        if res.status_code == 404 and "RESOURCE_DOES_NOT_EXIST" in res.text:
            return None
        if res.status_code != 200:
            raise Unsupported(f"{method} {path}: HTTP {res.status_code}")
        return res.json()

    # -- experiments -----------------------------------------------------------------------

    def experiments(self, prefix: str) -> dict[str, str]:
        """``{name: id}`` of active experiments whose name starts with ``prefix``."""
        pattern = prefix.replace("'", "\\'") + "%"
        out: dict[str, str] = {}
        token = None
        while True:
            body: dict[str, Any] = {
                "filter": f"name LIKE '{pattern}'",
                "max_results": PAGE,
                "view_type": "ACTIVE_ONLY",
            }
            if token:
                body["page_token"] = token
            page = self._call("POST", "/api/2.0/mlflow/experiments/search", json=body) or {}
            for e in page.get("experiments", []):
                if e["name"].startswith(prefix):
                    out[e["name"]] = str(e["experiment_id"])
            token = page.get("next_page_token")
            if not token:
                return out

    def experiment(self, name: str) -> tuple[str, str] | None:
        """``(id, lifecycle stage)`` of the experiment named ``name``, or None."""
        found = self._call(
            "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}
        )
        if not found:
            return None
        e = found["experiment"]
        return str(e["experiment_id"]), e.get("lifecycle_stage", "active")

    # -- runs ------------------------------------------------------------------------------

    def search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        *,
        order_by: Sequence[str] = (),
        limit: int | None = None,
        deleted: bool = False,
    ) -> list[RunRecord]:
        """Runs of the experiments matching the filter (any MLflow filter and order: the
        server's own store evaluates them), newest first by default, paged."""
        out: list[RunRecord] = []
        token = None
        while True:
            body: dict[str, Any] = {
                "experiment_ids": list(experiment_ids),
                "filter": filter_string,
                "run_view_type": "DELETED_ONLY" if deleted else "ACTIVE_ONLY",
                "max_results": PAGE if limit is None else min(PAGE, limit - len(out)),
                "order_by": list(order_by),
            }
            if token:
                body["page_token"] = token
            page = self._call("POST", "/api/2.0/mlflow/runs/search", json=body) or {}
            out.extend(_record(r) for r in page.get("runs", []))
            token = page.get("next_page_token")
            if not token or (limit is not None and len(out) >= limit):
                return out

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id (active or deleted), or None."""
        found = self._call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": run_id})
        return _record(found["run"]) if found else None

    # -- registry and artifacts ------------------------------------------------------------

    def model_versions(self, run_id: str) -> list[dict[str, Any]]:
        """``{name, version, aliases}`` of registered model versions made from the run."""
        found = self._call(
            "GET",
            "/api/2.0/mlflow/model-versions/search",
            params={"filter": f"run_id = '{run_id}'", "max_results": 1000},
        )
        out = []
        for v in (found or {}).get("model_versions", []):
            full = self._call(
                "GET",
                "/api/2.0/mlflow/model-versions/get",
                params={"name": v["name"], "version": v["version"]},
            )
            aliases = ((full or {}).get("model_version") or {}).get("aliases", [])
            out.append(
                {"name": v["name"], "version": int(v["version"]), "aliases": sorted(aliases)}
            )
        return sorted(out, key=lambda v: (v["name"], v["version"]))

    def list_artifacts(self, artifact_uri: str) -> list[tuple[str, int]]:
        """``(path, size)`` of every file under a ``mlflow-artifacts:`` URI, recursively.

        Raises:
            Unsupported: another kind of artifact URI.
        """
        root = _artifact_path(artifact_uri)
        out: list[tuple[str, int]] = []
        folders = [""]
        while folders:
            rel = folders.pop()
            path = f"{root}/{rel}" if rel else root
            found = self._call("GET", "/api/2.0/mlflow-artifacts/artifacts", params={"path": path})
            for f in (found or {}).get("files", []):
                sub = f"{rel}/{f['path']}" if rel else f["path"]
                if f.get("is_dir"):
                    folders.append(sub)
                else:
                    out.append((sub, int(f.get("file_size") or 0)))
        return sorted(out)


def _artifact_path(artifact_uri: str) -> str:
    """The server-side path of a ``mlflow-artifacts:`` URI (with or without a host part)."""
    if not artifact_uri.startswith("mlflow-artifacts:"):
        raise Unsupported(f"artifact URI {artifact_uri!r}")
    return urlparse(artifact_uri).path.strip("/")


def _record(run: dict[str, Any]) -> RunRecord:
    i = run["info"]
    data = run.get("data", {})
    info = RunInfo(
        i.get("run_id") or i["run_uuid"],
        str(i["experiment_id"]),
        i.get("run_name"),
        i["status"],
        int(i["start_time"]),
        int(i["end_time"]) if i.get("end_time") is not None else None,
        i.get("lifecycle_stage", "active"),
        i.get("artifact_uri", ""),
    )
    metrics = {m["key"]: _float(m["value"]) for m in data.get("metrics", [])}
    tags = {t["key"]: t.get("value", "") for t in data.get("tags", [])}
    params = {p["key"]: p.get("value", "") for p in data.get("params", [])}
    datasets = []
    for di in run.get("inputs", {}).get("dataset_inputs", []):
        d = di["dataset"]
        ctx = next(
            (t["value"] for t in di.get("tags", []) if t["key"] == "mlflow.data.context"), None
        )
        datasets.append(DatasetRecord(d["name"], d["digest"], d["source_type"], d["source"], ctx))
    return RunRecord(info, RunData(tags, params, metrics), sorted_datasets(datasets))


def _float(value: Any) -> float:
    if isinstance(value, str):  # protobuf JSON spells NaN and infinities as strings
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value, math.nan)
    return float(value)
