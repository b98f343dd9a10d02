"""The pipeline cache: chains resolve without importing the steps module, with the same result.

A process that imports the steps module writes what it declared to
``.relay/cache/pipeline-<sha256>.json``; a later process (here: the same process after the
module is forgotten, or a real ``relay`` subprocess) reads it instead of importing pandas and
scikit-learn. The reuse rule must not notice: params and fingerprints are the same.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import relayml
from relayml.pipeline import load_pipeline, pipeline_cache_file
from relayml.runner import prepare

from conftest import git, relay_process


def cache_of(root: Path, module: str = "steps") -> Path:
    digest = hashlib.sha256((root / f"{module}.py").read_bytes()).hexdigest()
    return pipeline_cache_file(root, digest)


def forget(monkeypatch: pytest.MonkeyPatch, module: str = "steps") -> None:
    """As in a new process: the steps module is not imported yet."""
    monkeypatch.delitem(sys.modules, module, raising=False)


def statuses(result: relayml.Chain) -> list[str]:
    return [p.status for p in result.steps]


CHAIN = ("load=transactions@latest", "processing=plain", "training=logreg")
CV2 = {"training.cv": 2}


def test_cache_gives_the_same_params_and_fingerprints(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget(monkeypatch)
    first = relayml.chain("load=transactions", *CHAIN[1:], params=CV2, project=project)
    assert statuses(first) == ["new", "new", "new"]
    assert cache_of(project).is_file()  # the import wrote it
    imported = load_pipeline(project, "steps")

    asked = [
        ("load", "transactions", {"days": "7"}),
        ("processing", "plain", {"test_size": "0.25"}),
        ("processing", "robust", {}),
        ("training", "logreg", {"C": "10", "cv": 2}),
        ("training", "rf", {"max_depth": "none"}),
    ]
    fresh = [prepare(s, v, p, project=project) for s, v, p in asked]

    forget(monkeypatch)
    cached = load_pipeline(project, "steps")
    assert "steps" not in sys.modules  # built from the cache: nothing imported
    assert cached.order == imported.order
    assert cached.module_digest == imported.module_digest
    for name, s in imported.steps.items():
        assert cached.steps[name].upstream == s.upstream
        assert cached.steps[name].doc == s.doc
        assert list(cached.steps[name].variants) == list(s.variants)
        for vname, v in s.variants.items():
            c = cached.steps[name].variants[vname]
            assert c.params == v.params  # the same Param objects: one coercion path
            assert (c.inputs, c.wants_ctx, c.doc, c.source) == (
                v.inputs,
                v.wants_ctx,
                v.doc,
                v.source,
            )
    for (s, v, p), want in zip(asked, fresh, strict=True):
        got = prepare(s, v, p, project=project)
        assert got.params == want.params
        assert [type(x) for x in got.params.values()] == [type(x) for x in want.params.values()]
        assert got.code_fingerprint == want.code_fingerprint
        assert got.fingerprint == want.fingerprint
    assert "steps" not in sys.modules

    # resolving from the cache reuses the runs made by the imported module
    plan = relayml.chain(*CHAIN, params=CV2, dry_run=True, project=project)
    assert statuses(plan) == ["reused", "reused", "reused"]
    assert plan["training"] == first["training"]
    assert "steps" not in sys.modules

    # a step that must run imports the module then; what it records is reusable
    ran = relayml.chain(*CHAIN, params={"training.cv": 3, "training.C": 1}, project=project)
    assert statuses(ran) == ["reused", "reused", "new"]
    assert "steps" in sys.modules
    forget(monkeypatch)
    asked_again = {"training": {"cv": "3", "C": "1.0"}}
    again = relayml.chain(*CHAIN, params=asked_again, dry_run=True, project=project)
    assert statuses(again) == ["reused", "reused", "reused"]
    assert again["training"] == ran["training"]
    assert "steps" not in sys.modules


NEW_VARIANT = '''

@processing.variant("extra")
def extra(load: pd.DataFrame, frac: float = 0.5):
    """A variant added later."""
    return {"rows": pd.DataFrame({"n": [len(load)]})}
'''


def test_changed_steps_module_invalidates_the_cache(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget(monkeypatch)
    first = relayml.chain("load=transactions", "processing=plain", project=project)
    old_cache = cache_of(project)
    assert old_cache.is_file()
    load_ref = f"load={first['load'].key}"

    # a new variant appears
    with (project / "steps.py").open("a") as f:
        f.write(NEW_VARIANT)
    git(project, "commit", "-qam", "a new variant")
    forget(monkeypatch)
    plan = relayml.chain(load_ref, "processing=extra", dry_run=True, project=project)
    assert statuses(plan) == ["reused", "new"]
    assert cache_of(project).is_file() and cache_of(project) != old_cache

    # another variant's addition leaves plain's runs reusable
    plan = relayml.chain(load_ref, "processing=plain", dry_run=True, project=project)
    assert plan["processing"] == first["processing"]

    # an edited variant is not reused
    steps_py = (project / "steps.py").read_text()
    head = "def plain(ctx: relay.Context, load: pd.DataFrame, test_size: float = 0.25, seed: int = 42):\n"  # noqa: E501
    edited = steps_py.replace(head, head + "    # edited\n", 1)
    assert edited != steps_py
    (project / "steps.py").write_text(edited)
    git(project, "commit", "-qam", "edit plain")
    for _ in range(2):  # the first resolution imports the module, the second reads the cache
        forget(monkeypatch)
        plan = relayml.chain(load_ref, "processing=plain", dry_run=True, explain=True,
                             project=project)  # fmt: skip
        assert statuses(plan) == ["reused", "new"]
        assert plan.steps[1].passed_over[0][1] == "variant source changed"
    assert "steps" not in sys.modules
    assert "# edited" in load_pipeline(project, "steps").variant("processing", "plain").source

    # and back: the original module's cache is still valid, its runs are reused
    (project / "steps.py").write_text(steps_py.replace(NEW_VARIANT, ""))
    git(project, "commit", "-qam", "revert")
    forget(monkeypatch)
    assert cache_of(project) == old_cache
    # the declarations come from the old cache, and the first runs are reused (the commit
    # differs, the code does not)
    back = load_pipeline(project, "steps")
    assert "steps" not in sys.modules and "extra" not in back.get("processing").variants
    plan = relayml.chain(load_ref, "processing=plain", dry_run=True, project=project)
    assert plan["processing"] == first["processing"]
    assert "steps" not in sys.modules


def test_variant_source_from_another_file(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "helpers.py").write_text('def helped(load, k: int = 1):\n    return {"k": k}\n')
    (project / "consts.py").write_text("SIZE = 0.25\n")
    with (project / "steps.py").open("a") as f:
        f.write(
            "\nimport helpers\nfrom consts import SIZE\n\n"
            "processing.variant('helped')(helpers.helped)\n\n\n"
            "@processing.variant('sized')\ndef sized(load, size: float = SIZE):\n"
            "    return {'size': size}\n"
        )
    for name in ("steps", "helpers", "consts"):
        forget(monkeypatch, name)
    load_pipeline(project, "steps")
    forget(monkeypatch)
    assert (
        'return {"k": k}' in load_pipeline(project, "steps").variant("processing", "helped").source
    )
    assert "steps" not in sys.modules
    # the helper changes, steps.py does not: the cache is stale for that variant's source
    (project / "helpers.py").write_text('def helped(load, k: int = 2):\n    return {"k": -k}\n')
    forget(monkeypatch, "helpers")
    fresh = load_pipeline(project, "steps").variant("processing", "helped")
    assert "steps" in sys.modules  # imported again
    assert "-k" in fresh.source and fresh.params["k"].default == 2

    # a constant in a project module imported by the steps module changes a default
    forget(monkeypatch)
    assert (
        load_pipeline(project, "steps").variant("processing", "sized").params["size"].default
        == 0.25
    )
    assert "steps" not in sys.modules
    (project / "consts.py").write_text("SIZE = 0.5\n")
    forget(monkeypatch, "consts")
    sized = load_pipeline(project, "steps").variant("processing", "sized")
    assert "steps" in sys.modules and sized.params["size"].default == 0.5


def test_corrupt_cache_is_ignored_and_rebuilt(project: Path) -> None:
    """A real ``relay`` process: the cache is read, a broken one is rewritten."""
    relayml.chain("load=transactions", "processing=plain", project=project)
    cache = cache_of(project)
    good = json.loads(cache.read_text())
    args = ("chain", "load=transactions@latest", "processing=plain", "--dry-run", "--json")

    for broken in ("{not json", json.dumps({"version": 1}), json.dumps({**good, "steps": 7})):
        cache.write_text(broken)
        p = relay_process(*args, cwd=project)
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        assert [s["status"] for s in json.loads(out)["steps"]] == ["reused", "reused"]
        assert json.loads(cache.read_text()) == good  # rebuilt by the import

    # from the good cache, a real process that runs nothing does not import scikit-learn
    probe = (
        "import sys, runpy; sys.argv = ['relay', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('relayml', run_name='__main__')\n"
        "finally:\n"
        "    found = [m for m in ('sklearn', 'steps') if m in sys.modules]\n"
        "    print('IMPORTED', found, file=sys.stderr)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", probe, *args], cwd=project, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [s["status"] for s in json.loads(done.stdout)["steps"]] == ["reused", "reused"]
    assert done.stderr.strip().endswith("IMPORTED []")


def test_uncacheable_or_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "odd_steps.py").write_text(
        "from pathlib import Path\nimport relayml as relay\n"
        "load = relay.step('load')\n\n"
        "@load.variant('files')\ndef files(where: str = Path('data')):\n    return where\n"
    )
    load_pipeline(tmp_path, "odd_steps")
    assert not cache_of(tmp_path, "odd_steps").exists()  # a Path default: not stored
    forget(monkeypatch, "odd_steps")

    (tmp_path / "plain_steps.py").write_text(
        "import relayml as relay\nload = relay.step('load')\n\n"
        "@load.variant('n')\ndef n(k: int = 1):\n    return k\n"
    )
    monkeypatch.setenv("RELAY_NO_PIPELINE_CACHE", "1")
    load_pipeline(tmp_path, "plain_steps")
    assert not cache_of(tmp_path, "plain_steps").exists()
    forget(monkeypatch, "plain_steps")
    monkeypatch.delenv("RELAY_NO_PIPELINE_CACHE")
    load_pipeline(tmp_path, "plain_steps")
    assert cache_of(tmp_path, "plain_steps").exists()
    forget(monkeypatch, "plain_steps")
    cached = load_pipeline(tmp_path, "plain_steps").variant("load", "n")
    assert "plain_steps" not in sys.modules
    assert cached.bind({"k": "3"}) == {"k": 3}
    assert cached.func(k=4) == 4  # calling it imports the module
    assert "plain_steps" in sys.modules

    # a module that changed after a cached variant was read refuses to run
    forget(monkeypatch, "plain_steps")
    stale = load_pipeline(tmp_path, "plain_steps").variant("load", "n")
    (tmp_path / "plain_steps.py").write_text(
        (tmp_path / "plain_steps.py").read_text().replace("return k", "return -k")
    )
    with pytest.raises(relayml.ConfigError, match="changed"):
        stale.load()


def test_a_copied_project_folder_reuses_its_runs(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caches name files relative to the project: a copy (or a moved folder) must not
    fingerprint the original folder's modules and rerun every step."""
    relayml.run("load", "transactions")
    first = relayml.run("processing", "plain")
    copy = tmp_path / "copy" / "fraud"
    import shutil

    shutil.copytree(project, copy, symlinks=True)
    monkeypatch.chdir(copy)
    forget(monkeypatch)
    forget(monkeypatch, "features")
    plan = relayml.chain("load=transactions@latest", "processing=plain", dry_run=True)
    assert statuses(plan) == ["reused", "reused"], plan.steps[1].reason
    assert plan["processing"].run_id == first.run_id
    cached = json.loads(next((copy / ".relay" / "cache").glob("code-*.json")).read_text())
    assert all(not Path(p).is_absolute() for p in cached["files"]), cached["files"]
