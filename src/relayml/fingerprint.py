"""The code fingerprint of a variant: exactly the code that runs, part by part.

A run is reused only when the code it ran is the code that would run now. That code is, for
one variant:

* ``variant``: the variant function's source;
* ``steps:<file>``: the steps module with every variant function left out (their bodies are
  the other variants' business: a change in ``rf`` does not touch ``logreg``; a helper, a
  constant or an import of the module does);
* ``module:<file>``: every project-local Python module the steps module (outside the other
  variants) or the variant imports, transitively, by its bytes (tracked by git or not);
* ``dist:<name>``: the version of each third-party distribution those modules import;
* ``python``: the Python minor version;
* ``file:<file>``: project files declared in ``relay.toml``'s ``[reuse] include`` (SQL, YAML
  read by a step), by their bytes;
* ``config:sources.<name>``: the ``[sources.NAME]`` sections of ``relay.toml`` that code
  names (``ctx.query("fraud", ...)``, ``ctx.read("fraud")``, or a string assigned to a
  variable, e.g. ``SOURCE = "fraud"``); the rest of ``relay.toml`` is not computation.

Imports are read from the source files with :mod:`ast` (nothing is imported), so the parts
are computed as cheaply from the pipeline cache as from an imported module. Distribution
versions come from the ``.dist-info`` folders on ``sys.path``; the mapping from import names to
distributions is cached for the user (``~/.cache/relayml/dists-<digest of those folder
names>.json``).
The git commit and diff are not parts: they are recorded on each run for reproduction only.

This module reads files; it never imports the project's code nor talks to MLflow.

Example:
    >>> parts = {"variant": "a1", "dist:scikit-learn": "1.9.1", "param": "x"}
    >>> changes(parts, {**parts, "dist:scikit-learn": "1.9.2", "variant": "b2"})
    ['variant source changed', 'scikit-learn 1.9.1 → 1.9.2']
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from relayml.codeinfo import canonical, digest
from relayml.config import Settings
from relayml.usercache import cache_file, read_json, write_private

__all__ = ["SCHEME", "changes", "code_parts", "parts_digest"]

SCHEME = "exact-1"  # tag relay.code.scheme: runs without it were keyed by git commit + diff
NOT_INSTALLED = "(not installed)"
SOURCE_CALLS = {"query", "read"}  # Context methods that take a source's name
_KINDS = ("variant", "steps", "module", "file", "config", "dist", "python")


@dataclass(frozen=True)
class _Analysis:
    """What one Python file imports and which short strings it holds."""

    imports: tuple[tuple[str, tuple[str, ...], int], ...]  # (module, names, level)
    strings: frozenset[str]  # names passed to ctx.query/ctx.read, or assigned as strings
    stripped: str  # the text without variant functions (used for the steps module only)


_STDLIB = frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)
_GRAPHS: dict[tuple[str, str], tuple[tuple[tuple[int, int], ...], str, _Graph]] = {}
_ANALYSED: dict[str, _Analysis] = {}  # by sha256 of the file's bytes (+ "+strip")
_DISTS: dict[str, dict[str, list[list[str]]]] = {}  # by digest of the dist-info listing


def code_parts(
    settings: Settings, step: str, variant_source: str, module_file: Path | None
) -> dict[str, str]:
    """The parts of the code fingerprint of one variant (see the module docstring).

    Args:
        settings: the project (its root bounds what is project-local; its ``[reuse]`` and
            ``[sources]`` sections).
        step: the variant's step (``[reuse.<step>] include`` applies to it).
        variant_source: the variant function's source.
        module_file: the steps module's file, or None when there is none.

    Example:
        >>> s = Settings.from_dict({"project": {"name": "demo"}}, root=Path("/tmp"))
        >>> sorted(code_parts(s, "load", "def f():\\n    import json\\n", None))
        ['python', 'variant']
    """
    root = settings.root  # resolved by Settings
    parts: dict[str, str] = {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "variant": digest(variant_source),
    }
    graph = _Graph({}, set(), set())
    if module_file is not None and module_file.is_file():
        module_file = module_file if module_file.is_absolute() else module_file.resolve()
        stripped, graph = _module_graph(root, module_file)
        parts[f"steps:{_rel(module_file, root)}"] = stripped
    own = _analyse_source(variant_source)
    if own is not None:  # imports inside the variant's own body
        where = module_file or root / "__variant__.py"
        graph = graph.union(_closure(root, [(where, own)], set(graph.files) | {str(where)}))
    prefix = f"{root}{os.sep}"
    for path, sha in graph.files.items():
        parts[f"module:{path.removeprefix(prefix).replace(os.sep, '/')}"] = sha
    if graph.tops:
        dists = _distributions()
        for top in sorted(graph.tops):
            for name, version in dists.get(top) or [[top, NOT_INSTALLED]]:
                parts[f"dist:{name}"] = version
    for included in _included(settings, step):
        parts[f"file:{_rel(included, root)}"] = _sha(included.read_bytes())
    for name, source in settings.sources.items():
        if name in graph.strings:
            rel = source.path and _rel(source.path, root)
            parts[f"config:sources.{name}"] = digest(
                canonical({"url": source.url, "path": rel, "password_env": source.password_env})
            )
    return parts


@dataclass(frozen=True)
class _Graph:
    """The project-local files some code imports (transitively) and what they import."""

    files: dict[str, str]  # {absolute path: sha256 of its bytes}
    tops: set[str]  # third-party top-level import names
    strings: set[str]  # source names the code mentions

    def union(self, other: _Graph) -> _Graph:
        return _Graph(
            {**self.files, **other.files}, self.tops | other.tops, self.strings | other.strings
        )


def _closure(root: Path, start: list[tuple[Path, _Analysis]], seen: set[str]) -> _Graph:
    """Follow the imports of ``start`` through project-local files."""
    graph = _Graph({}, set(), set())
    pending = list(start)
    while pending:
        where, found = pending.pop()
        graph.strings.update(found.strings)
        for mod, names, level in found.imports:
            local, top = _resolve(root, where, mod, names, level)
            if top and top not in _STDLIB:
                graph.tops.add(top)
            for path in local:
                if str(path) not in seen:
                    seen.add(str(path))
                    data = path.read_bytes()
                    graph.files[str(path)] = _sha(data)
                    pending.append((path, _analyse(data)))
    return graph


def _module_graph(root: Path, module_file: Path) -> tuple[str, _Graph]:
    """The steps module's stripped digest and import graph, from a cache when still exact.

    The graph is cached in ``<root>/.relay/cache/code-<sha256 of the module>.json`` with the
    digest of every file in it; it holds while each file has its digest and no third-party
    name it imports has become a project-local module. Within a process, a graph checked once
    is checked again by the files' sizes and modification times.
    """
    data = module_file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    known = _GRAPHS.get((str(module_file), sha))
    if (
        known is not None
        and known[0] == _stamps(list(known[2].files))
        and not any(_shadowed(f"{root}{os.sep}{top}") for top in known[2].tops)
    ):
        return known[1], known[2]
    stripped, graph = _checked_graph(root, module_file, data, sha)
    _GRAPHS[(str(module_file), sha)] = (_stamps(list(graph.files)), stripped, graph)
    return stripped, graph


def _stamps(paths: list[str]) -> tuple[tuple[int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return ()
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


def _checked_graph(root: Path, module_file: Path, data: bytes, sha: str) -> tuple[str, _Graph]:
    cache = root / ".relay" / "cache" / f"code-{sha}.json"
    try:
        raw = json.loads(cache.read_text())
        files = {os.path.join(root, rel): want for rel, want in raw["files"].items()}
        if all(_sha(_read(p)) == want for p, want in files.items()) and not any(
            _shadowed(f"{root}{os.sep}{top}") for top in raw["tops"]
        ):
            return raw["stripped"], _Graph(files, set(raw["tops"]), set(raw["strings"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    steps = _analyse(data, strip=True)
    graph = _closure(root, [(module_file, steps)], {str(module_file)})
    stripped = digest(steps.stripped)
    # paths relative to the root: a project folder copied or moved elsewhere keeps its cache
    # (and its code fingerprints) instead of naming the files of the old folder
    relative = {os.path.relpath(p, root): want for p, want in graph.files.items()}
    _write(cache, {"stripped": stripped, "files": relative,
                   "tops": sorted(graph.tops), "strings": sorted(graph.strings)})  # fmt: skip
    return stripped, graph


def _shadowed(local: str) -> bool:
    """A project-local module now answers an import name that was third-party."""
    return os.path.exists(f"{local}.py") or os.path.isdir(local)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def parts_digest(parts: Mapping[str, str]) -> str:
    """The code fingerprint: a digest of the parts (with the scheme, so old keys never match).

    Example:
        >>> len(parts_digest({"python": "3.11"}))
        32
    """
    return digest(SCHEME, canonical(dict(parts)))


def changes(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """What differs between two runs' code parts, one line per difference.

    Example:
        >>> changes({"module:features.py": "1"}, {"module:features.py": "2"})
        ['features.py changed']
        >>> changes({}, {"dist:numpy": "2.0.0"})
        ['now imports numpy 2.0.0']
    """
    out: list[tuple[int, str]] = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if old == new:
            continue
        kind, _, name = key.partition(":")
        rank = _KINDS.index(kind) if kind in _KINDS else len(_KINDS)
        out.append((rank, _change(kind, name, old, new)))
    return [line for _, line in sorted(out, key=lambda x: x[0])]


def _change(kind: str, name: str, old: str | None, new: str | None) -> str:
    if kind == "variant":
        return "variant source changed"
    if kind == "python":
        return f"Python {old} → {new}"
    if kind == "steps":
        return f"{name} changed (outside the variant functions)"
    if kind == "dist":
        if old is None:
            return f"now imports {name} {new}"
        if new is None:
            return f"no longer imports {name}"
        return f"{name} {old} → {new}"
    if kind == "config":
        section = f"relay.toml [{name}]"
        if old is None or new is None:
            return f"{section} {'now used' if old is None else 'no longer used'}"
        return f"{section} changed"
    if old is None:
        return f"{name} is new" if kind == "file" else f"{name} is now imported"
    if new is None:
        return f"{name} is gone" if kind == "file" else f"{name} is no longer imported"
    return f"{name} changed"


# -- reading Python files ------------------------------------------------------------------------


def _analyse(data: bytes, *, strip: bool = False) -> _Analysis:
    key = hashlib.sha256(data).hexdigest() + ("+strip" if strip else "")
    found = _ANALYSED.get(key)
    if found is None:
        text = data.decode("utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:  # the import fails anyway; hash the bytes as they are
            return _Analysis((), frozenset(), text)
        found = _ANALYSED[key] = _walk(tree, text if strip else None)
    return found


def _analyse_source(source: str) -> _Analysis | None:
    if not source.strip():
        return None
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:  # e.g. the source of a lambda cut out of a line
        return None
    return _walk(tree, None)


def _walk(tree: ast.Module, text: str | None) -> _Analysis:
    """Imports and strings of a module; with ``text``, the text without variant functions."""
    imports: list[tuple[str, tuple[str, ...], int]] = []
    strings: set[str] = set()
    cut: list[tuple[int, int]] = []
    for stmt in tree.body:
        if text is not None and _is_variant(stmt):
            first = min([d.lineno for d in stmt.decorator_list] + [stmt.lineno])  # type: ignore[attr-defined]
            cut.append((first, stmt.end_lineno or stmt.lineno))
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Import):
                imports.extend((a.name, (), 0) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                names = tuple(a.name for a in node.names)
                imports.append((node.module or "", names, node.level))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in SOURCE_CALLS:  # ctx.query("fraud", ...), ctx.read(...)
                    strings.update(_strings(node.args[:1]))
            elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                strings.update(_strings([node.value]))  # SOURCE = "fraud"
    stripped = ""
    if text is not None:
        lines = text.splitlines()
        for first, last in reversed(cut):
            del lines[first - 1 : last]
        stripped = "\n".join(line for line in lines if line.strip())  # blank lines do nothing
    return _Analysis(tuple(imports), frozenset(strings), stripped)


def _strings(nodes: Iterable[ast.expr]) -> set[str]:
    return {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _is_variant(stmt: ast.stmt) -> bool:
    """A function decorated with ``<step>.variant(...)``."""
    if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "variant"
        for d in stmt.decorator_list
    )


def _resolve(
    root: Path, where: Path, module: str, names: tuple[str, ...], level: int
) -> tuple[list[Path], str | None]:
    """The project-local files an import executes, or the top-level name it imports."""
    if level:
        base = where.parent
        for _ in range(level - 1):
            base = base.parent
        if not base.is_relative_to(root):
            return [], None
    else:
        top = module.split(".", 1)[0]
        if not ((root / f"{top}.py").is_file() or (root / top).is_dir()):
            return [], top
        base = root
    parts = [p for p in module.split(".") if p]
    files, here = _module_files(base, parts)
    if here is not None:  # a package: the names may be submodules
        for name in names:
            files += _module_files(here, [name])[0]
    return [f for f in files if _is_local(f, root)], None


def _module_files(base: Path, parts: list[str]) -> tuple[list[Path], Path | None]:
    """Files run by importing ``base/<parts>``, and the package folder it ends in (or None)."""
    files: list[Path] = []
    here = base
    if (here / "__init__.py").is_file() and not parts:
        files.append((here / "__init__.py").resolve())
    for part in parts:
        if (here / part / "__init__.py").is_file():
            here = here / part
            files.append((here / "__init__.py").resolve())
        elif (here / f"{part}.py").is_file():
            files.append((here / f"{part}.py").resolve())
            return files, None
        elif (here / part).is_dir():  # a namespace package
            here = here / part
        else:
            return files, None
    return files, here


def _is_local(path: Path, root: Path) -> bool:
    return path.is_relative_to(root) and not {"site-packages", "dist-packages"} & set(path.parts)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()  # paths here are resolved already
    except ValueError:
        return path.as_posix()


# -- included files ------------------------------------------------------------------------------


def _included(settings: Settings, step: str) -> list[Path]:
    root = settings.root.resolve()
    patterns = [*settings.reuse_include.get("", ()), *settings.reuse_include.get(step, ())]
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p.resolve() for p in root.glob(pattern) if p.is_file())
    return sorted(p for p in found if p.is_relative_to(root))


# -- distributions -------------------------------------------------------------------------------


def _distributions() -> dict[str, list[list[str]]]:
    """``{import name: [[distribution, version], ...]}`` of the environment (cached).

    The cache, in the user's cache folder (:mod:`relayml.usercache`: every project of the
    environment shares it), is keyed by the names of the ``.dist-info``/``.egg-info`` folders
    on ``sys.path`` (a folder's name carries its version), so installing, removing or upgrading
    anything makes a new mapping.
    """
    key = _listing_digest(tuple(sys.path))
    found = _DISTS.get(key)
    if found is not None:
        return found
    cache = cache_file(f"dists-{key}.json")
    cached = read_json(cache)
    if isinstance(cached, dict):
        found = cached
    else:
        found = _scan_distributions()
        write_private(cache, json.dumps(found, sort_keys=True).encode())
    _DISTS[key] = found
    return found


_LISTINGS: dict[tuple[str, ...], tuple[tuple[int, ...], str]] = {}


def _listing_digest(paths: tuple[str, ...]) -> str:
    """A digest of the distribution folders on ``paths``, listed again when a folder changed."""
    stamps = []
    for entry in paths:
        try:
            stamps.append(os.stat(entry or ".").st_mtime_ns)
        except OSError:
            stamps.append(0)
    known = _LISTINGS.get(paths)
    if known is not None and known[0] == tuple(stamps):
        return known[1]
    key = digest(*sorted(_dist_folders(paths)))
    _LISTINGS[paths] = (tuple(stamps), key)
    return key


def _dist_folders(paths: Iterable[str]) -> Iterable[str]:
    for entry in paths:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):  # by name only: any process of this environment
                yield name
            elif name.endswith(".egg-info"):  # often without a version in its name
                try:
                    mtime = os.stat(os.path.join(entry or ".", name)).st_mtime_ns
                except OSError:
                    continue
                yield f"{name}@{mtime}"


def _scan_distributions() -> dict[str, list[list[str]]]:
    """Read every distribution's top-level import names (slow: done once per environment)."""
    from importlib.metadata import distributions

    out: dict[str, list[list[str]]] = {}
    named: set[str] = set()
    for dist in distributions():
        name = dist.metadata["Name"]
        if not name or name.lower() in named:  # shadowed by one earlier on sys.path
            continue
        named.add(name.lower())
        text = dist.read_text("top_level.txt")
        if text:
            tops = {t.strip() for t in text.split() if t.strip()}
        else:
            tops = {
                f.parts[0].removesuffix(".py")
                for f in dist.files or ()
                if f.parts
                and not f.parts[0].endswith((".dist-info", ".egg-info", ".pth"))
                and f.parts[0] != ".."
                and (len(f.parts) > 1 or f.parts[0].endswith(".py"))
            }
        for top in tops:
            out.setdefault(top, []).append([name, dist.version])
    for entries in out.values():
        entries.sort()
    return out


def _write(path: Path, data: Mapping[str, object]) -> None:
    """Best effort: a read-only project folder only makes the next process scan again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        staged.write_text(json.dumps(data, sort_keys=True))
        staged.replace(path)
    except OSError:
        return
