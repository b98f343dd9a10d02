"""``relay.toml`` plus the environment, read once into a frozen :class:`Settings`.

This module reads files and environment variables only; it never talks to MLflow or to a
source database.

Example:
    >>> s = Settings.from_dict({"project": {"name": "demo"}}, root=Path("/tmp/demo"))
    >>> s.tracking_uri
    'sqlite:////tmp/demo/.relay/mlflow.db'
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from relayml import redaction
from relayml.errors import ConfigError

__all__ = ["CONFIG_FILE", "Settings", "Source", "find_root", "load_settings"]

CONFIG_FILE = "relay.toml"


@dataclass(frozen=True)
class Source:
    """A named data source from ``[sources.NAME]``.

    Attributes:
        name: the name used in ``ctx.query(name, ...)``.
        url: a SQLAlchemy URL (without its password when ``password_env`` is set), or None.
        path: a CSV or Parquet file (relative paths are resolved against the project), or None.
        password_env: environment variable holding the database password.
    """

    name: str
    url: str | None = None
    path: Path | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything relayml needs to know about one project.

    Build it with :func:`load_settings`; tests may use :meth:`from_dict`.

    Example:
        >>> s = Settings.from_dict({"project": {"name": "fraud"}}, root=Path("/p"))
        >>> s.experiment("training")
        'fraud/training'
    """

    root: Path
    project: str
    module: str = "steps"
    tracking_uri: str = ""
    artifact_location: str = ""
    timezone: str = "UTC"
    sources: dict[str, Source] = field(default_factory=dict)
    executor: str = "local"
    stale_after: float = 120.0
    allow_pickle: bool = False
    trusted_users: tuple[str, ...] = ()
    reuse_include: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def experiment(self, step: str) -> str:
        """The MLflow experiment name of a step: ``<project>/<step>``."""
        return f"{self.project}/{step}"

    @property
    def zone(self) -> ZoneInfo:
        """The project's time zone, used to interpret dates in references."""
        return ZoneInfo(self.timezone)

    @property
    def is_local_store(self) -> bool:
        """True when the tracking store is a database or folder on this machine (no server)."""
        return not self.tracking_uri.startswith(("http://", "https://", "databricks"))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, root: Path) -> Settings:
        """Build settings from parsed TOML, applying defaults and environment overrides.

        Args:
            data: the parsed ``relay.toml``.
            root: the project folder; relative paths are resolved against it.

        Raises:
            ConfigError: a missing project name, an unknown time zone or a malformed source.
        """
        root = root.resolve()
        project = data.get("project", {})
        name = project.get("name")
        if not name or not isinstance(name, str) or "/" in name:
            raise ConfigError(
                f"{root / CONFIG_FILE}: [project] name must be a non-empty string without '/'"
            )
        tracking = data.get("tracking", {})
        uri = (
            os.environ.get("RELAY_TRACKING_URI")
            or os.environ.get("MLFLOW_TRACKING_URI")
            or tracking.get("uri")
            or "sqlite:///.relay/mlflow.db"
        )
        artifacts = tracking.get("artifacts", ".relay/artifacts")
        tz = project.get("timezone", "UTC")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ConfigError(f"{root / CONFIG_FILE}: unknown time zone {tz!r}") from e
        execution = data.get("execution", {})
        executor = os.environ.get("RELAY_EXECUTOR") or _executor(execution)
        module = project.get("steps", "steps")
        if not isinstance(module, str) or not all(p.isidentifier() for p in module.split(".")):
            raise ConfigError(
                f"{root / CONFIG_FILE}: [project] steps must name the Python module of the "
                f'steps, like "steps" or "pipeline.steps"; got {module!r}'
            )
        return cls(
            root=root,
            project=name,
            module=module,
            tracking_uri=_absolute_uri(uri, root),
            artifact_location=_absolute_artifacts(artifacts, root),
            timezone=tz,
            sources=_sources(data.get("sources", {}), root),
            executor=executor,
            stale_after=float(tracking.get("stale_after", 120.0)),
            **_outputs(data.get("outputs", {})),
            reuse_include=_reuse_include(data.get("reuse", {}), root),
        )


