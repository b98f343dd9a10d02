"""The example's bundles in a real clean environment: only their requirements.txt installed.

One session-scoped virtual environment gets exactly the bundles' ``requirements.txt`` from
PyPI (with uv, whose cache makes later runs quick); each kind of bundle the fraud example produces
(processing plain, robust, and clipped, whose processor uses ``features.clip_amount``) is
loaded there with ``mlflow.pyfunc.load_model`` and must predict what relay predicts, bit for
bit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import relayml
from relayml.bundle import load_bundle

from conftest import make_project

pytestmark = pytest.mark.slow

KINDS = ("plain", "robust", "clipped")


@pytest.fixture(scope="session")
def example_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Local copies of the training bundles of the example, one per processing variant."""
    root = make_project(tmp_path_factory.mktemp("clean") / "fraud")
    copies = tmp_path_factory.mktemp("bundles")
    found: dict[str, Path] = {}
    with pytest.MonkeyPatch.context() as env:  # session fixtures run before _isolated_env
        for var in ("RELAY_TRACKING_URI", "MLFLOW_TRACKING_URI", "RELAY_PROJECT"):
            env.delenv(var, raising=False)
        env.chdir(root)
        load = relayml.run("load", "transactions", project=root)
        rows = _rows(root)
        rows.to_parquet(copies / "rows.parquet")
        for kind in KINDS:
            processing = relayml.run("processing", kind, upstream=[str(load.key)], project=root)
            training = relayml.run(
                "training",
                "logreg",
                {"C": 1.0, "cv": 2},
                upstream=[str(processing.key)],
                project=root,
            )
            uri = training.model_uri
            assert uri is not None
            found[kind] = Path(
                mlflow.artifacts.download_artifacts(uri, dst_path=str(copies / kind))
            )
            found[f"{kind}.expected"] = copies / f"{kind}.npz"
            prediction = load_bundle(uri).predict(rows)
            np.savez(found[f"{kind}.expected"], **_arrays(prediction))
    found["rows"] = copies / "rows.parquet"
    return found


def _rows(root: Path) -> pd.DataFrame:
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{root / 'data' / 'fraud.db'}")
    with engine.connect() as conn:
        return pd.read_sql("SELECT * FROM transactions ORDER BY id LIMIT 2000", conn)


def _arrays(prediction) -> dict[str, np.ndarray]:
    if isinstance(prediction, pd.DataFrame):
        return {c: prediction[c].to_numpy() for c in prediction.columns}
    return {"prediction": np.asarray(prediction)}


@pytest.fixture(scope="session")
def clean_python(example_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A new virtual environment with only the bundles' requirements.txt installed."""
    requirements = {(example_bundles[k] / "requirements.txt").read_text() for k in KINDS}
    assert len(requirements) == 1, requirements  # the three kinds need the same packages
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    done = subprocess.run(  # uv: seconds where pip takes a minute (its cache makes reruns quick)
        [
            str(Path(sys.executable).with_name("uv")),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "-r",
            str(example_bundles["plain"] / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return python


_SCRIPT = textwrap.dedent(
    """
    import sys
    import mlflow.pyfunc, numpy as np, pandas as pd
    try:
        import relayml
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("relayml is importable: the environment is not clean")
    model = mlflow.pyfunc.load_model(sys.argv[1])
    prediction = model.predict(pd.read_parquet(sys.argv[2]))
    if isinstance(prediction, pd.DataFrame):
        arrays = {c: prediction[c].to_numpy() for c in prediction.columns}
    else:
        arrays = {"prediction": np.asarray(prediction)}
    np.savez(sys.argv[3], **arrays)
    """
)


@pytest.mark.parametrize("kind", KINDS)
def test_bundle_predicts_in_a_clean_environment_bit_for_bit(
    kind: str, example_bundles: dict[str, Path], clean_python: Path, tmp_path: Path
) -> None:
    out = tmp_path / "prediction.npz"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
    }
    done = subprocess.run(
        [
            str(clean_python),
            "-c",
            _SCRIPT,
            str(example_bundles[kind]),
            str(example_bundles["rows"]),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the project: the bundle carries its code
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as got, np.load(example_bundles[f"{kind}.expected"]) as want:
        assert sorted(got.files) == sorted(want.files)
        for name in want.files:
            assert got[name].dtype == want[name].dtype
            assert np.array_equal(got[name], want[name])
    if kind == "clipped":
        assert (example_bundles[kind] / "code" / "features.py").exists()
        assert not (example_bundles[kind] / "code" / "steps.py").exists()
