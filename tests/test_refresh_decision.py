"""Who gets the alias after ``relay refresh``: the pure decision, no store, no runs.

Scores in (the served model's, the retrained champion's, each challenger's, on the same fresh
rows), the margin and direction, whether the data moved and how far it drifted; the decision
and the winner out.
"""

from __future__ import annotations

import ast
import inspect

import pytest

from relayml.lifecycle import refresh_decision
from relayml.lifecycle.decision import DECISIONS

NAN = float("nan")


def decide(served, champion, challengers, **extra):
    extra.setdefault("margin", 0.0)
    return refresh_decision(served=served, champion=champion, challengers=challengers, **extra)


# -- without a champion: the best challenger becomes the first one ---------------------------


@pytest.mark.parametrize(
    ("challengers", "extra", "expected"),
    [
        ([("a", 0.8), ("b", 0.9)], {}, ("first champion", "b")),
        ([("a", 0.8), ("b", 0.9)], {"lower_is_better": True}, ("first champion", "a")),
        ([("a", 0.9), ("b", 0.9)], {}, ("first champion", "a")),  # equal scores: the first
        ([("a", None), ("b", 0.7)], {}, ("first champion", "b")),  # unscored never wins
        ([("a", NAN), ("b", 0.7)], {}, ("first champion", "b")),  # nor a NaN score
        ([("a", 0.8)], {"margin": 0.5}, ("first champion", "a")),  # no incumbent to beat
        ([("a", 0.8)], {"drift": 9.0, "max_drift": 0.1}, ("first champion", "a")),
        ([("a", None)], {}, ("kept", None)),
        ([], {}, ("kept", None)),
    ],
)
def test_without_a_champion_the_best_challenger_wins(challengers, extra, expected) -> None:
    assert decide(None, None, challengers, has_champion=False, **extra) == expected


# -- with a champion --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "extra", "expected"),
    [
        # a challenger must beat the incumbent by more than the margin
        ((0.90, 0.91, [("rf", 0.914)]), {"margin": 0.005}, ("refreshed", "champion")),
        ((0.90, 0.91, [("rf", 0.916)]), {"margin": 0.005}, ("promoted", "rf")),
        # the best challenger is the one compared
        ((0.90, 0.91, [("a", 0.92), ("b", 0.95)]), {}, ("promoted", "b")),
        # the retrained champion replaces the served model when at least as good
        ((0.91, 0.91, []), {}, ("refreshed", "champion")),
        ((0.92, 0.91, []), {}, ("kept", None)),
        # the served model is the incumbent when it beats the retrained champion
        ((0.95, 0.91, [("rf", 0.94)]), {}, ("kept", None)),
        ((0.95, 0.91, [("rf", 0.96)]), {}, ("promoted", "rf")),
        # the served model not scored: a retrained champion on fresher data replaces it
        ((None, 0.91, []), {}, ("refreshed", "champion")),
        ((None, 0.91, []), {"fresher_data": False}, ("kept", None)),
        ((None, 0.91, [("rf", 0.95)]), {"fresher_data": False}, ("promoted", "rf")),
        ((None, None, [("rf", 0.5)]), {}, ("promoted", "rf")),  # nothing to beat
        # unscored or NaN challengers never win
        ((0.90, 0.91, [("rf", None)]), {}, ("refreshed", "champion")),
        ((0.90, 0.91, [("nan", NAN), ("rf", 0.99)]), {}, ("promoted", "rf")),
        # lower is better
        ((0.10, 0.20, [("rf", 0.12)]), {"lower_is_better": True}, ("kept", None)),
        ((0.30, 0.20, [("rf", 0.1)]), {"lower_is_better": True}, ("promoted", "rf")),
        (
            (0.30, 0.20, [("rf", 0.19)]),
            {"lower_is_better": True, "margin": 0.05},
            ("refreshed", "champion"),
        ),
        # drift holds a change, never a kept model
        ((0.90, 0.91, []), {"drift": 0.4, "max_drift": 0.25}, ("held: drift", None)),
        ((0.90, 0.91, [("rf", 0.99)]), {"drift": 0.4, "max_drift": 0.25}, ("held: drift", None)),
        ((0.90, 0.91, []), {"drift": 0.25, "max_drift": 0.25}, ("refreshed", "champion")),
        ((0.90, 0.91, []), {"drift": 0.4}, ("refreshed", "champion")),  # no limit set
        ((0.95, 0.91, []), {"drift": 0.4, "max_drift": 0.25}, ("kept", None)),
    ],
)
def test_with_a_champion(scores, extra, expected) -> None:
    served, champion, challengers = scores
    assert decide(served, champion, challengers, **extra) == expected


def test_every_decision_is_named() -> None:
    seen = {
        decide(None, None, [("a", 1.0)], has_champion=False)[0],
        decide(0.9, 0.91, [("a", 1.0)])[0],
        decide(0.9, 0.91, [])[0],
        decide(0.95, 0.91, [])[0],
        decide(0.9, 0.91, [], drift=1.0, max_drift=0.1)[0],
    }
    assert seen == set(DECISIONS)


def test_the_decision_is_pure() -> None:
    """The rule imports nothing of relayml (no store, no runs, no MLflow): scores in only."""
    import relayml.lifecycle.decision as module

    tree = ast.parse(inspect.getsource(module))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "math", "collections.abc"}
