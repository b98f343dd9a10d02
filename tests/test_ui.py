"""``relay ui``: relay's pages over HTTP, in a real browser (Debian's chromium), and MLflow's side.

One project is built per module: three chains (logreg; then rf after a code change; then
logreg again reusing the second chain's load and processing), a promotion, and a load run
made with uncommitted changes. The pages are served by the real app on a real port.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from conftest import ROOT, free_port, git, make_project, relay_process, wait_http

sys.path.insert(0, str(ROOT / "bench"))
import storefill

CHEAP = {"training.cv": 2, "training.n_jobs": 1}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The project and the runs the tests look for."""
    import relayml as relay

    for var in ("RELAY_TRACKING_URI", "MLFLOW_TRACKING_URI", "RELAY_PROJECT", "RELAY_EXECUTOR"):
        os.environ.pop(var, None)
    root = make_project(tmp_path_factory.mktemp("ui") / "fraud", days=3, rows_per_day=1500)
    first = relay.chain(
        "load=transactions", "processing=plain", "training=logreg",
        params={**CHEAP, "training.C": 1.0}, project=root,
    )  # fmt: skip
    relay.promote(first.final, alias="champion", project=root)
    steps = root / "steps.py"
    text = steps.read_text()
    steps.write_text(text.replace("test_size: float = 0.25", "test_size: float = 0.3", 1))
    git(root, "commit", "-qam", "a bigger test split")
    second = relay.chain(
        "load=transactions", "processing=plain", "training=rf",
        params={**CHEAP, "training.n_estimators": 20}, project=root,
    )  # fmt: skip
    third = relay.chain(
        f"load=transactions@{second['load'].key.time}", "processing=plain", "training=logreg",
        params={**CHEAP, "training.C": 1.0}, project=root,
    )  # fmt: skip
    steps.write_text(steps.read_text() + "\n# an uncommitted note\n")
    dirty = relay.run("load", "transactions", project=root)
    steps.write_text(steps.read_text().replace("\n# an uncommitted note\n", ""))
    return {"root": root, "first": first, "second": second, "third": third, "dirty": dirty}


@pytest.fixture(scope="module")
def server(built: dict[str, Any]) -> Iterator[str]:
    """relay's pages of the built project on a real port (MLflow's UI is not started here)."""
    import uvicorn

    from relayml.runs import open_project
    from relayml.ui.app import create_app

    port = free_port()
    app = create_app(open_project(built["root"]))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/relay/static/relay.css", timeout=30)
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


def _get(url: str, path: str, status: int = 200) -> str:
    answer = httpx.get(url + path, timeout=60)
    assert answer.status_code == status, answer.text[-2000:]
    return answer.text


def _keys(html: str) -> set[str]:
    return set(re.findall(r'href="/relay/run/([^"]+)"', html))


# -- pages over HTTP ------------------------------------------------------------------------


def test_project_page_shows_steps_newest_runs_aliases_and_chains(built, server):
    html = _get(server, "/relay/")
    third, first = built["third"], built["first"]
    assert str(third["training"].key) in _keys(html)  # the newest logreg run
    assert str(built["second"]["training"].key) in _keys(html)  # the newest rf run
    assert ">robust</td>" in html and "none" in html  # a declared variant without runs
    assert "@champion" in html and str(first["training"].key) in html
    assert html.count('class="how">reused') == 2  # the third chain reused load and processing
    compares = [
        parse_qs(urlsplit(unescape(h)).query)
        for h in re.findall(r'href="(/relay/compare[^"]+)"', html)
    ]
    previous, newest = str(built["second"]["training"].key), str(third["training"].key)
    assert {"a": [previous], "b": [newest]} in compares  # compare with the chain before


def test_run_page_shows_what_relay_show_shows(built, server):
    run = built["third"]["training"]
    html = _get(server, f"/relay/run/{run.key}")
    assert f"<h1>{run.key}</h1>" in html
    assert f'href="/relay/run/{built["second"]["processing"].key}"' in html  # upstream
    assert run.data_version in html
    assert re.search(r'<span id="rows">\d+ rows</span>', html)
    assert run.tags["relay.git.commit"] in html
    assert f"relay reproduce {run.key}" in html
    assert "<code>best_params.txt</code>" in html  # artifacts
    assert f"<code>{run.model_uri}</code>" in html  # the bundle
    exp = run.mlflow.info.experiment_id
    assert f'href="/#/experiments/{exp}/runs/{run.run_id}"' in html
    for name, value in run.params.items():
        assert f"<td>{name}</td><td>{value}</td>" in html


