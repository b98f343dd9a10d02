"""The child side of a bundle's load proof: load a bundle without relayml and predict.

:mod:`relayml.bundle_proof` runs this file as a script, ``python -I -B bundle_child.py``: an
isolated interpreter (no ``PYTHONPATH``, no user site, no current folder on ``sys.path``, no
bytecode written into a bundle's code) that must never import relayml, so this file imports only
the standard library at its top. The parent talks to it on stdin, one JSON object per line:

1. ``{"allowed": [...], "warm": [...]}``: the top-level modules of MLflow and its
   dependencies (every bundle requires MLflow). From then on any other import fails as if the
   module were not installed: relayml, test tools, Dask... The ``warm`` modules (pandas,
   Parquet, scikit-learn) are imported at once, while the parent trains and logs the model.
2. then, for each bundle, ``{"allowed": [...], "model": DIR, "example": FILE, "out": FILE,
   "stderr": FILE, "estimators": [...]}``:
   the warm interpreter forks a fresh process (so one bundle's code never reaches the next
   proof), which adds the modules the bundle's requirements (with their dependencies) and its
   shipped code provide, loads the model in ``DIR`` as MLflow does (:func:`_load`), predicts
   the records of the ``example`` Parquet file and writes the prediction to ``FILE``
   (``.npz``, see :func:`prediction_arrays`), its errors to the ``stderr`` file. The warm
   interpreter answers ``{"code": N}`` on stdout (0: proven) and waits for the next bundle; it
   ends at the end of its stdin. Where ``os.fork`` does not exist, it runs the one bundle
   itself and ends.

On failure the traceback goes to stderr, its last line being ``ErrorType: message``, and the
exit code is 1.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
import sysconfig
import traceback
from typing import Any


class ImportBlocker(importlib.abc.MetaPathFinder):
    """A meta-path finder that makes every module outside ``allowed`` look not installed.

    Args:
        allowed: top-level module names that may be imported (besides the standard library).

    Example:
        >>> blocker = ImportBlocker({"numpy"})
        >>> blocker.find_spec("numpy.linalg") is None  # allowed: the normal finders decide
        True
        >>> blocker.find_spec("relayml")
        Traceback (most recent call last):
        ...
        ModuleNotFoundError: No module named 'relayml' (not provided by the bundle's requirements)
    """

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = set(allowed) | set(sys.stdlib_module_names) | set(sys.builtin_module_names)
        self._stdlib = sysconfig.get_paths()["stdlib"]

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        top = name.partition(".")[0]
        if top in self.allowed or self._in_stdlib(top):
            return None
        raise ModuleNotFoundError(
            f"No module named {name!r} (not provided by the bundle's requirements)", name=name
        )

    def _in_stdlib(self, top: str) -> bool:
        """A private module of the standard library (``_sysconfigdata_...``)."""
        spec = importlib.machinery.PathFinder.find_spec(top)
        origin = getattr(spec, "origin", None) or ""
        inside = os.path.commonpath([origin, self._stdlib]) == self._stdlib if origin else False
        if inside and "site-packages" not in origin and "dist-packages" not in origin:
            self.allowed.add(top)
            return True
        return False


def prediction_arrays(prediction: Any) -> dict[str, Any]:
    """A prediction as named numpy arrays that ``np.savez`` stores without pickling.

    A DataFrame gives one array per column, anything else the array ``prediction``; object
    arrays (strings) become unicode arrays.

    Example:
        >>> import numpy as np
        >>> prediction_arrays(np.array([0, 1]))["prediction"].tolist()
        [0, 1]
    """
    import numpy as np
    import pandas as pd

    if isinstance(prediction, pd.DataFrame):
        arrays = {str(c): prediction[c].to_numpy() for c in prediction.columns}
    elif isinstance(prediction, pd.Series):
        arrays = {"prediction": prediction.to_numpy()}
    else:
        arrays = {"prediction": np.asarray(prediction)}
    return {k: v.astype(str) if v.dtype.hasobject else v for k, v in arrays.items()}


def import_skops_named(estimators: list[str] | None) -> Any:
    """``skops.io``, imported with scikit-learn's estimator names given rather than computed.

    Importing skops lists every scikit-learn estimator (its default trusted types), which
    imports all of scikit-learn: a second or more. Given the names skops would list (the
    parent's, or :func:`relayml.trust.import_skops`'s cache), the trusted types are exactly
    skops's own; ``None`` imports skops as usual.

    Example:
        >>> import_skops_named(None).__name__
        'skops.io'
    """
    if estimators is None or "skops.io" in sys.modules:
        import skops.io

        return skops.io
    import sklearn.utils

    named = []
    for name in estimators:
        module, _, qualname = name.rpartition(".")
        named.append((qualname, type(qualname, (), {"__module__": module})))
    real = sklearn.utils.all_estimators
    sklearn.utils.all_estimators = lambda *args, **kwargs: named
    try:
        import skops.io
    finally:
        sklearn.utils.all_estimators = real
    return skops.io


def _load(model_dir: str, estimators: list[str] | None) -> Any:
    """The ``predict`` of the MLflow model in ``model_dir``, loaded as MLflow loads it.

    A scikit-learn bundle saved with skops is loaded the way ``mlflow.pyfunc.load_model``
    does (the flavor's ``code`` folder first on ``sys.path``, then ``skops.io.load`` with the
    trusted types of its ``MLmodel``) without importing MLflow; any other bundle with
    ``mlflow.pyfunc.load_model`` itself.
    """
    import yaml

    with open(os.path.join(model_dir, "MLmodel"), encoding="utf-8") as f:
        flavors = yaml.safe_load(f)["flavors"]
    conf = flavors.get("sklearn")
    if conf is None or conf.get("serialization_format") != "skops":
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(model_dir, suppress_warnings=True).predict
    code = (flavors.get("python_function") or {}).get("code") or conf.get("code")
    if code:
        sys.path.insert(0, os.path.join(model_dir, code))
    skops_io = import_skops_named(estimators)
    path = os.path.join(model_dir, conf["pickled_model"])
    return skops_io.load(path, trusted=conf.get("skops_trusted_types")).predict


def _predict(job: dict[str, Any]) -> None:
    import numpy as np
    import pandas as pd

    predict = _load(job["model"], job.get("estimators"))
    example = pd.read_parquet(job["example"])
    np.savez(job["out"], **prediction_arrays(predict(example)))


def _report(e: BaseException) -> int:
    traceback.print_exc()
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.stderr.flush()
    return 1


def _prove(blocker: ImportBlocker, job: dict[str, Any]) -> int:
    """Load and predict one bundle in this process; the exit code."""
    try:
        blocker.allowed.update(job["allowed"])  # the bundle's own requirements and code
        _predict(job)
    except BaseException as e:
        return _report(e)
    return 0


def _forked(blocker: ImportBlocker, job: dict[str, Any]) -> int:
    """Prove one bundle in a forked copy of this warm interpreter; its exit code."""
    pid = os.fork()
    if pid == 0:  # the copy: its stderr goes to the job's file
        code = 1
        try:
            fd = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 2)
            code = _prove(blocker, job)
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main() -> int:
    """Run the protocol of the module docstring on stdin."""
    try:
        setup = json.loads(sys.stdin.readline())
        blocker = ImportBlocker(set(setup["allowed"]))
        sys.meta_path.insert(0, blocker)
        for name in setup.get("warm", []):
            with contextlib.suppress(ImportError):  # loading says what is missing, if it matters
                importlib.import_module(name)
    except BaseException as e:
        return _report(e)
    while line := sys.stdin.readline():
        job = json.loads(line)
        if not hasattr(os, "fork"):
            return _prove(blocker, job)
        print(json.dumps({"code": _forked(blocker, job)}), flush=True)
    return 0  # the parent is done (or gave up)


if __name__ == "__main__":
    sys.exit(main())
