"""The public surface: `import relayml as relay` exports a sorted, documented set of names."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import relayml


def test_all_is_sorted_and_resolves() -> None:
    assert relayml.__all__ == sorted(relayml.__all__)
    for name in relayml.__all__:
        assert getattr(relayml, name) is not None, name


@pytest.mark.parametrize("name", [n for n in relayml.__all__ if not n.startswith("_")])
def test_every_public_name_has_a_docstring_with_an_example(name: str) -> None:
    obj = getattr(relayml, name)
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"relay.{name} has no docstring"
    if inspect.isfunction(obj) or (inspect.isclass(obj) and not issubclass(obj, Exception)):
        assert "Example" in doc or ">>>" in doc, f"relay.{name}'s docstring has no example"


def test_importing_relayml_is_light() -> None:
    """A steps module imports relayml: that must not pull in MLflow."""
    code = "import sys, relayml; relayml.step('x'); print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("chosen", "client_on"), [(None, False), ("false", True)])
def test_mlflow_telemetry_is_off_unless_the_user_chose(chosen: str | None, client_on: bool) -> None:
    """MLflow's telemetry thread races the REST client when offline (a tracking call fails
    with "... failed with exception '_MLFLOW_TELEMETRY_SESSION_ID'"); relay turns it off."""
    import os

    code = (
        "import relayml, mlflow\n"
        "from mlflow.telemetry import get_telemetry_client\n"
        "print(get_telemetry_client() is not None)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "CI")}
    env.pop("MLFLOW_DISABLE_TELEMETRY", None)
    if chosen is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = chosen
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == str(client_on)


def test_cli_help_is_fast_and_lists_commands() -> None:
    code = (
        "import sys, time; t=time.perf_counter(); sys.argv=['relay','--help']\n"
        "from relayml.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('mlflow' in sys.modules, 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"
    for command in (
        "run",
        "runs",
        "show",
        "chain",
        "lineage",
        "serve",
        "predict",
        "promote",
        "delete",
        "gc",
        "reproduce",
        "refresh",
        "compare",
        "server",
        "ui",
        "init",
    ):
        assert command in out.stdout, command
