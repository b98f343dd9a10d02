"""Logging a bundle: a fitted processor and model saved as one MLflow model, then proven.

:func:`log_bundle` computes the bundle's pip requirements and the project code it ships
(:mod:`relayml.bundle_requirements`), saves the MLflow model into a local folder, and hands
that folder to the load proof (:mod:`relayml.bundle_proof`) while it uploads the same folder
as a logged model (MLflow 3) of the training run. The logged model is READY once the proof
passed; a bundle that fails it is deleted.

relay does what ``mlflow.<flavor>.log_model`` does, through the store, minus what the proof
replaces: MLflow's requirement inference (relay passes explicit requirements) and its
in-process validation of the serving input example (relay loads and predicts the example in
a clean interpreter instead), and without downloading the model it just wrote.

All tracking calls go through :class:`relayml.store.Store`; this module saves models with
MLflow's flavor API only.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from relayml.bundle_child import prediction_arrays
from relayml.bundle_load import runtime
from relayml.bundle_proof import LoadProof
from relayml.bundle_requirements import BundleNeeds, bundle_needs
from relayml.errors import RelayError, UsageError
from relayml.store import Store, current_store
from relayml.trust import skops_types

__all__ = ["log_bundle", "register"]


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
    store: Store | None = None,
) -> str:
    """Log a processor and a model as one MLflow model that takes raw records, and prove it.

    The bundle's pip requirements are computed from the objects it stores (see
    :mod:`relayml.bundle_requirements`): the distributions their classes and functions come
    from, pinned to the installed versions, plus ``mlflow``, ``pandas`` (the input) and the
    serializer. Functions and classes of the project are shipped with their module, which must
    not import relayml. The saved bundle is loaded in a child interpreter that can import only
    those requirements and that code (see :mod:`relayml.bundle_proof`), and its prediction of
    the input example must equal relay's, bit for bit.

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
        store: the tracking store of the run (the runner passes the project's); default: a
            store on MLflow's current tracking URI.

    Returns:
        The model URI, ``models:/m-...``.

    Raises:
        UsageError: a processor or model that cannot be bundled, or an empty example.
        BundleError: the bundle would not load without relayml: it holds a lambda or a
            function of a module that imports relayml (refused before logging), or it failed
            to load and predict in the clean child interpreter (the logged model is deleted).

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.preprocessing import StandardScaler
        >>> raw = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "Class": [0, 0, 1, 1]})
        >>> proc = StandardScaler().fit(raw[["x"]])
        >>> model = LogisticRegression().fit(proc.transform(raw[["x"]]), raw["Class"])
        >>> run = relay.get("training/logreg@latest")
        >>> uri = log_bundle(proc, model, raw_example=raw, run_id=run.run_id, store=run.store)
        >>> relay.load_bundle(uri, store=run.store).predict(raw).tolist()
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
    stored, flavor = assemble(processor, model, example, threshold)
    serializer = "skops" if flavor == "sklearn" else "cloudpickle"
    needs = bundle_needs(
        {"processor": processor, "model": model, "bundle": stored},
        always=("mlflow", "pandas", serializer),
    )
    store = store or current_store()
    with proof or LoadProof() as child, tempfile.TemporaryDirectory(prefix="relay-bundle-") as tmp:
        model_id, location = store.create_logged_model(run_id, name=name, tags=tags)
        try:
            local = Path(tmp) / "model"
            _save(stored, flavor, local, example, needs, run_id, model_id, location)
            child.start(local, needs, example)  # the child loads it while it is uploaded
            store.log_model_artifacts(model_id, local)
            store.link_logged_model(run_id, model_id)
            child.result(prediction_arrays(predict_stored(stored, flavor, example)))
            store.finalize_logged_model(model_id, ready=True)
        except BaseException:
            _forget(store, model_id)
            raise
    return f"models:/{model_id}"


def _is_sklearn_transformer(obj: Any) -> bool:
    return hasattr(obj, "transform") and hasattr(obj, "fit") and hasattr(obj, "get_params")


