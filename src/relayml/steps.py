"""Steps and variants: how a project declares its pipeline.

A steps module declares each step once with :func:`step` and registers variants on it with
the ``@step.variant(name)`` decorator. A variant is a plain function; relayml reads its
signature to know what it needs:

* a parameter named ``ctx`` receives the :class:`relayml.runner.Context` of the run;
* a parameter named like an upstream step receives that step's outputs (Python objects);
* every other parameter is a *param*: its type hint and default are what ``-P`` accepts.

There is no module-level registry: :func:`load_pipeline` imports the module and collects
the :class:`Step` objects it defines.

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

Example:
    >>> import relayml as relay
    >>> load = relay.step("load")
    >>> @load.variant("numbers")
    ... def numbers(n: int = 3):
    ...     return list(range(n))
    >>> load.variants["numbers"].params["n"].coerce("5")
    5
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from relayml.checks import Checks
from relayml.errors import ConfigError, UnknownName, UsageError
from relayml.keys import check_name

__all__ = [
    "REQUIRED",
    "Param",
    "Pipeline",
    "Step",
    "Variant",
    "load_pipeline",
    "pipeline_cache_file",
    "step",
]

REQUIRED: Any = inspect.Parameter.empty
_SCALARS: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_BY_NAME: dict[str, type] = {v: k for k, v in _SCALARS.items()}
CACHE_VERSION = 1
NO_CACHE_ENV = "RELAY_NO_PIPELINE_CACHE"
CACHE_KEEP = 10  # pipeline cache files kept per project (other versions of the module)


@dataclass(frozen=True)
class Param:
    """One parameter of a variant, read from the function signature.

    Attributes:
        name: the parameter's name.
        type: ``bool``, ``int``, ``float`` or ``str``.
        default: the default value, or ``REQUIRED``.
        choices: allowed values when annotated with ``Literal[...]``.
        optional: ``None`` is accepted (annotated ``X | None``).

    Example:
        >>> Param("C", float, 1.0).coerce("10")
        10.0
    """

    name: str
    type: type
    default: Any = REQUIRED
    choices: tuple[Any, ...] = ()
    optional: bool = False

    @property
    def required(self) -> bool:
        """True when the variant has no default for this parameter."""
        return self.default is REQUIRED

    def describe(self) -> str:
        """``C: float = 1.0`` as shown in errors and ``--help``."""
        kind = "|".join(map(repr, self.choices)) if self.choices else _SCALARS[self.type]
        if self.optional:
            kind += " | None"
        return f"{self.name}: {kind}" + ("" if self.required else f" = {self.default!r}")

    def coerce(self, value: Any) -> Any:
        """Convert a ``-P`` string (or a Python value) to the declared type.

        Raises:
            UsageError: the value does not fit; the message names the expected type.
        """
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if self.optional:
                return None
            if value is None:
                raise UsageError(f"parameter {self.name!r} expects {self.describe()}, got None")
        try:
            out = _convert(self.type, value)
        except (TypeError, ValueError):
            raise UsageError(
                f"parameter {self.name!r} expects {_SCALARS[self.type]}, got {value!r}"
            ) from None
        if not _in_range(out):
            wanted = "a finite float" if isinstance(out, float) else "an int within int64"
            raise UsageError(
                f"parameter {self.name!r} expects {wanted} (so that MLflow stores it as "
                f"given), got {value!r}"
            )
        if self.choices and out not in self.choices:
            raise UsageError(
                f"parameter {self.name!r} must be one of {', '.join(map(repr, self.choices))}, "
                f"got {value!r}"
            )
        return out


def _in_range(value: Any) -> bool:
    """False for inf, nan and integers beyond int64: params must survive the store's round trip."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**63
    return True


