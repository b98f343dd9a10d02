"""The vocabulary relayml writes into MLflow: every tag name and the internal experiments.

Every tag lives under ``relay.`` so the MLflow UI and ``MlflowClient`` show them together and
nothing of MLflow's own is touched. Modules name tags through these constants, never as string
literals; ``docs/ARCHITECTURE.md`` carries the table :func:`table` generates (a test keeps the
two in sync).

Example:
    >>> from relayml import tags
    >>> tags.KEY
    'relay.key'
    >>> tags.upstream("load"), tags.upstream_key("load")
    ('relay.upstream.load', 'relay.upstream.load.key')
    >>> tags.snapshot("fraud", "digest")
    'relay.snapshot.fraud.digest'
    >>> tags.is_run_id("0123456789abcdef0123456789abcdef")
    True
"""

from __future__ import annotations

import re

PREFIX = "relay."

# -- identity of a step run --------------------------------------------------------------------
PROJECT = "relay.project"
STEP = "relay.step"
VARIANT = "relay.variant"
KEY = "relay.key"
TIME = "relay.time"
HEARTBEAT = "relay.heartbeat"
RUN_ID = "relay.run_id"

# -- what a run used and is -------------------------------------------------------------------
UPSTREAM = "relay.upstream."
CODE = "relay.code"
CODE_SCHEME = "relay.code.scheme"
CODE_PARTS = "relay.code.parts"
PARAMS = "relay.params"
FINGERPRINT = "relay.fingerprint"
GIT = "relay.git."
GIT_COMMIT = "relay.git.commit"
GIT_DIRTY = "relay.git.dirty"
PROVENANCE = "relay.provenance."
AS_OF = "relay.as_of"
RETRIEVAL_TIME = "relay.retrieval_time"

# -- data versions ----------------------------------------------------------------------------
DATA = "relay.data"
DATA_KEY = "relay.data.key"
DATA_KEYS = "relay.data.keys"
DATA_PARTS = "relay.data.parts"
SNAPSHOT = "relay.snapshot."
DIGEST = "relay.digest"
ROWS = "relay.rows"
BYTES = "relay.bytes"
CHECKS = "relay.checks"

# -- results and states -----------------------------------------------------------------------
OUTPUTS = "relay.outputs"
MODEL = "relay.model"
ERROR = "relay.error"
EXIT_CODE = "relay.exit_code"
WITHDRAWN = "relay.withdrawn"
WITHDRAWN_KEY = "relay.withdrawn.key"
STALE = "relay.stale"
REPRODUCES = "relay.reproduces"

# -- chain records (experiment ``<project>/chains``) ------------------------------------------
CHAIN = "relay.chain."
CHAIN_ID = "relay.chain.id"
CHAIN_REQUEST = "relay.chain.request"
CHAIN_STEPS = "relay.chain.steps"
CHAIN_RECORD = "relay.chain.record"

# -- refresh decisions (experiment ``<project>/refresh``) -------------------------------------
REFRESH = "relay.refresh."
REFRESH_DECISION = "relay.refresh.decision"
REFRESH_WINNER = "relay.refresh.winner"
REFRESH_METRIC = "relay.refresh.metric"
REFRESH_LOWER_IS_BETTER = "relay.refresh.lower_is_better"
REFRESH_MARGIN = "relay.refresh.margin"
REFRESH_ALIAS = "relay.refresh.alias"
REFRESH_CHAMPION = "relay.refresh.champion"
REFRESH_CHAMPION_VERSION = "relay.refresh.champion.version"
REFRESH_VERSION = "relay.refresh.version"
REFRESH_SERVED = "relay.refresh.served"
REFRESH_DRIFT = "relay.refresh.drift"
REFRESH_DIFF = "relay.refresh.diff"

# -- internal experiments (``<project>/<name>``), never steps a user declares -------------------
CHAINS_EXPERIMENT = "chains"
SNAPSHOTS_EXPERIMENT = "snapshots"
REFRESH_EXPERIMENT = "refresh"
INTERNAL_STEPS = (CHAINS_EXPERIMENT, SNAPSHOTS_EXPERIMENT, REFRESH_EXPERIMENT)

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def upstream(step: str) -> str:
    """The tag holding the run id of the ``step`` run a run used.

    Example:
        >>> upstream("processing")
        'relay.upstream.processing'
    """
    return f"{UPSTREAM}{step}"


def upstream_key(step: str) -> str:
    """The tag holding the human key of the ``step`` run a run used.

    Example:
        >>> upstream_key("processing")
        'relay.upstream.processing.key'
    """
    return f"{UPSTREAM}{step}.key"


def snapshot(name: str, field: str = "") -> str:
    """The tag of snapshot ``name`` (its holder run id), or one of its fields.

    Example:
        >>> snapshot("fraud"), snapshot("fraud", "rows")
        ('relay.snapshot.fraud', 'relay.snapshot.fraud.rows')
    """
    return f"{SNAPSHOT}{name}.{field}" if field else f"{SNAPSHOT}{name}"


def chain_step(step: str, field: str = "") -> str:
    """The tag of a chain record naming its ``step`` run (run id), or its ``key``/``status``.

    Example:
        >>> chain_step("training", "key")
        'relay.chain.training.key'
    """
    return f"{CHAIN}{step}.{field}" if field else f"{CHAIN}{step}"


