"""The one exception hierarchy of relayml.

Every error a user can cause derives from :class:`RelayError`. The CLI catches only
``RelayError``: a :class:`UsageError` (bad input) exits 2, a :class:`StepFailed` exits 1.
Messages name the object, what was received, what was expected and how to fix it.

Example:
    >>> try:
    ...     raise UnknownName("variant", "lgreg", ["logreg", "rf"])
    ... except RelayError as e:
    ...     print(e)
    unknown variant 'lgreg'; did you mean 'logreg'? (valid: logreg, rf)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "BundleError",
    "BundleInputError",
    "ChainFailed",
    "ChecksFailed",
    "ConfigError",
    "MixedData",
    "NotFound",
    "OutputError",
    "RefreshBusy",
    "RelayError",
    "SourceError",
    "StepFailed",
    "UnknownName",
    "UntrustedOutput",
    "UsageError",
]


class RelayError(Exception):
    """Base class of every error relayml raises on purpose.

    ``exit_code`` is what the CLI exits with for it.

    Example:
        >>> try:
        ...     relay.get("training/rf@latest")
        ... except relay.RelayError as e:
        ...     print(type(e).__name__, e.exit_code)
        NotFound 2
    """

    exit_code = 1


class UsageError(RelayError):
    """Bad input from the user (a malformed key, an unknown name, a wrong type). Exit code 2.

    Example:
        >>> relay.run("processing", "plain", {"seed": "seven"})
        Traceback (most recent call last):
        ...
        relayml.errors.UsageError: parameter 'seed' expects int, got 'seven'...
    """

    exit_code = 2


class ConfigError(UsageError):
    """``relay.toml`` is missing, malformed, or names something that does not exist.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> relay.load_settings(Path(tempfile.mkdtemp()))
        Traceback (most recent call last):
        ...
        relayml.errors.ConfigError: no relay.toml in /... or any parent folder; run 'relay init' ...
    """


class NotFound(UsageError, LookupError):
    """A reference that matches no run (exit code 2).

    Example:
        >>> relay.get("training/rf@latest")
        Traceback (most recent call last):
        ...
        relayml.errors.NotFound: no finished run matches 'training/rf@latest'; ...
    """


class UnknownName(UsageError, KeyError):
    """A name (step, variant, parameter, source) that is not declared.

    Args:
        kind: what was looked up, e.g. ``"variant"``.
        name: what the user typed.
        valid: the names that exist; the closest ones are suggested.

    Example:
        >>> try:
        ...     relay.run("training", "lgreg")
        ... except relay.UnknownName as e:
        ...     print(e)
        unknown variant 'lgreg' of step 'training'; did you mean 'logreg'? (valid: ...)
    """

    def __init__(
        self,
        kind: str,
        name: str,
        valid: Iterable[str],
        where: str = "",
        *,
        listing: Iterable[str] | None = None,
    ) -> None:
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        shown = list(listing) if listing is not None else valid
        listing = ", ".join(shown) if shown else "none declared"
        scope = f" {where}" if where else ""
        super().__init__(f"unknown {kind} {name!r}{scope}{hint} (valid: {listing})")
        self.kind, self.name, self.valid = kind, name, valid

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0])


class SourceError(RelayError):
    """A data source failed: unreachable database, bad query, unreadable file (exit code 1).

    In a step it fails the run: :class:`StepFailed` is raised from it.

    Example:
        >>> with open("steps.py", "a") as f:
        ...     _ = f.write('''
        ... @load.variant("missing")
        ... def missing(ctx: relay.Context):
        ...     return ctx.query("fraud", "SELECT * FROM no_such_table")
        ... ''')
        >>> try:
        ...     relay.run("load", "missing")
        ... except relay.StepFailed as e:
        ...     print(type(e.__cause__).__name__, relay.runs("load", variant="missing")[0].status)
        SourceError FAILED
    """


class StepFailed(RelayError):
    """A step's own code raised; its run is FAILED and the traceback is an artifact.

    Example:
        >>> relay.run("processing", "plain", {"test_size": 2.0})
        Traceback (most recent call last):
        ...
        relayml.errors.StepFailed: processing/plain@... failed: InvalidParameterError: ...
        >>> run = relay.runs("processing", status="FAILED")[0]
        >>> run.status, "error/traceback.txt" in run.artifacts
        ('FAILED', True)
    """


class OutputError(RelayError):
    """A step's output cannot be stored as data: a bad name or a type with no safe format.

    The run ends FAILED and none of its outputs is stored (exit code 1).

    Example:
        >>> with open("steps.py", "a") as f:
        ...     _ = f.write('''
        ... @training.variant("badname")
        ... def badname(processing):
        ...     return {"../model": 1}
        ... ''')
        >>> relay.run("training", "badname")
        Traceback (most recent call last):
        ...
        relayml.errors.OutputError: output name '../model' of training/badname@... is not valid: ...
    """


class UntrustedOutput(RelayError):
    """An output that could run code when loaded (a pickle) from a writer not trusted.

    Raised before anything is unpickled (exit code 1). Writing pickles is opt-in
    (``[outputs] allow_pickle``); reading them is for the users of ``trusted_users``.

    Example:
        >>> relay.UntrustedOutput.exit_code, issubclass(relay.UntrustedOutput, relay.RelayError)
        (1, True)
    """


class BundleError(RelayError):
    """A model that cannot be bundled to load without relayml (exit code 1).

    Raised at the end of a training step: the pipeline holds a lambda or a function of a
    module that imports relayml, or the bundle failed to load and predict in a clean child
    interpreter. The message names the object, the module and the fix.

    Example:
        >>> relay.BundleError.exit_code, issubclass(relay.BundleError, relay.RelayError)
        (1, True)
    """


class ChecksFailed(StepFailed):
    """A load's data broke the checks declared on its variant (exit code 1).

    The run is FAILED, its report is the artifact ``checks/report.txt`` and nothing
    downstream builds on it. ``reports`` holds the :class:`relayml.checks.CheckReport` list.

    Example:
        >>> try:  # before the first transaction: the load's min_rows=1 check fails
        ...     relay.run("load", "transactions", as_of="2019-01-01")
        ... except relay.ChecksFailed as e:
        ...     print(sorted(f.name for r in e.reports for f in r.failures))
        ['min_rows']
    """

    def __init__(self, message: str, reports: list[Any] | None = None) -> None:
        super().__init__(message)
        self.reports = list(reports or [])


class ChainFailed(StepFailed):
    """A step of the chain failed (exit 1).

    ``.chain`` (a :class:`relayml.Chain`) holds what was resolved and run.

    Example:
        >>> try:
        ...     relay.chain("load=transactions@latest", "processing=plain",
        ...                 params={"processing.test_size": 2.0})
        ... except relay.ChainFailed as e:
        ...     print([p.status for p in e.chain.steps])
        ['reused', 'failed']
    """

    def __init__(self, message: str, chain: Any) -> None:
        super().__init__(message)
        self.chain = chain


class MixedData(UsageError):
    """Runs from different data versions were asked to be ranked together (exit code 2).

    Example:
        >>> relay.MixedData.exit_code, issubclass(relay.MixedData, relay.UsageError)
        (2, True)
    """


class RefreshBusy(RelayError):
    """Another refresh of the same alias is running (exit code 1; nothing was done).

    Example:
        >>> relay.RefreshBusy.exit_code, issubclass(relay.RefreshBusy, relay.RelayError)
        (1, True)
    """


class BundleInputError(UsageError):
    """Raw input that does not match the bundle's schema.

    Args:
        message: what is wrong and how to fix it.
        field: the offending column (or request field), if any.

    Example:
        >>> e = relay.BundleInputError("column 'Amount' is missing", field="Amount")
        >>> e.field, e.exit_code
        ('Amount', 2)
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
