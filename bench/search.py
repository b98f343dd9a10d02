"""Benchmark: finding runs through relayml vs the seed's client-side scan.

Fills SQLite tracking stores with 1,000, 10,000 and 30,000 relay-shaped step runs
(bulk-written, see storefill.py), then measures on each, in the same process:

- relay: ``relay.get("processing/plain@latest")``, a date reference
  (``processing/plain@YYYY-MM-DD``) and ``relay.runs("processing", variant="plain", on=DAY)``;
- seed: the proof of concept's approach: list every run of the experiment, fetch each run,
  filter params/tags in Python, take the newest.

Prints median milliseconds and the ratio; the seed's scan is run fewer times at 30,000 runs
(it takes tens of seconds each).

Usage:
    python bench/search.py [--sizes 1000,10000,30000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from storefill import fill


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median milliseconds of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def seed_scan(client, exp_id: str, want: dict[str, str], day: str | None):
    """The seed's way: list all runs, fetch each, filter in Python, newest by start time."""
    infos, token = [], None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        infos += [r.info for r in page]
        token = page.token
        if not token:
            break
    best = None
    for info in infos:
        run = client.get_run(info.run_id)  # "fetch each"
        tags = run.data.tags
        if run.info.status != "FINISHED" or any(tags.get(k) != v for k, v in want.items()):
            continue
        if day and not tags["relay.time"].startswith(day.replace("-", "")):
            continue
        if best is None or run.info.start_time > best.info.start_time:
            best = run
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,30000")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    import relayml as relay
    from relayml.config import Settings
    from relayml.store import get_store

    print(f"{'runs':>7} {'query':<28} {'relay ms':>9} {'seed ms':>10} {'ratio':>8}")
    for size in map(int, args.sizes.split(",")):
        folder = Path(tempfile.mkdtemp(prefix=f"relay-search-{size}-"))
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        (folder / "relay.toml").write_text(
            f'[project]\nname = "bench"\n[tracking]\nuri = "{uri}"\n'
        )
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments()  # creates the schema
        filled = fill(uri, size)
        settings = Settings.from_dict(
            {"project": {"name": "bench"}, "tracking": {"uri": uri}}, root=folder
        )
        store = get_store(settings)
        exp_id = filled.experiments["processing"]
        newest_key = filled.newest[("processing", "plain")][1]
        day = filled.days[len(filled.days) // 2]
        plain = {"relay.variant": "plain"}
        queries = {
            "get(processing/plain@latest)": (
                partial(relay.get, "processing/plain@latest", project=settings),
                partial(seed_scan, store.client, exp_id, plain, None),
            ),
            f"get(processing/plain@{day})": (
                partial(relay.get, f"processing/plain@{day}", project=settings),
                partial(seed_scan, store.client, exp_id, plain, day),
            ),
            "runs(processing, plain, on)": (
                partial(relay.runs, "processing", variant="plain", on=day, project=settings),
                partial(seed_scan, store.client, exp_id, plain, day),
            ),
        }
        relay.get("processing/plain@latest", project=settings)  # warm caches (experiment ids)
        for name, (ours, theirs) in queries.items():
            ms, got = timed(ours, args.repeat)
            seed_repeat = 3 if size <= 10_000 else 1
            seed_ms, seed_got = timed(theirs, seed_repeat)
            if name.startswith("get(processing/plain@latest"):
                assert str(got.key) == newest_key == seed_got.data.tags["relay.key"], (
                    got,
                    newest_key,
                )
            print(
                f"{size:>7} {name:<28} {ms:>9.1f} {seed_ms:>10.0f} {seed_ms / ms:>7.0f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
