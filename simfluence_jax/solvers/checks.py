"""The checks of a ridge grid's values: the l2 strengths and the kernel's mu values.

The solvers and the fitters (``fitting.choice``) read them from here, so both reject the
same inputs with the same messages.
"""

from __future__ import annotations

import numpy as np


def check_l2s(l2s) -> np.ndarray:
    """``float64[K]`` from a float or a non-empty 1-D sequence of finite numbers > 0."""
    grid = np.atleast_1d(np.asarray(l2s, dtype=np.float64))
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"l2 must be a float or a non-empty 1-D sequence, got {l2s!r}")
    if not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ValueError(f"every l2 must be a finite number > 0, got {grid.tolist()}")
    return grid


def check_momenta(momenta) -> np.ndarray:
    """``float64[n_mu]`` from a number or a non-empty 1-D sequence of numbers in [0, 1)."""
    mus = np.atleast_1d(np.asarray(momenta, dtype=np.float64))
    if mus.ndim != 1 or mus.size == 0 or not np.all(np.isfinite(mus)):
        raise ValueError(
            f"momentum must be a number in [0, 1) or a non-empty 1-D sequence of them, "
            f"got {momenta!r}"
        )
    if np.any(mus < 0) or np.any(mus >= 1):
        raise ValueError(f"every momentum mu must lie in [0, 1), got {mus.tolist()}")
    return mus
