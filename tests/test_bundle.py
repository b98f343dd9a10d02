"""Tests of relayml.bundle: logging, loading, faithfulness, fresh-env loading, registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import relayml
from relayml.bundle import load_bundle, log_bundle, register
from relayml.errors import BundleError, BundleInputError, NotFound, UsageError

FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]


def make_fraud_table(n: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """A synthetic credit-card-fraud table: ~0.15 % positives, learnable from V1..V28."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 28))
    logit = X @ rng.standard_normal(28) * 1.5 - 19.0
    df = pd.DataFrame(X, columns=[f"V{i}" for i in range(1, 29)])
    df.insert(0, "Time", np.sort(rng.uniform(0, 172_800, n)))
    df["Amount"] = np.round(rng.lognormal(3, 1.2, n), 2)
    df.insert(0, "id", np.arange(n, dtype=np.int64))
    df["ts"] = pd.Timestamp("2019-02-09") + pd.to_timedelta(df["Time"], unit="s")
    df["Class"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return df


def fit_fraud(df: pd.DataFrame) -> tuple[ColumnTransformer, LogisticRegression]:
    processor = ColumnTransformer([("num", StandardScaler(), FEATURES)]).fit(df[FEATURES])
    model = LogisticRegression(max_iter=1000).fit(processor.transform(df[FEATURES]), df["Class"])
    return processor, model


def scale_features(df: pd.DataFrame) -> pd.DataFrame:
    """A processor that is a plain function (pyfunc bundle path)."""
    return (df[["V1", "V2", "Amount"]] - 0.5) * 2.0


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    old, old_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    exported = {v: os.environ.get(v) for v in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # relay's stores set it globally: don't inherit another test's
    mlflow.set_experiment("training")
    yield uri
    mlflow.set_tracking_uri(old)
    mlflow.set_registry_uri(old_registry)
    for var, value in exported.items():  # MLflow exports the URIs: later tests must not see them
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.fixture(scope="module")
def fraud(tracking: str):
    df = make_fraud_table()
    train, test = df.iloc[:15_000], df.iloc[15_000:].reset_index(drop=True)
    processor, model = fit_fraud(train)
    with mlflow.start_run() as run:
        mlflow.set_tag("relay.key", "training/logreg@20190209101500")
        plain = log_bundle(processor, model, raw_example=train.head(20), run_id=run.info.run_id)
        thresholded = log_bundle(
            processor,
            model,
            raw_example=train.head(20),
            run_id=run.info.run_id,
            threshold=0.2,
            name="model_thr",
        )
    return {
        "processor": processor,
        "model": model,
        "test": test,
        "plain": plain,
        "threshold": thresholded,
        "run_id": run.info.run_id,
        "tracking": tracking,
    }


def test_log_bundle_returns_logged_model_uri_linked_to_run(fraud):
    assert fraud["plain"].startswith("models:/m-")
    info = mlflow.models.get_model_info(fraud["plain"])
    assert info.run_id == fraud["run_id"]
    assert [s.name for s in info.signature.inputs.inputs] == FEATURES  # no id, ts, Class
    assert {str(s.type.name) for s in info.signature.inputs.inputs} == {"double"}
    assert info.saved_input_example_info is not None
    local = Path(mlflow.artifacts.download_artifacts(fraud["plain"]))
    assert "scikit-learn" in (local / "requirements.txt").read_text()


def test_load_bundle_schema_and_provenance(fraud):
    bundle = load_bundle(fraud["plain"])
    assert bundle.uri == fraud["plain"]
    assert bundle.input_schema[0] == ("Time", "double")
    assert bundle.columns == FEATURES
    assert bundle.provenance == {"relay.key": "training/logreg@20190209101500"}
    assert bundle.numeric and bundle.output_columns is None


def test_bundle_is_faithful_bit_for_bit(fraud):
    bundle, test = load_bundle(fraud["plain"]), fraud["test"]
    expected = fraud["model"].predict(fraud["processor"].transform(test[FEATURES]))
    got = bundle.predict(test)  # extra columns id, ts, Class are ignored
    assert np.array_equal(got, expected)
    assert np.array_equal(bundle.predict_matrix(test[FEATURES].to_numpy()), expected)
    pyfunc = mlflow.pyfunc.load_model(fraud["plain"])
    assert np.array_equal(pyfunc.predict(test), expected)


def test_threshold_bundle_returns_label_and_score(fraud):
    bundle, test = load_bundle(fraud["threshold"]), fraud["test"]
    score = fraud["model"].predict_proba(fraud["processor"].transform(test[FEATURES]))[:, 1]
    got = bundle.predict(test)
    assert list(got.columns) == ["label", "score"] == bundle.output_columns
    assert np.array_equal(got["score"].to_numpy(), score)
    assert np.array_equal(got["label"].to_numpy(), (score >= 0.2).astype(np.int64))
    assert got["label"].sum() > 0


def fit_fraud_example(df: pd.DataFrame) -> tuple[ColumnTransformer, LogisticRegression]:
    """The fraud example's logreg bundle: Time/Amount scaled, V1..V28 passed through, pandas
    output, liblinear fitted on the DataFrame (examples/fraud/steps.py, processing plain)."""
    processor = ColumnTransformer(
        [("scale", StandardScaler(), ["Time", "Amount"])],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    processor.set_output(transform="pandas")
    matrix = processor.fit(df[FEATURES]).transform(df[FEATURES])
    model = LogisticRegression(solver="liblinear", C=0.1, max_iter=1000).fit(matrix, df["Class"])
    return processor, model


@pytest.mark.parametrize("threshold", [None, 0.01])
def test_fraud_example_bundle_is_compiled_and_bit_for_bit(tracking, threshold):
    df = make_fraud_table(6_000, seed=3)
    processor, model = fit_fraud_example(df.iloc[:4000])
    with mlflow.start_run() as run:
        uri = log_bundle(
            processor, model, raw_example=df.head(5), run_id=run.info.run_id, threshold=threshold
        )
    bundle = load_bundle(uri)
    assert bundle.numeric  # the numpy path, not pipeline.predict on a DataFrame
    pipeline = bundle.model
    rng = np.random.default_rng(0)
    test = df.iloc[4000:].reset_index(drop=True)
    for n in (1, 2, 3, 7, 64, 100, 2000):
        rows = test.sample(n, random_state=int(rng.integers(1 << 30)))
        rows[FEATURES] = rows[FEATURES] * rng.choice([1.0, 1e3, 1e-3], len(FEATURES))
        expected = pipeline.predict(rows[FEATURES])
        for got in (bundle.predict(rows), bundle.predict_matrix(rows[FEATURES].to_numpy())):
            if threshold is None:
                assert np.array_equal(got, expected) and got.dtype == expected.dtype
            else:
                for column in ("label", "score"):
                    assert np.array_equal(got[column].to_numpy(), expected[column].to_numpy())
                    assert got[column].dtype == expected[column].dtype
        raw = bundle.score_matrix(np.ascontiguousarray(rows[FEATURES].to_numpy()))
        if threshold is not None:
            assert np.array_equal(raw[1], expected["score"].to_numpy())
    pyfunc = mlflow.pyfunc.load_model(uri)
    if threshold is not None:
        assert pyfunc.predict(test).equals(bundle.predict(test))
    else:
        assert np.array_equal(pyfunc.predict(test), bundle.predict(test))


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (lambda t: t.drop(columns=["V3"]), "missing column 'V3'"),
        (lambda t: t.assign(Amount="abc"), "column 'Amount' must be a number"),
        (lambda t: t.iloc[:0], "empty input"),
        (lambda t: t.assign(V1=np.nan), "column 'V1' has a missing value"),
    ],
)
def test_bad_input_names_the_column(fraud, frame, match):
    bundle = load_bundle(fraud["plain"])
    with pytest.raises(BundleInputError, match=match):
        bundle.predict(frame(fraud["test"].head(3)))


def test_load_bundle_unknown_uri(tracking):
    with pytest.raises(NotFound, match="no model"):
        load_bundle("models:/m-0123456789abcdef0123456789abcdef")


def test_log_bundle_rejects_missing_columns_and_bad_threshold(fraud):
    with mlflow.start_run() as run:
        with pytest.raises(UsageError, match="lacks columns"):
            log_bundle(
                fraud["processor"],
                fraud["model"],
                raw_example=fraud["test"][["V1"]],
                run_id=run.info.run_id,
            )
        with pytest.raises(UsageError, match="predict_proba"):
            log_bundle(
                fraud["processor"],
                LinearSVC(),
                raw_example=fraud["test"],
                run_id=run.info.run_id,
                threshold=0.5,
            )


def test_register_and_alias(fraud):
    version = register(fraud["plain"], "fraud", alias="champion")
    assert version == 1
    bundle = load_bundle("models:/fraud@champion")
    assert np.array_equal(
        bundle.predict(fraud["test"]), load_bundle(fraud["plain"]).predict(fraud["test"])
    )
    assert register(fraud["threshold"], "fraud", alias="champion") == 2
    assert load_bundle("models:/fraud@champion").output_columns == ["label", "score"]


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A new virtual env that sees the project's site-packages but not relayml."""
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = str(env / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run(
        [python, "-c", "import relayml"], capture_output=True, text=True, env={"PATH": "/usr/bin"}
    )
    assert probe.returncode != 0 and "No module named 'relayml'" in probe.stderr
    return python


def _predict_in(
    python: str, tracking: str, uri: str | dict[str, Path], data: Path, out: Path | None, cwd: Path
) -> None:
    """Predict ``data`` with the bundle at ``uri`` into ``out`` in ``python`` (no relayml), or
    with each bundle of a ``{uri: out}`` mapping, in one process."""
    jobs = {k: str(v) for k, v in (uri if isinstance(uri, dict) else {uri: out}).items()}
    script = textwrap.dedent(
        f"""
        import sys, mlflow, pandas as pd
        assert "relayml" not in sys.modules
        mlflow.set_tracking_uri({tracking!r})
        for uri, out in {jobs!r}.items():
            model = mlflow.pyfunc.load_model(uri)
            pred = model.predict(pd.read_parquet({str(data)!r}))
            frame = pred if isinstance(pred, pd.DataFrame) else pd.DataFrame({{"p": pred}})
            frame.to_parquet(out)
        assert not any(m == "relayml" or m.startswith("relayml.") for m in sys.modules)
        """
    )
    env = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    done = subprocess.run(
        [python, "-c", script], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_bundle_loads_without_relayml(fraud, fresh_python, tmp_path):
    data = tmp_path / "raw.parquet"
    fraud["test"].head(500).to_parquet(data)
    expected_plain = load_bundle(fraud["plain"]).predict(fraud["test"].head(500))
    expected_thr = load_bundle(fraud["threshold"]).predict(fraud["test"].head(500))
    both = {fraud["plain"]: tmp_path / "a.pq", fraud["threshold"]: tmp_path / "b.pq"}
    _predict_in(fresh_python, fraud["tracking"], both, data, None, tmp_path)
    assert np.array_equal(pd.read_parquet(tmp_path / "a.pq")["p"].to_numpy(), expected_plain)
    got = pd.read_parquet(tmp_path / "b.pq")
    assert np.array_equal(got["score"].to_numpy(), expected_thr["score"].to_numpy())
    assert np.array_equal(got["label"].to_numpy(), expected_thr["label"].to_numpy())


def test_function_processor_is_a_pyfunc_bundle_shipping_step_code(
    fraud, fresh_python, tmp_path, monkeypatch
):
    # the project's step code lives in its own module, shipped through code_paths
    project = tmp_path / "project"
    project.mkdir()
    (project / "fraud_steps.py").write_text(
        "def scale(df):\n    return (df[['V1', 'V2', 'Amount']] - 0.5) * 2.0\n"
    )
    monkeypatch.syspath_prepend(str(project))
    import fraud_steps

    train = fraud["test"]
    model = LogisticRegression(max_iter=500).fit(fraud_steps.scale(train), train["Class"])
    with mlflow.start_run() as run:
        uri = log_bundle(
            fraud_steps.scale,
            model,
            raw_example=train.head(10)[["V1", "V2", "Amount"]],
            run_id=run.info.run_id,
            threshold=0.3,
        )
    info = mlflow.models.get_model_info(uri)
    assert "sklearn" not in info.flavors and "python_function" in info.flavors
    expected = model.predict_proba(fraud_steps.scale(train.head(200)))[:, 1]
    bundle = load_bundle(uri)
    assert np.array_equal(bundle.predict(train.head(200))["score"].to_numpy(), expected)

    data = tmp_path / "raw.parquet"
    train.head(200).to_parquet(data)
    monkeypatch.delitem(sys.modules, "fraud_steps")
    _predict_in(fresh_python, fraud["tracking"], uri, data, tmp_path / "c.pq", tmp_path)
    assert np.array_equal(pd.read_parquet(tmp_path / "c.pq")["score"].to_numpy(), expected)


# -- exact requirements, self-contained code, the load proof ----------------------------------


def _artifacts(uri: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(uri))


def _logged_models(run_id: str) -> list[str]:
    experiment = mlflow.get_run(run_id).info.experiment_id
    found = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")
    return [m.model_id for m in found if m.source_run_id == run_id]


def test_requirements_are_computed_exact_and_pinned(fraud):
    import importlib.metadata

    import dask  # noqa: F401  (imported here: MLflow's inference would have listed it)
    import yaml

    local = _artifacts(fraud["plain"])
    requirements = (local / "requirements.txt").read_text().split()
    names = ["mlflow", "numpy", "pandas", "scikit-learn", "skops"]
    assert requirements == [f"{n}=={importlib.metadata.version(n)}" for n in names]
    conda = yaml.safe_load((local / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip == requirements
    assert yaml.safe_load((local / "python_env.yaml").read_text())["dependencies"] == [
        "-r requirements.txt"
    ]
    assert not (local / "code").exists()  # nothing of the project: no step file, no runtime
    threshold = _artifacts(fraud["threshold"])
    assert (threshold / "requirements.txt").read_text().split() == requirements
    assert sorted(p.name for p in (threshold / "code").glob("*.py")) == ["relay_bundle_runtime.py"]
    shipped = (threshold / "code" / "relay_bundle_runtime.py").read_text()
    assert shipped == Path(relayml.bundle_runtime.__file__).read_text()


def test_bundle_runtime_imports_nothing_of_relayml():
    import ast

    import relayml.bundle_runtime

    tree = ast.parse(Path(relayml.bundle_runtime.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the runtime is copied alone: no relative import"
            imported.add((node.module or "").partition(".")[0])
    assert imported <= {
        "__future__",
        "collections",
        "typing",
        "numpy",
        "pandas",
        "sklearn",
        "mlflow",
    }


def test_log_bundle_writes_to_the_given_store_not_mlflows_current_uri(fraud, tmp_path):
    from relayml.config import Settings
    from relayml.store import Store

    before = mlflow.get_tracking_uri()
    store = Store(
        Settings(root=tmp_path, project="other", tracking_uri=f"sqlite:///{tmp_path}/o.db")
    )
    try:
        run_id = store.create_run("training", start_ms=0, run_name="r", tags={}).info.run_id
        mlflow.set_tracking_uri(before)  # MLflow's current URI stays another store's
        uri = log_bundle(
            fraud["processor"],
            fraud["model"],
            raw_example=fraud["test"],
            run_id=run_id,
            store=store,
        )
        assert mlflow.get_tracking_uri() == before
        assert load_bundle(uri, store=store).columns == FEATURES
        model = store.client.get_logged_model(uri.removeprefix("models:/"))
        assert (model.source_run_id, str(model.status)) == (run_id, "READY")
    finally:
        mlflow.set_tracking_uri(before)
        mlflow.set_registry_uri(before)


def _module(folder: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch):
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return __import__(name)


def _clip_processor(func, **kw) -> ColumnTransformer:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    amount = make_pipeline(FunctionTransformer(func, **kw), StandardScaler())
    return ColumnTransformer([("amount", amount, ["Amount"]), ("v", "passthrough", ["V1", "V2"])])


def _fit_log(processor, frame: pd.DataFrame) -> str:
    processor.fit(frame)
    model = LogisticRegression(max_iter=500).fit(processor.transform(frame), frame["Class"])
    with mlflow.start_run() as run:
        return log_bundle(processor, model, raw_example=frame.head(10), run_id=run.info.run_id)


def test_project_helper_module_is_shipped_and_loads_without_relayml(
    fraud, fresh_python, tmp_path, monkeypatch
):
    helpers = _module(
        tmp_path,
        "fraud_features",
        """
        import numpy as np

        def clip(x):
            return np.clip(x, 0.0, 100.0)
        """,
        monkeypatch,
    )
    train = fraud["test"]
    uri = _fit_log(_clip_processor(helpers.clip), train)
    local = _artifacts(uri)
    assert sorted(p.name for p in (local / "code").glob("*.py")) == ["fraud_features.py"]
    expected = load_bundle(uri).predict(train.head(300))

    data = tmp_path / "raw.parquet"
    train.head(300).to_parquet(data)
    monkeypatch.delitem(sys.modules, "fraud_features")
    elsewhere = tmp_path / "elsewhere"  # not the project folder: the bundle carries the module
    elsewhere.mkdir()
    _predict_in(fresh_python, fraud["tracking"], uri, data, tmp_path / "d.pq", elsewhere)
    assert np.array_equal(pd.read_parquet(tmp_path / "d.pq")["p"].to_numpy(), expected)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: _clip_processor(np.log1p, feature_names_out=lambda t, names: names),
            r"processor\.transformers\[0\]\[1\]\.steps\[0\]\[1\]\.feature_names_out is a lambda"
            r".*define it with `def`",
        ),
        (
            lambda: _clip_processor(_local_function()),
            r"processor\.transformers\[0\]\[1\].*'_local_function.<locals>.clip', defined "
            r"inside another function.*does not import relayml",
        ),
    ],
)
def test_unnamed_functions_are_refused_before_logging(fraud, make, match):
    with mlflow.start_run() as run:
        processor = make().fit(fraud["test"])
        model = LogisticRegression().fit(processor.transform(fraud["test"]), fraud["test"].Class)
        with pytest.raises(BundleError, match=match):
            log_bundle(processor, model, raw_example=fraud["test"], run_id=run.info.run_id)
        assert _logged_models(run.info.run_id) == []


def _local_function():
    def clip(x):
        return x

    return clip


def test_function_of_a_module_importing_relayml_is_refused(fraud, tmp_path, monkeypatch):
    helpers = _module(
        tmp_path,
        "fraud_steps_with_relay",
        """
        import relayml as relay

        def clip(x):
            return x
        """,
        monkeypatch,
    )
    with pytest.raises(
        BundleError,
        match=r"processor.* is defined in module 'fraud_steps_with_relay' \(.*"
        r"fraud_steps_with_relay.py\), which imports relayml.*move it to a module of the "
        r"project that does not import relayml",
    ):
        _fit_log(_clip_processor(helpers.clip), fraud["test"])


def test_bundle_that_fails_the_load_proof_fails_with_the_childs_error(fraud, tmp_path, monkeypatch):
    # the helper loads a package by name at call time: invisible to the requirement walk,
    # present here, absent from the bundle's requirements
    helpers = _module(
        tmp_path,
        "fraud_plugins",
        """
        import importlib

        def clip(x):
            importlib.import_module("ri" + "ch")
            return x
        """,
        monkeypatch,
    )
    with mlflow.start_run() as run:
        processor = _clip_processor(helpers.clip).fit(fraud["test"])
        model = LogisticRegression().fit(processor.transform(fraud["test"]), fraud["test"].Class)
        with pytest.raises(BundleError, match=r"does not load without relayml.*'rich'") as e:
            log_bundle(processor, model, raw_example=fraud["test"], run_id=run.info.run_id)
        assert "fraud_plugins.py" in str(e.value)  # the end of the child's traceback follows
        assert _logged_models(run.info.run_id) == []  # the bad bundle is not left behind


def test_a_proof_never_sees_the_code_an_earlier_bundle_shipped(fraud, tmp_path, monkeypatch):
    # the proof's warm interpreter serves every bundle of this process: each proof runs in a
    # fresh fork, so a module shipped by one bundle cannot be imported by the next
    first = _module(tmp_path, "fraud_first", "def clip(x):\n    return x\n", monkeypatch)
    _fit_log(_clip_processor(first.clip), fraud["test"])
    second = _module(
        tmp_path,
        "fraud_second",
        """
        import importlib

        def clip(x):
            importlib.import_module("fraud_" + "first")
            return x
        """,
        monkeypatch,
    )
    with pytest.raises(BundleError, match=r"does not load without relayml.*'fraud_first'"):
        _fit_log(_clip_processor(second.clip), fraud["test"])


_INLINE_VARIANT = """

def clip_amount_here(amounts):
    return np.clip(amounts, 0.0, 2500.0)


@processing.variant("inline")
def inline(ctx: relay.Context, load: pd.DataFrame, test_size: float = 0.25, seed: int = 42):
    train, test = _split(load, test_size, seed)
    clip = FunctionTransformer(clip_amount_here, feature_names_out="one-to-one")
    processor = ColumnTransformer(
        [("amount", clip, ["Amount"])], remainder="passthrough", verbose_feature_names_out=False
    )
    return _processed(processor, train, test)
"""


@pytest.mark.slow
def test_training_refuses_a_function_of_the_steps_module(project, relay):
    steps = project / "steps.py"
    steps.write_text(steps.read_text() + _INLINE_VARIANT)
    assert relay("run", "load", "transactions").code == 0
    assert relay("run", "processing", "inline").code == 0
    r = relay("run", "training", "logreg", "-P", "C=1", "-P", "cv=2")
    assert r.code == 1, r
    assert "clip_amount_here" in r.err and "is defined in module 'steps'" in r.err, r
    assert "imports relayml" in r.err and "does not import relayml (e.g. features.py" in r.err
    runs = json.loads(relay("runs", "training", "--json").out)
    assert [row["status"] for row in runs] == ["FAILED"]
    assert relayml.get(runs[0]["key"]).model_uri is None


def test_nested_pipeline_with_pandas_output_predicts_bit_for_bit(tracking):
    # the example's "clipped" processor: FunctionTransformer → StandardScaler inside a
    # ColumnTransformer with pandas output (the fast path once fed the scaler a DataFrame)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    df = make_fraud_table(3_000, seed=5)
    clip = FunctionTransformer(np.log1p, feature_names_out="one-to-one")
    processor = ColumnTransformer(
        [("amount", make_pipeline(clip, StandardScaler()), ["Amount"])],
        remainder="passthrough",
        verbose_feature_names_out=False,
    ).set_output(transform="pandas")
    matrix = processor.fit(df[FEATURES]).transform(df[FEATURES])
    model = LogisticRegression(solver="liblinear").fit(matrix, df["Class"])
    with mlflow.start_run() as run:
        uri = log_bundle(processor, model, raw_example=df.head(5), run_id=run.info.run_id)
    bundle = load_bundle(uri)
    assert bundle.numeric
    expected = model.predict(processor.transform(df[FEATURES]))
    assert np.array_equal(bundle.predict(df), expected)
