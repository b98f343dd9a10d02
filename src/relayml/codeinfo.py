"""Where the project's code stands in git (commit, dirty state, diff), and digests.

Reads the project's git repository with the ``git`` command; writes nothing. The git state
is recorded on each run for reproduction; it is not part of a run's key (the code that runs
is: see :mod:`relayml.fingerprint`).

Example:
    >>> state = code_state(Path("."))  # doctest: +SKIP
    >>> state.commit[:7], state.dirty  # doctest: +SKIP
    ('3f2a1b9', False)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CodeState", "canonical", "code_state", "digest"]


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces; floats as Python's shortest repr.

    Example:
        >>> canonical({"b": 1.0, "a": [True, None]})
        '{"a":[true,null],"b":1.0}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(*parts: str) -> str:
    """A short (128-bit) sha256-based hex digest of strings.

    Example:
        >>> len(digest("a", "b"))
        32
    """
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class CodeState:
    """Where the project's code stands.

    Attributes:
        commit: HEAD's commit, or None outside a git repository (or before its first commit).
        dirty: uncommitted changes exist in the project's folder.
        diff: those changes as a patch (tracked changes and untracked files), "" when clean.
    """

    commit: str | None
    dirty: bool
    diff: str


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def code_state(root: Path) -> CodeState:
    """Read the git state of the project folder ``root`` (limited to that folder).

    Untracked files that git does not ignore are part of the diff, so a new file that the
    steps import is not lost. A clean tree costs one ``git status`` (its branch header names
    HEAD's commit); the diff is only computed when the folder has changes.

    Example:
        >>> code_state(Path("/tmp")).commit is None  # doctest: +SKIP
        True
    """
    try:
        # --no-optional-locks: status must not take index.lock (other relay processes run git)
        proc = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain=v2", "--branch",
             "--no-ahead-behind", "-uall", "-z", "--", "."],
            cwd=root, capture_output=True, text=True,
        )  # fmt: skip
    except FileNotFoundError:  # no git installed
        return CodeState(None, False, "")
    if proc.returncode != 0:  # not a repository
        return CodeState(None, False, "")
    entries = [e for e in proc.stdout.split("\0") if e]
    oid = next((e.split()[2] for e in entries if e.startswith("# branch.oid ")), "(initial)")
    commit = None if oid == "(initial)" else oid  # None: a repository without commits yet
    if not any(not e.startswith("# ") for e in entries):
        return CodeState(commit, False, "")
    diff = _git(root, "diff", "HEAD", "--binary", "--", ".") if commit else ""
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", ".").split("\n")
    for name in filter(None, untracked):
        proc = subprocess.run(
            ["git", "diff", "--no-index", "--binary", "--", "/dev/null", name],
            cwd=root,
            capture_output=True,
            text=True,
        )
        diff += proc.stdout
    return CodeState(commit, bool(diff), diff)