def refresh_metric(alias: str) -> str:
    """The tag of a refresh decision holding the metric of the run behind ``alias``.

    Example:
        >>> refresh_metric("champion")
        'relay.refresh.metric.champion'
    """
    return f"{REFRESH_METRIC}.{alias}"


def refresh_run(index: int) -> str:
    """The tag of a refresh decision naming its ``index``-th challenger run.

    Example:
        >>> refresh_run(0)
        'relay.refresh.run.0'
    """
    return f"{REFRESH}run.{index}"


def provenance(name: str) -> str:
    """The tag of one provenance fact (e.g. the host) of a run.

    Example:
        >>> provenance("host")
        'relay.provenance.host'
    """
    return f"{PROVENANCE}{name}"


def is_run_id(text: str) -> bool:
    """Whether ``text`` is an MLflow run id (32 lower-case hex digits).

    Example:
        >>> is_run_id("processing/plain@latest")
        False
    """
    return bool(_RUN_ID.match(text))


# The table of docs/ARCHITECTURE.md: (tag, meaning), generated by :func:`table`.
MEANINGS: tuple[tuple[str, str], ...] = (
    (PROJECT, "project name (`relay.toml`)"),
    (STEP, "step name; the experiment is `<project>/<step>`"),
    (VARIANT, "variant name"),
    (KEY, "human key `<step>/<variant>@YYYYMMDDHHMMSS` (UTC)"),
    (TIME, "the key's time, UTC `YYYYMMDDHHMMSS`"),
    (HEARTBEAT, "epoch seconds, stamped while the run works"),
    (RUN_ID, "on a registered model version: the training run behind it"),
    (upstream("<step>"), "run id of the upstream run used"),
    (upstream_key("<step>"), "its human key"),
    (CODE, "code fingerprint: the code that runs"),
    (CODE_SCHEME, "fingerprint scheme (`exact-1`)"),
    (CODE_PARTS, "JSON of the fingerprint's parts"),
    (PARAMS, "digest of the coerced params"),
    (FINGERPRINT, "reuse identity: step, variant, params, upstream ids, code, as_of"),
    (GIT_COMMIT, "git commit of the project"),
    (GIT_DIRTY, "whether the work tree had changes"),
    (provenance("<name>"), "one provenance fact (host, python, ...)"),
    (AS_OF, "the `as_of` a load ran with"),
    (RETRIEVAL_TIME, "the time a load read its source up to"),
    (DATA, "data version (32 hex) of the run's input data"),
    (DATA_KEY, "key columns of a load's data (rows are matched on them by `relay diff`)"),
    (DATA_KEYS, "keys of the load runs behind a data version"),
    (DATA_PARTS, "JSON {load key: digest}"),
    (snapshot("<name>"), "holder run id of a snapshot"),
    (snapshot("<name>", "digest"), "and its digest (also `.rows`, `.bytes`, `.source`)"),
    (DIGEST, "a snapshot holder's content digest (experiment `<project>/snapshots`)"),
    (ROWS, "a snapshot holder's row count"),
    (BYTES, "a snapshot holder's size"),
    (CHECKS, "data checks' verdict of a load: passed, failed or skipped"),
    (OUTPUTS, "names and formats of the step's outputs"),
    (MODEL, "URI of the bundle (MLflow model) a training run logged"),
    (ERROR, "one-line error of a FAILED run"),
    (EXIT_CODE, "exit code of a variant that called `sys.exit`"),
    (WITHDRAWN, "a run deleted before doing work"),
    (WITHDRAWN_KEY, "the key it had claimed"),
    (STALE, "a claimant whose heartbeat stopped, marked FAILED"),
    (REPRODUCES, "run id of the run a reproduction repeats"),
    (chain_step("<step>"), "chain record: run id of the step's run (also `.key`, `.status`)"),
    (CHAIN_ID, "chain record: identity of the requested chain"),
    (CHAIN_REQUEST, "chain record: the request as typed"),
    (CHAIN_STEPS, "chain record: the steps in order"),
    (CHAIN_RECORD, "on a chain's final run: the id of its chain record (a shortcut)"),
    (REFRESH_DECISION, "refresh record: promoted, kept or skipped"),
    (REFRESH_WINNER, "refresh record: the winning run"),
    (REFRESH_METRIC, "refresh record: the metric compared"),
    (refresh_metric("<alias>"), "refresh record: the metric of each contender"),
    (f"{REFRESH}run.<i>", "refresh record: a challenger's run id"),
    (REFRESH_LOWER_IS_BETTER, "refresh record: the metric's direction"),
    (REFRESH_MARGIN, "refresh record: the margin a challenger must beat"),
    (REFRESH_ALIAS, "refresh record: the registry alias moved"),
    (REFRESH_CHAMPION, "refresh record: the champion's run id"),
    (REFRESH_CHAMPION_VERSION, "refresh record: the champion's model version"),
    (REFRESH_VERSION, "refresh record: the new model version"),
    (REFRESH_SERVED, "refresh record: whether the server reloaded"),
    (REFRESH_DRIFT, "refresh record: drift between the data versions"),
    (REFRESH_DIFF, "refresh record: summary of the data diff"),
)


def table() -> str:
    """The tag vocabulary as a Markdown table (what docs/ARCHITECTURE.md shows).

    Example:
        >>> table().splitlines()[0]
        '| tag | meaning |'
    """
    rows = ["| tag | meaning |", "|---|---|"]
    rows += [f"| `{tag}` | {meaning} |" for tag, meaning in MEANINGS]
    return "\n".join(rows)