def test_a_run_made_with_uncommitted_changes_shows_its_diff(built, server):
    dirty = built["dirty"]
    assert dirty.tags["relay.git.dirty"] == "true"
    html = _get(server, f"/relay/run/{dirty.key}")
    assert "uncommitted diff" in html and "+# an uncommitted note" in html


def test_lineage_page_draws_the_neighbourhood_with_reused_links(built, server):
    third, second = built["third"], built["second"]
    html = _get(server, f"/relay/lineage/{third['training'].key}")
    drawn = set(re.findall(r'data-title="([^"]+)"', html))
    for step in ("load", "processing", "training"):
        assert str(third[step].key) in drawn
    assert str(second["training"].key) in drawn  # the other run on the same processing run
    assert str(built["first"]["training"].key) not in drawn  # another chain: not a neighbour
    assert f"data {third['training'].data_version[:12]}" in drawn
    reused = re.findall(r'class="edge reused" data-src="([^"]+)" data-dst="([^"]+)"', html)
    assert (third["processing"].run_id, third["training"].run_id) in reused
    assert (second["processing"].run_id, second["training"].run_id) not in reused
    first = built["first"]["training"]
    html = _get(server, f"/relay/lineage/{first.key}")
    assert "@champion" in html  # the registered version and its alias, last column


def test_data_version_page_lists_the_runs_on_it(built, server):
    digest = built["second"]["load"].data_version
    html = _get(server, f"/relay/data/{digest}")
    drawn = set(re.findall(r'data-title="([^"]+)"', html))
    assert {str(built["second"][s].key) for s in ("load", "processing", "training")} <= drawn
    assert str(built["third"]["training"].key) in drawn
    load = built["second"]["load"]
    exp = load.mlflow.info.experiment_id
    assert f'href="/#/experiments/{exp}/runs/{load.run_id}">its dataset in MLflow' in html


def test_compare_two_chains_shows_the_differences_first(built, server):
    a, b = built["first"]["training"], built["second"]["training"]
    html = _get(server, f"/relay/compare?a={a.key}&b={b.key}")
    training = html[html.index('id="params-training"') :]
    training = training[: training.index("</table>")]
    rows = re.findall(r'<tr class="(differs|same)"><td>([^<]+)</td>', training)
    kinds = [k for k, _ in rows]
    assert kinds == sorted(kinds)  # every differing row before every equal one
    assert ("differs", "n_estimators") in rows and ("same", "cv") in rows
    processing = html[html.index('id="facts-processing"') :]
    assert re.search(r'<tr class="differs"><td>commit</td>', processing)
    assert "test_size: float = 0.3" in html  # the diff of steps.py between the two commits
    assert 'id="metric-delta"' in html and "B − A" in html


def test_compare_of_the_same_run_has_no_differences(built, server):
    run = built["third"]["training"]
    html = _get(server, f"/relay/compare?a={run.key}&b={run.run_id}")
    assert 'class="differs"' not in html
    assert "same commit" in html


def test_history_plots_a_variant_across_data_versions(built, server):
    html = _get(server, "/relay/history/training/logreg?metric=test_roc_auc")
    assert html.count('<circle class="dot') == 2
    assert html.count('<circle class="dot promoted"') == 1  # the champion's run


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/relay/run/training/nope@latest", "no finished run matches"),
        ("/relay/run/trainig/logreg@latest", "did you mean &#39;training&#39;"),
        ("/relay/compare?a=training/logreg@latest&b=bad-ref", "bad-ref"),
    ],
)
def test_unknown_references_get_a_clear_404(built, server, path, message):
    html = _get(server, path, status=404)
    assert message in html


