"""Compile a bundle's scikit-learn pipeline into numpy functions for fast prediction.

:func:`compile_pipeline` turns a fitted pipeline of all-numeric input into one numpy function
with the same floats as ``pipeline.predict``, bit for bit: the same operations, in the same
order and memory layout, without per-request DataFrames or scikit-learn's validation.
Recognized: ``ColumnTransformer`` / ``Pipeline`` of ``StandardScaler`` and passthrough (one
gather, then in-place standardization), a binary ``LogisticRegression`` (alone or inside the
bundle runtime's ``ThresholdClassifier``); any other transformer runs its own ``transform``.
Anything it cannot reproduce exactly gives ``None``: the caller then uses the pipeline.

This module only reads fitted objects; it imports scikit-learn, numpy and pandas.

Example:
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import Pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]])
    >>> pipe = Pipeline([("s", StandardScaler()), ("m", LogisticRegression())]).fit(X, [0, 0, 1, 1])
    >>> fast, needs_config = compile_pipeline(pipe, [("x", "double")])
    >>> fast(X).tolist() == pipe.predict(X).tolist()
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pandas as pd

__all__ = ["RUNTIME_MODULE", "compile_pipeline"]

#: The name the bundle runtime (:mod:`relayml.bundle_runtime`) has inside a bundle.
RUNTIME_MODULE = "relay_bundle_runtime"


def _standardize(V: np.ndarray, mean: Any, scale: Any) -> np.ndarray:
    """StandardScaler's arithmetic, in place and in its order: subtract, then divide."""
    if mean is not None:
        V -= mean
    if scale is not None:
        V /= scale
    return V


