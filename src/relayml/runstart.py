"""Starting a run: a unique key, the tags every run carries, the heartbeat while it runs.

Run keys are unique even when two processes start the same variant in the same second: a
new run is created with its key, then the store is searched for that key; a run that finds
another run holding the same key withdraws (its run is deleted before any work) and tries
again one second after the variant's newest key. Whichever search comes last sees both runs,
so two runs can never both keep a key. A key may so run ahead of the clock; the run's MLflow
start time never does, so ``@latest`` is the run that started last.

Example:
    >>> from relayml.runstart import data_tags
    >>> sorted(data_tags({"load/t@20190209000000": "ab12"}).values())
    ['ab12', 'load/t@20190209000000', '{"load/t@20190209000000":"ab12"}']
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from relayml import tags as tag
from relayml.codeinfo import canonical
from relayml.errors import RelayError
from relayml.fingerprint import SCHEME
from relayml.keys import RunKey, parse_key
from relayml.request import Request, logged_params
from relayml.runs import Run
from relayml.store import Store, quote
from relayml.trust import current_user

__all__ = [
    "CODE_PARTS",
    "CODE_PARTS_TAG_MAX",
    "Heartbeat",
    "create_run",
    "data_tags",
    "record_code",
    "run_description",
]

CODE_PARTS = "code/fingerprint.json"  # the parts of relay.code, also in the tag relay.code.parts


CODE_PARTS_TAG_MAX = 8000  # MLflow's limit on a tag value; longer parts are in the artifact only


def create_run(store: Store, req: Request) -> tuple[str, RunKey]:
    """Create the run under a key no other active run holds (see the module docstring)."""
    store.prepare_writes()  # before the start time and heartbeat are stamped
    key = RunKey.at(req.step, req.variant.name, datetime.fromtimestamp(time.time(), UTC))
    for _ in range(60):
        # the real clock, even when the key had to move ahead of it: '@latest' is the run
        # that started last, whatever variant's keys ran ahead
        start_ms = int(time.time() * 1000)
        entity = store.create_run(
            req.step, start_ms=start_ms, run_name=str(key), tags=_base_tags(req, key)
        )
        run_id = entity.info.run_id
        holders = store.search([req.step], f"tags.`relay.key` = {quote(str(key))}", limit=3)
        if [e.info.run_id for e in holders] == [run_id]:
            store.log(run_id, params=logged_params(req))
            return run_id, key
        store.withdraw(run_id, "key collision")
        key = _after_newest(store, key)
        time.sleep(random.uniform(0.0, 0.05))
    raise RelayError(f"could not allocate a unique key for {req.step}/{req.variant.name}")


def _after_newest(store: Store, key: RunKey) -> RunKey:
    """The key to try after a collision: one second after the newest key of the variant.

    When many runs of a variant start each second their keys run ahead of the clock; jumping
    past the newest one costs one search instead of a collision per taken second.
    """
    found = store.search(
        [key.step],
        f"tags.`relay.variant` = {quote(key.variant)}",
        order_by=(f"tags.`{tag.KEY}` DESC",),  # start times follow the clock, keys may not
        limit=1,
    )
    newest = found[0].data.tags.get(tag.KEY) if found else None
    later = parse_key(newest) if newest else key
    return max(key, later, key=lambda k: k.time).next_second()


def _base_tags(req: Request, key: RunKey) -> dict[str, str]:
    tags = {
        tag.PROJECT: req.settings.project,
        tag.STEP: req.step,
        tag.VARIANT: req.variant.name,
        tag.KEY: str(key),
        tag.TIME: key.time,
        tag.HEARTBEAT: f"{time.time():.3f}",
        tag.CODE: req.code_fingerprint,
        tag.CODE_SCHEME: SCHEME,
        tag.PARAMS: req.params_digest,
        tag.FINGERPRINT: req.fingerprint,
        "mlflow.user": current_user(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": str(req.pipeline.module_file or req.settings.module),
    }
    recorded = canonical(req.code_parts)
    if len(recorded) <= CODE_PARTS_TAG_MAX:
        tags[tag.CODE_PARTS] = recorded
    if req.code is not None and req.code.commit:
        tags[tag.GIT_COMMIT] = req.code.commit
        tags["mlflow.source.git.commit"] = req.code.commit
        tags[tag.GIT_DIRTY] = str(req.code.dirty).lower()
    for s, r in req.upstream.items():
        tags[tag.upstream(s)] = r.run_id
        tags[tag.upstream_key(s)] = str(r.key)
    parts = req.data_parts
    if parts:
        tags.update(data_tags(parts))
    if req.as_of:
        tags[tag.AS_OF] = req.as_of.isoformat()
    tags["mlflow.note.content"] = run_description(key, req.upstream, tags.get(tag.DATA))
    return tags


def run_description(key: RunKey, upstream: Mapping[str, Run], data: str | None) -> str:
    """The run's description in MLflow's UI: its key, upstream keys and data version, with
    links to relay's pages (origin-relative: they work behind ``relay ui``).

    Example:
        >>> run_description(parse_key("load/t@20190209000000"), {}, None).splitlines()[0]
        'relay run **load/t@20190209000000**: [relay page](/relay/run/load/t@20190209000000)'
    """
    lines = [f"relay run **{key}**: [relay page](/relay/run/{key})"]
    for step, r in sorted(upstream.items()):
        lines.append(f"- upstream {step}: [{r.key}](/relay/run/{r.key})")
    if data:
        lines.append(f"- data version [{data[:16]}](/relay/data/{data})")
    lines.append(f"- lineage: [/relay/lineage/{key}](/relay/lineage/{key})")
    return "\n".join(lines)


def data_tags(parts: Mapping[str, str]) -> dict[str, str]:
    from relayml.data import combine_digests

    version = next(iter(parts.values())) if len(parts) == 1 else combine_digests(parts)
    return {
        tag.DATA: version,
        tag.DATA_KEYS: ",".join(sorted(parts)),
        tag.DATA_PARTS: canonical(dict(sorted(parts.items()))),
    }


def record_code(store: Store, run_id: str, req: Request) -> None:
    store.log_text(run_id, json.dumps(req.code_parts, indent=1, sort_keys=True), CODE_PARTS)
    if req.code is not None and req.code.dirty:
        store.log_text(run_id, req.code.diff, "code/uncommitted.diff")


class Heartbeat:
    """A daemon thread that stamps ``relay.heartbeat`` while the step runs.

    A run whose heartbeat stops (the process was SIGKILLed) is shown as STALE and never
    reused.
    """

    def __init__(self, store: Store, run_id: str, stale_after: float) -> None:
        self.store, self.run_id = store, run_id
        self.every = max(0.5, min(30.0, stale_after / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="relay-heartbeat")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):  # best effort: never hide the step's outcome
                self.store.set_tag(self.run_id, tag.HEARTBEAT, f"{time.time():.3f}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