def test_mlflow_sees_model_development_experiments_and_linked_descriptions(built):
    from relayml.runs import open_project
    from relayml.store import get_store

    store = get_store(open_project(built["root"]))
    for step in ("load", "processing", "training", "chains"):
        exp = store.client.get_experiment(store.experiment_id(step, create=False))
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        assert "relay" in exp.tags["mlflow.note.content"]
    run = built["third"]["training"]
    note = run.tags["mlflow.note.content"]
    up = built["third"]["processing"].key
    assert f"[relay page](/relay/run/{run.key})" in note
    assert f"upstream processing: [{up}](/relay/run/{up})" in note
    assert f"(/relay/data/{run.data_version})" in note


def test_the_graph_stays_small_on_a_big_store(tmp_path, monkeypatch):
    from relayml.config import Settings
    from relayml.ui.graph import MAX_NODES, data_graph, run_graph
    from relayml.ui.queries import Queries

    uri = f"sqlite:///{tmp_path / 'big.db'}"
    monkeypatch.setattr(  # few loads, each consumed by hundreds of processing runs
        storefill,
        "STEPS",
        {
            "load": ([], ["transactions"], 0.002),
            "processing": (["load"], ["plain"], 0.3),
            "training": (["processing"], ["logreg", "rf"], 0.698),
        },
    )
    from relayml.store import get_store

    settings = Settings.from_dict({"project": {"name": "bench"}, "tracking": {"uri": uri}},
                                  root=tmp_path)  # fmt: skip
    get_store(settings)  # MLflow's schema and relay's indexes
    filled = storefill.fill(uri, 5000)
    q = Queries(settings)
    load = q.by_id(filled.runs["load"][0])
    graph = run_graph(q, load)
    assert len(graph.nodes) <= MAX_NODES
    more = [n for n in graph.nodes.values() if n.kind == "more"]
    assert more and all(re.match(r"\+\d+\+? more", n.title) for n in more)
    assert q.steps() == ["load", "processing", "training"]  # inferred: no steps module here
    graph = data_graph(q, load.data_version)
    assert len(graph.nodes) <= MAX_NODES


def _hub_store(uri: str, runs: int, monkeypatch: pytest.MonkeyPatch) -> storefill.Filled:
    monkeypatch.setattr(  # few loads, each consumed by many processing runs
        storefill,
        "STEPS",
        {
            "load": ([], ["transactions"], 0.01),
            "processing": (["load"], ["plain"], 0.3),
            "training": (["processing"], ["logreg", "rf"], 0.69),
        },
    )
    return storefill.fill(uri, runs)


def _render_all(settings, filled: storefill.Filled) -> dict[str, str]:
    from relayml.ui.pages import Pages
    from relayml.ui.queries import Queries

    q = Queries(settings)
    pages = Pages(q)
    load = q.by_id(filled.runs["load"][0])
    a, b = (q.by_id(i) for i in filled.runs["training"][-2:])
    return {
        "project": pages.project(),
        "lineage": pages.lineage(str(load.key)),
        "data": pages.data(load.data_version),
        "compare": pages.compare(str(a.key), str(b.key)),
        "history": pages.history("training", "rf"),
        "load": str(load.key),
        "a": str(a.key),
    }


@pytest.mark.postgres
def test_pages_on_a_postgresql_store(pg_database, tmp_path, monkeypatch):
    from relayml.config import Settings
    from relayml.store import get_store

    settings = Settings.from_dict(
        {"project": {"name": "bench"}, "tracking": {"uri": pg_database}}, root=tmp_path
    )
    get_store(settings)
    filled = _hub_store(pg_database, 600, monkeypatch)
    html = _render_all(settings, filled)
    assert html["load"] in html["project"] or "training" in html["project"]
    assert re.search(r'<g class="node k-more', html["lineage"])  # counted, not drawn
    assert html["a"] in html["compare"]
    assert '<circle class="dot' in html["history"]


@pytest.mark.slow
@pytest.mark.postgres
def test_pages_against_a_team_server_read_only(mlflow_server, pg_database, tmp_path, monkeypatch):
    from relayml.config import Settings

    filled = _hub_store(pg_database, 400, monkeypatch)  # written beside the server's tables
    settings = Settings.from_dict(
        {"project": {"name": "bench"}, "tracking": {"uri": mlflow_server}}, root=tmp_path
    )
    html = _render_all(settings, filled)  # through the server's REST API only
    assert re.search(r'<g class="node k-more', html["lineage"])
    assert html["a"] in html["compare"]
    from starlette.testclient import TestClient

    from relayml.ui.app import create_app

    with TestClient(create_app(settings, mlflow_upstream=mlflow_server)) as client:
        assert "<title>MLflow</title>" in client.get("/").text  # the server's UI, proxied
        assert client.get("/relay/").status_code == 200
        gone = client.get(f"/relay/run/{filled.runs['load'][0]}x")
        assert gone.status_code == 404


