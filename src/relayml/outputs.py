"""Persisting a step's outputs as artifacts and handing them to downstream steps.

A variant returns either one object (stored as the output ``output``) or a dict of named
objects. Outputs are stored as data, never as code, in ``outputs/<name>.<ext>``:

===========================================================  ==========  ==================
object                                                       format      ``relay.outputs``
===========================================================  ==========  ==================
pandas DataFrame                                             Parquet     ``parquet``
Arrow table                                                  Parquet     ``arrow``
numpy array (not of Python objects)                          ``.npy``    ``npy``
number, string, bool, None, and lists / dicts of them        JSON        ``json``
scikit-learn estimator or pipeline                           skops       ``skops``
anything else, only with ``[outputs] allow_pickle = true``   cloudpickle ``pickle``
===========================================================  ==========  ==================

Anything else is refused (:class:`~relayml.errors.OutputError`) before a single output or
snapshot is uploaded, and the run ends FAILED. Output names are identifiers with dots (``model``,
``train.x``). The run's tag ``relay.outputs`` maps each name to its format; a DataFrame that
is a load snapshot points to the shared, content-addressed snapshot instead of being copied.

Loading checks what it reads: ``.npy`` files are read without pickle, skops files only with
types :func:`relayml.trust.unsafe_types` accepts, and a pickle only when the reading project
allows pickles and trusts the user who wrote the run (:func:`relayml.trust.check_pickle`).

Downstream code receives Python objects, never paths. Downloads are cached per run id in
``.relay/cache`` (artifacts of a finished run never change).

Example:
    >>> sorted(relay.get("processing/plain@latest").outputs)
    ['processor', 'test', 'test_rows', 'train']
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from relayml.errors import NotFound, OutputError, UntrustedOutput
from relayml.trust import check_pickle, import_skops, skops_types, unsafe_types

Run = Any  # a relayml.runs.Run; not imported: the runs module imports this one

__all__ = ["Outputs", "cache_dir", "check_name", "is_frame", "load_output", "stage_outputs"]

SINGLE = "output"
SUFFIX = {
    "parquet": ".parquet",
    "arrow": ".parquet",
    "npy": ".npy",
    "json": ".json",
    "skops": ".skops",
    "pickle": ".pkl",
}
ALLOWED = (
    "pandas DataFrame or Arrow table (Parquet), numpy array (.npy), numbers, strings, bools, "
    "None and lists/dicts of them (JSON), scikit-learn estimator or pipeline (skops)"
)


def cache_dir(root: Path, run_id: str) -> Path:
    """The local cache folder of one run's downloaded artifacts."""
    return root / ".relay" / "cache" / run_id


def as_dict(returned: Any) -> dict[str, Any]:
    """A variant's return value as named outputs (None means no output).

    Example:
        >>> as_dict(3), as_dict({"a": 1}), as_dict(None)
        ({'output': 3}, {'a': 1}, {})
    """
    if returned is None:
        return {}
    if isinstance(returned, Mapping) and all(isinstance(k, str) for k in returned):
        return dict(returned)
    return {SINGLE: returned}


def check_name(name: str, where: str = "") -> None:
    """Refuse an output name that is not an identifier with dots (``model``, ``train.x``).

    Raises:
        OutputError: the name could reach outside the outputs folder or is not a name.

    Example:
        >>> check_name("train.x")
        >>> check_name("../../x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relayml.errors.OutputError: output name '../../x' is not valid: use identifiers ...
    """
    if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
        scope = f" of {where}" if where else ""
        raise OutputError(
            f"output name {name!r}{scope} is not valid: use identifiers joined by dots "
            "(letters, digits, '_'; e.g. 'model', 'train.x')"
        )


def is_frame(how: str) -> bool:
    """True when a ``relay.outputs`` entry is a pandas DataFrame (Parquet or a snapshot).

    Example:
        >>> is_frame("parquet"), is_frame("snapshot:abc"), is_frame("json")
        (True, True, False)
    """
    return how == "parquet" or how.startswith("snapshot:")