def _reuse_include(raw: Any, root: Path) -> dict[str, tuple[str, ...]]:
    """``[reuse] include`` (every step, under the key "") and ``[reuse.STEP] include``.

    Patterns are globs relative to the project folder, e.g. ``queries/*.sql``.
    """
    where = root / CONFIG_FILE
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: [reuse] must be a table, e.g. include = ["queries/*.sql"]')
    out: dict[str, tuple[str, ...]] = {}
    for name, value in raw.items():
        if name == "include":
            out[""] = _patterns(value, f"{where}: [reuse] include")
        elif isinstance(value, dict) and set(value) == {"include"}:
            out[name] = _patterns(value["include"], f"{where}: [reuse.{name}] include")
        else:
            raise ConfigError(
                f"{where}: [reuse] has {name!r}; expected include = [GLOB, ...] or a table "
                f"[reuse.STEP] with include = [GLOB, ...]"
            )
    return out


def _patterns(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{what} must be a list of glob patterns, got {value!r}")
    for pattern in value:
        if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise ConfigError(
                f"{what}: {pattern!r} leaves the project folder; give a pattern relative to "
                'it, e.g. "queries/*.sql"'
            )
    return tuple(value)


def _executor(execution: dict[str, Any]) -> str:
    backend = execution.get("backend", "local")
    if backend == "local":
        return "local"
    if backend == "dask":
        address = execution.get("scheduler")
        return f"dask://{address.removeprefix('tcp://')}" if address else "dask://local"
    raise ConfigError(f"[execution] backend must be 'local' or 'dask', not {backend!r}")


def _outputs(raw: Any) -> dict[str, Any]:
    """``[outputs]``: ``allow_pickle`` (bool) and ``trusted_users`` (list of user names)."""
    if not isinstance(raw, dict):
        raise ConfigError("[outputs] must be a table")
    allow = raw.get("allow_pickle", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"[outputs] allow_pickle must be true or false, not {allow!r}")
    users = raw.get("trusted_users", [])
    if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
        raise ConfigError(
            f"[outputs] trusted_users must be a list of user names, not {users!r} "
            '(e.g. trusted_users = ["alice", "bob"])'
        )
    return {"allow_pickle": allow, "trusted_users": tuple(users)}


def _absolute_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///`` path absolute against the project root."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(root / uri.removeprefix("sqlite:///"))
    return uri


def _absolute_artifacts(location: str, root: Path) -> str:
    if "://" in location or location.startswith("mlflow-artifacts:"):
        return location
    return (root / location).resolve().as_uri()


def _sources(raw: dict[str, Any], root: Path) -> dict[str, Source]:
    out = {}
    for name, spec in raw.items():
        if isinstance(spec, str):
            spec = {"url": spec} if "://" in spec else {"path": spec}
        if not isinstance(spec, dict) or bool(spec.get("url")) == bool(spec.get("path")):
            raise ConfigError(f"[sources.{name}] needs exactly one of 'url' or 'path'")
        url = spec.get("url")
        if url:
            url = _absolute_uri(url, root)
        path = (root / spec["path"]).resolve() if spec.get("path") else None
        # known from here on: redacted by value from every message, tag, param and artifact
        redaction.remember_url(url)
        redaction.remember(os.environ.get(spec.get("password_env") or "", ""))
        out[name] = Source(name=name, url=url, path=path, password_env=spec.get("password_env"))
    return out


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) with relay.toml.

    Example:
        >>> find_root(Path("data")) == Path.cwd().resolve()
        True
    """
    here = (start or Path.cwd()).resolve()
    env = os.environ.get("RELAY_PROJECT")
    if env and start is None:
        here = Path(env).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise ConfigError(
        f"no {CONFIG_FILE} in {here} or any parent folder; run 'relay init' to create a project"
    )


def load_settings(root: Path | None = None) -> Settings:
    """Read the project's ``relay.toml`` (searching upward from ``root``) into Settings.

    Example:
        >>> settings = load_settings()
        >>> settings.experiment("load"), settings.module, list(settings.sources)
        ('fraud/load', 'steps', ['fraud'])
    """
    folder = find_root(root)
    path = folder / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    return Settings.from_dict(data, root=folder)
