"""A project's pipeline: the steps its module declares, collected by importing it or from cache.

**The pipeline cache.** Importing a steps module usually imports pandas and scikit-learn
(seconds), while resolving a chain only needs the declarations. So each import writes what was
declared (steps, upstream, variants, their params with types and defaults, inputs, ``ctx``,
docs and each variant's source) to ``<root>/.relay/cache/pipeline-<sha256 of the module
file>.json``; the next process whose module file has the same digest builds the pipeline
from it without importing anything. Such a variant imports the module when it is actually
called (and refuses to run if the module changed meanwhile). The cache is stale when the
module file, a project-local Python module imported with it or a file holding a variant's
source changed; it is ignored (and rewritten) when unreadable, and never written when a
declaration cannot be stored exactly. ``RELAY_NO_PIPELINE_CACHE=1`` turns it off, for a steps
module whose declarations depend on anything else (environment variables, a YAML file).

This module reads declarations; it runs no variant and does not talk to MLflow.

Example:
    >>> from relayml.pipeline import load_pipeline
    >>> load_pipeline(Path("."), "steps").order
    ['load', 'processing', 'training']
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import sysconfig
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayml.checks import Checks
from relayml.errors import ConfigError, UnknownName
from relayml.steps import REQUIRED, SCALARS, Deferred, Param, Step, Variant

__all__ = ["CACHE_VERSION", "NO_CACHE_ENV", "Pipeline", "load_pipeline", "pipeline_cache_file"]

CACHE_VERSION = 1
NO_CACHE_ENV = "RELAY_NO_PIPELINE_CACHE"
CACHE_KEEP = 10  # pipeline cache files kept per project (other versions of the module)
_BY_NAME: dict[str, type] = {v: k for k, v in SCALARS.items()}


@dataclass
class Pipeline:
    """The steps a project's module declares, and the digest of that module's code.

    Example:
        >>> p = Pipeline.from_steps([relay.step("load"), relay.step("training", upstream="load")])
        >>> p.order
        ['load', 'training']
    """

    steps: dict[str, Step]
    module_digest: str = ""
    module_file: Path | None = None

    @classmethod
    def from_steps(cls, steps: Sequence[Step], module_digest: str = "") -> Pipeline:
        """Build a pipeline, checking that each upstream step exists and there is no cycle."""
        by_name: dict[str, Step] = {}
        for s in steps:
            if s.name in by_name and by_name[s.name] is not s:
                raise ConfigError(f"step {s.name!r} is declared twice")
            by_name[s.name] = s
        for s in by_name.values():
            for u in s.upstream:
                if u not in by_name:
                    raise UnknownName("step", u, by_name, where=f"(upstream of {s.name!r})")
        pipeline = cls(by_name, module_digest)
        pipeline.order  # noqa: B018 - raises on a cycle
        return pipeline

    @property
    def order(self) -> list[str]:
        """Step names in dependency order (upstream first)."""
        done: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in done:
                return
            if name in visiting:
                raise ConfigError(f"the steps form a cycle through {name!r}")
            visiting.add(name)
            for u in self.steps[name].upstream:
                visit(u)
            visiting.discard(name)
            done.append(name)

        for name in self.steps:
            visit(name)
        return done

    def get(self, name: str) -> Step:
        """The step ``name``; UnknownName (with suggestions) otherwise."""
        try:
            return self.steps[name]
        except KeyError:
            raise UnknownName("step", name, self.steps) from None

    def variant(self, step_name: str, variant: str) -> Variant:
        """Shortcut for ``pipeline.get(step).get(variant)``."""
        return self.get(step_name).get(variant)

    def downstream_of(self, name: str) -> list[str]:
        """Steps that list ``name`` as upstream."""
        return [s.name for s in self.steps.values() if name in s.upstream]


def load_pipeline(root: Path, module: str, *, cached: bool = True) -> Pipeline:
    """The project's steps: from the pipeline cache, or by importing ``<root>/<module>.py``.

    The module is ``<root>/<module>.py`` (or a package folder). Importing it runs the user's
    declarations; it is cached in ``sys.modules`` under its own name, and what it declared is
    written to the pipeline cache (see the module docstring). With ``cached`` (the default) a
    module not imported yet in this process is not imported when the cache matches its file:
    its variants import it when they are called.

    Example:
        >>> pipeline = load_pipeline(Path("."), "steps")
        >>> pipeline.order, list(pipeline.get("training").variants)
        (['load', 'processing', 'training'], ['logreg', 'rf'])
    """
    path = _module_path(root, module)
    mod = sys.modules.get(module)
    if mod is not None and _same_file(mod, path):
        recorded = _IMPORTED.get(module, {})
        if recorded == _digests(recorded):
            return _collect(mod, path)
        _forget_project_modules(root)  # edited since this process imported it: import again
    use_cache = cached and not os.environ.get(NO_CACHE_ENV)
    if use_cache:
        before = _file_digest(path)
        found = _read_cache(root, module, path, before)
        if found is not None:
            return found
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))  # the project's own helper modules come first
    _forget_foreign_modules(root)
    spec = importlib.util.spec_from_file_location(module, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        sys.modules.pop(module, None)
        raise ConfigError(f"importing steps module {path} failed: {e!r}") from e
    _IMPORTED[module] = _digests(_project_modules(root).values())
    pipeline = _collect(mod, path)
    if use_cache and pipeline.module_digest == before:  # unchanged while it was imported
        _write_cache(root, module, pipeline)
    return pipeline


_IMPORTED: dict[str, dict[str, str]] = {}
"""Steps module name → ``{file: digest}`` of the project's modules as this process imported
them: a module edited since (a notebook, a long-lived server) is imported again, so that the
code that runs is the code whose digest the run records."""


def _digests(files: Iterable[str | Path]) -> dict[str, str]:
    """``{file: digest}`` of the ``files`` that exist."""
    return {str(f): _file_digest(Path(f)) for f in files if Path(f).is_file()}


def _module_names(root: Path) -> set[str]:
    """The top-level module names the project in ``root`` provides (``features``, ...)."""
    return {p.stem for p in root.glob("*.py")} | {p.parent.name for p in root.glob("*/__init__.py")}


def _project_modules(root: Path) -> dict[str, Path]:
    """``{name: resolved file}`` of the imported modules whose file is inside ``root`` (not in a
    virtual environment there). The standard library's and installed packages' modules (most
    of ``sys.modules``) are told apart by the start of their path, without resolving it."""
    top = root.resolve()
    installed = tuple(p for p in _installed_prefixes() if not str(top).startswith(p))
    found = {}
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if not isinstance(file, str) or file.startswith(installed):
            continue
        path = Path(file).resolve()
        if path.is_relative_to(top) and not {"site-packages", "dist-packages"} & set(path.parts):
            found[name] = path
    return found


@functools.cache
def _installed_prefixes() -> tuple[str, ...]:
    """The folders of the standard library and installed packages, as written and resolved."""
    folders = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    both = folders | {os.path.realpath(f) for f in folders}
    return tuple(os.path.join(f, "") for f in sorted(both))


def _forget_project_modules(root: Path) -> None:
    """Drop the imported modules of the project in ``root`` (to import their files again)."""
    for name in _project_modules(root):
        del sys.modules[name]


def _forget_foreign_modules(root: Path) -> None:
    """Drop imported modules named like a module of ``root`` but loaded from elsewhere.

    Two projects used in one process (``relay.run(..., project=...)``) may both have a
    ``features.py``; the steps module of each must import its own, not the one cached in
    ``sys.modules`` by the other.
    """
    here = root.resolve()
    names = _module_names(root)
    for name in [n for n in sys.modules if n.partition(".")[0] in names]:
        file = getattr(sys.modules[name], "__file__", None)
        if file and not Path(file).resolve().is_relative_to(here):
            del sys.modules[name]


def _module_path(root: Path, module: str) -> Path:
    path = root / f"{module.replace('.', '/')}.py"
    if not path.exists():
        path = root / module.replace(".", "/") / "__init__.py"
    if not path.exists():
        raise ConfigError(
            f"steps module {module!r} not found in {root} (looked for {module}.py); "
            "set [project] steps in relay.toml"
        )
    return path


def _same_file(mod: types.ModuleType, path: Path) -> bool:
    return Path(getattr(mod, "__file__", "") or "").resolve() == path.resolve()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _collect(mod: types.ModuleType, path: Path) -> Pipeline:
    steps = [v for v in vars(mod).values() if isinstance(v, Step)]
    if not steps:
        raise ConfigError(f"{path} declares no steps; declare them with relay.step(...)")
    pipeline = Pipeline.from_steps(steps, _file_digest(path))
    pipeline.module_file = path
    return pipeline


# -- the pipeline cache -------------------------------------------------------------------------


def pipeline_cache_file(root: Path, module_digest: str) -> Path:
    """Where the declarations of a steps module with that sha256 are cached.

    Example:
        >>> pipeline_cache_file(Path("proj"), "ab12").as_posix()
        'proj/.relay/cache/pipeline-ab12.json'
    """
    return root / ".relay" / "cache" / f"pipeline-{module_digest}.json"


class _Uncacheable(Exception):
    """A declaration the cache cannot hold exactly (the pipeline is then not cached)."""


def _value(value: Any) -> Any:
    """A param default or choice as JSON that decodes to an equal value of the same type."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    raise _Uncacheable(repr(value))


