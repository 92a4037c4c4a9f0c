"""Curriculum layouts: a curriculum is a subset of pool ids placed in a layout of ranks.

A *layout* ``int32[T, B]`` holds slot ranks ``0..k-1`` (``-1`` = padding), e.g. k examples
seen for some epochs in a random order; a *subset* ``int32[k]`` holds distinct pool ids by
rank. The curriculum is ``subset[layout]``: changing the subset changes which examples are
trained on, permuting it changes their order.
"""

from __future__ import annotations

import numpy as np

from simfluence_jax.sampling import sample_curricula


def random_layout(
    k: int, *, batch_size: int, epochs: int = 1, num_steps: int | None = None, seed: int = 0
) -> np.ndarray:
    """``int32[T, B]``: ranks ``0..k-1`` seen ``epochs`` times (or for ``num_steps``
    batches), each epoch in a fresh random order; the layout of ``sampling``'s runs."""
    return sample_curricula(
        num_runs=1, pool_size=k, batch_size=batch_size, subset_size=k, epochs=epochs,
        num_steps=num_steps, seed=seed,
    )[0]  # fmt: skip


def curriculum(subset, layout) -> np.ndarray:
    """``int32[..., T, B]``: ``subset[..., layout]`` with padding kept."""
    subset = np.asarray(subset)
    layout = np.asarray(layout)
    return np.where(layout >= 0, np.take(subset, np.maximum(layout, 0), axis=-1), -1).astype(
        np.int32
    )


def check_layout(layout, subset) -> tuple[np.ndarray, np.ndarray]:
    """``(layout int32[T, B], subset int32[k])`` after checking that the subset holds k
    distinct ids and the layout uses every rank ``0..k-1`` (and only ``-1`` besides)."""
    layout = np.asarray(layout)
    subset = np.asarray(subset)
    if layout.ndim != 2 or layout.dtype.kind not in "iu":
        raise ValueError(f"layout must be int[T, B], got {layout.dtype} {layout.shape}")
    k = subset.shape[0]
    if subset.ndim != 1 or len(np.unique(subset)) != k:
        raise ValueError(f"subset must be {k} distinct ids, got {subset.tolist()}")
    used = np.unique(layout[layout >= 0])
    if layout.min() < -1 or not np.array_equal(used, np.arange(k)):
        raise ValueError(f"layout must use every rank 0..{k - 1} (and -1 for padding)")
    return layout.astype(np.int32), subset.astype(np.int32)


def candidate_mask(candidates, N: int, k: int) -> np.ndarray:
    """``bool[N]``: the ids a search may use (``None``: all), checked to hold at least k."""
    mask = np.ones(N, bool) if candidates is None else np.asarray(candidates, bool)
    if mask.shape != (N,):
        raise ValueError(f"candidates must be bool[N={N}], got shape {mask.shape}")
    if mask.sum() < k:
        raise ValueError(f"only {int(mask.sum())} candidate ids for a subset of {k}")
    return mask
