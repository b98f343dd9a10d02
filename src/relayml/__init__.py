"""relayml: coherent, versioned, servable ML pipelines on top of MLflow.

Declare steps and variants in a steps module, run them from the CLI (``relay run``,
``relay chain``) or from Python, and navigate the results::

    import relayml as relay

    load = relay.step("load")
    processing = relay.step("processing", upstream=load)

    @processing.variant("plain")
    def plain(ctx, load, fill: str = "mean"):
        ...

    run = relay.get("processing/plain@latest")
    run.upstream["load"].data_version

Names are imported lazily, so ``import relayml`` stays cheap in a steps module.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# MLflow's usage telemetry starts a thread at `import mlflow` that, when it cannot reach its
# server (no internet), removes an environment variable while the REST client is reading the
# environment: a tracking call then fails at random with "API request ... failed with
# exception '_MLFLOW_TELEMETRY_SESSION_ID'". relay turns it off unless the user chose.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

_EXPORTS: dict[str, str] = {
    # declaring
    "step": "relayml.steps",
    "Step": "relayml.steps",
    "Variant": "relayml.steps",
    "Param": "relayml.steps",
    # keys and references
    "RunKey": "relayml.keys",
    "Reference": "relayml.keys",
    "parse_reference": "relayml.keys",
    # finding and navigating runs
    "Run": "relayml.runs",
    "RunList": "relayml.runs",
    "get": "relayml.runs",
    "runs": "relayml.runs",
    "open_project": "relayml.runs",
    # running
    "run": "relayml.runner",
    "Context": "relayml.runner",
    "Outputs": "relayml.outputs",
    # chains
    "chain": "relayml.chain",
    "Chain": "relayml.chain",
    # lifecycle
    "compare": "relayml.lifecycle",
    "delete": "relayml.lifecycle",
    "gc": "relayml.lifecycle",
    "reproduce": "relayml.lifecycle",
    "refresh": "relayml.lifecycle",
    "promote": "relayml.lifecycle",
    # serving
    "serve": "relayml.serving.api",
    "predict": "relayml.serving.api",
    "load_bundle": "relayml.bundle",
    # configuration and errors
    "Settings": "relayml.config",
    "load_settings": "relayml.config",
    "RelayError": "relayml.errors",
    "UsageError": "relayml.errors",
    "NotFound": "relayml.errors",
    "StepFailed": "relayml.errors",
    "SourceError": "relayml.errors",
    "ConfigError": "relayml.errors",
    "OutputError": "relayml.errors",
    "UntrustedOutput": "relayml.errors",
    "BundleError": "relayml.errors",
    "ChecksFailed": "relayml.errors",
    "ChainFailed": "relayml.errors",
    "MixedData": "relayml.errors",
    "RefreshBusy": "relayml.errors",
    "BundleInputError": "relayml.errors",
    "UnknownName": "relayml.errors",
    "Checks": "relayml.checks",
    "checks": "relayml.checks",
    "diff": "relayml.datadiff",
    "DataDiff": "relayml.datadiff",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'relayml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """Keeps ``relay.runs`` and ``relay.chain`` the public functions.

    Importing a submodule sets it as an attribute of its package; two submodules share a
    name with the function they export, so that attribute is skipped and the function stays.
    Import those modules' contents with ``from relayml.runs import ...``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:
    from relayml.bundle import load_bundle
    from relayml.chain import Chain, chain
    from relayml.checks import Checks, checks
    from relayml.config import Settings, load_settings
    from relayml.datadiff import DataDiff, diff
    from relayml.errors import (
        BundleError,
        BundleInputError,
        ChainFailed,
        ChecksFailed,
        ConfigError,
        MixedData,
        NotFound,
        OutputError,
        RefreshBusy,
        RelayError,
        SourceError,
        StepFailed,
        UnknownName,
        UntrustedOutput,
        UsageError,
    )
    from relayml.keys import Reference, RunKey, parse_reference
    from relayml.lifecycle import compare, delete, gc, promote, refresh, reproduce
    from relayml.outputs import Outputs
    from relayml.runner import Context, run
    from relayml.runs import Run, RunList, get, open_project, runs
    from relayml.serving.api import predict, serve
    from relayml.steps import Param, Step, Variant, step