def _encode(root: Path, module: str, pipeline: Pipeline) -> dict[str, Any]:
    assert pipeline.module_file is not None
    # other files whose change may change the declarations: project-local modules (helpers the
    # steps module imports, e.g. a default taken from a constant there) and variant sources
    files = _local_modules(root, pipeline.module_file)
    steps = []
    for s in pipeline.steps.values():
        variants = []
        for v in s.variants.values():
            source = v.source
            if source:
                where = inspect.getsourcefile(inspect.unwrap(v.func))
                if not where or not Path(where).is_file():
                    raise _Uncacheable(f"source of {s.name}/{v.name}")
                if Path(where).resolve() != pipeline.module_file.resolve():
                    files[str(Path(where).resolve())] = _file_digest(Path(where))
            params = []
            for p in v.params.values():
                item = {
                    "name": p.name,
                    "type": SCALARS[p.type],
                    "choices": [_value(c) for c in p.choices],
                    "optional": p.optional,
                }
                if not p.required:
                    item["default"] = _value(p.default)
                params.append(item)
            variants.append(
                {
                    "name": v.name,
                    "params": params,
                    "inputs": list(v.inputs),
                    "wants_ctx": v.wants_ctx,
                    "doc": v.doc,
                    "source": source,
                    "source_digest": hashlib.sha256(source.encode()).hexdigest(),
                    "checks": v.checks.to_dict() if v.checks else None,
                    "key": list(v.key),
                }
            )
        steps.append({"name": s.name, "upstream": list(s.upstream), "doc": s.doc,
                      "variants": variants})  # fmt: skip
    return {
        "version": CACHE_VERSION,
        "module": module,
        "file": pipeline.module_file.resolve().relative_to(root.resolve()).as_posix(),
        "module_digest": pipeline.module_digest,
        # relative to the root: a copied or moved project folder keeps its cache
        "files": {os.path.relpath(p, root.resolve()): want for p, want in files.items()},
        "steps": steps,
    }