def _transformer_fn(t: Any, in_names: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy function equal to ``t.transform`` on float64 input columns ``in_names``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(t, Pipeline):
        fns = []
        names = in_names
        for _, step in t.steps:
            if step in (None, "passthrough"):
                continue
            fns.append(_transformer_fn(step, names))
            # downstream steps see arrays, or DataFrames when the step's output is pandas
            names = _output_names(step)  # type: ignore[assignment]

        def pipe(X: np.ndarray) -> np.ndarray:
            for fn in fns:
                X = fn(X)
            return X

        pipe._numpy_only = all(getattr(fn, "_numpy_only", False) for fn in fns)  # type: ignore[attr-defined]
        return pipe
    if isinstance(t, ColumnTransformer):
        if getattr(t, "sparse_output_", False):
            raise _NotCompilable
        # "pandas" output only wraps the same values in a DataFrame: the final estimator then
        # converts it back with np.asarray (Fortran order), which fast() reproduces
        if (getattr(t, "_sklearn_output_config", None) or {}).get("transform") not in (
            None,
            "default",
            "pandas",
        ):
            raise _NotCompilable
        fitted_names = list(getattr(t, "feature_names_in_", in_names or []))
        if in_names is None or any(n not in in_names for n in fitted_names):
            raise _NotCompilable
        perm = [in_names.index(n) for n in fitted_names]
        parts: list[tuple[Callable[[np.ndarray], np.ndarray] | None, list[int]]] = []
        affine: list[Any] = []  # per part: None (passthrough), (mean, scale), or False
        indices = t._transformer_to_input_indices
        for tname, trans, _ in t.transformers_:
            idx = [perm[i] for i in indices.get(tname, [])]
            if trans == "drop" or not idx:
                continue
            sub_names = [in_names[i] for i in idx]
            identity = (isinstance(trans, str) and trans == "passthrough") or _is_identity(trans)
            parts.append((None if identity else _transformer_fn(trans, sub_names), idx))
            affine.append(None if identity else _scaler_params(trans))

        if all(a is not False for a in affine):
            # only scalers and passthrough: one gather into the output's column order, then
            # the scalers' in-place subtract/divide on their column blocks (the same float
            # operations as StandardScaler.transform, so the same bits)
            order = np.array([i for _, idx in parts for i in idx], dtype=np.intp)
            blocks = []
            start = 0
            for (_, idx), a in zip(parts, affine, strict=True):
                if a is not None:
                    blocks.append((slice(start, start + len(idx)), *a))
                start += len(idx)

            def gather_scale(X: np.ndarray) -> np.ndarray:
                # X.T[order] is a C-ordered (columns, rows) copy: its transpose is the
                # Fortran-ordered matrix np.hstack / np.asarray(DataFrame) give scikit-learn
                Z = X.T[order].T
                for where, mean, scale in blocks:
                    _standardize(Z[:, where], mean, scale)
                return Z

            gather_scale._numpy_only = True  # type: ignore[attr-defined]
            return gather_scale

        def column_transform(X: np.ndarray) -> np.ndarray:
            outs = []
            for fn, idx in parts:
                sub = X[:, idx]
                outs.append(np.asfortranarray(sub) if fn is None else fn(sub))
            return np.hstack(outs)

        column_transform._numpy_only = all(  # type: ignore[attr-defined]
            fn is None or getattr(fn, "_numpy_only", False) for fn, _ in parts
        )
        return column_transform
    if type(t) is StandardScaler:
        mean = t.mean_ if t.with_mean else None
        scale = t.scale_ if t.with_std else None
        # scikit-learn converts a DataFrame to a Fortran-ordered array and copies it keeping
        # that order; the layout changes the last bits of later matrix products, so mimic it.
        from_frame = in_names is not None

        def scaler(X: np.ndarray) -> np.ndarray:
            X = np.asfortranarray(X) if from_frame else X
            return _standardize(X.copy(order="K"), mean, scale)

        scaler._numpy_only = True  # type: ignore[attr-defined]
        return scaler
    # any other transformer: its own transform, fed a DataFrame when it was fitted on one
    if getattr(t, "feature_names_in_", None) is not None:
        if in_names is None:
            raise _NotCompilable
        cols = list(in_names)

        def generic_named(X: np.ndarray) -> np.ndarray:
            return cast(np.ndarray, t.transform(pd.DataFrame(X, columns=cols, copy=False)))

        return generic_named
    return cast(Callable[[np.ndarray], np.ndarray], t.transform)


def _scaler_params(t: Any) -> tuple[np.ndarray | None, np.ndarray | None] | bool:
    """``(mean, scale)`` of a fitted float64 StandardScaler, else ``False``."""
    from sklearn.preprocessing import StandardScaler

    if type(t) is not StandardScaler or getattr(t, "_sklearn_output_config", {}).get(
        "transform"
    ) not in (None, "default", "pandas"):
        return False
    mean = t.mean_ if t.with_mean else None
    scale = t.scale_ if t.with_std else None
    if any(a is not None and a.dtype != np.float64 for a in (mean, scale)):
        return False
    return mean, scale


def _is_identity(t: Any) -> bool:
    """A ``FunctionTransformer()`` without a function (how ``remainder="passthrough"`` is
    fitted since scikit-learn 1.x): it hands its input on unchanged."""
    from sklearn.preprocessing import FunctionTransformer

    return type(t) is FunctionTransformer and t.func is None and not t.validate


class _NotCompilable(Exception):
    pass


def _output_names(t: Any) -> list[str] | None:
    """Column names of a transformer's pandas output (``None`` for array output)."""
    if (getattr(t, "_sklearn_output_config", None) or {}).get("transform") != "pandas":
        return None
    try:
        return [str(n) for n in t.get_feature_names_out()]
    except (AttributeError, ValueError, TypeError):
        return None


def _binary_logreg(model: Any) -> bool:
    from sklearn.linear_model import LogisticRegression

    return (
        type(model) is LogisticRegression
        and len(model.classes_) == 2
        and model.coef_.shape[0] == 1
        and getattr(model.coef_, "dtype", None) == np.float64
    )


def _decision(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``LinearClassifierMixin.decision_function`` of a binary model, minus its overhead.

    The same operations in the same order (``X @ coef_.T + intercept_``, flattened): with the
    same matrix layout the floats are bit-for-bit scikit-learn's. Folding the scaler into the
    coefficients would change the rounding, so the steps are kept apart.
    """
    coef_t, intercept = model.coef_.T, model.intercept_

    def decision(X: np.ndarray) -> np.ndarray:
        return cast(np.ndarray, (X @ coef_t + intercept).reshape(-1))

    return decision


def _final_predict(final: Any) -> tuple[Callable[[np.ndarray], Any], bool] | None:
    """A numpy ``predict`` for the final step, and whether it calls scikit-learn.

    - binary ``LogisticRegression``: labels from the sign of the decision, as sklearn does;
    - the runtime's ``ThresholdClassifier`` around one: ``(label, score)`` with
      ``score = expit(decision)`` (``LogisticRegression.predict_proba``'s binary branch).
    """
    if _binary_logreg(final):
        decision, classes = _decision(final), final.classes_

        def predict(X: np.ndarray) -> np.ndarray:
            return cast(np.ndarray, classes[(decision(X) > 0).astype(np.intp)])

        return predict, False
    if type(final).__name__ == "ThresholdClassifier" and type(final).__module__ == RUNTIME_MODULE:
        inner = final.estimator
        if not _binary_logreg(inner):
            return None
        from scipy.special import expit

        decision, classes = _decision(inner), inner.classes_
        threshold = final.threshold

        def predict_threshold(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            score = decision(X)
            expit(score, out=score)
            return classes[(score >= threshold).astype(np.intp)], score

        return predict_threshold, False
    return None


def compile_pipeline(
    pipeline: Any, schema: list[tuple[str, str]]
) -> tuple[Callable[[np.ndarray], Any], bool] | None:
    """A numpy function equal to ``pipeline.predict`` on a float64 matrix of the schema's
    columns, and whether it needs scikit-learn's config context (it calls sklearn code)."""
    if not all(t == "double" for _, t in schema) or not hasattr(pipeline, "steps"):
        return None
    steps = [s for _, s in pipeline.steps if s not in (None, "passthrough")]
    if not steps:
        return None
    *transformers, final = steps
    names: list[str] | None = [n for n, _ in schema]
    to_frame = None  # output names of the last transformer when it outputs pandas
    try:
        fns = []
        for t in transformers:
            fns.append(_transformer_fn(t, names))  # type: ignore[arg-type]
            names = None
            to_frame = _output_names(t)
    except (_NotCompilable, AttributeError):
        return None
    final_names = getattr(final, "feature_names_in_", None)
    if final_names is None and type(final).__name__ == "ThresholdClassifier":
        final_names = getattr(getattr(final, "estimator", None), "feature_names_in_", None)
    if final_names is not None and (to_frame is None or [str(n) for n in final_names] != to_frame):
        return None
    compiled = _final_predict(final)
    if compiled is None:
        if final_names is not None:
            return None
        predict, needs_config = final.predict, True
    else:
        predict, needs_config = compiled
    generic = any(not getattr(fn, "_numpy_only", False) for fn in fns)
    fortran = to_frame is not None  # np.asarray(DataFrame) is Fortran-ordered

    def fast(X: np.ndarray) -> Any:
        for fn in fns:
            X = fn(X)
        if fortran:
            X = np.asfortranarray(X)
        return predict(X)

    return fast, needs_config or generic
