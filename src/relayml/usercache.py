"""Files relay keeps for the user across projects: ``$XDG_CACHE_HOME/relayml``
(``~/.cache/relayml``), private to the user.

Only derived data lives here (skops's list of scikit-learn estimators, an empty MLflow schema),
each under a name that holds the versions it derives from. A file is used only when it is a
regular file of the current user that no one else may write; anything else is ignored and
written again. Writes are atomic and best effort: a read-only home only costs the time the
cache saves.

Example:
    >>> path = cache_file("example.txt")
    >>> write_private(path, b"derived data")
    >>> is_private(path), path.read_bytes()
    (True, b'derived data')
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["cache_file", "is_private", "read_json", "write_private"]


def cache_file(name: str) -> Path | None:
    """The path of the cache file ``name`` (None when there is no home folder).

    Example:
        >>> cache_file("x.json").parent.name
        'relayml'
    """
    try:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:
        return None
    return folder / "relayml" / name


def is_private(path: Path) -> bool:
    """True when ``path`` is a regular file of the current user that others cannot write.

    Example:
        >>> is_private(Path("/etc/passwd")) and os.getuid() != 0
        False
    """
    try:
        info = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_uid == os.getuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def read_json(path: Path | None) -> object:
    """The JSON value of a private cache file, or None (missing, not private, not JSON).

    Example:
        >>> write_private(cache_file("n.json"), b"[1, 2]")
        >>> read_json(cache_file("n.json")), read_json(cache_file("missing.json"))
        ([1, 2], None)
    """
    if path is None or not is_private(path):
        return None
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def write_private(path: Path | None, data: bytes | Callable[[Path], None]) -> None:
    """Write ``path`` atomically with mode 600 in a folder of mode 700 (best effort).

    ``data`` is the content, or a function that writes the (temporary) file it is given.

    Example:
        >>> write_private(cache_file("made.bin"), lambda p: p.write_bytes(b"1"))
        >>> cache_file("made.bin").read_bytes()
        b'1'
    """
    if path is None:
        return
    staged = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 600
        staged = Path(name)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
        if not isinstance(data, bytes):
            data(staged)
        os.chmod(staged, 0o600)
        os.replace(staged, path)
        staged = None
    except Exception:
        pass
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
