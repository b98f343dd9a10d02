"""The bundle: a fitted processor and a fitted model logged as one MLflow model.

A bundle takes *raw* records (the columns the processor consumes) and returns predictions.
Its MLflow signature is the raw-input schema, it carries an input example and its pip
requirements, and it loads with ``mlflow.pyfunc.load_model`` in an environment where relayml
is **not** installed:

- when processor and model are scikit-learn compatible, the bundle *is* a scikit-learn
  ``Pipeline([("processor", processor), ("model", model)])`` logged with the sklearn flavor;
- otherwise (e.g. a processor that is a plain function) it is a pyfunc model that ships the
  project module defining the function through ``code_paths``.

Its pip requirements are computed from the objects it stores and the project code it ships
must not import relayml (:mod:`relayml.bundle_requirements`); once logged, it is proven to
load and predict in a child interpreter without relayml (:mod:`relayml.bundle_proof`).

A classifier bundle can carry the decision threshold chosen in training; it then answers a
DataFrame with columns ``label`` and ``score`` (``score`` = probability of the positive class,
``label`` = positive class when ``score >= threshold``). The small class that does this lives in
a standalone module, ``relay_bundle_runtime``, generated from :data:`_RUNTIME_SOURCE` and shipped
with the model through ``code_paths``; it imports numpy, pandas and scikit-learn only.

:func:`load_bundle` gives a fast in-process predictor for serving and batch scoring: for
all-numeric inputs it predicts on the pipeline's steps directly (numpy arrays, no per-request
DataFrame, scikit-learn validation switched off), with results bit-for-bit equal to
``pipeline.predict(raw_df)``.

This module must not import the rest of relayml's runtime (runner, chain, cli): the runner
calls it, not the reverse.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relayml import tags as tag
from relayml.bundle_child import prediction_arrays
from relayml.bundle_proof import LoadProof
from relayml.bundle_requirements import BundleNeeds, bundle_needs
from relayml.errors import BundleInputError, NotFound, RelayError, UsageError
from relayml.trust import skops_types

__all__ = ["Bundle", "load_bundle", "log_bundle", "register"]

_RUNTIME_MODULE = "relay_bundle_runtime"

#: Source of the standalone module shipped with every bundle that needs custom code.
#: It must never import relayml: bundles load where relayml is not installed.
_RUNTIME_SOURCE = '''\
"""Runtime of relayml bundles (generated; imports numpy, pandas, scikit-learn only)."""

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin


def _label_score(estimator, X, threshold):
    classes = np.asarray(estimator.classes_)
    if len(classes) != 2:
        raise ValueError(
            f"a decision threshold needs a binary classifier; got classes {classes.tolist()}"
        )
    score = estimator.predict_proba(X)[:, 1]
    label = classes[(score >= threshold).astype(np.intp)]
    return pd.DataFrame({"label": label, "score": score})


class ThresholdClassifier(ClassifierMixin, BaseEstimator):
    """A fitted binary classifier with a decision threshold; predicts ``label`` and ``score``."""

    def __init__(self, estimator=None, threshold=0.5):
        self.estimator = estimator
        self.threshold = threshold

    def fit(self, X, y=None, **fit_params):
        self.estimator.fit(X, y, **fit_params)
        return self

    @property
    def classes_(self):
        return self.estimator.classes_

    def __sklearn_is_fitted__(self):
        return hasattr(self.estimator, "classes_")

    def predict_proba(self, X):
        return self.estimator.predict_proba(X)

    def predict(self, X):
        return _label_score(self.estimator, X, self.threshold)


try:
    import mlflow.pyfunc as _pyfunc

    class FunctionBundle(_pyfunc.PythonModel):
        """A processor function followed by a model, as an MLflow pyfunc model."""

        _skip_type_hint_validation = True  # the signature is explicit

        def __init__(self, processor, model, columns, threshold=None):
            self.processor = processor
            self.model = model
            self.columns = list(columns)
            self.threshold = threshold

        def predict(self, context, model_input, params=None):
            X = self.processor(pd.DataFrame(model_input)[self.columns])
            if self.threshold is None:
                return self.model.predict(X)
            return _label_score(self.model, X, self.threshold)

except ImportError:  # pragma: no cover - mlflow is always there where bundles are logged
    pass
'''


# --------------------------------------------------------------------------------------------
# the standalone runtime module


def _runtime() -> types.ModuleType:
    """Write (once per process) and import the standalone runtime module.

    Its folder goes on ``sys.path`` so that unpickling in this process can import it; the
    bundle ships the file (see :mod:`relayml.bundle_requirements`).
    """
    module = sys.modules.get(_RUNTIME_MODULE)
    if module is None or not Path(module.__file__ or "").exists():
        folder = Path(tempfile.mkdtemp(prefix="relay-bundle-"))
        (folder / f"{_RUNTIME_MODULE}.py").write_text(_RUNTIME_SOURCE)
        sys.path.append(str(folder))
        sys.modules.pop(_RUNTIME_MODULE, None)
        import mlflow.pyfunc  # noqa: F401  (its import resets warning filters)

        with warnings.catch_warnings():  # MLflow's "add type hints" notice on PythonModel
            warnings.simplefilter("ignore", UserWarning)
            module = importlib.import_module(_RUNTIME_MODULE)
    return module


# --------------------------------------------------------------------------------------------
# logging


def _is_sklearn_transformer(obj: Any) -> bool:
    return hasattr(obj, "transform") and hasattr(obj, "fit") and hasattr(obj, "get_params")


def _signature(example: pd.DataFrame, output: Any) -> Any:
    from mlflow.models import infer_signature

    with warnings.catch_warnings():  # "integer columns cannot hold missing values": labels don't
        warnings.simplefilter("ignore", UserWarning)
        return infer_signature(example, output)


def log_bundle(
    processor: Any,
    model: Any,
    *,
    raw_example: pd.DataFrame,
    run_id: str,
    threshold: float | None = None,
    name: str = "model",
    tags: dict[str, str] | None = None,
    proof: LoadProof | None = None,
) -> str:
    """Log a processor and a model as one MLflow model that takes raw records, and prove it.

    The bundle's pip requirements are computed from the objects it stores (see
    :mod:`relayml.bundle_requirements`): the distributions their classes and functions come
    from, pinned to the installed versions, plus ``mlflow``, ``pandas`` (the input) and the
    serializer. Functions and classes of the project are shipped with their module, which must
    not import relayml. Once logged, the bundle is loaded in a child interpreter that can import
    only those requirements and that code (see :mod:`relayml.bundle_proof`), and its
    prediction of the input example must equal relay's, bit for bit.

    Args:
        processor: fitted processor. A scikit-learn transformer (its ``feature_names_in_``
            are the raw columns) or a plain function ``DataFrame -> features``.
        model: fitted model with ``predict`` (and ``predict_proba`` if ``threshold`` is set).
        raw_example: a few raw records; columns the processor does not consume (target, keys,
            timestamps) are dropped when the processor has ``feature_names_in_``. Gives the
            signature (raw columns and types) and the input example.
        run_id: the training run the model is linked to (MLflow 3 logged model).
        threshold: decision threshold of a binary classifier; the bundle then predicts a
            DataFrame with columns ``label`` and ``score``.
        name: name of the logged model.
        tags: tags of the logged model.
        proof: a :class:`~relayml.bundle_proof.LoadProof` started earlier (the runner starts
            one when a training step begins, so that its imports overlap the fit); default:
            one started now. It is used up and closed.

    Returns:
        The model URI, ``models:/m-...``.

    Raises:
        UsageError: a processor or model that cannot be bundled, or an empty example.
        BundleError: the bundle would not load without relayml: it holds a lambda or a
            function of a module that imports relayml (refused before logging), or it failed
            to load and predict in the clean child interpreter (the logged model is deleted).

    Example:
        >>> import mlflow, pandas as pd
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.preprocessing import StandardScaler
        >>> raw = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "Class": [0, 0, 1, 1]})
        >>> proc = StandardScaler().fit(raw[["x"]])
        >>> model = LogisticRegression().fit(proc.transform(raw[["x"]]), raw["Class"])
        >>> with mlflow.start_run() as run:  # doctest: +SKIP
        ...     uri = log_bundle(proc, model, raw_example=raw, run_id=run.info.run_id)
        >>> load_bundle(uri).predict(raw).tolist()  # doctest: +SKIP
        [0, 0, 1, 1]
    """

    if not isinstance(raw_example, pd.DataFrame) or raw_example.empty:
        raise UsageError(
            "log_bundle: raw_example must be a non-empty pandas DataFrame of raw records"
        )
    if not hasattr(model, "predict"):
        raise UsageError(f"log_bundle: model {type(model).__name__} has no predict method")
    if threshold is not None and not hasattr(model, "predict_proba"):
        raise UsageError(
            f"log_bundle: a threshold needs a classifier with predict_proba; "
            f"{type(model).__name__} has none (pass threshold=None)"
        )

    columns = getattr(processor, "feature_names_in_", None)
    if columns is not None:
        missing = [c for c in columns if c not in raw_example.columns]
        if missing:
            raise UsageError(
                f"log_bundle: raw_example lacks columns the processor consumes: {missing}"
            )
        example = raw_example[list(columns)]
    else:
        example = raw_example
    example = example.head(5).reset_index(drop=True)
    stored, flavor = _assemble(processor, model, example, threshold)
    serializer = "skops" if flavor == "sklearn" else "cloudpickle"
    needs = bundle_needs(
        {"processor": processor, "model": model, "bundle": stored},
        always=("mlflow", "pandas", serializer),
    )
    with proof or LoadProof() as child:
        model_id = _log(stored, flavor, example, run_id, needs, name, tags)
        try:
            _prove(child, stored, flavor, model_id, needs)
        except BaseException:
            _forget(model_id)
            raise
    return f"models:/{model_id}"


def _assemble(
    processor: Any, model: Any, example: pd.DataFrame, threshold: float | None
) -> tuple[Any, str]:
    """The object the bundle stores and its MLflow flavor (``sklearn`` or ``pyfunc``)."""
    if _is_sklearn_transformer(processor) and hasattr(model, "get_params"):
        from sklearn.pipeline import Pipeline

        final = model
        if threshold is not None:
            final = _runtime().ThresholdClassifier(model, float(threshold))
        return Pipeline([("processor", processor), ("model", final)]), "sklearn"
    if callable(processor):
        wrapped = _runtime().FunctionBundle(
            processor, model, list(example.columns), None if threshold is None else float(threshold)
        )
        return wrapped, "pyfunc"
    raise UsageError(
        f"log_bundle: processor {type(processor).__name__} is neither a scikit-learn "
        "transformer (fit/transform) nor a function DataFrame -> features"
    )


def _predict_stored(stored: Any, flavor: str, frame: pd.DataFrame) -> Any:
    return stored.predict(frame) if flavor == "sklearn" else stored.predict(None, frame)


def _log(
    stored: Any,
    flavor: str,
    example: pd.DataFrame,
    run_id: str,
    needs: BundleNeeds,
    name: str,
    tags: dict[str, str] | None,
) -> str:
    """Log the bundle with its computed requirements and code; returns the model id."""
    import mlflow

    signature = _signature(example, _predict_stored(stored, flavor, example))
    # Created here so that the model lives in the training run's experiment (MLflow would
    # otherwise put it in the active experiment, by default "Default" under ./mlruns).
    run = mlflow.MlflowClient().get_run(run_id)
    model_id = mlflow.initialize_logged_model(
        name=name,
        source_run_id=run_id,
        tags=tags,
        params=dict(run.data.params),
        experiment_id=run.info.experiment_id,
    ).model_id
    common = {
        "signature": signature,
        "input_example": example,
        "code_paths": needs.code_paths or None,
        "pip_requirements": needs.requirements,
        "run_id": run_id,
        "model_id": model_id,
    }
    try:
        if flavor == "sklearn":
            mlflow.sklearn.log_model(
                stored, name=name, skops_trusted_types=skops_types(stored) or None, **common
            )
        else:  # mlflow.pyfunc.log_model takes no run_id: call what it calls, with the run
            mlflow.models.Model.log(
                artifact_path=None,
                name=name,
                flavor=mlflow.pyfunc,
                python_model=stored,
                flavor_name="pyfunc",
                **common,
            )
    except BaseException:
        _forget(model_id)
        raise
    return model_id


def _prove(proof: LoadProof, stored: Any, flavor: str, model_id: str, needs: BundleNeeds) -> None:
    """Hand the logged bundle to the child and compare its prediction with relay's."""
    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="relay-bundle-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=tmp))
        example = Model.load(str(local)).load_input_example(str(local))
        expected = prediction_arrays(_predict_stored(stored, flavor, example))
        proof.check(local, expected, needs)


