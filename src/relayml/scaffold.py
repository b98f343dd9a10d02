"""``relay init``: write a minimal project that ``relay run`` can execute at once.

Writes ``relay.toml``, ``steps.py`` (one load, one processing and one training variant) and a
``.gitignore`` keeping ``.relay/`` out of git. Never overwrites an existing file.

Example:
    >>> init_project(Path("/tmp/demo"))  # doctest: +SKIP
    [PosixPath('/tmp/demo/relay.toml'), PosixPath('/tmp/demo/steps.py'), ...]
"""

from __future__ import annotations

import re
from pathlib import Path

from relayml.config import CONFIG_FILE
from relayml.errors import UsageError

__all__ = ["init_project"]

CONFIG = """\
[project]
name = "{name}"
steps = "steps"        # the module declaring steps and variants (steps.py)
timezone = "UTC"       # dates in references (step/variant@YYYY-MM-DD) use this zone

[tracking]
uri = "sqlite:///.relay/mlflow.db"   # RELAY_TRACKING_URI or MLFLOW_TRACKING_URI override it
artifacts = ".relay/artifacts"

# Named data sources for ctx.query(name, sql) and ctx.read(name):
# [sources.warehouse]
# url = "postgresql+psycopg://analyst@db.example.com/sales"
# password_env = "WAREHOUSE_PASSWORD"
# [sources.customers]
# path = "data/customers.csv"
"""

STEPS = '''\
"""Steps of the {name} project: load → processing → training.

Run them with:  relay run load synthetic && relay run processing scaled && relay run training logreg
"""

import pandas as pd
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import relayml as relay

load = relay.step("load")
processing = relay.step("processing", upstream=load)
training = relay.step("training", upstream=processing)


@load.variant("synthetic")
def synthetic(rows: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A synthetic table; replace it with ctx.query("source", "SELECT ...")."""
    X, y = make_classification(n_samples=rows, n_features=8, random_state=seed)
    frame = pd.DataFrame(X, columns=[f"x{{i}}" for i in range(8)])
    frame["target"] = y
    return frame


@processing.variant("scaled")
def scaled(ctx, load: pd.DataFrame, test_size: float = 0.25):
    """Split train/test and fit a StandardScaler on the features."""
    train, test = train_test_split(load, test_size=test_size, random_state=0)
    features = [c for c in load.columns if c != "target"]
    processor = StandardScaler().set_output(transform="pandas").fit(train[features])
    out = {{"processor": processor}}
    for name, part in (("train", train), ("test", test)):
        matrix = processor.transform(part[features]).reset_index(drop=True)
        matrix["target"] = part["target"].to_numpy()
        out[name] = matrix
    return out


@training.variant("logreg")
def logreg(ctx, processing, C: float = 1.0):
    """Logistic regression; logs the test ROC AUC."""
    train, test = processing["train"], processing["test"]
    model = LogisticRegression(C=C).fit(train.drop(columns="target"), train["target"])
    score = model.predict_proba(test.drop(columns="target"))[:, 1]
    ctx.log_metric("test_roc_auc", roc_auc_score(test["target"], score))
    return {{"model": model}}
'''

GITIGNORE = ".relay/\nmlruns/\n__pycache__/\n"


def init_project(directory: Path, *, name: str | None = None) -> list[Path]:
    """Create a minimal working project in ``directory`` and return the files written.

    Raises:
        UsageError: the folder already holds a relay.toml, or the name is invalid.

    Example:
        >>> files = init_project(Path("/tmp/churn"), name="churn")  # doctest: +SKIP
    """
    directory = Path(directory).resolve()
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "-", directory.name) or "project"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UsageError(f"invalid project name {name!r}: use letters, digits, '.', '_' or '-'")
    if (directory / CONFIG_FILE).exists():
        raise UsageError(f"{directory / CONFIG_FILE} already exists; nothing was written")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in (
        (CONFIG_FILE, CONFIG.format(name=name)),
        ("steps.py", STEPS.format(name=name)),
        (".gitignore", GITIGNORE),
    ):
        path = directory / filename
        if path.exists():
            continue
        path.write_text(text)
        written.append(path)
    return written
