"""Exact reuse: a run is reused when the code that runs is the same, whatever git says.

A small clinic project: two load steps (patients, outcomes) feed processing, which feeds
training (variants logreg and rf). processing calls a helper module (features.py) that
imports a third-party distribution installed from a tiny local ``.dist-info`` (fakedist),
and reads an included SQL file.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import relayml
from relayml.chain import OLD_SCHEME, OLD_SCHEME_NOTE
from relayml.config import Settings
from relayml.errors import ConfigError
from relayml.fingerprint import changes, code_parts

from conftest import git

RELAY_TOML = """[project]
name = "clinic"

[sources.patients]
path = "data/patients.csv"

[sources.outcomes]
path = "data/outcomes.csv"

[reuse]
include = ["queries/*.sql"]
"""

STEPS_PY = '''"""The clinic's steps."""
import sqlite3
from pathlib import Path

import pandas as pd

import features
import relayml as relay

SCALE = 2
QUERIES = Path(__file__).parent / "queries"

patients = relay.step("patients")
outcomes = relay.step("outcomes")
processing = relay.step("processing", upstream=[patients, outcomes])
training = relay.step("training", upstream=processing)


@patients.variant("csv")
def patients_csv(ctx):
    return ctx.read("patients")


@outcomes.variant("csv")
def outcomes_csv(ctx):
    return ctx.read("outcomes")


@processing.variant("join")
def join(patients, outcomes):
    frame = features.scaled(patients.merge(outcomes, on="pid"), SCALE)
    with sqlite3.connect(":memory:") as con:
        frame.to_sql("cohort", con, index=False)
        return {"cohort": pd.read_sql((QUERIES / "cohort.sql").read_text(), con)}


@training.variant("logreg")
def logreg(ctx, processing, C: float = 1.0):
    ctx.log_metric("score", float(processing["cohort"]["x"].sum()) * C)


@training.variant("rf")
def rf(ctx, processing, n: int = 10):
    ctx.log_metric("score", float(len(processing["cohort"])) * n)
'''

FEATURES_PY = '''"""Feature helpers."""
import fakemod


def scaled(frame, by):
    return frame.assign(x=frame["age"] * by * fakemod.ONE)
