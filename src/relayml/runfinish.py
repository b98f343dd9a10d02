"""Finishing a run: snapshots, outputs, check reports, the data version and the bundle.

:func:`finish` is called by :mod:`relayml.runner` once the variant returned; outputs are
staged locally first, so a refused one fails the run before anything is uploaded.

Example:
    >>> from relayml.runfinish import mlflow_schema
    >>> mlflow_schema({"id": "int64", "ts": "timestamp[us]"})
    '{"mlflow_colspec":[{"name":"id","type":"long"},{"name":"ts","type":"datetime"}]}'
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.codeinfo import canonical
from relayml.config import Settings
from relayml.context import Context
from relayml.outputs import cache_dir, check_name, is_frame, stage_outputs
from relayml.request import Request
from relayml.runs import Run
from relayml.runstart import data_tags
from relayml.store import Store, quote

if TYPE_CHECKING:
    from relayml.data import Snapshot

__all__ = ["early_proof", "finish", "log_checks", "mlflow_schema"]


def finish(
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
                    snap = data.snapshot_frame(value, out, observe=watch, key=ctx._key)
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
    log_checks(store, ctx)
    tags: dict[str, str] = {}
    if snaps and not req.pipeline.get(req.step).upstream:
        tags[tag.CHECKS] = "skipped" if not req.checks else "passed"
        if req.variant.key:
            tags[tag.DATA_KEY] = ",".join(req.variant.key)
    if snaps:
        digests = {name: snap.digest for name, snap, _ in snaps}
        own = next(iter(digests.values())) if len(digests) == 1 else data.combine_digests(digests)
        tags.update(data_tags({str(ctx.key): own}))
        tags[tag.RETRIEVAL_TIME] = ctx.retrieval_time.isoformat()
    else:
        _log_upstream_datasets(store, ctx.run_id, req)
    for name, v in outputs.items():
        if id(v) in by_frame:
            manifest[name] = f"snapshot:{holders[by_frame[id(v)]]}"
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
        found_id: str = found[0].info.run_id
        return found_id
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
    holder: str = entity.info.run_id
    # here, not at the top: numpy, pyarrow and pandas stay out of reads and reused chains
    from relayml.data_rowhash import sidecar_path

    staged = snap.path.with_name("snapshot.parquet")
    side = sidecar_path(snap.path)  # the rows' hashes, when the variant declares a key
    files = [staged, sidecar_path(staged)] if side.exists() else [staged]
    if side.exists():
        side.replace(files[1])
    snap.path.replace(staged)
    try:
        for f in files:
            store.upload(holder, f)
    except Exception:
        store.finish(holder, "FAILED")
        store.delete_run(holder)
        raise
    store.finish(holder, "FINISHED")
    local = cache_dir(settings.root, holder)
    local.mkdir(parents=True, exist_ok=True)
    for f in files:
        f.replace(local / f.name)
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
        schema=mlflow_schema(snap.schema),
        profile=canonical(profile),
        context="load",
    )


def log_checks(store: Store, ctx: Context) -> None:
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


def mlflow_schema(schema: Mapping[str, str]) -> str:
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


def early_proof(req: Request) -> contextlib.AbstractContextManager[Any]:
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
    if tag.DATA in (d := data_tags(req.data_parts) if req.data_parts else {}):
        tags[tag.DATA] = d[tag.DATA]
    return log_bundle(
        processor,
        outputs["model"],
        raw_example=raw_example,
        run_id=ctx.run_id,
        threshold=outputs.get("threshold"),
        tags=tags,
        proof=proof,
        store=store,
    )
