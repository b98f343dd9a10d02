"""A tiny project whose steps return every kind of output (tests of stored outputs).

``write(root)`` creates it; its steps module is the text ``STEPS`` below. The processing
variant ``evil`` returns a real malicious object: unpickling it writes the file ``marker``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

STEPS = '''
"""Steps whose outputs cover every storage format relay has."""

from __future__ import annotations

import operator

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import relayml as relay

load = relay.step("load")
processing = relay.step("processing", upstream=load)
training = relay.step("training", upstream=processing)


class Box:
    """A plain Python object: no data format, a pickle at best."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Box) and other.value == self.value


class Evil:
    """Unpickling it runs code: it writes ``marker`` (what a hostile colleague would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@load.variant("rows")
def rows():
    return pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "y": [0, 1, 0, 1, 0, 1]})


def expected(load):
    """Every safe output, rebuilt the same way each time."""
    X, y = load[["x"]], load["y"]
    processor = make_pipeline(FunctionTransformer(np.log1p), StandardScaler()).fit(X)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    return {
        "frame": load.assign(z=load["x"] * 2),
        "table": pa.table({"a": [1, 2, 3], "b": ["p", "q", "r"]}),
        "array": np.arange(12, dtype="float32").reshape(3, 4),
        "scalar": np.int64(7),
        "threshold": 0.25,
        "settings": {"name": "plain", "sizes": [1, 2.5, None], "on": True, "n": {"k": -3}},
        "label": "ok",
        "nothing": None,
        "processor": processor,
        "model.forest": forest,
    }


@processing.variant("safe")
def safe(load):
    return expected(load)


@processing.variant("custom")
def custom(load):
    return {"frame": load, "box": Box(3)}


def double(x):
    return x * 2


@processing.variant("shady")
def shady(load):
    """An estimator holding a function of the standard library: skops could store it, others
    could not load it safely (a skops file may name any function)."""
    return {"processor": FunctionTransformer(operator.neg).fit(load[["x"]])}


@processing.variant("own")
def own(load):
    """An estimator holding a function of the project's own code: the reader's code."""
    return {"processor": FunctionTransformer(double).fit(load[["x"]])}


@processing.variant("evil")
def evil(load, marker: str = ""):
    return {"frame": load, "box": Evil(marker)}


@processing.variant("named")
def named(load, name: str = "ok"):
    return {name: 1, "frame": load}


@training.variant("check")
def check(processing):
    """Compare every handed-down output with a fresh copy."""
    want = expected(processing["frame"][["x", "y"]])
    got = {name: processing[name] for name in want}
    return {"same": [name for name in want if same(got[name], want[name])]}


def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    if isinstance(a, pa.Table):
        return a.equals(b)
    if isinstance(a, (np.ndarray, np.generic)):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if hasattr(a, "get_params"):
        X = pd.DataFrame({"x": [0.5, 2.0, 9.0]})
        out = a.predict(X) if hasattr(a, "predict") else a.transform(X)
        ref = b.predict(X) if hasattr(b, "predict") else b.transform(X)
        return np.allclose(out, ref)
    return a == b


@training.variant("use")
def use(processing):
    return {"seen": type(processing["box"]).__name__}
'''

TOML = """[project]
name = "tiny"

[tracking]
uri = "sqlite:///.relay/mlflow.db"
artifacts = ".relay/artifacts"
"""


def write(root: Path, outputs: str = "") -> Path:
    """Create the tiny project in ``root`` (a git repo) with an optional ``[outputs]`` body."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "steps.py").write_text(STEPS)
    (root / ".gitignore").write_text(".relay/\n__pycache__/\nmlruns/\n")
    set_outputs(root, outputs)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "tiny"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def set_outputs(root: Path, body: str) -> None:
    """Rewrite the project's ``[outputs]`` section (``body`` is its TOML lines)."""
    (root / "relay.toml").write_text(TOML + (f"\n[outputs]\n{body}\n" if body else ""))
