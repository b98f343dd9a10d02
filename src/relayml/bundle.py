"""The bundle: a fitted processor and a fitted model logged as one MLflow model.

A bundle takes *raw* records (the columns the processor consumes) and returns predictions.
Its MLflow signature is the raw-input schema, it carries an input example and its pip
requirements, and it loads with ``mlflow.pyfunc.load_model`` in an environment where relayml
is **not** installed:

- when processor and model are scikit-learn compatible, the bundle *is* a scikit-learn
  ``Pipeline([("processor", processor), ("model", model)])`` logged with the sklearn flavor
  (skops);
- otherwise (e.g. a processor that is a plain function) it is a pyfunc model that ships the
  project module defining the function through ``code_paths``.

A classifier bundle can carry the decision threshold chosen in training; it then answers a
DataFrame with columns ``label`` and ``score``. The class that does this lives in the bundle
runtime (:mod:`relayml.bundle_runtime`), shipped with the model as ``relay_bundle_runtime.py``.

This module is the bundle's public face; the work is done in:

- :mod:`relayml.bundle_log`: :func:`log_bundle` and :func:`register`;
- :mod:`relayml.bundle_requirements`: exact requirements and the project code to ship;
- :mod:`relayml.bundle_proof` / :mod:`relayml.bundle_child`: the proof that it loads and
  predicts in an interpreter without relayml;
- :mod:`relayml.bundle_load` / :mod:`relayml.bundle_compile`: :func:`load_bundle` and its
  fast numpy prediction;
- :mod:`relayml.bundle_trust`: loading when ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``;
- :mod:`relayml.bundle_runtime`: the code shipped inside bundles (never imports relayml).

None of them imports the rest of relayml's runtime (runner, chain, cli): the runner calls
them, not the reverse.

Example:
    >>> run = relay.get("training/logreg@latest")
    >>> load_bundle(run.model_uri, store=run.store).columns[:3]
    ['Time', 'V1', 'V2']
"""

from __future__ import annotations

from relayml.bundle_load import Bundle, load_bundle
from relayml.bundle_log import log_bundle, register

__all__ = ["Bundle", "load_bundle", "log_bundle", "register"]
