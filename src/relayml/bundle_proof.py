"""The load proof of a bundle: it loads and predicts in an interpreter without relayml.

A warm child interpreter (``python -I -B`` running :mod:`relayml.bundle_child`) imports
MLflow, scikit-learn and skops *before* the bundle is logged (the runner starts it when a
training step begins, so that those imports overlap the fit). It can import only the modules
the bundle's requirements provide (and their dependencies) and the bundle's shipped code:
relayml and every other package of this environment look not installed. Once the bundle is
saved, :meth:`LoadProof.start` hands it the local model folder (while the parent uploads it);
the warm interpreter forks a fresh process that loads it with ``mlflow.pyfunc.load_model`` and
predicts the input example; :meth:`LoadProof.result` compares that prediction with the
parent's own, bit for bit.

The warm interpreter is kept for the life of this process: the next training step of a chain
(or of a notebook, a worker, the test suite) does not pay MLflow's imports again, and since each
proof runs in its own fork, nothing of one bundle reaches the next. It gets a minimal
environment (no secret of the parent's) and no command-line data; it ends when this process
does (its stdin closes).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from relayml import bundle_child
from relayml.bundle_requirements import BundleNeeds, _closure, provided_modules
from relayml.errors import BundleError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LoadProof"]

_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
_TIMEOUT = 600.0
_WARM = ["pandas", "pyarrow.parquet", "yaml", "sklearn.pipeline"]


def _allowed(distributions: list[str]) -> set[str]:
    """Top-level modules of ``distributions`` and of everything they depend on."""
    return provided_modules(set(_closure(tuple(sorted(distributions)))))


class _Warm:
    """The warm child interpreter (one per process, started on first use)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="relay-proof-"))
        self.stderr = (self.folder / "stderr.txt").open("w+", encoding="utf-8")
        env = {k: os.environ[k] for k in _ENV_KEYS if k in os.environ}
        env["HOME"] = str(self.folder)
        env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"  # relay's own, just-logged model
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-B", bundle_child.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=self.folder,
            env=env,
            text=True,
        )
        # every bundle requires mlflow: what it depends on may be imported ahead of time
        self.send({"allowed": sorted(_allowed(["mlflow"])), "warm": _WARM})

    def send(self, message: dict[str, Any]) -> None:
        stdin = self.process.stdin
        try:
            if stdin is not None:
                stdin.write(json.dumps(message) + "\n")
                stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the child died: the answer reports its error

    def answer(self, timeout: float) -> int | None:
        """The exit code of the current proof; None when the warm interpreter ended."""
        out: IO[str] | None = self.process.stdout
        if out is None:
            return None
        if os.name == "posix":  # wait for the line, no longer than the timeout
            ready, _, _ = select.select([out], [], [], timeout)
            if not ready:
                raise TimeoutError
        line = out.readline()
        return json.loads(line)["code"] if line else None

    def own_error(self) -> list[str]:
        self.stderr.seek(0)
        return [ln for ln in self.stderr.read().splitlines() if ln.strip()]

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Stop it at once (it holds nothing worth a graceful end) and remove its folder."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(BrokenPipeError, OSError):
                stdin.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)


_lock = threading.Lock()  # one proof at a time through the warm interpreter
_warm: list[_Warm] = []  # the process's warm interpreter, if started


def _get_warm() -> _Warm:
    """The process's warm interpreter, started (again) if it is not running."""
    if _warm and not _warm[0].alive():
        _warm.pop().close()
    if not _warm:
        _warm.append(_Warm())
        if len(_warm) == 1:
            atexit.register(_shutdown)
    return _warm[0]


def _skops_estimators() -> list[str] | None:
    """scikit-learn's estimators as skops names them (its default trusted types), when skops is
    imported here: the child then need not import all of scikit-learn to list them."""
    trusted = sys.modules.get("skops.io._trusted_types")
    names = getattr(trusted, "SKLEARN_ESTIMATOR_TYPE_NAMES", None)
    return list(names) if isinstance(names, list) else None


