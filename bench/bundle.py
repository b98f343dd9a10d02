"""Benchmark: a bundle with computed requirements + load proof vs MLflow's requirement inference.

relayml logs a bundle with pip requirements computed from the objects it stores, then proves
it in a child interpreter that cannot import relayml (``relayml.bundle.log_bundle``). The
anchor, measured in the same run on the same data, is what relay did before: the same
bundle logged with ``mlflow.sklearn.log_model`` *without* ``pip_requirements`` (MLflow infers
them by loading the model in a subprocess) and the steps file shipped as code, no proof.
That old path lives only here (:func:`inferred_log_bundle`).

Two measurements, medians of ``--repeat`` alternated runs:

1. the bundle logging alone, in one process (the example's ``plain`` processor and its
   logreg search, refitted before each logging as a training step does; only the logging is
   timed): the anchor; relay with a *cold* proof interpreter (stopped before each round, as
   in a fresh process) started before the fit (what ``relay run training`` does) or in the
   call; and relay with the process's proof interpreter already *warm* (what the next training
   step of a chain, a notebook or a worker gets: each proof is still a fresh fork of it);
2. the wall time of ``relay run training logreg`` on the example, each in a fresh process
   (the anchor's process swaps ``relayml.bundle.log_bundle`` for the old path).

It also prints the requirements.txt of both bundles.

Usage:
    python bench/bundle.py --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fraud"
sys.path.insert(0, str(EXAMPLE))  # generate.py, steps.py, features.py

import mlflow
import pandas as pd

import relayml
from relayml import bundle, bundle_load, bundle_log, bundle_proof
from relayml.bundle_proof import LoadProof
from relayml.trust import skops_types

FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]
TRAINING = ["run", "training", "logreg"]


def inferred_log_bundle(
    processor: Any,
    model: Any,
    *,
    raw_example: pd.DataFrame,
    run_id: str,
    threshold: float | None = None,
    name: str = "model",
    tags: dict[str, str] | None = None,
    proof: Any = None,
    store: Any = None,
) -> str:
    """The anchor: relay's bundle logged the old way (MLflow infers the requirements)."""
    example = raw_example[list(processor.feature_names_in_)].head(5).reset_index(drop=True)
    stored, _ = bundle_log.assemble(processor, model, example, threshold)
    run = mlflow.MlflowClient().get_run(run_id)
    model_id = mlflow.initialize_logged_model(
        name=name,
        source_run_id=run_id,
        tags=tags,
        params=dict(run.data.params),
        experiment_id=run.info.experiment_id,
    ).model_id
    code = [str(EXAMPLE / "steps.py"), bundle_load.runtime().__file__]
    with bundle_load.allow_deserialization():  # MLflow reloads the model to infer requirements
        mlflow.sklearn.log_model(
            stored,
            name=name,
            signature=bundle_log.signature(example, stored.predict(example)),
            input_example=example,
            code_paths=code,
            skops_trusted_types=skops_types(stored) or None,
            run_id=run_id,
            model_id=model_id,
        )
    return f"models:/{model_id}"


def project(folder: Path) -> Path:
    """A copy of the example with its data, loaded and processed (plain)."""
    import generate

    root = folder / "fraud"
    root.mkdir(parents=True)
    for name in ("relay.toml", "steps.py", "features.py", "generate.py"):
        shutil.copy(EXAMPLE / name, root / name)
    (root / "data").mkdir()
    generate.generate(f"sqlite:///{root / 'data' / 'fraud.db'}", days=3, rows_per_day=1500)
    relayml.run("load", "transactions", project=root)
    relayml.run("processing", "plain", project=root)
    return root


def requirements(uri: str) -> list[str]:
    local = Path(mlflow.artifacts.download_artifacts(uri))
    return (local / "requirements.txt").read_text().split()


