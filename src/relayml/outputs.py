"""Persisting a step's outputs as artifacts and handing them to downstream steps.

A variant returns either one object (stored as the output ``output``) or a dict of named
objects. DataFrames are stored as Parquet (``outputs/<name>.parquet``); every other object
(fitted scikit-learn estimators, arrays, dicts, functions) goes through the one declared
serializer, **cloudpickle** (``outputs/<name>.pkl``). The run's tag ``relay.outputs`` maps
each name to how it is stored; a DataFrame that is a load snapshot points to the shared,
content-addressed snapshot instead of being copied.

Downstream code receives Python objects, never paths. Downloads are cached per run id in
``.relay/cache`` (artifacts of a finished run never change).

Example:
    >>> relay.get("processing/plain@latest").load("processor")  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml.errors import NotFound

if TYPE_CHECKING:
    from relayml.runs import Run
    from relayml.store import Store

__all__ = ["Outputs", "cache_dir", "load_output", "save_outputs"]

SINGLE = "output"


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


def save_outputs(
    store: Store,
    run_id: str,
    outputs: Mapping[str, Any],
    *,
    snapshots: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Upload outputs as artifacts of ``run_id`` and return the ``relay.outputs`` manifest.

    Args:
        store: the tracking store.
        run_id: the run that produced the outputs.
        outputs: name → object.
        snapshots: name → holder run id, for outputs already stored as snapshots.
    """
    import cloudpickle
    import pandas as pd

    manifest: dict[str, str] = {}
    snapshots = snapshots or {}
    with tempfile.TemporaryDirectory(prefix="relay-out-") as tmp:
        folder = Path(tmp) / "outputs"
        folder.mkdir()
        for name, value in outputs.items():
            if name in snapshots:
                manifest[name] = f"snapshot:{snapshots[name]}"
            elif isinstance(value, pd.DataFrame):
                value.to_parquet(folder / f"{name}.parquet")
                manifest[name] = "parquet"
            else:
                with open(folder / f"{name}.pkl", "wb") as f:
                    cloudpickle.dump(value, f)
                manifest[name] = "pickle"
        if any(folder.iterdir()):
            store.upload(run_id, folder, "outputs")
    return manifest


def load_output(run: Run, name: str) -> Any:
    """Load one output of a finished run as a Python object.

    Raises:
        NotFound: the run has no output of that name (the message lists its outputs).
    """
    import pandas as pd

    manifest = run.outputs
    if name not in manifest:
        have = ", ".join(manifest) or "none"
        raise NotFound(f"run {run.key} has no output {name!r} (outputs: {have})")
    how = manifest[name]
    if how.startswith("snapshot:"):
        return pd.read_parquet(snapshot_path(run, how.removeprefix("snapshot:")))
    if how == "parquet":
        return pd.read_parquet(_fetch(run, run.run_id, f"outputs/{name}.parquet"))
    import cloudpickle

    with open(_fetch(run, run.run_id, f"outputs/{name}.pkl"), "rb") as f:
        return cloudpickle.load(f)


def snapshot_path(run: Run, holder: str) -> Path:
    """The local Parquet file of a snapshot held by run ``holder`` (downloaded once).

    Example:
        >>> path = snapshot_path(load_run, load_run.tags["relay.snapshot.fraud"])  # doctest: +SKIP
    """
    return _fetch(run, holder, "snapshot.parquet")


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
        >>> outs = Outputs(relay.get("processing/plain@latest"))  # doctest: +SKIP
        >>> outs["X_train"].shape == outs.X_train.shape  # doctest: +SKIP
        True
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
