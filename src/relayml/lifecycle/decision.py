"""Who gets the alias after ``relay refresh``: a pure function of the scores.

No store, no runs, no I/O: scores (and whether the data moved) in, a decision out, so every
rule is tested on its own (``tests/test_refresh_decision.py``).

Example:
    >>> refresh_decision(served=None, champion=None, challengers=[("a", 0.8), ("b", 0.9)],
    ...                  margin=0.0, has_champion=False)
    ('first champion', 'b')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["DECISIONS", "refresh_decision"]

DECISIONS = ("first champion", "promoted", "refreshed", "kept", "held: drift")


def refresh_decision(
    *,
    served: float | None,
    champion: float | None,
    challengers: Sequence[tuple[str, float | None]],
    margin: float,
    lower_is_better: bool = False,
    fresher_data: bool = True,
    drift: float | None = None,
    max_drift: float | None = None,
    has_champion: bool = True,
) -> tuple[str, str | None]:
    """Who gets the alias after a refresh (pure: scores in, decision out).

    Without a champion (``has_champion=False``: the alias is not set yet) the best scored
    challenger becomes the first champion. Otherwise the *incumbent* is the retrained
    champion when it scores at least as well as the served model on the fresh rows (or when
    the served model could not be scored and the data is fresher), else the served model.
    The best challenger takes the alias when it beats the incumbent by more than
    ``margin``; otherwise a retrained incumbent replaces the served model; otherwise nothing
    changes. A promotion is held when ``drift`` exceeds ``max_drift``. A missing (None) or
    NaN score never wins.

    Args:
        served: the served model's score on the fresh rows (None: not scored).
        champion: the retrained champion's score (None: none).
        challengers: ``(id, score)`` of each challenger; among equal scores the first wins.
        margin: how much a challenger must beat the incumbent by.
        lower_is_better: smaller scores are better.
        fresher_data: the fresh data differs from the served model's (its data version).
        drift: the largest feature PSI between the served model's data and the fresh data.
        max_drift: the largest PSI accepted for a promotion (None: no limit).
        has_champion: the alias points at a model already.

    Returns:
        ``(decision, winner)``: ``("first champion", challenger id)``, ``("promoted",
        challenger id)``, ``("refreshed", "champion")``, ``("kept", None)`` or
        ``("held: drift", None)``.

    Example:
        >>> refresh_decision(served=0.90, champion=0.91, challengers=[("rf", 0.912)],
        ...                  margin=0.005)
        ('refreshed', 'champion')
        >>> refresh_decision(served=0.90, champion=0.91, challengers=[("rf", 0.93)],
        ...                  margin=0.005)
        ('promoted', 'rf')
        >>> refresh_decision(served=0.95, champion=0.91, challengers=[], margin=0.0)
        ('kept', None)
        >>> refresh_decision(served=0.90, champion=0.91, challengers=[], margin=0.0,
        ...                  drift=0.4, max_drift=0.25)
        ('held: drift', None)
    """
    sign = -1.0 if lower_is_better else 1.0
    scored = [(c, v) for c, v in challengers if v is not None and not math.isnan(v)]
    best = None
    for c, v in scored:  # the first of equal scores wins
        if best is None or sign * (v - best[1]) > 0:
            best = (c, v)
    if not has_champion:
        return ("first champion", best[0]) if best is not None else ("kept", None)
    if served is not None:
        retrained_wins = champion is not None and sign * (champion - served) >= 0
        incumbent, inc_value = ("champion", champion) if retrained_wins else ("served", served)
    elif champion is not None and fresher_data:
        incumbent, inc_value = "champion", champion
    else:
        incumbent, inc_value = "served", champion
    if best is not None and (inc_value is None or sign * (best[1] - inc_value) > margin):
        decision, winner = "promoted", best[0]
    elif incumbent == "champion":
        decision, winner = "refreshed", "champion"
    else:
        return "kept", None
    if drift is not None and max_drift is not None and drift > max_drift:
        return "held: drift", None
    return decision, winner
