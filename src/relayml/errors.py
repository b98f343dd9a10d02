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
    """Base class of every error relayml raises on purpose."""

    exit_code = 1


class UsageError(RelayError):
    """Bad input from the user (a malformed key, an unknown name, a wrong type). Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """``relay.toml`` is missing, malformed, or names something that does not exist."""


class NotFound(UsageError, LookupError):
    """A reference that matches no run (exit code 2)."""


class UnknownName(UsageError, KeyError):
    """A name (step, variant, parameter, source) that is not declared.

    Args:
        kind: what was looked up, e.g. ``"variant"``.
        name: what the user typed.
        valid: the names that exist; the closest ones are suggested.
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
    """A data source failed: unreachable database, bad query, unreadable file (exit code 1)."""


class StepFailed(RelayError):
    """A step's own code raised; its run is FAILED and the traceback is an artifact."""


class OutputError(RelayError):
    """A step's output cannot be stored as data: a bad name or a type with no safe format.

    The run ends FAILED and none of its outputs is stored (exit code 1).
    """


class UntrustedOutput(RelayError):
    """An output that could run code when loaded (a pickle) from a writer not trusted.

    Raised before anything is unpickled (exit code 1).
    """


class BundleError(RelayError):
    """A model that cannot be bundled to load without relayml (exit code 1).

    Raised at the end of a training step: the pipeline holds a lambda or a function of a
    module that imports relayml, or the bundle failed to load and predict in a clean child
    interpreter. The message names the object, the module and the fix.
    """


class ChecksFailed(StepFailed):
    """A load's data broke the checks declared on its variant (exit code 1).

    The run is FAILED, its report is the artifact ``checks/report.txt`` and nothing
    downstream builds on it. ``report`` holds the :class:`relayml.checks.CheckReport` list.
    """

    def __init__(self, message: str, reports: list | None = None) -> None:
        super().__init__(message)
        self.reports = list(reports or [])


class ChainFailed(StepFailed):
    """A step of the chain failed (exit 1).

    ``.chain`` (a :class:`relayml.Chain`) holds what was resolved and run.
    """

    def __init__(self, message: str, chain: Any) -> None:
        super().__init__(message)
        self.chain = chain


class MixedData(UsageError):
    """Runs from different data versions were asked to be ranked together (exit code 2)."""


class RefreshBusy(RelayError):
    """Another refresh of the same alias is running (exit code 1; nothing was done)."""


class BundleInputError(UsageError):
    """Raw input that does not match the bundle's schema.

    Args:
        message: what is wrong and how to fix it.
        field: the offending column (or request field), if any.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
