"""Who and what relayml trusts when it turns stored bytes back into Python objects.

Stored outputs and bundles are data, not code. Two rules live here, and only here:

* **skops types.** :func:`skops_types` lists the types in a skops dump that skops does not
  trust by default (the bundle vouches for them because relay wrote them);
  :func:`unsafe_types` says which of them a reader may *not* trust whoever wrote the file:
  anything but classes of scikit-learn, numpy and scipy, scikit-learn estimator classes
  already imported (a project's own transformer), and numpy ufuncs.
* **skops's own list.** :func:`import_skops` imports skops with scikit-learn's estimator
  names (skops's default trusted types) from a cache private to the user, rather than
  importing all of scikit-learn to list them again in every process.
* **pickles.** :func:`check_pickle` lets a pickle be unpickled only when the project opted in
  (``[outputs] allow_pickle = true``) and the run that wrote it belongs to the current user
  or to one of ``[outputs] trusted_users``.

The current user is the MLflow tracking user (``MLFLOW_TRACKING_USERNAME``, the identity a
``relay server --auth`` checks) or else the login name.

This module imports neither MLflow nor the tracking store.

Example:
    >>> unsafe_types(["sklearn.tree._tree.Tree", "numpy.log1p", "os.system"])
    ['os.system']
"""

from __future__ import annotations

import getpass
import importlib
import json
import os
import re
import sys
import sysconfig
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from relayml.errors import UntrustedOutput
from relayml.usercache import cache_file, read_json, write_private

__all__ = ["check_pickle", "current_user", "import_skops", "skops_types", "unsafe_types"]

SAFE_PACKAGES = ("sklearn", "numpy", "scipy")


def current_user() -> str:
    """The user relay acts for: the MLflow tracking user, else the login name.

    Example:
        >>> os.environ["MLFLOW_TRACKING_USERNAME"] = "alice"
        >>> current_user()
        'alice'
        >>> del os.environ["MLFLOW_TRACKING_USERNAME"]
    """
    name = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def skops_types(
    obj: Any = None, *, data: bytes | None = None, file: Path | None = None
) -> list[str]:
    """Types skops would refuse to load, in ``obj``, in skops bytes ``data`` or in a ``file``.

    Example:
        >>> from sklearn.preprocessing import StandardScaler
        >>> skops_types(StandardScaler())
        []
    """
    skops_io = import_skops()
    if file is not None:
        return skops_io.get_untrusted_types(file=file)
    return skops_io.get_untrusted_types(data=data if data is not None else skops_io.dumps(obj))


def import_skops() -> types.ModuleType:
    """``skops.io``, imported without listing every scikit-learn estimator in each process.

    At import, skops lists scikit-learn's estimators (its default trusted types), which imports
    all of scikit-learn: about a second of every ``relay run`` that stores a model. The list
    depends only on the versions of scikit-learn and skops, so the first import writes it to
    ``$XDG_CACHE_HOME/relayml`` (``~/.cache/relayml``) and later imports read it back. A cache
    file is used only if it belongs to the user, no one else may write it, and it names only
    ``sklearn.`` classes; the trusted types are then exactly skops's own.

    Example:
        >>> skops_io = import_skops()
        >>> "sklearn.linear_model._logistic.LogisticRegression" in (
        ...     skops_io._general.SKLEARN_ESTIMATOR_TYPE_NAMES
        ... )
        True
    """
    from relayml.bundle_child import import_skops_named

    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    cache = _estimator_cache()
    names = _read_estimators(cache) if cache is not None else None
    skops_io = import_skops_named(names)
    if names is None and cache is not None:
        write_private(cache, json.dumps(skops_io._general.SKLEARN_ESTIMATOR_TYPE_NAMES).encode())
    return skops_io


