"""The load proof of a bundle: it loads and predicts in an interpreter without relayml.

:class:`LoadProof` starts a child interpreter (``python -I`` running
:mod:`relayml.bundle_child`) *before* the bundle is logged, so that the child imports MLflow
while the parent logs. The child can import only the modules the bundle's requirements
provide (and their dependencies) and the bundle's shipped code: relayml and every other
package of this environment look not installed. Once the bundle is logged,
:meth:`LoadProof.check` hands it the model folder; the child loads it with
``mlflow.pyfunc.load_model``, predicts the input example, and the parent compares that
prediction with its own, bit for bit.

The child gets a minimal environment (no secret of the parent's) and no command-line data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from relayml import bundle_child
from relayml.bundle_requirements import BundleNeeds, _closure, provided_modules
from relayml.errors import BundleError

__all__ = ["LoadProof"]

_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
_TIMEOUT = 600.0
_WARM = ["mlflow.pyfunc", "mlflow.sklearn", "pandas", "skops.io", "sklearn.pipeline"]


def _allowed(distributions: list[str]) -> set[str]:
    """Top-level modules of ``distributions`` and of everything they depend on."""
    return provided_modules(set(_closure(tuple(sorted(distributions)))))


class LoadProof:
    """A child interpreter that proves a bundle loads without relayml.

    Started early (the runner starts one when a training step begins, so that its imports
    overlap the fit), it imports MLflow, scikit-learn and skops under a blocker that allows
    only MLflow and its dependencies; :meth:`check` then widens that to the bundle's own
    requirements and code, which always include MLflow's.

    Example:
        >>> with LoadProof() as proof:  # doctest: +SKIP
        ...     uri = log_the_model()
        ...     proof.check(local_model_dir, prediction_arrays(expected), needs)
    """

    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="relay-proof-"))
        self._stderr = (self._folder / "stderr.txt").open("w+", encoding="utf-8")
        env = {k: os.environ[k] for k in _ENV_KEYS if k in os.environ}
        env["HOME"] = str(self._folder)
        env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"  # relay's own, just-logged model
        self._child = subprocess.Popen(
            [sys.executable, "-I", bundle_child.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=self._folder,
            env=env,
            text=True,
        )
        # every bundle requires mlflow: what it depends on may be imported ahead of time
        self._send({"allowed": sorted(_allowed(["mlflow"])), "warm": _WARM})

    def _send(self, message: dict[str, Any]) -> None:
        assert self._child.stdin is not None
        try:
            self._child.stdin.write(json.dumps(message) + "\n")
            self._child.stdin.flush()
        except BrokenPipeError:
            pass  # the child died: check() reports its error

    def check(self, model_dir: Path, expected: dict[str, Any], needs: BundleNeeds) -> None:
        """Load the bundle in ``model_dir`` in the child and compare its prediction.

        Args:
            model_dir: a local copy of the logged model.
            expected: the in-process prediction of the model's input example, as
                :func:`relayml.bundle_child.prediction_arrays`.
            needs: the bundle's requirements and shipped code: all the child may import.

        Raises:
            BundleError: the child failed (its error is in the message) or predicted
                something else.
        """
        import numpy as np

        out = self._folder / "prediction.npz"
        allowed = _allowed(needs.distributions) | set(needs.modules)
        self._send({"allowed": sorted(allowed), "model": str(model_dir), "out": str(out)})
        self._close_stdin()
        try:
            code = self._child.wait(timeout=_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
            raise BundleError(
                f"the bundle did not load and predict within {_TIMEOUT:.0f} s in a clean "
                "interpreter (without relayml)"
            ) from None
        if code != 0:
            self._stderr.seek(0)
            lines = [ln for ln in self._stderr.read().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit code {code}"
            tail = "\n".join(lines[-40:])
            raise BundleError(
                f"the bundle does not load without relayml: in a clean interpreter that can "
                f"import only the bundle's requirements and code, loading it and predicting "
                f"its input example failed with {last}\n{tail}"
            )
        with np.load(out, allow_pickle=False) as got:
            child = {k: got[k] for k in got.files}
        if sorted(child) != sorted(expected):
            raise BundleError(
                f"the bundle predicts other outputs without relayml: {sorted(child)} "
                f"instead of {sorted(expected)}"
            )
        for name, want in expected.items():
            have = child[name]
            same = have.dtype == want.dtype and np.array_equal(
                have, want, equal_nan=want.dtype.kind in "fc"
            )
            if not same:
                raise BundleError(
                    f"the bundle predicts differently without relayml: {name!r} is "
                    f"{have[:5].tolist()} ({have.dtype}) in a clean interpreter, "
                    f"{want[:5].tolist()} ({want.dtype}) in relay"
                )

    def _close_stdin(self) -> None:
        stdin = self._child.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(BrokenPipeError):  # a dead child: its stderr tells why
                stdin.close()

    def close(self) -> None:
        """Stop the child if it still runs and remove its folder."""
        if self._child.poll() is None:
            self._child.kill()
            self._child.wait()
        self._close_stdin()
        self._stderr.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> LoadProof:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