def stage_outputs(
    outputs: Mapping[str, Any],
    folder: Path,
    *,
    skip: Iterable[str] = (),
    allow_pickle: bool = False,
    where: str = "",
) -> dict[str, str]:
    """Write outputs into ``folder`` (to upload as ``outputs/``) and return their formats.

    Nothing leaves the machine here: the runner uploads the folder only once every output
    was written, so a refused output leaves nothing half-stored.

    Args:
        outputs: name → object.
        folder: an empty local folder (created if missing).
        skip: names stored otherwise (DataFrames that are load snapshots).
        allow_pickle: store objects with no data format as cloudpickles (the project's
            ``[outputs] allow_pickle``) instead of refusing them.
        where: the run's key, for messages.

    Returns:
        ``{name: format}`` for the ``relay.outputs`` tag (skipped names left out).

    Raises:
        OutputError: a bad name, or an object with no data format (and no opt-in).

    Example:
        >>> stage_outputs({"threshold": 0.4}, Path(tempfile.mkdtemp()))
        {'threshold': 'json'}
    """
    for name in outputs:
        check_name(name, where)
    skip = set(skip)
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, str] = {}
    for name, value in outputs.items():
        if name in skip:
            continue
        how, why = _write(value, folder, name)
        if how is None:
            if not allow_pickle:
                kind = f"{type(value).__module__}.{type(value).__qualname__}"
                scope = f" of {where}" if where else ""
                why = f" ({why})" if why else ""
                raise OutputError(
                    f"output {name!r}{scope} is a {kind}, which relay cannot store as data"
                    f"{why}; allowed: {ALLOWED}. Convert it, or opt in to pickles with "
                    "[outputs] allow_pickle = true in relay.toml (a pickle can run code when "
                    "loaded)"
                )
            import cloudpickle

            with open(folder / f"{name}.pkl", "wb") as f:
                cloudpickle.dump(value, f)
            how = "pickle"
        manifest[name] = how
    return manifest


