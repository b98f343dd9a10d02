"""Steps and variants: how a project declares its pipeline.

A steps module declares each step once with :func:`step` and registers variants on it with
the ``@step.variant(name)`` decorator. A variant is a plain function; relayml reads its
signature to know what it needs:

* a parameter named ``ctx`` receives the :class:`relayml.runner.Context` of the run;
* a parameter named like an upstream step receives that step's outputs (Python objects);
* every other parameter is a *param*: its type hint and default are what ``-P`` accepts.

There is no module-level registry: :func:`relayml.pipeline.load_pipeline` imports the module
and collects the :class:`Step` objects it defines.

Collecting the steps of a project's module, and the pipeline cache, are in
:mod:`relayml.pipeline`.

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

import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from relayml.checks import Checks
from relayml.errors import ConfigError, UnknownName, UsageError
from relayml.keys import check_name

__all__ = ["REQUIRED", "SCALARS", "Deferred", "Param", "Step", "Variant", "step"]

REQUIRED: Any = inspect.Parameter.empty
SCALARS: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


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
        kind = "|".join(map(repr, self.choices)) if self.choices else SCALARS[self.type]
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
                f"parameter {self.name!r} expects {SCALARS[self.type]}, got {value!r}"
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
        if len(kinds) != 1 or next(iter(kinds)) not in SCALARS:
            raise ConfigError(f"{where}: Literal choices of {p.name!r} must share one scalar type")
        hint = next(iter(kinds))
    if hint not in SCALARS:
        raise ConfigError(
            f"{where}: parameter {p.name!r} has type {hint!r}; params must be bool, int, "
            "float, str, a Literal of them, or Optional of those"
        )
    return Param(p.name, hint, default, choices, optional or default is None)


class Deferred:
    """A variant function that is found only when called (a variant read from the pipeline
    cache: :mod:`relayml.pipeline`). :meth:`Variant.load` calls :meth:`resolve`.

    Example:
        >>> class Later(Deferred):
        ...     def resolve(self):
        ...         return len
        >>> Later().resolve()("abc")
        3
    """

    def resolve(self) -> Callable[..., Any]:
        """The real function."""
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


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
        return self.func.resolve() if isinstance(self.func, Deferred) else self.func

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
