"""Curricula: which training examples each run sees, in which order (pure NumPy).

A curriculum set is ``batches: int32[R, T, B]``, entry ``-1`` being padding
(docs/design.md, section 2).

The default protocol is the one GPTfluence uses (Chai, Liu et al., 2024, following Guu et al.,
2023): a pool of N training examples; run r draws a random subset of ``subset_size`` ids
without replacement, then trains on it for some epochs, each epoch a fresh random order of
the same subset cut into batches of ``batch_size``. When ``subset_size`` is not a multiple of
``batch_size`` the last batch of every epoch is ragged and padded with -1 (a data loader that
keeps its last partial batch). With ``num_steps`` the epochs repeat until exactly
``num_steps`` batches exist (the last epoch may be cut short); otherwise ``epochs`` whole
epochs are made. Pool 200, subset 128, batch 4 and 96 steps is GPTfluence's setting.

Every run's draws come from ``numpy.random.default_rng([seed, r])``, so run r's curriculum
does not depend on how many runs are drawn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def sample_curricula(
    *,
    num_runs: int,
    pool_size: int,
    batch_size: int,
    subset_size: int | None = None,
    epochs: int = 1,
    num_steps: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Random-subset, random-order curricula (see module docstring).

    Args:
      num_runs: R.
      pool_size: N; ids are ``0 .. N-1``.
      batch_size: B.
      subset_size: k examples per run (default: the whole pool).
      epochs: passes over the subset (ignored when ``num_steps`` is given).
      num_steps: T; if given, epochs repeat until T batches are made.
      seed: base seed.

    Returns:
      ``int32[R, T, B]`` with -1 padding.
    """
    subset_size = pool_size if subset_size is None else subset_size
    for name, value in [("num_runs", num_runs), ("pool_size", pool_size)]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 1 <= subset_size <= pool_size:
        raise ValueError(
            f"subset_size must be between 1 and the pool size {pool_size}, got {subset_size}"
        )
    if batch_size > subset_size:
        raise ValueError(
            f"batch size {batch_size} is larger than the {subset_size} examples a run draws "
            f"from the pool of {pool_size}"
        )
    if num_steps is not None and num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_steps is None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")

    per_epoch = -(-subset_size // batch_size)
    n_epochs = -(-num_steps // per_epoch) if num_steps is not None else epochs
    n_steps = num_steps if num_steps is not None else n_epochs * per_epoch
    out = np.full((num_runs, n_steps, batch_size), -1, np.int32)
    padded = per_epoch * batch_size
    for r in range(num_runs):
        rng = np.random.default_rng([seed, r])
        subset = rng.choice(pool_size, size=subset_size, replace=False)
        epochs_ids = []
        for _ in range(n_epochs):
            order = np.full(padded, -1, np.int64)
            order[:subset_size] = rng.permutation(subset)
            epochs_ids.append(order.reshape(per_epoch, batch_size))
        out[r] = np.concatenate(epochs_ids)[:n_steps]
    return out


def validate_curricula(batches: np.ndarray, *, pool_size: int | None = None) -> np.ndarray:
    """Checks a curriculum set and returns it as ``int32[R, T, B]``.

    Raises ``ValueError`` for a wrong rank, ids below -1 or not below ``pool_size``, and steps
    made only of padding (they would still advance a stateful optimizer).
    """
    batches = np.asarray(batches)
    if batches.ndim == 2:
        batches = batches[None]
    if batches.ndim != 3 or min(batches.shape) == 0:
        raise ValueError(f"curricula must be int[R, T, B] with R, T, B >= 1, got {batches.shape}")
    if not np.issubdtype(batches.dtype, np.integer):
        raise ValueError(f"curricula must hold integer ids, got dtype {batches.dtype}")
    if (batches < -1).any():
        bad = sorted(set(batches[batches < -1].tolist()))[:5]
        raise ValueError(f"curricula hold negative ids other than the -1 padding: {bad}")
    if pool_size is not None:
        if (batches >= pool_size).any():
            bad = sorted(set(batches[batches >= pool_size].tolist()))[:5]
            raise ValueError(
                f"curricula use ids {bad} that are not in the pool of {pool_size} examples "
                f"(ids 0..{pool_size - 1})"
            )
        if batches.shape[2] > pool_size:
            raise ValueError(
                f"batch size {batches.shape[2]} is larger than the pool of {pool_size} examples"
            )
    empty = np.argwhere((batches < 0).all(axis=2))
    if len(empty):
        r, t = empty[0]
        raise ValueError(f"run {r} step {t + 1} holds only padding (-1): every step needs an id")
    return batches.astype(np.int32)


def _pad_runs(runs: Sequence[Sequence[Sequence[int]]], source: str) -> np.ndarray:
    if not runs or any(len(run) == 0 for run in runs):
        raise ValueError(f"{source}: a curriculum needs at least one run and one batch per run")
    lengths = sorted({len(run) for run in runs})
    if len(lengths) > 1:
        raise ValueError(f"{source}: runs must have the same number of steps, got {lengths}")
    width = max(len(batch) for run in runs for batch in run)
    out = np.full((len(runs), lengths[0], width), -1, np.int64)
    for r, run in enumerate(runs):
        for t, batch in enumerate(run):
            if len(batch):
                out[r, t, : len(batch)] = batch
    return out


def load_curricula(path: str | Path, *, pool_size: int | None = None) -> np.ndarray:
    """Reads explicit curricula from a file; returns ``int32[R, T, B]`` (-1 padded).

    Formats:

    * ``.json``: a list of runs, each a list of batches, each a list of ids; or one run (a
      list of batches); or ``{"runs": [...]}``.
    * anything else, text: one batch per line, ids separated by spaces or commas; a blank line
      starts the next run; lines starting with ``#`` are comments.

    Batches shorter than the widest one are padded with -1. Ids are checked against
    ``pool_size`` when it is given.
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            if "runs" not in data:
                raise ValueError(f"{path}: a JSON object curriculum needs a 'runs' key")
            data = data["runs"]
        if not isinstance(data, list) or not data:
            raise ValueError(f"{path}: expected a non-empty list of runs or batches")
        runs = [data] if all(isinstance(x, int) for x in data[0]) else data
        try:
            runs = [[[int(i) for i in batch] for batch in run] for run in runs]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: batches must be lists of integer ids ({err})") from None
    else:
        runs, current = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line.startswith("#"):
                continue
            if not line:
                if current:
                    runs.append(current)
                    current = []
                continue
            try:
                current.append([int(tok) for tok in line.replace(",", " ").split()])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: not a list of integer ids: {line!r}") from None
        if current:
            runs.append(current)
    return validate_curricula(_pad_runs(runs, str(path)), pool_size=pool_size)


def save_curricula(path: str | Path, batches: np.ndarray) -> None:
    """Writes curricula as JSON (padding dropped), readable by :func:`load_curricula`."""
    batches = validate_curricula(batches)
    runs = [[[int(i) for i in batch if i >= 0] for batch in run] for run in batches]
    Path(path).write_text(json.dumps({"runs": runs}))
