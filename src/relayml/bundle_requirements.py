"""What a bundle needs to load: its exact pip requirements and the project code it ships.

:func:`bundle_needs` walks the fitted objects of a bundle (estimators, their attributes,
containers, functions and their closures) and collects the modules their classes and
functions come from. Each module is then one of:

- the standard library: nothing to do;
- provided by an installed distribution (``importlib.metadata.packages_distributions()``):
  a requirement pinned to the installed version (``scikit-learn==1.9.1``);
- a project file (a module of the project, e.g. ``features.py`` beside ``steps.py``): shipped
  with the bundle *as it is*, after checking that it does not import relayml; its own imports
  are followed the same way;
- relayml itself: refused, since a bundle must load where relayml is not installed.

A lambda, a function defined inside another function, or one of the running script
(``__main__``) has no importable name: it is refused with an error naming the object.

This module imports neither MLflow nor relayml's runtime: it is pure introspection.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as metadata
import importlib.util
import re
import sys
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayml.errors import BundleError

__all__ = ["BundleNeeds", "bundle_needs", "distribution_closure", "provided_modules"]

_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), range, slice)
_FIX = (
    "move it to a module of the project that does not import relayml (e.g. features.py beside "
    "steps.py) and import it from there"
)


@dataclass(frozen=True)
class BundleNeeds:
    """What a bundle needs where it is loaded.

    Attributes:
        requirements: pinned pip requirements, ``mlflow`` first, then sorted by name.
        code_paths: project files or package folders shipped with the bundle.
        modules: top-level names of the shipped modules (``["features"]``).
    """

    requirements: list[str]
    code_paths: list[str]
    modules: list[str]

    @property
    def distributions(self) -> list[str]:
        """The distribution names of :attr:`requirements` (``["mlflow", "numpy", ...]``)."""
        return [r.split("==")[0] for r in self.requirements]


def bundle_needs(roots: dict[str, Any], *, always: Iterable[str] = ("mlflow",)) -> BundleNeeds:
    """The pinned requirements and project code of the objects a bundle stores.

    Args:
        roots: the stored objects by a name used in error messages
            (``{"processor": ct, "model": lr}``).
        always: distributions the bundle needs whatever it holds (MLflow, the serializer).

    Returns:
        A :class:`BundleNeeds`.

    Raises:
        BundleError: an object without an importable name (lambda, local function,
            ``__main__``), or one whose module imports relayml or is relayml.

    Example:
        >>> from sklearn.preprocessing import StandardScaler
        >>> needs = bundle_needs({"processor": StandardScaler()})
        >>> needs.distributions[:1], any(r.startswith("scikit-learn==") for r in needs.requirements)
        (['mlflow'], True)
    """
    providers = _providers()
    pinned: dict[str, str] = {}
    for dist in always:
        pinned[_normalize(dist)] = f"{dist}=={metadata.version(dist)}"
    shipped: dict[str, Path] = {}
    queue = list(_walk(roots))
    done: set[str] = set()
    while queue:
        module, where = queue.pop(0)
        top = module.partition(".")[0]
        if not top or top in done or top in sys.stdlib_module_names or top == "__future__":
            continue
        done.add(top)
        if top == "relayml":
            raise BundleError(
                f"{where} comes from relayml ({module}); a bundle must load where relayml is "
                f"not installed: use a scikit-learn object or a function of your own, and "
                f"{_FIX}"
            )
        if top in providers:
            for dist in _distributions(top, providers[top]):
                pinned.setdefault(_normalize(dist), f"{dist}=={metadata.version(dist)}")
            continue
        path = _module_path(top)
        if path is None:
            continue  # an optional import of a helper module, not installed here
        shipped[top] = path
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            imports = _imports(file)
            if "relayml" in imports:
                raise BundleError(
                    f"{where} is defined in module {module!r} ({file}), which imports relayml; "
                    f"a bundle ships that module and must load where relayml is not installed: "
                    f"{_FIX}"
                )
            queue.extend((name, f"module {module!r} (imported by {file.name})") for name in imports)
    first = _normalize("mlflow")
    requirements = [pinned[first]] if first in pinned else []
    requirements += sorted((r for k, r in pinned.items() if k != first), key=str.lower)
    return BundleNeeds(
        requirements=requirements,
        code_paths=[str(p) for p in shipped.values()],
        modules=sorted(shipped),
    )


@functools.cache
def _closure(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(distribution_closure(names))


def distribution_closure(names: Iterable[str]) -> set[str]:
    """Installed distributions ``names`` depend on, themselves included (normalized names).

    Markers are evaluated for this interpreter; extras are followed when a requirement asks
    for them (``uvicorn[standard]``). Requirements not installed here are skipped.

    Example:
        >>> "numpy" in distribution_closure(["scikit-learn"])
        True
    """
    from packaging.requirements import InvalidRequirement, Requirement

    seen: set[str] = set()
    queue: list[tuple[str, frozenset[str]]] = [(n, frozenset()) for n in names]
    visited: set[tuple[str, frozenset[str]]] = set()
    while queue:
        name, extras = queue.pop()
        if (_normalize(name), extras) in visited:
            continue
        visited.add((_normalize(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(_normalize(name))
        for line in dist.requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            wanted = req.marker is None or any(
                req.marker.evaluate({"extra": e}) for e in {"", *extras}
            )
            if wanted:
                queue.append((req.name, frozenset(req.extras)))
    return seen


def provided_modules(distributions: set[str]) -> set[str]:
    """Top-level module names the (normalized) ``distributions`` provide."""
    return {
        module
        for module, dists in _providers().items()
        if any(_normalize(d) in distributions for d in dists)
    }


# --------------------------------------------------------------------------------------------
# the walk


def _walk(roots: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(module, where)`` for every class and function the objects reference."""
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(obj, name) for name, obj in reversed(roots.items())]
    while stack:
        obj, where = stack.pop()
        if isinstance(obj, _ATOMS) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            yield obj.__name__, where
        elif isinstance(obj, type):
            _check_named(obj, where)
            yield obj.__module__, f"{where} (class {obj.__qualname__})"
        elif isinstance(obj, types.FunctionType):
            _check_named(obj, where)
            yield obj.__module__, f"{where} (function {obj.__qualname__})"
            cells = [c.cell_contents for c in obj.__closure__ or () if _filled(c)]
            stack += [(v, f"{where} (closure)") for v in cells]
            stack += [(v, f"{where} (default)") for v in obj.__defaults__ or ()]
            stack += [(v, f"{where} (default)") for v in (obj.__kwdefaults__ or {}).values()]
        elif isinstance(obj, types.MethodType):
            stack += [(obj.__func__, where), (obj.__self__, where)]
        elif isinstance(obj, types.BuiltinFunctionType):
            if isinstance(getattr(obj, "__module__", None), str):
                yield obj.__module__, where
            if getattr(obj, "__self__", None) is not None:
                stack.append((obj.__self__, where))
        else:
            stack.append((type(obj), where))
            stack += reversed(list(_children(obj, where)))


