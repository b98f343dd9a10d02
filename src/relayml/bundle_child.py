"""The child side of a bundle's load proof: load a bundle without relayml and predict.

:mod:`relayml.bundle_proof` runs this file as a script, ``python -I bundle_child.py``: an
isolated interpreter (no ``PYTHONPATH``, no user site, no current folder on ``sys.path``) that
must never import relayml, so this file imports only the standard library at its top. The
parent talks to it on stdin, one JSON object per line:

1. ``{"allowed": [...], "warm": [...]}``: the top-level modules of MLflow and its
   dependencies (every bundle requires MLflow). From then on any other import fails as if the
   module were not installed: relayml, test tools, Dask... The ``warm`` modules (MLflow, the
   flavors, skops) are imported at once, while the parent trains and logs the model.
2. ``{"allowed": [...], "model": DIR, "out": FILE}``: add the modules the bundle's
   requirements (with their dependencies) and its shipped code provide, load the model in
   ``DIR`` with ``mlflow.pyfunc.load_model``, predict its input example and write the
   prediction to ``FILE`` (``.npz``, see :func:`prediction_arrays`).

Exit code 0 on success; on failure the traceback goes to stderr, its last line being
``ErrorType: message``, and the exit code is 1.
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


def _predict(model_dir: str, out: str) -> None:
    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import Model

    model = mlflow.pyfunc.load_model(model_dir, suppress_warnings=True)  # same env: no mismatch
    example = Model.load(model_dir).load_input_example(model_dir)
    np.savez(out, **prediction_arrays(model.predict(example)))


def main() -> int:
    """Run the protocol of the module docstring on stdin."""
    try:
        setup = json.loads(sys.stdin.readline())
        blocker = ImportBlocker(set(setup["allowed"]))
        sys.meta_path.insert(0, blocker)
        for name in setup.get("warm", []):
            with contextlib.suppress(ImportError):  # loading says what is missing, if it matters
                importlib.import_module(name)
        line = sys.stdin.readline()
        if not line:
            return 0  # the parent gave up (no bundle, or logging failed)
        job = json.loads(line)
        blocker.allowed.update(job["allowed"])  # the bundle's own requirements and code
        _predict(job["model"], job["out"])
    except BaseException as e:
        traceback.print_exc()
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
