"""The MLflow backend store itself: its schema, relay's indexes on it, and how values are
written (quoting, redaction, length limits).

Part of the MLflow boundary (:mod:`relayml.store`): the only code that creates an
``MlflowClient`` (:func:`open_client`).

Example:
    >>> quote("it's")
    "'it\\\\'s'"
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.errors import ConfigError
from relayml.redaction import redact
from relayml.usercache import cache_file, is_private, write_private

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "EXPERIMENT_KIND",
    "PAGE",
    "ensure_indexes",
    "experiment_description",
    "open_client",
    "prepare_backend",
    "purge_deleted",
    "quote",
]

PAGE = 1000
DUPLICATE_KEY = ("UNIQUE constraint failed", "duplicate key value", "IntegrityError")


def quote(value: str) -> str:
    """Quote a value for an MLflow filter string.

    Example:
        >>> quote("it's")
        "'it\\\\'s'"
    """
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


EXPERIMENT_KIND = "custom_model_development"


def experiment_description(project: str, step: str) -> dict[str, str]:
    """The tags that make MLflow's UI treat a step's experiment as model development.

    MLflow opens an experiment without ``mlflow.experimentKind`` on its GenAI pages (traces,
    token usage); relay's steps are classic model development, and the description says what
    the experiment holds.

    Example:
        >>> experiment_description("fraud", "training")["mlflow.experimentKind"]
        'custom_model_development'
    """
    what = {
        "chains": "one record run per `relay chain`: the runs of each step it used",
        "snapshots": "the bytes of load snapshots, one run per data digest",
        "refresh": "one decision run per `relay refresh`: champion, challengers, the vote",
    }.get(step, f"the runs of step `{step}`, one per variant run, keyed `{step}/VARIANT@TIME`")
    note = (
        f"relayml project **{project}**: {what}. Lineage, chains and comparisons: `relay ui`, "
        "then the relay pages at [/relay/](/relay/)."
    )
    return {"mlflow.experimentKind": EXPERIMENT_KIND, "mlflow.note.content": note}


_INDEXES = {
    # Equality lookups on tags (run keys, fingerprints, upstream ids, variants): MLflow indexes
    # tags by run only. PostgreSQL's btree rows cannot hold long tag values: a hash index there.
    "sqlite": [
        "CREATE INDEX IF NOT EXISTS relay_tags_key_value ON tags (key, value)",
        "CREATE INDEX IF NOT EXISTS relay_runs_experiment_start"
        " ON runs (experiment_id, start_time)",
    ],
    "postgresql": [
        "CREATE INDEX IF NOT EXISTS relay_tags_value_hash ON tags USING hash (value)",
        "CREATE INDEX IF NOT EXISTS relay_runs_experiment_start"
        " ON runs (experiment_id, start_time)",
    ],
}
_INDEXED: set[str] = set()


def ensure_indexes(uri: str) -> None:
    """Add relayml's lookup indexes to an MLflow tracking database (idempotent).

    MLflow indexes tags by run only, so a search by tag value scans every tag of that key.
    relayml searches by tag equality constantly (run keys, fingerprints, upstream ids), so it
    adds an index on tag values and one on runs by experiment and start time. They are plain
    indexes beside MLflow's schema: MLflow's migrations and queries are unaffected.
    ``relay server`` calls this for its backend store.

    Example:
        >>> ensure_indexes("sqlite:////tmp/relay-doc.db")  # doctest: +SKIP
    """
    if uri in _INDEXED:
        return
    import sqlalchemy as sa

    dialect = "sqlite" if uri.startswith("sqlite") else "postgresql"
    engine = sa.create_engine(uri)
    try:
        for statement in _INDEXES[dialect]:
            try:
                with engine.begin() as con:
                    con.execute(sa.text(statement))
            except sa.exc.SQLAlchemyError:
                pass  # a concurrent creator won the race, or no permission: searches still work
    finally:
        engine.dispose()
    _INDEXED.add(uri)


def prepare_backend(uri: str) -> None:
    """Create (or migrate) MLflow's schema in a backend database, then add relay's indexes.

    ``relay server`` calls this before it starts MLflow's server on the backend; other URIs
    (a folder, a server) are left alone.

    Example:
        >>> prepare_backend("sqlite:////tmp/relay-doc-backend.db")  # doctest: +SKIP
    """
    if not uri.startswith(("sqlite:", "postgresql")):
        return
    open_client(uri).search_experiments(max_results=1)
    ensure_indexes(uri)


def open_client(uri: str) -> MlflowClient:
    """An MLflow client of ``uri``; a scheme MLflow has no store for is the user's error."""
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except UnsupportedModelRegistryStoreURIException:
        raise ConfigError(
            f"tracking URI {redact(uri)!r} has a scheme MLflow cannot store runs in; use "
            "sqlite:///PATH, postgresql+psycopg://..., http(s)://SERVER or a folder (set "
            "[tracking] uri in relay.toml, or RELAY_TRACKING_URI)"
        ) from None


