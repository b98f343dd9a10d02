"""Loading a bundle for fast in-process prediction, and the bundle runtime in this process.

:func:`load_bundle` gives a :class:`Bundle`: raw records in, predictions out. For all-numeric
inputs it predicts on the pipeline's steps directly (numpy arrays, no per-request DataFrame,
scikit-learn validation switched off; see :mod:`relayml.bundle_compile`), with results
bit-for-bit equal to ``pipeline.predict(raw_df)``.

:func:`runtime` imports the bundle runtime (:mod:`relayml.bundle_runtime`) under the name it
has inside bundles, ``relay_bundle_runtime``, from a copy of its file: objects made from it
are stored by that name, so that a bundle loads where relayml is not installed.

This module reads models through MLflow's model API; it does not import MLflow's tracking
client.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from relayml import bundle_runtime
from relayml import tags as tag
from relayml.bundle_compile import RUNTIME_MODULE, compile_pipeline
from relayml.bundle_trust import load_without_pickle, pickle_forbidden
from relayml.errors import BundleInputError, NotFound, UsageError
from relayml.store import Store
from relayml.trust import import_skops

__all__ = ["Bundle", "allow_deserialization", "load_bundle", "runtime", "runtime_source"]

#: sha256 of runtime modules shipped by earlier relayml versions (still relay's own code).
_EARLIER_RUNTIMES = frozenset({"37b2b05198b34f0042597386d0d33226f5a1d59e19bf81806279f3e5b9f3982c"})


def runtime_source() -> str:
    """The text of the bundle runtime module, as bundles ship it.

    Example:
        >>> "class ThresholdClassifier" in runtime_source()
        True
    """
    return Path(bundle_runtime.__file__).read_text(encoding="utf-8")


def runtime() -> types.ModuleType:
    """The bundle runtime imported as ``relay_bundle_runtime`` (written once per process).

    Its folder goes on ``sys.path`` so that unpickling in this process can import it; the
    bundle ships the file (see :mod:`relayml.bundle_requirements`).

    Example:
        >>> runtime().ThresholdClassifier.__module__
        'relay_bundle_runtime'
    """
    module = sys.modules.get(RUNTIME_MODULE)
    if module is None or not Path(module.__file__ or "").exists():
        folder = Path(tempfile.mkdtemp(prefix="relay-bundle-"))
        (folder / f"{RUNTIME_MODULE}.py").write_text(runtime_source(), encoding="utf-8")
        sys.path.append(str(folder))
        sys.modules.pop(RUNTIME_MODULE, None)
        module = importlib.import_module(RUNTIME_MODULE)
    return module


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
            return cast(np.ndarray, fast(X))
        with _sklearn_config():
            return cast(np.ndarray, fast(X))

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
def allow_deserialization() -> Iterator[None]:
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
    digest = hashlib.sha256(text.encode()).hexdigest()
    if text != runtime_source() and digest not in _EARLIER_RUNTIMES:
        return False
    runtime()
    return True


def load_bundle(uri: str, *, store: Store | None = None) -> Bundle:
    """Load a bundle for fast in-process prediction.

    Args:
        uri: ``models:/m-...``, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
            ``runs:/RUN_ID/model`` or a local model folder.
        store: the tracking store ``models:/`` and ``runs:/`` URIs refer to (a run's
            ``run.store``); default: MLflow's current tracking URI.

    Returns:
        A :class:`Bundle`.

    Raises:
        NotFound: no model at ``uri``.
        UsageError: the model has no column-based input signature, or
            ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` and it cannot load without
            unpickling (see :mod:`relayml.bundle_trust`).

    Example:
        >>> run = relay.get("training/logreg@latest")
        >>> bundle = load_bundle(run.model_uri, store=run.store)
        >>> bundle.output_columns, bundle.numeric
        (['label', 'score'], True)
        >>> raw = relay.get("load/transactions@latest").load()
        >>> prediction = bundle.predict(raw.head(3))
        >>> list(prediction.columns), len(prediction)
        (['label', 'score'], 3)
    """
    import mlflow
    from mlflow.models import get_model_info

    if store is not None:
        store.activate()  # MLflow resolves models:/ and runs:/ URIs on its fluent API
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
    if pickle_forbidden():  # the user's explicit MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
        model = load_without_pickle(uri, own_runtime=_own_runtime)
        compiled = compile_pipeline(model, schema)
    else:
        with allow_deserialization():
            if "sklearn" in info.flavors:
                import_skops()  # before MLflow imports it (not listing scikit-learn again)
                model = mlflow.sklearn.load_model(uri)
                compiled = compile_pipeline(model, schema)
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
