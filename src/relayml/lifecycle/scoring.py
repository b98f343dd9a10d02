"""Scoring for ``relay refresh``: the served model and every retrained model on the same
fresh raw rows, and the drift between the served model's data and the new data.

Loads bundles through :mod:`relayml.bundle` (which imports MLflow's model loader: the first
call takes a second or two).

Example:
    >>> metric_fn("val_f1")[0]
    False
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from relayml.config import Settings
from relayml.errors import RelayError, UsageError
from relayml.outputs import load_output
from relayml.runs import Run

__all__ = ["metric_fn", "score_bundle", "score_fresh", "served_diff"]


_METRICS = {  # metric name (after a "test_"/"val_" prefix) -> (uses the score, function name)
    "roc_auc": (True, "roc_auc_score"),
    "auc": (True, "roc_auc_score"),
    "average_precision": (True, "average_precision_score"),
    "f1": (False, "f1_score"),
    "precision": (False, "precision_score"),
    "recall": (False, "recall_score"),
    "accuracy": (False, "accuracy_score"),
}


def metric_fn(metric: str) -> tuple[bool, Callable[..., float]] | None:
    """``(uses the score column, scikit-learn function)`` of a metric relay can compute on
    a bundle's predictions, or None.

    Example:
        >>> metric_fn("test_roc_auc")[1].__name__, metric_fn("test_rmse")
        ('roc_auc_score', None)
    """
    import sklearn.metrics  # scikit-learn loads only when a refresh scores

    name = re.sub(r"^(test|val|valid|holdout)_", "", metric)
    if name not in _METRICS:
        return None
    uses_score, fn = _METRICS[name]
    return uses_score, getattr(sklearn.metrics, fn)


def score_bundle(uri: str, rows: Any, target: str, metric: str) -> float:
    """A bundle's metric on raw rows holding the target column.

    Raises:
        UsageError: relay cannot compute this metric itself.
    """
    # bundles and data diffs load scikit-learn, pyarrow and DuckDB: imported when a refresh
    # scores, not when `relay compare` imports the lifecycle package
    from relayml.bundle import load_bundle

    found = metric_fn(metric)
    if found is None:
        raise UsageError(f"relay cannot compute {metric!r} itself (roc_auc, f1, ...)")
    uses_score, fn = found
    bundle = load_bundle(uri)
    out = bundle.predict(rows[bundle.columns])
    if hasattr(out, "columns") and "score" in out.columns:
        predicted = out["score"] if uses_score else out["label"]
    else:
        predicted = out
    kwargs = {} if uses_score or fn.__name__ == "accuracy_score" else {"zero_division": 0}
    return float(fn(rows[target], predicted, **kwargs))


def score_fresh(
    settings: Settings,
    champ: tuple[int, Run],
    trained: list[tuple[str, Run]],
    ups: Mapping[str, Run],
    metric: str,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, float]]:
    """Score the served model and every retrained model on the same fresh raw test rows.

    The rows: the new processing run's ``test_rows`` output (raw rows of its test split),
    less those the served model's load held (matched on the load variant's key), so no
    model is scored on rows it was trained on. Returns ``(served, {run_id: score})``;
    ``served["note"]`` says why nothing was scored when that was not possible.
    """
    from relayml.bundle import load_bundle
    from relayml.datadiff import rows_not_in, snapshot_of

    version, served_run = champ
    served: dict[str, Any] = {"version": version, "key": str(served_run.key)}
    holder = next((r for r in ups.values() if "test_rows" in r.outputs), None)
    found = metric_fn(metric)
    if found is None:
        served["note"] = f"relay cannot compute {metric!r} itself (roc_auc, f1, ...)"
        return served, {}
    uses_score = found[0]
    if holder is None or not served_run.data_keys:
        served["note"] = "the processing run has no 'test_rows' output (raw test rows)"
        return served, {}
    old = snapshot_of(served_run.data_keys[0], settings)
    rows = load_output(holder, "test_rows")
    if not old.key or not set(old.key) <= set(rows.columns):
        served["note"] = "no key= declared on the load variant (or not in test_rows)"
        return served, {}
    fresh = rows_not_in(rows, old.path, old.key)
    served["rows"] = len(fresh)
    processed = load_output(holder, "test") if "test" in holder.outputs else None
    models = [(r.run_id, r.model_uri) for _, r in trained if r.model_uri]
    if not served_run.model_uri or processed is None or len(fresh) == 0:
        served["note"] = "no fresh test rows the served model never saw"
        return served, {}
    inputs = set(load_bundle(served_run.model_uri).columns)
    targets = [c for c in processed.columns if c not in inputs and c in fresh.columns]
    if len(targets) != 1:
        served["note"] = f"cannot tell the target column (candidates: {targets})"
        return served, {}
    target = targets[0]
    if fresh[target].nunique() < 2 and uses_score:
        served["note"] = f"the {len(fresh)} fresh rows hold one class only"
        return served, {}
    say(f"scoring the served model v{version} and the retrained models on {len(fresh)} fresh rows")
    served["value"] = score_bundle(served_run.model_uri, fresh, target, metric)
    served["target"] = target
    return served, {rid: score_bundle(uri, fresh, target, metric) for rid, uri in models}


def served_diff(
    settings: Settings,
    served_run: Run,
    fresh_load: Run,
    served: Mapping[str, Any],
    max_drift: float | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``relay diff`` of the served model's data and the fresh data; the largest feature PSI."""
    from relayml.bundle import load_bundle
    from relayml.datadiff import diff

    if not served_run.data_keys:
        return None, None
    try:
        d = diff(served_run.data_keys[0], str(fresh_load.key), project=settings)
    except RelayError as e:
        return {"error": str(e)}, None
    features = None
    if served_run.model_uri:
        with suppress(RelayError):
            features = set(load_bundle(served_run.model_uri).columns)
    psis = {
        c: v["value"]
        for c, v in d.drift.items()
        if v["measure"] == "psi" and (features is None or c in features)
    }
    worst = max(psis, key=psis.__getitem__) if psis else None
    drift = None if worst is None else {"column": worst, "psi": psis[worst], "limit": max_drift}
    return d.to_dict(), drift