def _convert(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError(value)
    if kind is float:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise TypeError(value)
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _param(p: inspect.Parameter, hint: Any, where: str) -> Param:
    default = p.default
    optional = False
    choices: tuple[Any, ...] = ()
    if hint is inspect.Parameter.empty:
        hint = type(default) if default not in (REQUIRED, None) else str
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise ConfigError(f"{where}: parameter {p.name!r} has an unsupported type {hint!r}")
        hint = args[0]
        origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        kinds = {type(c) for c in choices}
        if len(kinds) != 1 or next(iter(kinds)) not in _SCALARS:
            raise ConfigError(f"{where}: Literal choices of {p.name!r} must share one scalar type")
        hint = next(iter(kinds))
    if hint not in _SCALARS:
        raise ConfigError(
            f"{where}: parameter {p.name!r} has type {hint!r}; params must be bool, int, "
            "float, str, a Literal of them, or Optional of those"
        )
    return Param(p.name, hint, default, choices, optional or default is None)


@dataclass
class Variant:
    """A named implementation of a step (the seed's "table", "logic", "algorithm").

    Attributes:
        step: the step's name.
        name: the variant's name.
        func: the function relayml calls.
        params: the user parameters, in signature order.
        inputs: the upstream steps whose outputs the function receives.
        wants_ctx: the function takes a ``ctx`` parameter.

    Example:
        >>> import relayml as relay
        >>> training = relay.step("training", upstream="processing")
        >>> v = training.variant("rf")(lambda ctx, processing, n_estimators=100: None)
        >>> v.inputs, list(v.params), v.wants_ctx
        (('processing',), ['n_estimators'], True)
    """

    step: str
    name: str
    func: Callable[..., Any]
    params: dict[str, Param]
    inputs: tuple[str, ...]
    wants_ctx: bool
    cached_source: str | None = field(default=None, repr=False, compare=False)
    cached_doc: str | None = field(default=None, repr=False, compare=False)
    checks: Checks | None = None
    key: tuple[str, ...] = ()

    def bind(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate and coerce user parameters, filling in defaults.

        Raises:
            UsageError: an unknown parameter, a missing required one, or a wrong type.

        Example:
            >>> import relayml as relay
            >>> s = relay.step("training")
            >>> v = s.variant("logreg")(lambda C=1.0, penalty="l2": None)
            >>> v.bind({"C": "10"})
            {'C': 10.0, 'penalty': 'l2'}
        """
        given = dict(given or {})
        unknown = set(given) - set(self.params)
        if unknown:
            name = sorted(unknown)[0]
            raise UnknownName(
                "parameter",
                name,
                self.params,
                where=f"for {self.step}/{self.name}",
                listing=[p.describe() for p in self.params.values()],
            )
        out = {}
        for name, p in self.params.items():
            if name in given:
                out[name] = p.coerce(given[name])
            elif p.required:
                raise UsageError(
                    f"{self.step}/{self.name} needs parameter {name!r} ({p.describe()}); "
                    f"pass -P {name}=..."
                )
            else:
                out[name] = p.default
        return out

    def load(self) -> Callable[..., Any]:
        """The function to call: a variant read from the pipeline cache imports its module now.

        Raises:
            ConfigError: the steps module does not import, or changed since it was read.

        Example:
            >>> import relayml as relay
            >>> s = relay.step("load")
            >>> s.variant("numbers")(len).load() is len
            True
        """
        return self.func.resolve() if isinstance(self.func, _Deferred) else self.func

    @property
    def source(self) -> str:
        """The variant function's source code (empty when unavailable)."""
        if self.cached_source is not None:
            return self.cached_source
        return _source(self.func)

    @property
    def doc(self) -> str:
        """The first line of the variant's docstring."""
        if self.cached_doc is not None:
            return self.cached_doc
        return (inspect.getdoc(self.func) or "").split("\n", 1)[0]


def _source(func: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


@dataclass
class Step:
    """A stage of the pipeline. Create it with :func:`step`; add variants with ``.variant``.

    Attributes:
        name: the step's name; its experiment is ``<project>/<name>``.
        upstream: the steps whose runs this step consumes, in order.
        variants: the registered variants by name.

    Example:
        >>> import relayml as relay
        >>> load = relay.step("load", doc="snapshot the table")
        >>> load.variant("transactions")(lambda ctx: None).name
        'transactions'
        >>> list(load.variants)
        ['transactions']
    """

    name: str
    upstream: tuple[str, ...] = ()
    variants: dict[str, Variant] = field(default_factory=dict)
    doc: str = ""

    def variant(
        self,
        name: str | None = None,
        *,
        checks: Checks | None = None,
        key: Sequence[str] = (),
    ) -> Callable[[Callable[..., Any]], Variant]:
        """Decorator registering a function as the variant ``name`` (default: its name).

        A variant of a step without upstream (a load) may declare ``checks`` its data must
        pass (see :func:`relayml.checks.checks`; without them a load of 0 rows fails) and the
        ``key`` columns identifying a row (unique, and what ``relay diff`` matches rows on).

        Example:
            >>> import relayml as relay
            >>> training = relay.step("training", upstream="processing")
            >>> @training.variant("rf")
            ... def random_forest(ctx, processing, n_estimators: int = 200):
            ...     ...
            >>> sorted(training.variants["rf"].params)
            ['n_estimators']
        """

        if name is not None:
            check_name("variant", name)
        if (checks is not None or key) and self.upstream:
            raise ConfigError(
                f"step {self.name!r}: checks= and key= describe loaded data; declare them on "
                "a variant of a step without upstream (a load step)"
            )
        if isinstance(key, str):
            key = (key,)

        def register(func: Callable[..., Any]) -> Variant:
            vname = check_name("variant", name or func.__name__)
            if vname in self.variants:
                raise ConfigError(f"variant {vname!r} of step {self.name!r} is declared twice")
            where = f"variant {self.name}/{vname}"
            sig = inspect.signature(func)
            try:
                hints = typing.get_type_hints(func)
            except Exception:  # unresolvable forward references: fall back to defaults
                hints = {}
            params: dict[str, Param] = {}
            inputs: list[str] = []
            wants_ctx = False
            for p in sig.parameters.values():
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    raise ConfigError(f"{where}: *args and **kwargs are not supported")
                if p.name == "ctx":
                    wants_ctx = True
                elif p.name in self.upstream:
                    inputs.append(p.name)
                else:
                    params[p.name] = _param(p, hints.get(p.name, p.annotation), where)
            v = Variant(self.name, vname, func, params, tuple(inputs), wants_ctx)
            v.checks, v.key = checks, tuple(key)
            self.variants[vname] = v
            return v

        return register

    def get(self, variant: str) -> Variant:
        """The variant named ``variant``; UnknownName (with suggestions) otherwise."""
        try:
            return self.variants[variant]
        except KeyError:
            raise UnknownName(
                "variant", variant, self.variants, where=f"of step {self.name!r}"
            ) from None


def step(name: str, *, upstream: str | Step | Iterable[str | Step] = (), doc: str = "") -> Step:
    """Declare a step of the pipeline.

    Args:
        name: the step's name (letters, digits, ``_``, ``-``).
        upstream: the step(s) whose runs this one consumes.
        doc: one line shown by ``relay steps``.

    Example:
        >>> import relayml as relay
        >>> load = relay.step("load")
        >>> processing = relay.step("processing", upstream=load)
        >>> processing.upstream
        ('load',)
    """
    if isinstance(upstream, str | Step):
        upstream = [upstream]
    names = tuple(u.name if isinstance(u, Step) else check_name("step", u) for u in upstream)
    if len(set(names)) != len(names):
        raise ConfigError(f"step {name!r} lists an upstream step twice: {names}")
    return Step(check_name("step", name), names, doc=doc)


@dataclass
class Pipeline:
    """The steps a project's module declares, and the digest of that module's code.

    Example:
        >>> p = Pipeline.from_steps([step("load"), step("training", upstream="load")])
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
        >>> pipeline = load_pipeline(Path("examples/fraud"), "steps")  # doctest: +SKIP
        >>> pipeline.order  # doctest: +SKIP
        ['load', 'processing', 'training']
    """
    path = _module_path(root, module)
    mod = sys.modules.get(module)
    if mod is not None and _same_file(mod, path):
        return _collect(mod, path)
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
    pipeline = _collect(mod, path)
    if use_cache and pipeline.module_digest == before:  # unchanged while it was imported
        _write_cache(root, module, pipeline)
    return pipeline


def _forget_foreign_modules(root: Path) -> None:
    """Drop imported modules named like a module of ``root`` but loaded from elsewhere.

    Two projects used in one process (``relay.run(..., project=...)``) may both have a
    ``features.py``; the steps module of each must import its own, not the one cached in
    ``sys.modules`` by the other.
    """
    here = root.resolve()
    names = {p.stem for p in root.glob("*.py")}
    names |= {p.parent.name for p in root.glob("*/__init__.py")}
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
                    "type": _SCALARS[p.type],
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
        "files": files,
        "steps": steps,
    }


def _local_modules(root: Path, module_file: Path) -> dict[str, str]:
    """``{path: sha256}`` of the imported Python files inside the project folder."""
    top = root.resolve()
    out: dict[str, str] = {}
    for mod in list(sys.modules.values()):
        name = getattr(mod, "__file__", None)
        if not name or not name.endswith(".py"):
            continue
        path = Path(name).resolve()
        if path == module_file.resolve() or not path.is_relative_to(top):
            continue
        if {"site-packages", "dist-packages"} & set(path.parts) or not path.is_file():
            continue  # a virtual environment inside the project
        out[str(path)] = _file_digest(path)
    return out


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
            if _file_digest(Path(other)) != want:
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


class _Deferred:
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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.step}/{self.variant} from the pipeline cache>"