def _local_modules(root: Path, module_file: Path) -> dict[str, str]:
    """``{path: sha256}`` of the imported Python files inside the project folder."""
    steps = module_file.resolve()
    return _digests(p for p in _project_modules(root).values() if p.suffix == ".py" and p != steps)


def _write_cache(root: Path, module: str, pipeline: Pipeline) -> None:
    """Best effort: a pipeline that cannot be cached, or a read-only folder, changes nothing."""
    try:
        data = _encode(root, module, pipeline)
        assert pipeline.module_file is not None
        if _file_digest(pipeline.module_file) != pipeline.module_digest:
            return  # edited meanwhile: the declarations read may not be that file's
        target = pipeline_cache_file(root, pipeline.module_digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        staged.write_text(json.dumps(data, indent=1, allow_nan=False))
        staged.replace(target)  # atomic: readers never see half a file
        kept = sorted(target.parent.glob("pipeline-*.json"), key=_mtime, reverse=True)
        for old in kept[CACHE_KEEP:]:
            old.unlink(missing_ok=True)
    except (_Uncacheable, OSError, ValueError, TypeError):
        return


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_cache(root: Path, module: str, path: Path, module_digest: str) -> Pipeline | None:
    """The pipeline from its cache file; None when missing, stale or unreadable."""
    try:
        data = json.loads(pipeline_cache_file(root, module_digest).read_text())
        if (
            data["version"] != CACHE_VERSION
            or data["module"] != module
            or data["module_digest"] != module_digest
            or data["file"] != path.resolve().relative_to(root.resolve()).as_posix()
        ):
            return None
        for other, want in data["files"].items():
            if _file_digest(root / other) != want:
                return None
        steps = []
        for s in data["steps"]:
            step_ = Step(s["name"], tuple(s["upstream"]), doc=s["doc"])
            for v in s["variants"]:
                if hashlib.sha256(v["source"].encode()).hexdigest() != v["source_digest"]:
                    return None
                params = {p["name"]: _decoded_param(p) for p in v["params"]}
                func = _Deferred(root, module, module_digest, s["name"], v["name"], v["source"])
                step_.variants[v["name"]] = Variant(
                    s["name"], v["name"], func, params, tuple(v["inputs"]),
                    bool(v["wants_ctx"]), cached_source=v["source"], cached_doc=v["doc"],
                    checks=Checks.from_dict(v["checks"]) if v["checks"] else None,
                    key=tuple(v["key"]),
                )  # fmt: skip
            steps.append(step_)
        pipeline = Pipeline.from_steps(steps, module_digest)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError):
        return None
    pipeline.module_file = path
    if str(root) not in sys.path:  # as an import would: pickled outputs may refer to the module
        sys.path.insert(0, str(root))
    return pipeline