# -- a real browser -------------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (``make test`` installs both)."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        reason = (
            "chromium and playwright are needed: apt-get install chromium; pip install playwright"
        )
        if os.environ.get("RELAY_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    """A fresh page that records JavaScript errors; the test must end with none."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert errors == []


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000


def test_browser_from_the_project_to_a_run_its_upstream_and_its_data(built, server, page, tmp_path):
    third = built["third"]
    page.goto(f"{server}/relay/")
    _shot(page, tmp_path, "project")
    page.locator("#steps").get_by_role("link", name=str(third["training"].key)).click()
    assert page.locator("h1").inner_text() == str(third["training"].key)
    _shot(page, tmp_path, "training")
    page.locator("#upstream").get_by_role("link", name=str(third["processing"].key)).click()
    assert page.locator("h1").inner_text() == str(third["processing"].key)
    assert str(third["training"].key) in page.locator("#downstream").inner_text()
    _shot(page, tmp_path, "processing")
    page.locator("#data-version a.data").click()
    assert page.locator("h1").inner_text().startswith("data version")
    titles = page.locator("svg#lineage .node").evaluate_all(
        "nodes => nodes.map(n => n.getAttribute('data-title'))"
    )
    assert str(third["load"].key) in titles and str(third["training"].key) in titles
    _shot(page, tmp_path, "data-version")
    page.locator(f'svg#lineage .node[data-title="{third["load"].key}"]').click()
    assert page.locator("h1").inner_text() == str(third["load"].key)


def test_browser_lineage_hover_filter_and_click(built, server, page, tmp_path):
    third = built["third"]
    page.goto(f"{server}/relay/lineage/{third['training'].key}")
    node = page.locator(f'svg#lineage .node[data-title="{third["processing"].key}"]')
    node.hover()
    assert page.locator("svg#lineage .edge.hot").count() >= 2
    page.fill("#filter", "rf")
    dimmed = page.locator("svg#lineage .node.dim").count()
    assert 0 < dimmed < page.locator("svg#lineage .node").count()
    _shot(page, tmp_path, "lineage")
    page.fill("#filter", "")
    node.click()
    assert page.locator("h1").inner_text() == str(third["processing"].key)


def test_browser_compares_two_chains(built, server, page, tmp_path):
    first, second = built["first"]["training"], built["second"]["training"]
    page.goto(f"{server}/relay/")
    page.locator("#chains a.compare").last.click()
    assert page.locator("h1").inner_text() == f"compare {first.key} · {second.key}"
    first_rows = page.locator("#params-training tbody tr").evaluate_all(
        "rows => rows.map(r => r.className + ':' + r.cells[0].innerText)"
    )
    assert first_rows[0].startswith("differs:")
    assert "same:cv" in first_rows
    assert "test_size: float = 0.3" in page.locator("#code-diff").inner_text()
    _shot(page, tmp_path, "compare")
    page.fill("input[name=a]", str(second.key))
    page.click("button[type=submit]")
    assert page.locator("tr.differs").count() == 0


# -- the command ----------------------------------------------------------------------------


@pytest.mark.slow
def test_relay_ui_serves_relay_pages_and_mlflow_on_one_url(built):
    port = free_port()
    proc = relay_process("ui", "--port", str(port), cwd=built["root"], start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/relay/", timeout=60, proc=proc)
        wait_http(f"{url}/", timeout=180, proc=proc)  # MLflow's UI, through relay's proxy
        assert "<title>MLflow</title>" in httpx.get(f"{url}/", timeout=30).text
        found = httpx.post(
            f"{url}/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 50}, timeout=30
        ).json()
        assert any(e["name"] == "fraud/training" for e in found["experiments"])
        assert httpx.get(f"{url}/relay/", timeout=30).status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    time.sleep(1)
    pattern = f"mlflow ui .*{built['root']}"
    children = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
    assert children.stdout.split() == []  # MLflow's UI stopped with relay ui