def _write(value: Any, folder: Path, name: str) -> tuple[str | None, str]:
    """Write ``value`` in its data format: ``(format, "")``, or ``(None, why not)``."""
    import numpy as np
    import pandas as pd

    try:
        if isinstance(value, pd.DataFrame):
            value.to_parquet(folder / f"{name}.parquet")
            return "parquet", ""
        if _is_arrow_table(value):
            import pyarrow.parquet as pq

            pq.write_table(value, folder / f"{name}.parquet")
            return "arrow", ""
    except Exception as e:  # e.g. column names that are not strings
        (folder / f"{name}.parquet").unlink(missing_ok=True)
        return None, f"Parquet cannot hold it ({str(e).splitlines()[0]})"
    if isinstance(value, (np.ndarray, np.generic)):  # a numpy scalar: a 0-d array
        if value.dtype.hasobject:
            return None, "its dtype is object (Python objects need pickle)"
        np.save(folder / f"{name}.npy", np.asarray(value), allow_pickle=False)
        return "npy", ""
    if _is_plain(value):
        (folder / f"{name}.json").write_text(json.dumps(value))
        return "json", ""
    if _is_estimator(value):
        try:
            data = import_skops().dumps(value)
        except Exception as e:  # a lambda or a local function in it: no skops form
            return None, f"skops cannot store it ({str(e).splitlines()[0]})"
        if bad := unsafe_types(skops_types(data=data)):
            return None, f"it holds types others could not load safely ({', '.join(bad)})"
        (folder / f"{name}.skops").write_bytes(data)
        return "skops", ""
    return None, ""


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Numbers, strings, bools, None, and lists / string-keyed dicts of them (JSON)."""
    if value is None or isinstance(value, (str, int, float)):
        return True
    if depth > 100:
        return False
    if isinstance(value, list):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _is_arrow_table(value: Any) -> bool:
    import sys

    pa = sys.modules.get("pyarrow")
    return pa is not None and isinstance(value, pa.Table)


def _is_estimator(value: Any) -> bool:
    from sklearn.base import BaseEstimator

    return isinstance(value, BaseEstimator)


def load_output(run: Run, name: str) -> Any:
    """Load one output of a finished run as a Python object.

    Raises:
        NotFound: the run has no output of that name (the message lists its outputs).
        UntrustedOutput: the output could run code when loaded and is not trusted (a pickle
            without the project's opt-in or from another user not in ``trusted_users``, a
            skops file with types outside scikit-learn, numpy and scipy).

    Example:
        >>> processing = relay.get("processing/plain@latest")
        >>> type(load_output(processing, "processor")).__name__
        'ColumnTransformer'
        >>> load_output(processing, "train").shape[1]
        31
    """
    import pandas as pd

    manifest = run.outputs
    if name not in manifest:
        have = ", ".join(manifest) or "none"
        raise NotFound(f"run {run.key} has no output {name!r} (outputs: {have})")
    check_name(name, str(run.key))
    how = manifest[name]
    if how.startswith("snapshot:"):
        holder = how.removeprefix("snapshot:")
        if not holder.isalnum():  # a run id: never a path
            raise NotFound(f"output {name!r} of {run.key} points to a bad snapshot {holder!r}")
        return pd.read_parquet(snapshot_path(run, holder))
    if how not in SUFFIX:
        raise NotFound(f"output {name!r} of {run.key} has an unknown format {how!r}")
    if how == "pickle":  # refused before anything is downloaded or unpickled
        check_pickle(
            name,
            str(run.key),
            run.mlflow.data.tags.get("mlflow.user", "unknown"),
            allow_pickle=run.settings.allow_pickle,
            trusted_users=run.settings.trusted_users,
        )
    path = _fetch(run, run.run_id, f"outputs/{name}{SUFFIX[how]}")
    return _read(how, path, name, str(run.key))


def _read(how: str, path: Path, name: str, where: str) -> Any:
    if how == "parquet":
        import pandas as pd

        return pd.read_parquet(path)
    if how == "arrow":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if how == "npy":
        import numpy as np

        array = np.load(path, allow_pickle=False)
        return array[()] if array.ndim == 0 else array  # a numpy scalar comes back as one
    if how == "json":
        return json.loads(path.read_text())
    if how == "skops":
        types = skops_types(file=path)
        if bad := unsafe_types(types):
            raise UntrustedOutput(
                f"output {name!r} of {where} is a skops file with types relay does not trust "
                f"({', '.join(bad)}): only scikit-learn, numpy and scipy classes, estimator "
                "classes and project functions of modules already imported (import your steps "
                "module first) and numpy ufuncs are loaded from a skops file"
            )
        return import_skops().load(path, trusted=types)
    import cloudpickle

    with open(path, "rb") as f:
        return cloudpickle.load(f)


def snapshot_path(run: Run, holder: str) -> Path:
    """The local Parquet file of a snapshot held by run ``holder`` (downloaded once).

    Example:
        >>> load_run = relay.get("load/transactions@latest")
        >>> snapshot_path(load_run, load_run.tags["relay.snapshot.fraud"]).name
        'snapshot.parquet'
    """
    return _fetch(run, holder, "snapshot.parquet")


def snapshot_sidecar(run: Run, holder: str) -> Path | None:
    """The local row-hash sidecar of a snapshot (:mod:`relayml.data_rowhash`), downloaded once,
    beside :func:`snapshot_path`'s file; None when the holder has none (an older snapshot, or
    a variant without a key).

    Example:
        >>> snapshot_sidecar(load_run, load_run.tags["relay.snapshot.fraud"])  # doctest: +SKIP
        PosixPath('.relay/cache/.../snapshot.rowhash.parquet')
    """
    name = "snapshot.rowhash.parquet"
    local = cache_dir(run.settings.root, holder) / name
    if local.exists():
        return local
    if not any(path == name for path, _ in run.store.run_artifacts(holder)):
        return None
    return _fetch(run, holder, name)


def _fetch(run: Run, run_id: str, path: str) -> Path:
    local = cache_dir(run.settings.root, run_id) / path
    if local.exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=local.parent, prefix=".dl-") as tmp:
        got = run.store.download(run_id, path, Path(tmp))
        shutil.move(str(got), local)  # atomic within one folder: no half file in the cache
    return local


class Outputs(Mapping[str, Any]):
    """The outputs of an upstream run, loaded on first access (dict and attribute access).

    Example:
        >>> outs = Outputs(relay.get("processing/plain@latest"))
        >>> outs["train"].shape == outs.train.shape, "processor" in outs, len(outs)
        (True, True, 4)
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self._names = list(run.outputs)
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            self._loaded[name] = load_output(self.run, name)
        return self._loaded[name]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "run":
            raise AttributeError(name)
        try:
            return self[name]
        except NotFound as e:
            raise AttributeError(str(e)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"<Outputs of {self.run.key}: {', '.join(self._names)}>"


def handed_down(run: Run) -> Any:
    """What a downstream variant receives for ``run``: its single output, or its Outputs."""
    names = list(run.outputs)
    if names == [SINGLE]:
        return load_output(run, SINGLE)
    return Outputs(run)
