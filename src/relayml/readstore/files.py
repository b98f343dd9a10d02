"""Local artifact folders, listed without MLflow (``file:`` URIs and absolute paths)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["local_path", "walk"]


def local_path(uri: str | None) -> Path | None:
    """The local folder of a ``file:`` URI or absolute path, None for other URIs.

    Example:
        >>> local_path("file:///tmp/a%20b")
        PosixPath('/tmp/a b')
        >>> local_path("s3://bucket/x") is None
        True
    """
    from urllib.parse import unquote, urlparse

    if not uri:
        return None
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    if uri.startswith("/"):
        return Path(uri)
    return None


def walk(folder: Path) -> list[tuple[str, int]]:
    """``(relative path, size)`` of every file under ``folder``, sorted."""
    out = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            full = Path(dirpath) / name
            try:
                size = full.stat().st_size
            except OSError:
                continue
            out.append((full.relative_to(folder).as_posix(), size))
    return sorted(out)