def _shutdown() -> None:
    while _warm:
        _warm.pop().close()


class LoadProof:
    """A proof that a bundle loads without relayml, in the process's warm child interpreter.

    Creating one starts the warm interpreter if it is not running yet (the runner creates one
    when a training step begins, so that MLflow's imports overlap the fit). It imports MLflow,
    scikit-learn and skops under a blocker that allows only MLflow and its dependencies;
    :meth:`start` then widens that to the bundle's own requirements and code, which always
    include MLflow's, in a fresh fork.

    Example:
        >>> with LoadProof() as proof:  # doctest: +SKIP
        ...     proof.start(local_model_dir, needs, example)
        ...     upload(local_model_dir)
        ...     proof.result(prediction_arrays(expected))
    """

    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="relay-proof-job-"))
        self._started = False
        with _lock:
            _get_warm()

    def start(self, model_dir: Path, needs: BundleNeeds, example: pd.DataFrame) -> None:
        """Start loading the bundle in ``model_dir`` (a local model folder) in the child.

        Args:
            model_dir: the saved model, not modified until :meth:`result` returns.
            needs: the bundle's requirements and shipped code: all the child may import.
            example: the records the child predicts (the bundle's input example).
        """
        path = self._folder / "example.parquet"
        example.to_parquet(path)
        allowed = _allowed(needs.distributions) | set(needs.modules)
        _lock.acquire()
        self._started = True
        self._warm = _get_warm()
        self._warm.send(
            {
                "allowed": sorted(allowed),
                "model": str(model_dir),
                "example": str(path),
                "out": str(self._folder / "prediction.npz"),
                "stderr": str(self._folder / "stderr.txt"),
                "estimators": _skops_estimators(),
            }
        )

    def result(self, expected: dict[str, Any]) -> None:
        """Wait for the child and compare its prediction with ``expected``.

        Args:
            expected: the in-process prediction of the model's input example, as
                :func:`relayml.bundle_child.prediction_arrays`.

        Raises:
            BundleError: the child failed (its error is in the message) or predicted
                something else.
        """
        import numpy as np

        warm = self._warm
        try:
            code = warm.answer(_TIMEOUT)
        except TimeoutError:
            warm.process.kill()
            raise BundleError(
                f"the bundle did not load and predict within {_TIMEOUT:.0f} s in a clean "
                "interpreter (without relayml)"
            ) from None
        finally:
            self._release()
        if code is None:  # the warm interpreter ended: its own error, or no fork here
            try:
                code = warm.process.wait(timeout=_TIMEOUT)
            except subprocess.TimeoutExpired:
                warm.process.kill()
                code = warm.process.wait()
            lines = warm.own_error() or [f"exit code {code}"]
            if code != 0:
                self._fail(lines)
        elif code != 0:
            job = self._folder / "stderr.txt"
            text = job.read_text(encoding="utf-8", errors="replace") if job.exists() else ""
            self._fail([ln for ln in text.splitlines() if ln.strip()] or [f"exit code {code}"])
        with np.load(self._folder / "prediction.npz", allow_pickle=False) as got:
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

    def check(
        self, model_dir: Path, needs: BundleNeeds, example: pd.DataFrame, expected: dict[str, Any]
    ) -> None:
        """:meth:`start` then :meth:`result`, for a model folder that is already complete.

        Raises:
            BundleError: as :meth:`result`.
        """
        self.start(model_dir, needs, example)
        self.result(expected)

    @staticmethod
    def _fail(lines: list[str]) -> None:
        raise BundleError(
            f"the bundle does not load without relayml: in a clean interpreter that can "
            f"import only the bundle's requirements and code, loading it and predicting "
            f"its input example failed with {lines[-1]}\n" + "\n".join(lines[-40:])
        )

    def _release(self) -> None:
        if self._started:
            self._started = False
            _lock.release()

    def close(self) -> None:
        """Give the warm interpreter back (killed if a proof of this one still runs) and
        remove this proof's files."""
        if self._started:  # started and never awaited: that fork's answer is lost
            self._warm.process.kill()
            self._release()
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