# Tags whose values relay computes (names, keys, run ids, digests, counts, times, manifests):
# never a secret, and masking a secret that happens to equal a step name or part of a digest
# would break lookups. Every other tag (errors, sources, notes, MLflow's and the user's) is
# redacted.
_IDENTITY_TAGS = (
    tag.PROJECT, tag.STEP, tag.VARIANT, tag.KEY, tag.TIME,
    tag.HEARTBEAT, tag.CODE, tag.PARAMS, tag.FINGERPRINT, tag.GIT,
    tag.UPSTREAM, tag.DATA, tag.AS_OF, tag.PROVENANCE, tag.DIGEST,
    tag.ROWS, tag.BYTES, tag.OUTPUTS, tag.MODEL, tag.RUN_ID,
    tag.RETRIEVAL_TIME, tag.REPRODUCES, tag.STALE, tag.WITHDRAWN,
    tag.SNAPSHOT, tag.CHAIN, tag.REFRESH, "mlflow.user",
    "mlflow.source.git.commit",
)  # fmt: skip
_FREE_TEXT_TAGS = (tag.CHAIN_REQUEST, tag.REFRESH_DECISION)


def tag_value(key: str, value: Any) -> str:
    """A tag's value as stored: secrets redacted, except in relay's identity tags.

    Example:
        >>> tag_value("relay.step", "training")
        'training'
    """
    text = str(value)
    identity = key.startswith(_IDENTITY_TAGS) and not key.endswith(_FREE_TEXT_TAGS)
    return text if identity and not key.endswith(".source") else redact(text)


def purge_deleted(backend_uri: str, older_than: float, *, tracking_uri: str) -> None:
    """Purge runs (and logged models) deleted more than ``older_than`` seconds ago from a
    tracking server's backend store: MLflow's own ``mlflow gc``, called in this process so
    that the backend URL (with its password) never appears on a command line.

    Artifacts still there (runs deleted in MLflow's UI) are removed through the server at
    ``tracking_uri`` (proxied artifacts).

    Example:
        >>> purge_deleted("postgresql+psycopg://u@db/mlflow", 86400,
        ...               tracking_uri="http://127.0.0.1:5000")  # doctest: +SKIP
    """
    from mlflow.cli import gc

    args = ["--backend-store-uri", backend_uri, "--older-than", f"{int(older_than)}s"]
    gc.main(args=[*args, "--tracking-uri", tracking_uri], standalone_mode=False)


def param_value(value: Any) -> str:
    """A param's value as stored: secrets redacted, cut to MLflow's 6,000 characters.

    Example:
        >>> param_value(None), len(param_value("x" * 7000))
        ('None', 6000)
    """
    text = "None" if value is None else redact(str(value))
    return text if len(text) <= 6000 else text[:5997] + "..."


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` between processes (no-op where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: MLflow's own retries are all there is
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def seed_sqlite(path: Path) -> None:
    """Start a new SQLite store as a copy of an empty one MLflow migrated, if it is new.

    MLflow creates a store by running its whole migration chain (more than fifty alembic
    revisions: seconds of a new project's first run). relay keeps one empty store per MLflow
    version in the user's cache (:mod:`relayml.usercache`), migrated by MLflow itself, and
    copies it; MLflow then only checks the schema's revision and adds its default experiment.
    A cached store is used only when it is private to the user and holds a migrated schema
    without experiments; else MLflow migrates as before.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "mlflow.db"
        >>> seed_sqlite(path)
        >>> path.stat().st_size > 0
        True
    """
    if path.exists():
        return
    template = _schema_template()
    if template is None:
        return
    staged = path.with_name(f".{path.name}.{os.getpid()}.seed")
    try:
        shutil.copyfile(template, staged)
        os.replace(staged, path)
    except OSError:
        staged.unlink(missing_ok=True)


def _schema_template() -> Path | None:
    import mlflow

    cached = cache_file(f"mlflow-{mlflow.__version__}-sqlite-schema.db")
    if cached is None:
        return None
    if not _usable(cached):
        write_private(cached, _migrate)
    return cached if _usable(cached) else None


def _migrate(path: Path) -> None:
    """An empty store at ``path``, migrated by MLflow, without its default experiment."""
    import sqlalchemy as sa

    # private: MLflow has no public call that creates the schema alone (SqlAlchemyStore()
    # adds a default experiment whose artifact location is that of the store it opens)
    from mlflow.store.db.utils import _initialize_tables

    path.unlink(missing_ok=True)
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


def _usable(path: Path) -> bool:
    """A private file holding a migrated MLflow schema with no experiment (read-only look)."""
    if not is_private(path):
        return False
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            version = con.execute("SELECT version_num FROM alembic_version").fetchall()
            experiments = con.execute("SELECT count(*) FROM experiments").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return len(version) == 1 and experiments == 0


def prepare_sqlite(path: Path) -> None:
    """Create the folder and switch the database to WAL so readers never block writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = sqlite3.connect(path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.Error:
        pass  # MLflow reports a real problem with the file itself