def _forget(model_id: str) -> None:
    """Delete a logged model that is not a good bundle (best effort)."""
    import mlflow

    with contextlib.suppress(Exception):
        mlflow.MlflowClient().delete_logged_model(model_id)


def register(model_uri: str, name: str, alias: str = "champion") -> int:
    """Register a bundle in the model registry and point an alias at the new version.

    Args:
        model_uri: a bundle URI (``models:/m-...`` or ``runs:/...``).
        name: registered model name.
        alias: alias to set on the new version; ``models:/NAME@ALIAS`` then resolves to it.

    Returns:
        The new version number.

    Example:
        >>> version = register(uri, "fraud", alias="champion")  # doctest: +SKIP
        >>> load_bundle("models:/fraud@champion").uri  # doctest: +SKIP
        'models:/fraud@champion'
    """
    import mlflow

    try:
        mv = mlflow.register_model(model_uri, name)
        mlflow.MlflowClient().set_registered_model_alias(name, alias, mv.version)
    except mlflow.exceptions.MlflowException as e:
        raise RelayError(f"register {model_uri!r} as {name!r}: {e.message}") from e
    return int(mv.version)


# --------------------------------------------------------------------------------------------
# loading and fast prediction


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
            return t.transform(pd.DataFrame(X, columns=cols, copy=False))

        return generic_named
    return t.transform


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