def fit(train: pd.DataFrame) -> Any:
    """The example's logreg search with its defaults (what `relay run training logreg` fits)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    search = GridSearchCV(
        LogisticRegression(solver="liblinear", max_iter=1000, random_state=0),
        {"C": [0.01, 0.1, 1.0, 10.0], "l1_ratio": [1.0, 0.0]},
        scoring="roc_auc",
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
    )
    return search.fit(train.drop(columns="Class"), train["Class"]).best_estimator_


def logging_alone(root: Path, repeat: int) -> None:
    training = relayml.run("training", "logreg", project=root)
    processing = relayml.get("processing/plain@latest", project=root)
    processor, train = processing.load("processor"), processing.load("train")
    threshold = float(training.load("threshold"))
    load = relayml.get("load/transactions@latest", project=root)
    raw = load.load(next(iter(load.outputs))).head(5)
    experiment = training.mlflow.info.experiment_id
    ways = {  # (log, proof started before the fit, proof interpreter stopped first)
        "mlflow inference": (inferred_log_bundle, False, False),
        "relay, cold proof started with the step": (bundle.log_bundle, True, True),
        "relay, cold proof started in the call": (bundle.log_bundle, False, True),
        "relay, warm proof interpreter": (bundle.log_bundle, False, False),
    }
    times: dict[str, list[float]] = {w: [] for w in ways}
    fits: list[float] = []
    uris: dict[str, str] = {}
    for i in range(repeat + 1):  # the first round warms every path up
        for way, (log, early, cold) in ways.items():
            # as in a training step: the runner starts the proof, the variant fits, then the
            # bundle is logged (only the logging is timed)
            if cold:
                bundle_proof._shutdown()  # as in a new process: no warm interpreter yet
            proof = LoadProof() if early else None
            start = time.perf_counter()
            model = fit(train)
            fits.append(time.perf_counter() - start)
            kw = {"proof": proof} if early else {}
            with mlflow.start_run(experiment_id=experiment) as run:
                start = time.perf_counter()
                uris[way] = log(
                    processor,
                    model,
                    raw_example=raw,
                    run_id=run.info.run_id,
                    threshold=threshold,
                    **kw,
                )
                if i:
                    times[way].append(time.perf_counter() - start)
    print(
        f"\nbundle logging alone (median of {repeat}; the fit before it: median "
        f"{statistics.median(fits):.2f} s, not timed):"
    )
    _report(times)
    for way, uri in uris.items():
        reqs = requirements(uri)
        print(f"  requirements.txt, {way}: {len(reqs)} lines: {' '.join(reqs)}")


def cli(root: Path, repeat: int) -> None:
    old = [sys.executable, __file__, "--inferred-cli", *TRAINING]
    new = [sys.executable, "-m", "relayml", *TRAINING]
    times: dict[str, list[float]] = {"mlflow inference": [], "relay": []}
    for _ in range(repeat):
        for way, command in zip(times, (old, new), strict=True):
            start = time.perf_counter()
            subprocess.run(command, cwd=root, check=True, capture_output=True)
            times[way].append(time.perf_counter() - start)
    print(f"\n`relay {' '.join(TRAINING)}` wall time (median of {repeat}):")
    _report(times)


def _report(times: dict[str, list[float]]) -> None:
    medians = {w: statistics.median(t) for w, t in times.items()}
    anchor = next(iter(medians.values()))
    for way, m in medians.items():
        runs = ", ".join(f"{t:.2f}" for t in times[way])
        print(f"  {way:<36} {m:7.2f} s  {anchor / m:5.2f}x   runs: {runs}")


def main() -> None:
    if sys.argv[1:2] == ["--inferred-cli"]:  # the anchor's CLI process
        from relayml import runner

        bundle.log_bundle = inferred_log_bundle  # the runner imports it at call time
        runner.early_proof = lambda req: contextlib.nullcontext()  # no proof in the anchor
        sys.argv = ["relay", *sys.argv[2:]]
        from relayml.cli import main as relay

        relay()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-bench-bundle-") as tmp:
        root = project(Path(tmp))
        logging_alone(root, args.repeat)
        cli(root, args.repeat)


if __name__ == "__main__":
    main()
