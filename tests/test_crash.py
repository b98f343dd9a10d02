"""Crash safety with real processes: SIGTERM, Ctrl-C, exceptions and SIGKILL during a step.

The temp project gets a deliberately slow load variant; each test starts ``relay run`` as a
separate process (``python -m relayml``), waits until the step is running (a marker file the
variant writes once its run exists), then interrupts it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import git, relay_process

pytestmark = pytest.mark.slow

SLOW_VARIANT = '''

import os as _os
import time as _time
from pathlib import Path as _Path


@load.variant("slow")
def slow(ctx: relay.Context, seconds: float = 60.0, fail: bool = False, marker: str = ""):
    """A deliberately slow load (crash-safety tests)."""
    ctx.log_metric("started", 1)
    if marker:
        _Path(marker).write_text(str(_os.getpid()))
    deadline = _time.monotonic() + seconds
    while _time.monotonic() < deadline:
        _time.sleep(0.05)
    if fail:
        raise ValueError("slow variant asked to fail")
    return pd.DataFrame({"x": [1, 2, 3]})


@processing.variant("slowproc")
def slowproc(ctx: relay.Context, load: pd.DataFrame, test_size: float = 0.25):
    """A slow processing step; its speed and marker come from the environment (same params,
    same fingerprint, whatever the test's timing)."""
    if _os.environ.get("RELAY_TEST_MARKER"):
        _Path(_os.environ["RELAY_TEST_MARKER"]).write_text(str(_os.getpid()))
    _time.sleep(float(_os.environ.get("RELAY_TEST_SECONDS", "0")))
    return getattr(plain, "func", plain)(ctx, load, test_size=test_size)
'''


def add_slow_variant(root: Path, *, stale_after: float | None = None) -> None:
    """Append the slow variant to the project's steps (and a short stale_after), commit."""
    with (root / "steps.py").open("a") as f:
        f.write(SLOW_VARIANT)
    if stale_after is not None:
        toml = (root / "relay.toml").read_text()
        toml = toml.replace(
            'artifacts = ".relay/artifacts"',
            f'artifacts = ".relay/artifacts"\nstale_after = {stale_after}',
        )
        (root / "relay.toml").write_text(toml)
    git(root, "commit", "-qam", "slow variant")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"relay exited early ({proc.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the slow step did not start within {timeout}s")
        time.sleep(0.1)


def runs_json(relay, *args: str) -> list[dict]:
    result = relay("runs", *args, "--json")
    assert result.code == 0, result
    return json.loads(result.out)


def test_interrupt_marks_killed_and_exits_cleanly(project: Path, relay) -> None:
    """SIGTERM and Ctrl-C (SIGINT), each to its own step process, running at the same time."""
    add_slow_variant(project)
    procs = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        marker = project.parent / f"started-{signum}"
        procs[signum] = (marker, relay_process("run", "load", "slow", "-P", f"marker={marker}",
                                               cwd=project))  # fmt: skip
    for marker, proc in procs.values():
        wait_for(marker, proc)
    for signum, (_, proc) in procs.items():
        started = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        print(f"\n{signal.Signals(signum).name}: exit {proc.returncode} after "
              f"{time.monotonic() - started:.1f}s")  # fmt: skip
        assert proc.returncode == 130, (out, err)
        assert "interrupted" in err and "KILLED" in err
        assert "Traceback" not in err
    found = runs_json(relay, "load")
    assert [r["status"] for r in found] == ["KILLED", "KILLED"]
    for run in found:
        shown = json.loads(relay("show", run["key"], "--json").out)
        assert "interrupted" in shown["tags"]["relay.error"]
    assert relay("runs", "load", "--status", "RUNNING", "--json").out.strip() == "[]"


def test_exception_marks_failed_with_traceback(project: Path, relay) -> None:
    add_slow_variant(project)  # (an exception needs no process of its own: the CLI in-process)
    failed = relay("run", "load", "slow", "-P", "seconds=0", "-P", "fail=true")
    assert failed.code == 1, failed
    assert "slow variant asked to fail" in failed.err
    assert "Traceback" not in failed.err  # one clear line; the traceback is an artifact
    [run] = runs_json(relay, "load")
    assert run["status"] == "FAILED"
    shown = json.loads(relay("show", run["key"], "--json").out)
    assert "error/traceback.txt" in shown["artifacts"]
    import relayml as relay_api

    r = relay_api.get(run["key"], project=project)
    text = (
        r.store.download(r.run_id, "error/traceback.txt", project / ".relay" / "tb")
    ).read_text()
    assert "ValueError: slow variant asked to fail" in text
    # a FAILED run is never used as upstream
    result = relay("run", "processing", "plain", "--from", run["key"])
    assert result.code == 2 and "FAILED, not FINISHED" in result.err


def test_sigkill_is_stale_and_never_reused(project: Path, relay) -> None:
    add_slow_variant(project, stale_after=4)
    assert relay("run", "load", "transactions").code == 0
    marker = project.parent / "started"
    proc = relay_process("run", "load", "slow", "-P", f"marker={marker}", cwd=project)
    wait_for(marker, proc)
    [running] = runs_json(relay, "load", "--status", "RUNNING")
    assert running["variant"] == "slow"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(5)  # > stale_after: the heartbeat stopped with the process
    stale = runs_json(relay, "load", "--status", "STALE")
    assert [r["key"] for r in stale] == [running["key"]]
    table = relay("runs", "load")
    assert "STALE" in table.out
    # never reused: not by @latest, and refused when named
    result = relay("run", "processing", "plain", "--from", running["key"])
    assert result.code == 2 and "STALE, not FINISHED" in result.err, result
    latest = json.loads(relay("show", "load@latest", "--json").out)
    assert latest["variant"] == "transactions"
    print(f"\nSIGKILL: {running['key']} shown as STALE, refused as upstream")

    # a chain whose claimant was SIGKILLed: the next identical request takes the claim over
    load_id = json.loads(relay("show", "load/transactions@latest", "--json").out)["run_id"]
    request = ["chain", f"load={load_id}", "processing=slowproc", "--json"]
    marker = project.parent / "claimed"  # outside the project: not part of its code state
    first = relay_process(
        *request, cwd=project, env={"RELAY_TEST_MARKER": str(marker), "RELAY_TEST_SECONDS": "120"}
    )
    wait_for(marker, first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    [dead] = runs_json(relay, "processing", "--status", "RUNNING")
    second = relay_process(*request, cwd=project, env={"RELAY_TEST_SECONDS": "0"})
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    taken = json.loads(out)["steps"][1]
    assert taken["status"] == "new" and taken["run_status"] == "FINISHED"
    assert taken["run_id"] != dead["run_id"]
    after = json.loads(relay("show", dead["key"], "--json").out)
    assert after["status"] == "FAILED"  # the stale claim was closed, and says why
    assert after["tags"]["relay.stale"] == "true"
    print(f"claim of SIGKILLed {dead['key']} ({after['status']}) taken over by {taken['key']}")