def _sklearn_config() -> Any:
    import sklearn

    return sklearn.config_context(assume_finite=True, skip_parameter_validation=True)


_NUMERIC = {"double": np.float64}


@dataclass
class Bundle:
    """A loaded bundle: raw records in, predictions out.

    Attributes:
        uri: the model URI it was loaded from.
        input_schema: raw input columns and their MLflow types, e.g. ``[("Time", "double")]``.
        provenance: the ``relay.*`` tags of the training run that logged it (empty if none).
        output_columns: ``["label", "score"]`` for a bundle with a threshold, else ``None``
            (predictions are then a 1-d array).
        model: the underlying scikit-learn ``Pipeline`` or MLflow pyfunc model.
    """

    uri: str
    input_schema: list[tuple[str, str]]
    provenance: dict[str, str]
    model: Any
    output_columns: list[str] | None = None
    _fast: Callable[[np.ndarray], Any] | None = field(default=None, repr=False)
    _fast_config: bool = field(default=True, repr=False)

    @property
    def columns(self) -> list[str]:
        """Names of the raw input columns, in schema order."""
        return [n for n, _ in self.input_schema]

    @property
    def numeric(self) -> bool:
        """Whether every input column is a double (the fast matrix path applies)."""
        return self._fast is not None

    def frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """Check ``df`` against the input schema and keep the schema columns, in order.

        Extra columns are ignored, as MLflow's schema enforcement does.

        Raises:
            BundleInputError: a missing column, a column of the wrong type, or no rows.
        """
        if len(df) == 0:
            raise BundleInputError("empty input: send at least one record")
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise BundleInputError(
                f"missing column {missing[0]!r} (the model needs {len(self.columns)} columns: "
                f"{', '.join(self.columns)})",
                field=missing[0],
            )
        out = {}
        for name, dtype in self.input_schema:
            col = df[name]
            if dtype in ("double", "float"):
                if col.dtype.kind not in "fiu":
                    raise BundleInputError(
                        f"column {name!r} must be a number ({dtype}); got {col.dtype} values",
                        field=name,
                    )
                col = col.astype(np.float64 if dtype == "double" else np.float32, copy=False)
            elif dtype in ("long", "integer") and col.dtype.kind not in "iu":
                raise BundleInputError(
                    f"column {name!r} must be an integer ({dtype}); got {col.dtype} values",
                    field=name,
                )
            out[name] = col
        return pd.DataFrame(out)

    def predict_matrix(self, X: np.ndarray) -> Any:
        """Predict on a float64 matrix whose columns are :attr:`columns` (numeric bundles).

        Example:
            >>> bundle.predict_matrix(raw[bundle.columns].to_numpy())  # doctest: +SKIP
            array([0, 0, 1, 1])
        """
        if self._fast is None:
            return self.predict(pd.DataFrame(X, columns=self.columns))
        out = self.score_matrix(X)
        if isinstance(out, tuple):
            names = self.output_columns or ["label", "score"]
            return pd.DataFrame(dict(zip(names, out, strict=True)))
        return out

    def score_matrix(self, X: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Like :meth:`predict_matrix` (numeric bundles only), without building a DataFrame.

        Returns:
            A 1-d array of predictions, or for a bundle with a threshold the tuple of arrays
            ``(label, score)``, in :attr:`output_columns` order.

        Example:
            >>> label, score = bundle.score_matrix(raw[bundle.columns].to_numpy())  # doctest: +SKIP
        """
        fast = self._fast
        if fast is None:
            raise UsageError(f"bundle {self.uri} is not numeric; use predict(DataFrame)")
        if X.dtype != np.float64:
            X = X.astype(np.float64)
        if math.isnan(X.sum()) and np.isnan(X).any():  # the sum is the cheap test
            col = self.columns[int(np.nonzero(np.isnan(X).any(axis=0))[0][0])]
            raise BundleInputError(f"column {col!r} has a missing value (null/NaN)", field=col)
        if not self._fast_config:  # pure numpy: no scikit-learn call to configure
            return fast(X)
        with _sklearn_config():
            return fast(X)

    def predict(self, df: pd.DataFrame) -> Any:
        """Predict on raw records.

        Args:
            df: raw records; extra columns are ignored.

        Returns:
            A 1-d array of predictions, or a DataFrame ``label``/``score`` for a bundle
            with a threshold.

        Raises:
            BundleInputError: input that does not match the schema.

        Example:
            >>> load_bundle(uri).predict(raw_df)  # doctest: +SKIP
            array([0, 0, 1, 1])
        """
        frame = self.frame(df)
        if self._fast is not None:
            return self.predict_matrix(np.asarray(frame.to_numpy(dtype=np.float64)))
        try:
            if hasattr(self.model, "steps"):
                with _sklearn_config():
                    return self.model.predict(frame)
            return self.model.predict(frame)
        except (ValueError, TypeError, KeyError) as e:
            raise BundleInputError(f"the model rejected the input: {e}") from e


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
        return (X @ coef_t + intercept).reshape(-1)

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
            return classes[(decision(X) > 0).astype(np.intp)]

        return predict, False
    if type(final).__name__ == "ThresholdClassifier" and type(final).__module__ == _RUNTIME_MODULE:
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


def _compile(
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


def _provenance(run_id: str | None) -> dict[str, str]:
    if not run_id:
        return {}
    import mlflow

    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return {}
    return {k: v for k, v in sorted(run.data.tags.items()) if k.startswith(tag.PREFIX)}


@contextlib.contextmanager
def _allow_deserialization() -> Iterator[None]:
    """Let MLflow deserialize the model for the duration of one load.

    MLflow 3.17 refuses to deserialize any scikit-learn model (skops included) unless
    ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``. relay loads bundles it logged itself, from
    the tracking store the team trusts, so it opens the gate for its own loads only.
    """
    key = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    before = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _own_runtime(text: str) -> bool:
    """Whether a shipped runtime module is relay's own source; if so, import relay's copy."""
    if text != _RUNTIME_SOURCE:
        return False
    _runtime()
    return True


def load_bundle(uri: str) -> Bundle:
    """Load a bundle for fast in-process prediction.

    Args:
        uri: ``models:/m-...``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
            ``runs:/RUN_ID/model`` or a local model folder.

    Returns:
        A :class:`Bundle`.

    Raises:
        NotFound: no model at ``uri``.
        UsageError: the model has no column-based input signature, or
            ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` and it cannot load without
            unpickling (see :mod:`relayml.bundle_trust`).

    Example:
        >>> bundle = load_bundle("models:/fraud@champion")  # doctest: +SKIP
        >>> bundle.predict(raw_df)[:3]  # doctest: +SKIP
        array([0, 0, 0])
    """
    import mlflow
    from mlflow.models import get_model_info

    try:
        info = get_model_info(uri)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise NotFound(f"no model at {uri!r}: {getattr(e, 'message', e)}") from e
    signature = info.signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        raise UsageError(f"model {uri!r} has no column-based input signature; is it a bundle?")
    schema = [
        (spec.name, getattr(spec.type, "name", str(spec.type))) for spec in signature.inputs.inputs
    ]
    outputs = signature.outputs
    output_columns = (
        [s.name for s in outputs.inputs]
        if outputs is not None and outputs.has_input_names()
        else None
    )
    from relayml.bundle_trust import load_without_pickle, pickle_forbidden

    if pickle_forbidden():  # the user's explicit MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
        model = load_without_pickle(uri, own_runtime=_own_runtime)
        compiled = _compile(model, schema)
    else:
        with _allow_deserialization():
            if "sklearn" in info.flavors:
                model = mlflow.sklearn.load_model(uri)
                compiled = _compile(model, schema)
            else:
                model = mlflow.pyfunc.load_model(uri)
                compiled = None
    return Bundle(
        uri=uri,
        input_schema=schema,
        provenance=_provenance(info.run_id),
        model=model,
        output_columns=output_columns,
        _fast=compiled[0] if compiled else None,
        _fast_config=compiled[1] if compiled else True,
    )