def _decoded_param(p: Mapping[str, Any]) -> Param:
    kind = _BY_NAME[p["type"]]
    default = p.get("default", REQUIRED)
    return Param(p["name"], kind, default, tuple(p["choices"]), bool(p["optional"]))


class _Deferred(Deferred):
    """A cached variant's function: imports the steps module when it is called."""

    def __init__(
        self, root: Path, module: str, module_digest: str, step: str, variant: str, source: str
    ) -> None:
        self.root, self.module, self.module_digest = root, module, module_digest
        self.step, self.variant, self.source = step, variant, source
        self.__name__ = self.__qualname__ = variant
        self._func: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        """The variant's real function (the module is imported once per process).

        Raises:
            ConfigError: the module does not import, or it changed since the cache was read
                (the request's code fingerprint would not describe the code that runs).
        """
        if self._func is not None:
            return self._func
        real = load_pipeline(self.root, self.module, cached=False)
        changed = real.module_digest != self.module_digest
        if not changed:
            try:
                var = real.variant(self.step, self.variant)
            except UnknownName:
                changed = True
            else:
                changed = var.source != self.source
        if changed:
            raise ConfigError(
                f"the steps module {real.module_file} changed after {self.step}/{self.variant} "
                "was prepared; run the command again"
            )
        self._func = var.func
        return var.func

    def __repr__(self) -> str:
        return f"<{self.step}/{self.variant} from the pipeline cache>"
