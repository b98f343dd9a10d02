"""The doctest fixture: every ``Example:`` under ``src/relayml`` runs in a small real project.

The contract the docstrings are written against (``pytest --doctest-modules``):

* the cwd is a fresh copy of the fraud example (``examples/fraud``: ``relay.toml``, its steps,
  a small generated ``transactions`` table, an embedded SQLite tracking store), committed to
  git, in which the chain ``load=transactions processing=plain training=logreg`` has already
  run once;
* the name ``relay`` is ``import relayml as relay``;
* no ``RELAY_*`` / ``MLFLOW_TRACKING_URI`` variable of the caller leaks in.

The project is built once per session into a template folder (generated rows, git, MLflow's
migrations and the chain cost seconds) and copied for each module's doctests (a copy is tens
of milliseconds); the doctests of one module share their copy, in file order. The project's
own modules (``steps``, ``features``) are imported afresh by each doctest, so an example may
add a variant to ``steps.py`` and run it.

This file is at the repository's root so that it is never shipped in the wheel; the tests'
own fixtures are in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

ROOT = Path(__file__).resolve().parent
EXAMPLE = ROOT / "examples" / "fraud"
PROJECT_FILES = ("relay.toml", "steps.py", "features.py", "generate.py")
DOCTEST_CHAIN = ("load=transactions", "processing=plain", "training=logreg")
STORE_VARS = ("RELAY_TRACKING_URI", "MLFLOW_TRACKING_URI", "RELAY_PROJECT", "RELAY_EXECUTOR")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "relay-doctests",
    "GIT_AUTHOR_EMAIL": "doctests@relay.invalid",
    "GIT_COMMITTER_NAME": "relay-doctests",
    "GIT_COMMITTER_EMAIL": "doctests@relay.invalid",
}


def build_doctest_project(root: Path, *, days: int = 3, rows_per_day: int = 1500) -> Path:
    """Build the doctests' project in ``root``: the fraud example with generated data, a git
    commit, and the chain of :data:`DOCTEST_CHAIN` run once (in a process of its own, so that
    no connection stays open on the store that is copied).
    """
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy(EXAMPLE / name, root / name)
    (root / ".gitignore").write_text(".relay/\ndata/\n__pycache__/\n")
    (root / "data").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in STORE_VARS} | GIT_IDENTITY
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)

    def python(*args: str) -> None:
        subprocess.run([sys.executable, *args], cwd=root, env=env, check=True, capture_output=True)

    python("generate.py", "--days", str(days), "--rows-per-day", str(rows_per_day))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "fraud example"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)
    python("-m", "relayml", "chain", *DOCTEST_CHAIN)
    return root


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist hands whole test files to its workers (a module's fixtures are built once), in the
    order the items were sorted (``tests/conftest.py``: the heaviest first), and every doctest
    module as one unit, so that the doctests' project is built by one worker, not by each."""
    from xdist.scheduler import LoadFileScheduling

    class Files(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return DOCTESTS if nodeid.startswith("src/") else super()._split_scope(nodeid)

    config.option.loadscopereorder = False  # keep the heaviest-first order
    return Files(config, log)


DOCTESTS = "doctests"  # the work unit of every docstring example


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Docstring examples carry the ``doctest`` mark (``make test-fast`` leaves them out:
    their project costs a chain run)."""
    for item in items:
        if isinstance(item, DoctestItem):
            item.add_marker("doctest")


@pytest.fixture(scope="session")
def doctest_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The doctests' project, built once per session (see :func:`build_doctest_project`)."""
    return build_doctest_project(tmp_path_factory.mktemp("doctest-template") / "fraud")


_COPIES: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def _doctest_project(request: pytest.FixtureRequest) -> Iterator[None]:
    """For doctest items only: cwd = the module's copy of the project, environment isolated,
    ``relay`` in the namespace."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    template: Path = request.getfixturevalue("doctest_template")
    namespace: dict = request.getfixturevalue("doctest_namespace")
    module = str(request.node.path)
    if module not in _COPIES:
        copy = Path(tempfile.mkdtemp(prefix="relay-doctest-", dir=template.parent)) / "fraud"
        shutil.copytree(template, copy, symlinks=True)
        _COPIES[module] = copy
    import relayml

    namespace["relay"] = relayml
    for name, mod in list(sys.modules.items()):  # an example may have edited the steps module
        if str(getattr(mod, "__file__", None) or "").startswith(str(template.parent)):
            del sys.modules[name]
    with pytest.MonkeyPatch.context() as mp:
        for var in STORE_VARS:
            mp.delenv(var, raising=False)
        for var, value in GIT_IDENTITY.items():
            mp.setenv(var, value)
        mp.chdir(_COPIES[module])
        yield
