"""Claims: two processes that need the same missing step run compute it once.

A claim needs no extra infrastructure: **the claim is the new run itself**. A claimant creates
its run (with its unique key, see :mod:`relayml.runner`), then searches the step's experiment
for runs with the same ``relay.fingerprint``:

* a FINISHED one exists → the claimant *withdraws* (tags ``relay.withdrawn``, ends KILLED,
  deletes its run before any work) and reuses that run;
* another live RUNNING claimant exists → the claimant withdraws and waits for it (polling with
  backoff); when it FINISHES the waiter reuses it, when it FAILED or was KILLED (or withdrew)
  the waiter claims again;
* a STALE one (RUNNING, but its ``relay.heartbeat`` is older than ``settings.stale_after``:
  its process died) is marked FAILED with tag ``relay.stale=true``, and the claim is retried;
* nobody else → the claim holds: the caller executes the step in that run.

Whichever search comes last sees both runs, so at most one claimant proceeds; when both see
each other both withdraw and retry after a random jitter.

This module only searches and writes through :class:`relayml.store.Store`.

Example:
    >>> from relayml.request import prepare
    >>> from relayml.runner import execute
    >>> from relayml.store import get_store
    >>> request = prepare("processing", "plain", {"seed": 1})
    >>> store = get_store(request.settings)
    >>> outcome = claim(store, request)
    >>> outcome.reused is None  # we hold the claim: run the step in outcome.run_id
    True
    >>> done = execute(request, created=(outcome.run_id, outcome.key))
    >>> claim(store, request).reused == done  # the next claimant reuses it
    True
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from relayml import tags as tag
from relayml.keys import RunKey
from relayml.request import Request
from relayml.runs import Run, visible
from relayml.runstart import create_run
from relayml.store import Store, quote

__all__ = ["Claim", "claim", "finished_like"]

MAX_WAIT_STEP = 2.0


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`claim`.

    Attributes:
        run_id: our own new run (None when reusing).
        key: its key (None when reusing).
        reused: the FINISHED run with the same fingerprint to reuse instead (None when we hold
            the claim).
        waited: seconds spent waiting for another claimant.
    """

    run_id: str | None
    key: RunKey | None
    reused: Run | None = None
    waited: float = 0.0


def finished_like(store: Store, req: Request, limit: int = 5) -> list[Run]:
    """FINISHED runs with the request's fingerprint, newest first: one indexed search.

    Example:
        >>> from relayml.request import prepare
        >>> from relayml.store import get_store
        >>> request = prepare("processing", "plain")
        >>> found = finished_like(get_store(request.settings), request)
        >>> [(r.key.variant, r.params["seed"]) for r in found]
        [('plain', '42')]
    """
    flt = f"tags.`relay.fingerprint` = {quote(req.fingerprint)} AND attributes.status = 'FINISHED'"
    found = store.search([req.step], flt, limit=limit)
    return [Run(req.settings, e) for e in found if visible(e)]


def _same_fingerprint(store: Store, req: Request) -> list[Run]:
    flt = f"tags.`relay.fingerprint` = {quote(req.fingerprint)}"
    found = store.search([req.step], flt, limit=50)
    return [Run(req.settings, e) for e in found if visible(e)]


def claim(
    store: Store,
    req: Request,
    *,
    on_wait: Callable[[Run], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Claim:
    """Claim the computation of ``req``, or find the run that already did (or does) it.

    Args:
        store: the project's tracking store.
        req: the prepared request (its ``fingerprint`` identifies the work).
        on_wait: called once with the live claimant we start waiting for (for messages).
        sleep: the sleep function (tests may speed it up).

    Returns:
        A :class:`Claim`: either our new RUNNING run to execute the step in, or the FINISHED
        run to reuse.

    Example:
        >>> from relayml.request import prepare
        >>> from relayml.runner import execute
        >>> from relayml.store import get_store
        >>> request = prepare("processing", "plain", {"test_size": 0.3})
        >>> c = claim(get_store(request.settings), request)
        >>> done = c.reused or execute(request, created=(c.run_id, c.key))
        >>> done.status, done.params["test_size"]
        ('FINISHED', '0.3')
    """
    started = time.monotonic()
    announced: set[str] = set()
    while True:
        run_id, key = create_run(store, req)
        others = [r for r in _same_fingerprint(store, req) if r.run_id != run_id]
        finished = [r for r in others if r.status == "FINISHED"]
        if finished:
            _withdraw(store, run_id, f"reusing {finished[0].key}")
            return Claim(None, None, finished[0], time.monotonic() - started)
        _expire(store, [r for r in others if r.status == "STALE"])
        live = [r for r in others if r.status == "RUNNING"]
        if not live:
            return Claim(run_id, key, None, time.monotonic() - started)
        _withdraw(store, run_id, f"{live[0].key} computes the same step")
        delay = 0.2
        while True:  # wait for the live claimant(s)
            for r in live:
                if on_wait and r.run_id not in announced:
                    announced.add(r.run_id)
                    on_wait(r)
            sleep(delay + random.uniform(0.0, delay / 2))
            delay = min(MAX_WAIT_STEP, delay * 1.5)
            current = _same_fingerprint(store, req)
            finished = [r for r in current if r.status == "FINISHED"]
            if finished:
                return Claim(None, None, finished[0], time.monotonic() - started)
            _expire(store, [r for r in current if r.status == "STALE"])
            live = [r for r in current if r.status == "RUNNING"]
            if not live:  # it failed, was killed, went stale or withdrew: claim again
                sleep(random.uniform(0.0, 0.3))
                break


def _withdraw(store: Store, run_id: str, why: str) -> None:
    """Give up our claim before any work (see :meth:`relayml.store.Store.withdraw`)."""
    store.withdraw(run_id, why)


def _expire(store: Store, stale: list[Run]) -> None:
    """Mark runs whose owner died (heartbeat stopped) FAILED, tagged ``relay.stale=true``."""
    for r in stale:
        age = r.heartbeat_age
        store.log(
            r.run_id,
            tags={
                tag.STALE: "true",
                tag.ERROR: f"stale: no heartbeat for {age:.0f}s; the process died",
            },
        )
        store.finish(r.run_id, "FAILED")
