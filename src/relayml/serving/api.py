"""The public serving functions: ``relay.serve`` (a REST API) and ``relay.predict`` (a file).

Both take what a user knows (a run reference, a chain spec or ``models:/NAME@ALIAS``), find
the bundle in the project's store (:func:`resolve_model`) and hand it to the server
(:mod:`relayml.serving.http`) or to batch scoring (:mod:`relayml.serving.batch`, or the
project's Dask executor). They only read the store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from relayml import tags as tag
from relayml.chain import chain
from relayml.cluster import is_dask, project_executor
from relayml.errors import NotFound
from relayml.executor import predict_partitions
from relayml.runs import Run, get, open_project
from relayml.serving.batch import predict_file
from relayml.serving.http import run_server
from relayml.serving.limits import DEFAULT_MAX_BODY, DEFAULT_MAX_ROWS
from relayml.store import get_store

__all__ = ["predict", "provenance", "resolve_model", "serve"]


def resolve_model(ref: str, *, project: Any = None) -> tuple[str, dict[str, Any]]:
    """The model URI and provenance of a run reference, a chain spec, or ``models:/NAME@ALIAS``.

    Args:
        ref: ``training/logreg@latest`` (any run reference of a run that logged a bundle),
            a chain spec such as ``"load=transactions@latest processing=plain training=logreg"``
            (its newest coherent chain), or a registry URI ``models:/fraud@champion``.
        project: the project (default: around the working folder).

    Returns:
        ``(model_uri, provenance)``; provenance names the keys of the load, processing and
        training runs, the data version, the code commit and the model URI.

    Raises:
        NotFound: nothing matches, or the run logged no model.

    Example:
        >>> uri, prov = resolve_model("training/logreg@latest")
        >>> uri.startswith("models:/"), prov["training"].startswith("training/logreg@")
        (True, True)
        >>> resolve_model("load/transactions@latest")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relayml.errors.NotFound: run load/transactions@... logged no model; serve a run of a ...
    """
    settings = open_project(project)
    if ref.startswith("models:/"):
        get_store(settings)  # points MLflow's registry at the project's store
        return ref, {"model_uri": ref}
    if "=" in ref:
        found = chain(*ref.replace(",", " ").split(), dry_run=True, project=settings)
        if not found.complete or found.final is None:
            raise NotFound(f"no complete coherent chain for {ref!r}; run 'relay chain {ref}' first")
        run = found.final
    else:
        run = get(ref, project=settings)
    if not run.model_uri:
        raise NotFound(
            f"run {run.key} logged no model; serve a run of a step that returns a 'model' "
            "output (e.g. training/logreg@latest)"
        )
    return run.model_uri, provenance(run)


def provenance(run: Run) -> dict[str, Any]:
    """Where a training run's model comes from: upstream keys, data version, commit, model URI.

    Example:
        >>> prov = provenance(relay.get("training/logreg@latest"))
        >>> prov["load"].startswith("load/transactions@"), prov["run_id"] is not None
        (True, True)
    """
    out: dict[str, Any] = {run.step: str(run.key)}
    queue = list(run.upstream.values())
    while queue:
        r = queue.pop(0)
        key = str(r.key)
        if r.step in out and key not in str(out[r.step]):
            out[r.step] = f"{out[r.step]},{key}"
        else:
            out.setdefault(r.step, key)
        queue.extend(r.upstream.values())
    out["data_version"] = run.data_version
    out["commit"] = run.tags.get(tag.GIT_COMMIT)
    out["dirty"] = run.tags.get(tag.GIT_DIRTY) == "true"
    out["model_uri"] = run.model_uri
    out["run_id"] = run.run_id
    return out


def serve(
    ref: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5001,
    workers: int = 1,
    max_body: int = DEFAULT_MAX_BODY,
    max_rows: int = DEFAULT_MAX_ROWS,
    token: str | None = None,
    token_env: str | None = None,
    project: Any = None,
) -> None:
    """Serve the bundle a reference names as a REST API on raw records (blocks until stopped).

    ``POST /invocations`` takes MLflow's scoring formats (JSON, CSV, Parquet) and answers
    ``{"predictions": [...]}``; ``GET /version`` tells where the model comes from;
    ``GET /openapi.json`` describes the raw input.

    Args:
        ref: a run reference, a chain spec or ``models:/NAME@ALIAS`` (:func:`resolve_model`).
        host: interface to bind; the default answers this machine only.
        port: TCP port (1..65535).
        workers: worker processes.
        max_body: largest request body, in bytes (413 beyond).
        max_rows: most records in one request (413 beyond).
        token: bearer token every route but ``/ping`` and ``/health`` needs.
        token_env: the environment variable that holds ``token`` (for worker processes).
        project: the project (default: around the working folder).

    Raises:
        NotFound: nothing matches ``ref``, or its run logged no model.
        UsageError: a port out of range, fewer than one worker or row.

    Example:
        >>> relay.serve("training/logreg@latest", port=5001)  # doctest: +SKIP
        >>> relay.serve("load/transactions@latest")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relayml.errors.NotFound: run load/transactions@... logged no model; serve a run of a ...
    """
    uri, prov = resolve_model(ref, project=project)
    run_server(
        uri,
        host=host,
        port=port,
        workers=workers,
        max_body=max_body,
        max_rows=max_rows,
        token=token,
        token_env=token_env,
        provenance=prov,
    )


def predict(
    ref: str,
    input: Path | str,
    output: Path | str,
    *,
    key_column: str | None = None,
    batch_size: int = 100_000,
    progress: Callable[[int], None] | None = None,
    project: Any = None,
) -> int:
    """Score a CSV or Parquet file of raw records with the bundle a reference names.

    On a project whose executor is Dask, the file's partitions are scored on the cluster;
    the output is the same.

    Args:
        ref: a run reference, a chain spec or ``models:/NAME@ALIAS`` (:func:`resolve_model`).
        input: ``.csv`` or ``.parquet`` file of raw records.
        output: ``.csv`` or ``.parquet`` file to write: the key column, then the predictions.
        key_column: column copied beside the predictions (default: guessed, or the row).
        batch_size: rows scored at once.
        progress: called with the number of rows written so far after each batch.
        project: the project (default: around the working folder).

    Returns:
        The number of rows written to ``output``.

    Raises:
        NotFound: nothing matches ``ref``, or its run logged no model.
        UsageError: unknown suffix, missing file, unknown key column, or bad records.

    Example:
        >>> records = relay.get("load/transactions@latest").load("output").head(20)
        >>> records.to_csv("new.csv", index=False)
        >>> relay.predict("training/logreg@latest", "new.csv", "scored.csv")
        20
    """
    uri, _ = resolve_model(ref, project=project)
    executor = project_executor(project)
    if is_dask(executor):  # partitions scored on the Dask cluster, same output
        return predict_partitions(
            uri,
            input,
            output,
            executor=executor,
            key_column=key_column,
            partition_rows=batch_size,
            progress=progress,
        )
    return predict_file(
        uri,
        Path(input),
        Path(output),
        key_column=key_column,
        batch_size=batch_size,
        progress=progress,
    )
