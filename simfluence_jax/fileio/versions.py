"""Versions: a file's format name and version, and the git commit of the code."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path


def check_format(path: str | os.PathLike, meta: Mapping, *, name: str, version: int, what: str):
    """Checks ``meta["format"] == name`` and ``meta["version"] == version``.

    Raises:
      ValueError: naming ``path``: not our format, a version that is not an integer, a newer
        version ("written by a newer version of simfluence_jax") or an older one.
    """
    found = meta.get("format")
    if found != name:
        raise ValueError(
            f"{path} is not a simfluence_jax {what} (format {found!r}, expected {name!r})"
        )
    got = meta.get("version")
    if not isinstance(got, int) or isinstance(got, bool):
        raise ValueError(f"{path}: the {what} format version {got!r} is not an integer")
    if got != version:
        hint = (
            "written by a newer version of simfluence_jax; upgrade simfluence_jax to read it"
            if got > version
            else "written by an older version of simfluence_jax; read it with that version"
        )
        raise ValueError(
            f"{path}: the {what} has format version {got}; this version of simfluence_jax "
            f"reads version {version} ({hint})"
        )


def git_revision(path: str | os.PathLike | None = None) -> str:
    """The git commit of the code at ``path`` (default: this package), with ``+dirty`` if
    tracked files are edited, or ``"unknown"`` outside a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args) -> str:
        return subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if head and dirty else "")


def split_revision(revision: str) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of a :func:`git_revision` string (``dirty`` is ``None`` if
    unknown)."""
    if revision == "unknown":
        return revision, None
    return revision.removesuffix("+dirty"), revision.endswith("+dirty")