def assemble(
    processor: Any, model: Any, example: pd.DataFrame, threshold: float | None
) -> tuple[Any, str]:
    """The object a bundle stores and its MLflow flavor (``sklearn`` or ``pyfunc``).

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.preprocessing import StandardScaler
        >>> raw = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
        >>> model = LogisticRegression().fit(raw, [0, 0, 1, 1])
        >>> stored, flavor = assemble(StandardScaler().fit(raw), model, raw, 0.3)
        >>> flavor, type(stored.steps[-1][1]).__module__
        ('sklearn', 'relay_bundle_runtime')
    """
    if _is_sklearn_transformer(processor) and hasattr(model, "get_params"):
        from sklearn.pipeline import Pipeline

        final = model
        if threshold is not None:
            final = runtime().ThresholdClassifier(model, float(threshold))
        return Pipeline([("processor", processor), ("model", final)]), "sklearn"
    if callable(processor):
        import mlflow.pyfunc  # noqa: F401  (its import resets warning filters)

        with warnings.catch_warnings():  # MLflow's "add type hints" notice on PythonModel
            warnings.simplefilter("ignore", UserWarning)
            function_bundle = runtime().FunctionBundle
        cut = None if threshold is None else float(threshold)
        return function_bundle(processor, model, list(example.columns), cut), "pyfunc"
    raise UsageError(
        f"log_bundle: processor {type(processor).__name__} is neither a scikit-learn "
        "transformer (fit/transform) nor a function DataFrame -> features"
    )


def predict_stored(stored: Any, flavor: str, frame: pd.DataFrame) -> Any:
    """The prediction of an assembled bundle (see :func:`assemble`) on raw records.

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.preprocessing import StandardScaler
        >>> raw = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
        >>> proc = StandardScaler().fit(raw)
        >>> model = LogisticRegression().fit(proc.transform(raw), [0, 0, 1, 1])
        >>> stored, flavor = assemble(proc, model, raw, None)
        >>> predict_stored(stored, flavor, raw).tolist()
        [0, 0, 1, 1]
    """
    return stored.predict(frame) if flavor == "sklearn" else stored.predict(None, frame)


def signature(example: pd.DataFrame, output: Any) -> Any:
    """The MLflow signature of a bundle: raw input columns and types, and its output.

    Example:
        >>> signature(pd.DataFrame({"x": [1.0]}), [0]).inputs.input_names()
        ['x']
    """
    from mlflow.models import infer_signature

    with warnings.catch_warnings():  # "integer columns cannot hold missing values": labels don't
        warnings.simplefilter("ignore", UserWarning)
        return infer_signature(example, output)


def _save(
    stored: Any,
    flavor: str,
    local: Path,
    example: pd.DataFrame,
    needs: BundleNeeds,
    run_id: str,
    model_id: str,
    location: str,
) -> None:
    """Save the bundle as an MLflow model folder with its computed requirements and code."""
    import mlflow
    from mlflow.models import Model

    common: dict[str, Any] = {
        "mlflow_model": Model(
            artifact_path=location, model_uuid=model_id, run_id=run_id, model_id=model_id
        ),
        "signature": signature(example, predict_stored(stored, flavor, example)),
        "input_example": example,
        "code_paths": needs.code_paths or None,
        "pip_requirements": needs.requirements,
    }
    if flavor == "sklearn":
        mlflow.sklearn.save_model(
            stored,
            str(local),
            serialization_format="skops",
            skops_trusted_types=skops_types(stored) or None,
            **common,
        )
    else:
        mlflow.pyfunc.save_model(str(local), python_model=stored, **common)


def _forget(store: Store, model_id: str) -> None:
    """Delete a logged model that is not a good bundle (best effort)."""
    with contextlib.suppress(Exception):  # the bundle's own error is the one to report
        store.finalize_logged_model(model_id, ready=False)
    with contextlib.suppress(Exception):
        store.delete_logged_model(model_id)


def register(
    model_uri: str, name: str, alias: str = "champion", *, store: Store | None = None
) -> int:
    """Register a bundle in the model registry and point an alias at the new version.

    Args:
        model_uri: a bundle URI (``models:/m-...`` or ``runs:/...``).
        name: registered model name.
        alias: alias to set on the new version; ``models:/NAME@ALIAS`` then resolves to it.
        store: the tracking store holding the bundle (default: a store on MLflow's current
            tracking URI).

    Returns:
        The new version number.

    Raises:
        RelayError: MLflow refused (the message says why).

    Example:
        >>> run = relay.get("training/logreg@latest")
        >>> version = register(run.model_uri, "fraud-doc", alias="candidate", store=run.store)
        >>> relay.load_bundle("models:/fraud-doc@candidate", store=run.store).uri
        'models:/fraud-doc@candidate'
    """
    from mlflow.exceptions import MlflowException

    store = store or current_store()
    version = store.register_model_version(model_uri, name)
    try:
        store.set_registered_model_alias(name, alias, version)
    except MlflowException as e:
        raise RelayError(f"alias {alias!r} of {name!r} version {version}: {e.message}") from e
    return version