_ESTIMATOR_NAME = re.compile(r"sklearn(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _estimator_cache() -> Path | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        versions = f"skops-{version('skops')}-sklearn-{version('scikit-learn')}"
    except PackageNotFoundError:
        return None
    return cache_file(f"{versions}-estimators.json")


def _read_estimators(path: Path) -> list[str] | None:
    """The cached names, or None for a missing, foreign, writable-by-others or odd file."""
    names = read_json(path)
    if not isinstance(names, list) or not names:
        return None
    if not all(isinstance(n, str) and _ESTIMATOR_NAME.fullmatch(n) for n in names):
        return None
    return names


def unsafe_types(types: Iterable[str]) -> list[str]:
    """The types a reader may not trust from a file someone else wrote.

    Safe are: classes of scikit-learn, numpy or scipy; scikit-learn estimator classes of a
    module already imported (a project's own transformer); functions of a project module
    already imported (``FunctionTransformer(features.clip_amount)``), never of the standard
    library or an installed package; numpy ufuncs. No module outside
    scikit-learn, numpy and scipy is imported to decide.

    Example:
        >>> unsafe_types(["numpy.log1p", "builtins.eval"])
        ['builtins.eval']
    """
    return [t for t in types if not _safe(t)]


def _safe(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    if not module or not attr:
        return False
    top = module.split(".")[0]
    if top in SAFE_PACKAGES:
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return False
        return isinstance(obj, type) or _is_ufunc(obj)
    held = sys.modules.get(module)
    obj = getattr(held, attr, None) if held is not None else None
    if isinstance(obj, types.FunctionType):  # e.g. FunctionTransformer(features.clip_amount)
        return obj.__module__ == module and _is_project_module(held)
    if not isinstance(obj, type):
        return False
    from sklearn.base import BaseEstimator

    return issubclass(obj, BaseEstimator)


def _is_project_module(module: Any) -> bool:
    """A module of the user's own code: a file outside the standard library, site-packages
    and relayml (so ``os.system`` or ``subprocess.run`` are never trusted as functions)."""
    file = getattr(module, "__file__", None)
    if not file or module.__name__.split(".")[0] == "relayml":
        return False
    path = Path(file).resolve()
    installed = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return not any(path.is_relative_to(Path(p).resolve()) for p in installed)


def _is_ufunc(obj: Any) -> bool:
    import numpy as np

    return isinstance(obj, np.ufunc)


def check_pickle(
    name: str, where: str, writer: str, *, allow_pickle: bool, trusted_users: Iterable[str]
) -> None:
    """Refuse to unpickle an output unless the project opted in and its writer is trusted.

    Args:
        name: the output's name.
        where: the run's key, for the message.
        writer: the user who wrote the run (its ``mlflow.user`` tag).
        allow_pickle: ``[outputs] allow_pickle`` of the reading project.
        trusted_users: ``[outputs] trusted_users`` of the reading project.

    Raises:
        UntrustedOutput: the output must not be unpickled; nothing was unpickled.

    Example:
        >>> check_pickle("m", "p/x@1", current_user(), allow_pickle=True, trusted_users=[])
        >>> check_pickle(
        ...     "m", "p/x@1", "mallory", allow_pickle=True, trusted_users=["bob"]
        ... )  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relayml.errors.UntrustedOutput: output 'm' of p/x@1 is a pickle written by 'mallory', ...
    """
    if not allow_pickle:
        raise UntrustedOutput(
            f"output {name!r} of {where} is a pickle (it could run code when loaded) and this "
            "project does not allow pickles; set [outputs] allow_pickle = true in relay.toml "
            "if you trust its writer"
        )
    me = current_user()
    if writer != me and writer not in set(trusted_users):
        raise UntrustedOutput(
            f"output {name!r} of {where} is a pickle written by {writer!r}, who is not in "
            f"[outputs] trusted_users (you are {me!r}); unpickling it could run their code on "
            f"this machine. Add {writer!r} to trusted_users in relay.toml only if you trust them"
        )
