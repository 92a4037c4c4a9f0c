"""Locates the shared reference fixtures (T5X checkpoint, MiniLM outputs).

They live in ``../shared/fixtures`` next to the repository on development and CI machines.
On a user's machine the folder is absent and the parity tests skip with a clear reason.
``SIMFLUENCE_SHARED`` overrides the location.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("SIMFLUENCE_SHARED", _REPO.parent / "shared"))


def shared_fixture(*parts: str) -> Path:
    """Path to ``shared/fixtures/<parts>``, or ``pytest.skip`` when it does not exist."""
    path = shared_dir() / "fixtures" / Path(*parts)
    if not path.exists():
        pytest.skip(f"reference fixture {path} is absent (only shipped on development machines)")
    return path
