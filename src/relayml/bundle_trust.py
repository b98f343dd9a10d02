"""Loading a bundle when ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` forbids unpickling.

relay opens MLflow's deserialization gate for its own loads when the variable is unset (it
loads bundles from the tracking store the team trusts), but an explicit ``false`` stands:
then a bundle is loaded only if that runs none of its author's code:

- a scikit-learn bundle saved with skops whose types are all ones skops trusts by default
  (scikit-learn, numpy, scipy), plus relay's own threshold wrapper when the
  ``relay_bundle_runtime.py`` shipped with it is byte for byte relay's own (it is then
  imported from relay, not from the bundle). The bundle's ``code`` folder is never put on
  ``sys.path``.
- anything else (a cloudpickled pyfunc bundle, a pickle, a skops file naming other types,
  shipped code) is refused with an error that says why and how to allow it.

This module reads models only; it imports MLflow's model API, not its tracking client.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relayml.errors import UsageError
from relayml.trust import import_skops

__all__ = ["load_without_pickle", "pickle_forbidden"]

_KEY = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
_RUNTIME_TYPE = "relay_bundle_runtime.ThresholdClassifier"


def pickle_forbidden() -> bool:
    """Whether the user explicitly set ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` to false.

    Example:
        >>> os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
        >>> pickle_forbidden()
        True
        >>> del os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"]
    """
    return os.environ.get(_KEY, "").strip().lower() in ("false", "0")


def _refuse(uri: str, why: str) -> UsageError:
    return UsageError(
        f"model {uri!r} cannot be loaded without running its author's code: {why}; "
        f"{_KEY}=false forbids that. If you trust whoever logged it, set {_KEY}=true "
        "(or unset it) and load it again"
    )


def load_without_pickle(uri: str, *, own_runtime: Callable[[str], bool]) -> Any:
    """The scikit-learn model at ``uri``, loaded through skops with default-trusted types only.

    Args:
        uri: a bundle URI.
        own_runtime: given the text of the bundle's shipped ``relay_bundle_runtime.py``, says
            whether it is relay's own (and then imports relay's copy).

    Returns:
        The fitted scikit-learn ``Pipeline``.

    Raises:
        UsageError: the bundle needs unpickling or its own code to load (the message names
            what and how to allow it).

    Example:
        >>> model = load_without_pickle(uri, own_runtime=lambda text: False)  # doctest: +SKIP
    """
    import mlflow
    from mlflow.models import Model

    skops_io = import_skops()

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    flavors = Model.load(local).flavors
    conf = flavors.get("sklearn")
    if conf is None:
        raise _refuse(uri, "it is a pyfunc model saved with cloudpickle")
    if conf.get("serialization_format") != "skops":
        raise _refuse(uri, f"it is saved as {conf.get('serialization_format')}")
    path = local / conf["pickled_model"]
    untrusted = set(skops_io.get_untrusted_types(file=path))
    shipped = local / (conf.get("code") or "code") / f"{_RUNTIME_TYPE.split('.')[0]}.py"
    if _RUNTIME_TYPE in untrusted and shipped.is_file() and own_runtime(shipped.read_text()):
        untrusted.discard(_RUNTIME_TYPE)
        trusted = [_RUNTIME_TYPE]
    else:
        trusted = []
    if untrusted:
        names = ", ".join(sorted(untrusted))
        raise _refuse(uri, f"its skops file holds types skops does not trust ({names})")
    return skops_io.load(path, trusted=trusted)
