"""Step outputs are data, not code: every safe format round-trips, anything else is refused.

One tiny project (``outputs_project.py``) serves the whole module: its processing variants
return every kind of output, its training variants receive them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from outputs_project import set_outputs, write

import relayml

FORMATS = {
    "frame": "parquet",
    "table": "arrow",
    "array": "npy",
    "scalar": "npy",
    "threshold": "json",
    "settings": "json",
    "label": "json",
    "nothing": "json",
    "processor": "skops",
    "model.forest": "skops",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project with its load run (shared by the module's tests)."""
    root = write(tmp_path_factory.mktemp("outputs") / "tiny")
    with pytest.MonkeyPatch.context() as mp:  # before the per-test isolation: do it here
        for var in ("RELAY_TRACKING_URI", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(var, raising=False)
        relayml.run("load", "rows", project=root, show_progress=False)
    return root


@pytest.fixture
def here(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny project as the working directory, with no ``[outputs]`` section."""
    monkeypatch.chdir(tiny)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    set_outputs(tiny, "")
    return tiny


def shown(relay, ref: str) -> dict:
    result = relay("show", ref, "--json")
    assert result.code == 0, result
    return json.loads(result.out)


def test_every_safe_format_round_trips(here: Path, relay) -> None:
    made = relay("run", "processing", "safe")
    assert made.code == 0, made
    run = relayml.get("processing/safe@latest")
    assert run.outputs == FORMATS
    stored = {a for a in run.artifacts if a.startswith("outputs/")}
    assert not [a for a in stored if a.endswith(".pkl")], stored
    # handed downstream: the training variant compares each output with a fresh copy
    checked = relay("run", "training", "check")
    assert checked.code == 0, checked
    assert sorted(relayml.get("training/check@latest").load("same")) == sorted(FORMATS)
    # and through run.load
    import numpy as np
    import pyarrow as pa

    assert run.load("threshold") == 0.25
    assert run.load("settings") == {
        "name": "plain", "sizes": [1, 2.5, None], "on": True, "n": {"k": -3}
    }  # fmt: skip
    assert run.load("nothing") is None
    assert run.load("scalar") == np.int64(7) and isinstance(run.load("scalar"), np.int64)
    assert isinstance(run.load("table"), pa.Table)
    assert run.load("array").shape == (3, 4)
    assert type(run.load("model.forest")).__name__ == "RandomForestClassifier"


def test_an_output_with_no_data_format_is_refused(here: Path, relay) -> None:
    result = relay("run", "processing", "custom")
    assert result.code == 1, result
    assert "output 'box'" in result.err and "steps.Box" in result.err
    assert "[outputs] allow_pickle = true" in result.err and "Parquet" in result.err
    run = relayml.runs("processing", variant="custom", limit=1)[0]
    assert run.status == "FAILED"
    assert run.outputs == {}
    assert not [a for a in run.artifacts if a.startswith("outputs/")]  # not even 'frame'


def test_an_estimator_with_untrusted_types_is_refused(here: Path, relay) -> None:
    result = relay("run", "processing", "shady")
    assert result.code == 1, result
    assert "output 'processor'" in result.err
    assert "holds types others could not load safely (_operator.neg)" in result.err
    assert relayml.runs("processing", variant="shady", limit=1)[0].status == "FAILED"


def test_an_estimator_holding_a_project_function_round_trips(here: Path, relay) -> None:
    result = relay("run", "processing", "own")
    assert result.code == 0, result
    run = relayml.get("processing/own@latest")
    assert run.outputs == {"processor": "skops"}
    assert run.load("processor").func.__name__ == "double"


@pytest.mark.parametrize("name", ["../../x", "a/b", "", "1x", "x..y"])
def test_a_bad_output_name_is_refused_and_nothing_is_written(
    here: Path, relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    scratch = tmp_path / "tmp" / "deeper"
    scratch.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # relay's temporary folders
    result = relay("run", "processing", "named", "-P", f"name={name}")
    assert result.code == 1, result
    assert f"output name {name!r}" in result.err and "'train.x'" in result.err
    run = relayml.runs("processing", variant="named", limit=1)[0]
    assert run.status == "FAILED" and run.params["name"] == name
    assert not [a for a in run.artifacts if a.startswith("outputs/")]
    assert [p for p in (tmp_path / "tmp").rglob("*") if p != scratch] == []


def test_allow_pickle_is_an_opt_in(here: Path, relay) -> None:
    set_outputs(here, "allow_pickle = true")
    made = relay("run", "processing", "custom")
    assert made.code == 0, made
    run = relayml.get("processing/custom@latest")
    assert run.outputs == {"frame": "parquet", "box": "pickle"}
    used = relay("run", "training", "use")
    assert used.code == 0, used
    assert relayml.get("training/use@latest").load("seen") == "Box"
    # the same pickle, read by a project that has not opted in: refused before unpickling
    set_outputs(here, "")
    with pytest.raises(relayml.UntrustedOutput, match=r"output 'box' .* allow_pickle = true"):
        relayml.get(str(run.key)).load("box")
    assert relayml.get(str(run.key)).load("frame").shape == (6, 2)  # safe formats still load


def test_a_pickle_from_another_user_runs_nothing(
    here: Path, relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    set_outputs(here, "allow_pickle = true")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "mallory")
    made = relay("run", "processing", "evil", "-P", f"marker={marker}")
    assert made.code == 0, made
    evil = relayml.get("processing/evil@latest")
    assert evil.mlflow.data.tags["mlflow.user"] == "mallory"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    set_outputs(here, 'allow_pickle = true\ntrusted_users = ["bob"]')
    used = relay("run", "training", "use")
    assert used.code == 1, used
    assert "written by 'mallory'" in used.err and "[outputs] trusted_users" in used.err
    assert relayml.runs("training", variant="use", limit=1)[0].status == "FAILED"
    assert not marker.exists()
    # the output really was malicious: trusting mallory runs her code
    set_outputs(here, 'allow_pickle = true\ntrusted_users = ["bob", "mallory"]')
    relayml.get(str(evil.key)).load("box")  # settings are read when the run is got
    assert marker.read_text() == "pwned"


def test_a_forged_skops_output_with_untrusted_types_is_refused(
    here: Path, relay, tmp_path: Path
) -> None:
    """A hostile colleague bypassing relay: a skops file holding os.system, added to a run."""
    import os

    import mlflow
    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    made = relay("run", "processing", "named", "-P", "name=fine")
    assert made.code == 0, made
    run = relayml.get("processing/named@latest")
    forged = tmp_path / "outputs" / "tool.skops"
    forged.parent.mkdir()
    skops.io.dump(FunctionTransformer(os.system), forged)
    client = mlflow.MlflowClient(run.settings.tracking_uri)
    client.log_artifact(run.run_id, str(forged), "outputs")
    client.set_tag(run.run_id, "relay.outputs", json.dumps({**run.outputs, "tool": "skops"}))
    with pytest.raises(relayml.UntrustedOutput, match=r"output 'tool' .*\(posix\.system\)"):
        relayml.get(str(run.key)).load("tool")
    assert relayml.get(str(run.key)).load("fine") == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('allow_pickle = "yes"', "allow_pickle must be true or false"),
        ('trusted_users = "bob"', "trusted_users must be a list of user names"),
        ("trusted_users = [1]", "trusted_users must be a list of user names"),
    ],
)
def test_bad_outputs_settings(here: Path, relay, body: str, message: str) -> None:
    set_outputs(here, body)
    result = relay("runs")
    assert result.code == 2, result
    assert message in result.err


def test_skops_types_a_reader_may_not_trust() -> None:
    import os

    from sklearn.preprocessing import FunctionTransformer

    from relayml.trust import skops_types, unsafe_types

    assert unsafe_types(skops_types(FunctionTransformer(os.system))) == ["posix.system"]
    assert unsafe_types(["sklearn.tree._tree.Tree", "numpy.log1p"]) == []
    assert unsafe_types(["builtins.exec", "numpy.load", "sklearn.utils._testing.x"]) == [
        "builtins.exec", "numpy.load", "sklearn.utils._testing.x"
    ]  # fmt: skip


_SKOPS_CHILD = """
import json, sys
import sklearn.linear_model
from relayml.trust import import_skops
names = import_skops()._general.SKLEARN_ESTIMATOR_TYPE_NAMES
print(json.dumps({"names": names, "listed": "sklearn.neural_network" in sys.modules}))
"""


def test_skops_is_imported_with_its_own_trusted_types_from_a_private_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat
    import subprocess
    import sys

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def child() -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _SKOPS_CHILD], capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout)

    first = child()  # no cache: skops lists scikit-learn's estimators, relay keeps the list
    assert first["listed"] and "sklearn.linear_model._logistic.LogisticRegression" in first["names"]
    (cache,) = (tmp_path / "relayml").glob("skops-*-sklearn-*-estimators.json")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert json.loads(cache.read_text()) == first["names"]
    again = child()  # from the cache: the same trusted types, scikit-learn not listed
    assert again == {"names": first["names"], "listed": False}

    cache.write_text(json.dumps([*first["names"], "builtins.eval"]))  # a name not of sklearn
    poisoned = child()
    assert poisoned == {"names": first["names"], "listed": True}  # ignored, listed again
    assert json.loads(cache.read_text()) == first["names"]  # and the cache rewritten

    cache.write_text(json.dumps([*first["names"], "sklearn.fake.Thing"]))
    os.chmod(cache, 0o666)  # others may write it: not trusted
    assert child() == {"names": first["names"], "listed": True}
