"""The lifecycle of runs, one module per verb:

- :mod:`~relayml.lifecycle.compare`: :func:`compare` ranks runs by a metric, only between
  runs trained on the same data version.
- :mod:`~relayml.lifecycle.registry`: :func:`promote` registers a training run's bundle in
  the MLflow Model Registry (name = the project) and points an alias (``champion``) at it.
- :mod:`~relayml.lifecycle.delete`: :func:`delete` removes runs for good (rows, artifact
  folders, logged models, registered versions with ``cascade``, local cache).
- :mod:`~relayml.lifecycle.gc`: :func:`gc` purges what was deleted by other means, withdrawn
  runs and orphan snapshots (:mod:`~relayml.lifecycle.purge` is what both share).
- :mod:`~relayml.lifecycle.reproduce`: :func:`reproduce` re-runs a run's chain from what was
  recorded and checks the metrics.
- :mod:`~relayml.lifecycle.refresh`: :func:`refresh` is the regular retraining; who gets the
  alias is the pure :func:`~relayml.lifecycle.decision.refresh_decision`, the scoring on
  fresh rows is in :mod:`~relayml.lifecycle.scoring`.

A service layer: it talks to MLflow only through :mod:`relayml.store` and imports no MLflow
module itself.

Example:
    >>> relay.compare("training", metric="test_roc_auc").metric
    'test_roc_auc'
"""

from __future__ import annotations

from relayml.errors import MixedData
from relayml.lifecycle.compare import Ranking, compare
from relayml.lifecycle.decision import refresh_decision
from relayml.lifecycle.delete import DeletePlan, check_delete, delete, plan_delete
from relayml.lifecycle.gc import GcReport, gc, parse_age
from relayml.lifecycle.refresh import RefreshReport, refresh
from relayml.lifecycle.registry import Promotion, promote
from relayml.lifecycle.reproduce import MetricCheck, Reproduction, reproduce

__all__ = [
    "DeletePlan",
    "GcReport",
    "MetricCheck",
    "MixedData",
    "Promotion",
    "Ranking",
    "RefreshReport",
    "Reproduction",
    "check_delete",
    "compare",
    "delete",
    "gc",
    "parse_age",
    "plan_delete",
    "promote",
    "refresh",
    "refresh_decision",
    "reproduce",
]
