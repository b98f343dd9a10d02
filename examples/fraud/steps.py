"""The fraud example's steps: load → processing → training, as in the seed's proof of concept.

Each function is a *variant*: relayml reads its signature (``ctx``, the upstream step's
outputs, then params with types and defaults), runs it inside an MLflow run, stores what it
returns and hands it to the next step as Python objects.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, RobustScaler, StandardScaler

import relayml as relay

from features import clip_amount  # a module without relayml: bundles ship it

TARGET = "Class"
FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]

load = relay.step("load", doc="snapshot the transactions table")
processing = relay.step("processing", upstream=load, doc="fit a processor, split train/test")
training = relay.step("training", upstream=processing, doc="fit a model, pick a threshold")


# -- load ------------------------------------------------------------------------------------


@load.variant(
    "transactions",
    checks=relay.checks(
        min_rows=1,  # an empty load (e.g. --as-of before the first row) stops here
        not_null=[*FEATURES, TARGET],
        unique=["id"],
        ranges={"Amount": (0, None), TARGET: (0, 1)},
        schema={"id": "int", "ts": "timestamp", "Amount": "float", TARGET: "int"},
    ),
    key=["id"],
)
def transactions(ctx: relay.Context, days: int = 0) -> pd.DataFrame:
    """Every transaction known at the retrieval time (or only the last ``days`` days)."""
    sql = "SELECT * FROM transactions WHERE ts <= :retrieval_time"
    if days > 0:
        sql += " AND ts > :since"
        since = ctx.retrieval_time.replace(tzinfo=None) - pd.Timedelta(days=days)
        return ctx.query("fraud", sql + " ORDER BY id", since=since.to_pydatetime())
    return ctx.query("fraud", sql + " ORDER BY id")


# -- processing ------------------------------------------------------------------------------


def _split(frame: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    return train_test_split(frame, test_size=test_size, random_state=seed, stratify=frame[TARGET])


def _processed(processor, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    processor.set_output(transform="pandas")
    processor.fit(train[FEATURES])
    # the raw test rows (with their id): relay refresh scores the served model on those it
    # never saw, next to the retrained models
    out = {"processor": processor, "test_rows": test[["id", *FEATURES, TARGET]]}
    for name, part in (("train", train), ("test", test)):
        matrix = processor.transform(part[FEATURES]).reset_index(drop=True)
        matrix[TARGET] = part[TARGET].to_numpy()
        out[name] = matrix
    return out


@processing.variant("plain")
def plain(ctx: relay.Context, load: pd.DataFrame, test_size: float = 0.25, seed: int = 42):
    """Standardise Time and Amount, keep V1..V28 as they are (the seed's logic)."""
    train, test = _split(load, test_size, seed)
    processor = ColumnTransformer(
        [("scale", StandardScaler(), ["Time", "Amount"])],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    ctx.log_metrics({"train_rows": len(train), "test_rows": len(test)})
    return _processed(processor, train, test)


@processing.variant("robust")
def robust(ctx: relay.Context, load: pd.DataFrame, test_size: float = 0.25, seed: int = 42):
    """log1p(Amount), drop Time, robust-scale everything: heavy tails hurt less."""
    train, test = _split(load, test_size, seed)
    v_columns = [f"V{i}" for i in range(1, 29)]
    processor = ColumnTransformer(
        [
            ("amount", make_pipeline(FunctionTransformer(np.log1p), RobustScaler()), ["Amount"]),
            ("v", RobustScaler(), v_columns),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    ctx.log_metrics({"train_rows": len(train), "test_rows": len(test)})
    return _processed(processor, train, test)


@processing.variant("clipped")
def clipped(ctx: relay.Context, load: pd.DataFrame, test_size: float = 0.25, seed: int = 42):
    """Clip Amount (features.clip_amount), then standardise Time and Amount; V1..V28 as is."""
    train, test = _split(load, test_size, seed)
    amount = make_pipeline(
        FunctionTransformer(clip_amount, feature_names_out="one-to-one"), StandardScaler()
    )
    processor = ColumnTransformer(
        [("amount", amount, ["Amount"]), ("time", StandardScaler(), ["Time"])],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    ctx.log_metrics({"train_rows": len(train), "test_rows": len(test)})
    return _processed(processor, train, test)


# -- training --------------------------------------------------------------------------------


def _fit_and_score(ctx: relay.Context, search, processing, seed: int) -> dict:
    """Fit the search on part of train, choose the threshold on the rest, score on test."""
    train, test = processing["train"], processing["test"]
    fit, valid = train_test_split(train, test_size=0.25, random_state=seed, stratify=train[TARGET])
    X, y = fit.drop(columns=TARGET), fit[TARGET]
    with ctx.parallel():
        search.fit(X, y)
    model = search.best_estimator_
    valid_score = model.predict_proba(valid.drop(columns=TARGET))[:, 1]
    precision, recall, thresholds = precision_recall_curve(valid[TARGET], valid_score)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    threshold = float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5
    score = model.predict_proba(test.drop(columns=TARGET))[:, 1]
    label = (score >= threshold).astype(int)
    truth = test[TARGET]
    ctx.log_metrics(
        {
            "cv_roc_auc": float(search.best_score_),
            "test_roc_auc": float(roc_auc_score(truth, score)),
            "test_average_precision": float(average_precision_score(truth, score)),
            "test_precision": float(precision_score(truth, label, zero_division=0)),
            "test_recall": float(recall_score(truth, label, zero_division=0)),
            "test_f1": float(f1_score(truth, label, zero_division=0)),
            "threshold": threshold,
        }
    )
    ctx.log_text(str(search.best_params_), "best_params.txt")
    return {"model": model, "threshold": threshold}


@training.variant("logreg")
def logreg(
    ctx: relay.Context,
    processing,
    C: float | None = None,
    penalty: Literal["l1", "l2", "both"] = "both",
    cv: int = 3,
    n_jobs: int = 1,
    seed: int = 0,
):
    """Penalised logistic regression, GridSearchCV over C and the penalty (roc_auc)."""
    ratios = {"l1": [1.0], "l2": [0.0], "both": [1.0, 0.0]}  # l1_ratio: 1 is L1, 0 is L2
    grid = {"C": [C] if C is not None else [0.01, 0.1, 1.0, 10.0], "l1_ratio": ratios[penalty]}
    search = GridSearchCV(
        LogisticRegression(solver="liblinear", max_iter=1000, random_state=seed),
        grid,
        scoring="roc_auc",
        cv=StratifiedKFold(cv, shuffle=True, random_state=seed),
        n_jobs=n_jobs,
    )
    return _fit_and_score(ctx, search, processing, seed)


@training.variant("rf")
def rf(
    ctx: relay.Context,
    processing,
    n_estimators: int = 100,
    max_depth: int | None = 8,
    cv: int = 3,
    n_jobs: int = 1,
    seed: int = 0,
):
    """Random forest with balanced class weights; GridSearchCV over min_samples_leaf."""
    search = GridSearchCV(
        RandomForestClassifier(
            n_estimators=n_estimators,
            max_depth=max_depth,
            class_weight="balanced_subsample",
            random_state=seed,
        ),
        {"min_samples_leaf": [1, 5]},
        scoring="roc_auc",
        cv=StratifiedKFold(cv, shuffle=True, random_state=seed),
        n_jobs=n_jobs,
    )
    return _fit_and_score(ctx, search, processing, seed)