'''

LINKS = ("patients=csv@latest", "outcomes=csv@latest", "processing=join", "training=logreg")
ALL_REUSED = ["reused"] * 4
TRAINING_NEW = ["reused", "reused", "reused", "new"]
PROCESSING_NEW = ["reused", "reused", "new", "new"]


def fakedist(site: Path, version: str) -> None:
    """Install (or re-version) the distribution fakedist, providing the module fakemod."""
    for old in site.glob("fakedist-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"fakedist-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakedist\nVersion: {version}\n")
    (info / "top_level.txt").write_text("fakemod\n")
    (site / "fakemod.py").write_text("ONE = 1\n")


@pytest.fixture
def clinic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "clinic"
    (root / "data").mkdir(parents=True)
    (root / "queries").mkdir()
    (root / "relay.toml").write_text(RELAY_TOML)
    (root / "steps.py").write_text(STEPS_PY)
    (root / "features.py").write_text(FEATURES_PY)
    (root / "queries" / "cohort.sql").write_text("SELECT * FROM cohort WHERE age >= 18\n")
    (root / "data" / "patients.csv").write_text("pid,age\n1,30\n2,15\n3,50\n")
    (root / "data" / "outcomes.csv").write_text("pid,sick\n1,0\n2,1\n3,1\n")
    (root / ".gitignore").write_text(".relay/\n__pycache__/\nmlruns/\n")
    site = tmp_path / "site"
    fakedist(site, "1.0")
    monkeypatch.syspath_prepend(str(site))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "clinic")
    monkeypatch.chdir(root)
    forget(monkeypatch)
    return root


def forget(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a new process: the project's modules are not imported yet."""
    for name in ("steps", "features", "fakemod"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def statuses(c: relayml.Chain) -> list[str]:
    return [p.status for p in c.steps]


def plan(root: Path, *links: str, **params: object) -> relayml.Chain:
    return relayml.chain(*(links or LINKS), params=params, dry_run=True, explain=True, project=root)


def why(c: relayml.Chain, step: str) -> list[str]:
    """The reasons the newest passed-over run of ``step`` was not reused, one per line."""
    [p] = [p for p in c.steps if p.step == step]
    assert p.passed_over, p
    return p.passed_over[0][1].split("\n")


def edit(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return text


def test_several_load_steps_explain_themselves(
    clinic: Path, relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: a fresh outcomes load is not said to have a new upstream (it has none)."""
    fresh = relayml.chain(*[x.split("@")[0] for x in LINKS], dry_run=True, project=clinic)
    reasons = {p.step: p.reason for p in fresh.steps}
    assert reasons["patients"].startswith("fresh retrieval")
    assert reasons["outcomes"].startswith("fresh retrieval")
    assert reasons["processing"] == "upstream patients is new"
    assert reasons["training"] == "upstream processing is new"

    # a pinned second load stays reused when the first one is fresh (parts too long for a
    # tag are recorded in the artifact only)
    monkeypatch.setattr("relayml.runstart.CODE_PARTS_TAG_MAX", 10)
    made = relayml.chain("patients=csv", "outcomes=csv", "processing=join", project=clinic)
    assert "relay.code.parts" not in made["processing"].tags
    mixed = relayml.chain("patients=csv", "outcomes=csv@latest", "processing=join",
                          dry_run=True, project=clinic)  # fmt: skip
    assert statuses(mixed) == ["new", "reused", "new"]
    assert mixed.steps[2].reason == "upstream patients is new"
    r = relay("chain", "patients=csv", "outcomes=csv@latest", "processing=join", "--dry-run")
    assert r.code == 0 and "given as outcomes=csv@latest" in r.out, r

    edit(clinic / "features.py", "* by", "* by * 1")
    links = ("patients=csv@latest", "outcomes=csv@latest", "processing=join")
    assert why(plan(clinic, *links), "processing") == ["features.py changed"]  # from the artifact


@pytest.mark.slow
def test_exact_reuse(clinic: Path, relay, monkeypatch: pytest.MonkeyPatch) -> None:
    site = Path(sys.path[0])
    first = relayml.chain(*[x.split("@")[0] for x in LINKS], project=clinic)
    assert statuses(first) == ["new"] * 4
    rf = relayml.chain(*LINKS[:3], "training=rf", project=clinic)
    assert statuses(rf) == TRAINING_NEW

    # the parts are recorded: a tag and an artifact, the same
    training = first["training"]
    parts = json.loads(training.tags["relay.code.parts"])
    assert training.tags["relay.code.scheme"] and training.tags["relay.git.commit"]
    assert parts["module:features.py"] and parts["dist:fakedist"] == "1.0"
    assert parts["file:queries/cohort.sql"] and "config:sources.patients" not in parts
    assert "code/fingerprint.json" in training.artifacts
    assert json.loads(first["patients"].tags["relay.code.parts"])["config:sources.patients"]

    # a docs-only commit, stray untracked files and another variant's edit: all reused
    (clinic / "README.md").write_text("# clinic\n")
    git(clinic, "add", "README.md")
    git(clinic, "commit", "-qm", "docs")
    (clinic / "predictions.csv").write_text("pid,p\n1,0.5\n")
    (clinic / ".ipynb_checkpoints").mkdir()
    (clinic / ".ipynb_checkpoints" / "scratch-checkpoint.ipynb").write_text("{}")
    edit(clinic / "steps.py", "* n)", "* n * 2)")
    assert statuses(plan(clinic)) == ALL_REUSED
    r = relay("chain", *LINKS, "--json")
    assert r.code == 0, r
    assert [s["status"] for s in json.loads(r.out)["steps"]] == ALL_REUSED
    rf_now = plan(clinic, *LINKS[:3], "training=rf")
    assert statuses(rf_now) == TRAINING_NEW
    assert why(rf_now, "training") == ["variant source changed"]

    # each change makes exactly the affected steps rerun, and --explain names it
    cases = [
        (clinic / "features.py", "* by", "* by * 1", PROCESSING_NEW, "features.py changed"),
        (clinic / "steps.py", "SCALE = 2", "SCALE = 3", PROCESSING_NEW,
         "steps.py changed (outside the variant functions)"),
        (clinic / "steps.py", "sum()) * C", "sum()) * C * 1", TRAINING_NEW,
         "variant source changed"),
        (clinic / "queries" / "cohort.sql", "18", "21", PROCESSING_NEW,
         "queries/cohort.sql changed"),
    ]  # fmt: skip
    for path, old, new, expected, cause in cases:
        before = edit(path, old, new)
        c = plan(clinic)
        assert statuses(c) == expected, cause
        step = "training" if expected == TRAINING_NEW else "processing"
        assert why(c, step) == [cause]
        path.write_text(before)
    assert statuses(plan(clinic)) == ALL_REUSED

    # another installed version of a distribution the steps (through features.py) import
    fakedist(site, "1.1")
    c = plan(clinic)
    assert statuses(c) == PROCESSING_NEW
    assert why(c, "processing") == ["fakedist 1.0 → 1.1"]
    fakedist(site, "1.0")

    # a param, and an upstream that will be new
    c = plan(clinic, **{"training.C": 10})
    assert statuses(c) == TRAINING_NEW and why(c, "training") == ["param C: 1.0 → 10.0"]
    edit(clinic / "features.py", "* by", "* by * 1")
    c = plan(clinic)
    assert why(c, "training") == ["upstream processing is new"]
    r = relay("chain", *LINKS, "--dry-run", "--explain")
    assert r.code == 0 and "features.py changed" in r.out, r

    # a helper change, committed, runs for real; then everything is reused again
    git(clinic, "commit", "-qam", "features: times one")
    forget(monkeypatch)
    ran = relayml.chain(*LINKS, project=clinic)
    assert statuses(ran) == PROCESSING_NEW
    assert ran["processing"].tags["relay.upstream.patients"] == first["patients"].run_id
    forget(monkeypatch)
    assert statuses(plan(clinic)) == ALL_REUSED


def test_runs_of_the_old_fingerprint_are_not_reused(clinic: Path, relay) -> None:
    first = relayml.chain(*[x.split("@")[0] for x in LINKS], project=clinic)
    training = first["training"]
    store = training.store
    # a run as relay recorded it before (no scheme, no parts; relay.code from commit + diff)
    key = training.key.next_second()
    tags = {k: v for k, v in training.tags.items() if not k.startswith(("relay.code", "mlflow."))}
    tags |= {"relay.code": "0" * 32, "relay.fingerprint": "1" * 32, "relay.key": str(key),
             "relay.time": key.time}  # fmt: skip
    start = int(key.moment.timestamp() * 1000)
    old = store.create_run("training", start_ms=start, run_name=str(key), tags=tags)
    store.log(old.info.run_id, params=training.params)
    store.finish(old.info.run_id, "FINISHED")
    assert statuses(plan(clinic)) == ALL_REUSED  # the new run still is

    store.delete_run(training.run_id)
    c = plan(clinic)
    assert statuses(c) == TRAINING_NEW
    assert c.notes == [OLD_SCHEME_NOTE]
    assert why(c, "training") == [OLD_SCHEME]
    r = relay("chain", *LINKS, "--dry-run")
    assert r.code == 0 and r.err.count("runs recorded before") == 1, r
    assert relay("runs", "training").code == 0


def test_parts_follow_imports_not_git(tmp_path: Path) -> None:
    """Relative imports, packages, submodules named in from-imports; other variants left out."""
    root = tmp_path / "p"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("from . import util\n")
    (root / "pkg" / "util.py").write_text("from .sub import deep\nimport numpy\n")
    (root / "pkg" / "sub" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "deep.py").write_text("X = 1\n")
    (root / "lonely.py").write_text("import pandas\n")  # imported only by another variant
    (root / "notes.py").write_text("")  # imported by nothing
    steps = root / "steps.py"
    steps.write_text(
        "import relayml as relay\nfrom pkg import util\n\nload = relay.step('load')\n\n\n"
        "@load.variant('a')\ndef a(ctx):\n    return ctx.query('db', 'SELECT 1')\n\n\n"
        "@load.variant('b')\ndef b():\n    import lonely\n    return lonely\n"
    )
    settings = Settings.from_dict(
        {"project": {"name": "p"}, "sources": {"db": "sqlite:///x.db", "other": "y.csv"}},
        root=root,
    )
    a_src = "@load.variant('a')\ndef a(ctx):\n    return ctx.query('db', 'SELECT 1')\n"
    b_src = "@load.variant('b')\ndef b():\n    import lonely\n    return lonely\n"
    a = code_parts(settings, "load", a_src, steps)
    b = code_parts(settings, "load", b_src, steps)
    local = {"module:pkg/__init__.py", "module:pkg/util.py", "module:pkg/sub/__init__.py",
             "module:pkg/sub/deep.py"}  # fmt: skip
    assert local <= set(a) and "module:lonely.py" not in a and "module:notes.py" not in a
    assert "dist:numpy" in a and "dist:pandas" not in a and "config:sources.db" in a
    assert "module:lonely.py" in b and "dist:pandas" in b and "config:sources.other" not in b
    assert a["steps:steps.py"] == b["steps:steps.py"]  # both variants are left out of it

    (root / "pkg" / "sub" / "deep.py").write_text("X = 2\n")
    again = code_parts(settings, "load", a_src, steps)
    assert changes(a, again) == ["pkg/sub/deep.py changed"]
    edited = a_src.replace("SELECT 1", "SELECT 2")
    assert changes(a, code_parts(settings, "load", edited, steps)) == [
        "variant source changed",
        "pkg/sub/deep.py changed",
    ]


@pytest.mark.parametrize(
    ("reuse", "message"),
    [
        ({"include": "queries/*.sql"}, "must be a list of glob patterns"),
        ({"include": ["/etc/*.conf"]}, "leaves the project folder"),
        ({"include": ["../other/*.sql"]}, "leaves the project folder"),
        ({"exclude": ["x"]}, "has 'exclude'; expected include"),
        ({"load": {"include": [1]}}, r"\[reuse.load\] include must be a list"),
    ],
)
def test_bad_reuse_include(tmp_path: Path, reuse: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_dict({"project": {"name": "p"}, "reuse": reuse}, root=tmp_path)


def test_bad_reuse_include_from_the_cli(clinic: Path, relay) -> None:
    toml = (clinic / "relay.toml").read_text()
    (clinic / "relay.toml").write_text(toml.replace('["queries/*.sql"]', '["../*.sql"]'))
    r = relay("chain", "patients=csv", "outcomes=csv", "processing=join", "training=logreg")
    assert r.code == 2 and "Error:" in r.err and "leaves the project folder" in r.err, r
    assert not (clinic / ".relay" / "mlflow.db").exists()  # nothing was run or recorded