def _children(obj: Any, where: str) -> Iterator[tuple[Any, str]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, where
            yield v, f"{where}[{k!r}]"
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            yield v, f"{where}[{i}]"
    elif isinstance(obj, functools.partial):
        yield obj.func, where
        yield obj.args, where
        yield obj.keywords, where
    elif type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray":
        if obj.dtype.hasobject:
            for i, v in enumerate(obj.ravel().tolist()):
                yield v, f"{where}[{i}]"
    elif type(obj).__module__.startswith("pandas."):
        return  # frames and series: their type (pandas) is enough
    else:
        for name, value in (getattr(obj, "__dict__", None) or {}).items():
            yield value, f"{where}.{name}"
        for klass in type(obj).__mro__:
            for name in _slots(klass):
                if hasattr(obj, name):
                    yield getattr(obj, name), f"{where}.{name}"


def _slots(klass: type) -> list[str]:
    slots = klass.__dict__.get("__slots__", ())
    names = [slots] if isinstance(slots, str) else list(slots)
    return [n for n in names if n not in ("__dict__", "__weakref__")]


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _check_named(obj: type | types.FunctionType, where: str) -> None:
    """Refuse a class or function that cannot be imported by its name where the bundle loads."""
    name, qualname = obj.__name__, obj.__qualname__
    module = obj.__module__
    kind = "class" if isinstance(obj, type) else "function"
    if name == "<lambda>":
        raise BundleError(
            f"{where} is a lambda (in module {module!r}); a bundle stores functions by name and "
            f"a lambda has none: define it with `def` (e.g. `def feature_names(transformer, "
            f"names): ...`) at the top level of a module that does not import relayml "
            f"(e.g. features.py beside steps.py), import it from there, and pass that name"
        )
    if "<locals>" in qualname:
        raise BundleError(
            f"{where} is the {kind} {qualname!r}, defined inside another function in module "
            f"{module!r}; a bundle stores it by name, which only works at a module's top "
            f"level: {_FIX}"
        )
    if module == "__main__":
        raise BundleError(
            f"{where} is the {kind} {qualname!r} of the running script (__main__), which "
            f"cannot be imported where the bundle loads: {_FIX}"
        )


# --------------------------------------------------------------------------------------------
# modules, files and distributions


@functools.cache
def _providers() -> dict[str, list[str]]:
    """``{top-level module: [distributions]}``, as ``packages_distributions()`` says.

    The same mapping, computed the quick way: ``top_level.txt`` when a distribution has one,
    else the first component of each path of its ``RECORD`` (read as text, no file checks).
    Cached for the process: installing packages while relay runs is not supported.
    """
    found: dict[str, list[str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        declared = (dist.read_text("top_level.txt") or "").split()
        tops = declared or _record_tops(dist.read_text("RECORD") or "")
        for top in dict.fromkeys(tops):
            found.setdefault(top, []).append(name)
    return found


def _record_tops(record: str) -> list[str]:
    """Top-level module names of a ``RECORD``: packages, modules, extension modules."""
    tops = []
    for line in record.splitlines():
        first, sep, _ = line.split(",", 1)[0].partition("/")
        name = first if sep else first.split(".", 1)[0]
        if name.isidentifier() and name != "__pycache__":
            tops.append(name)
    return tops


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions(top: str, dists: list[str]) -> list[str]:
    """The distribution(s) to require for top-level module ``top``.

    Several distributions may share a name (``mlflow`` is in ``mlflow``, ``mlflow-skinny`` and
    ``mlflow-tracing``): the one named like the module wins; otherwise all are required.
    """
    unique = list(dict.fromkeys(dists))
    same = [d for d in unique if _normalize(d) == _normalize(top)]
    return same[:1] or unique


def _module_path(top: str) -> Path | None:
    """The file (or package folder) of a top-level module that no distribution provides."""
    module = sys.modules.get(top)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    path = Path(origin)
    return path.parent if path.name == "__init__.py" else path


def _imports(file: Path) -> set[str]:
    """Top-level names of the absolute imports in a Python file."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names
