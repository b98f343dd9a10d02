"""Runtime of relayml bundles: shipped inside every bundle that needs it, as its own module.

A bundle loads where relayml is not installed, so this file is copied into the bundle's code
(MLflow's ``code_paths``) as ``relay_bundle_runtime.py`` and imported there under that name
(see :func:`relayml.bundle_load.runtime`). It must never import relayml: it imports numpy,
pandas, scikit-learn and (for pyfunc bundles) MLflow only; a test checks that.

- :class:`ThresholdClassifier`: a fitted binary classifier with a decision threshold; it
  predicts a DataFrame with columns ``label`` and ``score``.
- ``FunctionBundle``: a processor that is a plain function followed by a model, as an MLflow
  pyfunc model (defined on first use: a scikit-learn bundle loads without importing MLflow).

Example:
    >>> from sklearn.linear_model import LogisticRegression
    >>> model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    >>> ThresholdClassifier(model, 0.5).predict([[0.2], [2.8]])["label"].tolist()
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin


def _label_score(estimator: Any, X: Any, threshold: float) -> pd.DataFrame:
    classes = np.asarray(estimator.classes_)
    if len(classes) != 2:
        raise ValueError(
            f"a decision threshold needs a binary classifier; got classes {classes.tolist()}"
        )
    score = estimator.predict_proba(X)[:, 1]
    label = classes[(score >= threshold).astype(np.intp)]
    return pd.DataFrame({"label": label, "score": score})


class ThresholdClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A fitted binary classifier with a decision threshold; predicts ``label`` and ``score``.

    Args:
        estimator: a fitted binary classifier with ``predict_proba``.
        threshold: ``label`` is the positive class where ``score >= threshold``.

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        >>> list(ThresholdClassifier(model, 0.9).predict([[2.8]]).columns)
        ['label', 'score']
    """

    def __init__(self, estimator: Any = None, threshold: float = 0.5) -> None:
        self.estimator = estimator
        self.threshold = threshold

    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> ThresholdClassifier:
        """Fit the inner estimator (bundles hold fitted ones; for scikit-learn's contract)."""
        self.estimator.fit(X, y, **fit_params)
        return self

    @property
    def classes_(self) -> Any:
        """The inner estimator's classes."""
        return self.estimator.classes_

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self.estimator, "classes_")

    def predict_proba(self, X: Any) -> Any:
        """The inner estimator's class probabilities."""
        return self.estimator.predict_proba(X)

    def predict(self, X: Any) -> pd.DataFrame:
        """A DataFrame ``label`` / ``score`` (probability of the positive class)."""
        return _label_score(self.estimator, X, self.threshold)


def _function_bundle() -> type:
    """Define :class:`FunctionBundle` (it subclasses MLflow's ``PythonModel``): on first use
    only, so that a scikit-learn bundle loads without importing MLflow."""
    import mlflow.pyfunc as _pyfunc

    class FunctionBundle(_pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        """A processor function followed by a model, as an MLflow pyfunc model.

        Args:
            processor: a function ``DataFrame -> features``.
            model: a fitted model with ``predict`` (and ``predict_proba`` with a threshold).
            columns: the raw input columns, in order.
            threshold: decision threshold of a binary classifier, or None.

        Example:
            >>> from sklearn.linear_model import LogisticRegression
            >>> raw = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
            >>> model = LogisticRegression().fit(raw, [0, 0, 1, 1])
            >>> FunctionBundle(np.negative, model, ["x"]).predict(None, -raw).tolist()
            [0, 0, 1, 1]
        """

        _skip_type_hint_validation = True  # the signature is explicit

        def __init__(
            self,
            processor: Callable[[pd.DataFrame], Any],
            model: Any,
            columns: list[str],
            threshold: float | None = None,
        ) -> None:
            self.processor = processor
            self.model = model
            self.columns = list(columns)
            self.threshold = threshold

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            """Process raw records with the function, then predict with the model.

            Not annotated on purpose: MLflow reads a type hint on ``model_input`` as the
            model's input type and would convert the input by it; the signature is explicit.
            """
            X = self.processor(pd.DataFrame(model_input)[self.columns])
            if self.threshold is None:
                return self.model.predict(X)
            return _label_score(self.model, X, self.threshold)

    FunctionBundle.__qualname__ = "FunctionBundle"  # stored by reference, by this name
    return FunctionBundle


def __getattr__(name: str) -> Any:
    if name == "FunctionBundle":
        cls = globals()["FunctionBundle"] = _function_bundle()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
