"""Counterfactual curricula: edits of an observed curriculum ``int32[T, B]``.

Each edit returns a new curriculum (the input is never modified). Edits that change how
many examples are trained on re-pack the flat sequence of examples into batches of the
same size, keeping their order, so the result is what retraining without (or with extra
copies of) those examples would feed the model; the last batch is ragged (``-1`` padded).
Curricula of different lengths stack with ``stack``, which pads with all-padding steps
(simulated as no update).

Under the plain-sum form (alpha = sum A_i) a ragged batch has a smaller alpha than a full
one, which the simulator reads as a loss drop the real model would not show; when an edit
changes the number of examples, change it by a multiple of the batch size or use the
``one_plus_sum`` form.

Example::

    from simfluence_jax import counterfactuals as cf
    edited = cf.remove(batches, [3, 17])          # never train on examples 3 and 17
    edited = cf.move_to_end(batches, 5)           # see example 5 last
    trajectories = simulate(sim, cf.stack([batches, edited]), L0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _curriculum(batches) -> np.ndarray:
    b = np.asarray(batches)
    if b.ndim != 2:
        raise ValueError(f"a curriculum must have shape [T, B], got shape {b.shape}")
    if b.dtype.kind not in "iu":
        raise ValueError(f"a curriculum must hold integer ids, got dtype {b.dtype}")
    if b.size and b.min() < -1:
        raise ValueError(f"curriculum contains id {b.min()}; only -1 may pad")
    return b.astype(np.int32)


def _ids(ids) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(ids))
    if arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
        raise ValueError(f"ids must be non-negative integers, got {ids!r}")
    return arr


def flatten(batches) -> np.ndarray:
    """The examples of a curriculum in training order, padding dropped: ``int32[n]``."""
    b = _curriculum(batches)
    return b[b >= 0]


def pack(sequence, batch_size: int) -> np.ndarray:
    """Packs a flat sequence of ids into ``int32[ceil(n / B), B]``, padding the last batch."""
    seq = np.asarray(sequence, np.int32).reshape(-1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seq.size == 0:
        raise ValueError("cannot pack an empty sequence of examples")
    T = -(-seq.size // batch_size)
    out = np.full(T * batch_size, -1, np.int32)
    out[: seq.size] = seq
    return out.reshape(T, batch_size)


def remove(batches, ids: Sequence[int], *, repack: bool = True) -> np.ndarray:
    """Drops every occurrence of ``ids``.

    With ``repack`` (default) the remaining examples are re-packed into full batches;
    otherwise their slots become padding and the step structure is kept.
    """
    b = _curriculum(batches)
    drop = np.isin(b, _ids(ids))
    if not repack:
        return np.where(drop, -1, b).astype(np.int32)
    seq = b[(b >= 0) & ~drop]
    return pack(seq, b.shape[1])


def duplicate(batches, ids: Sequence[int], *, times: int = 1) -> np.ndarray:
    """Each occurrence of ``ids`` is followed by ``times`` extra copies; re-packed."""
    if times < 0:
        raise ValueError(f"times must be >= 0, got {times}")
    b = _curriculum(batches)
    seq = flatten(b)
    reps = np.where(np.isin(seq, _ids(ids)), times + 1, 1)
    return pack(np.repeat(seq, reps), b.shape[1])


def reverse(batches) -> np.ndarray:
    """The same batches in reverse step order."""
    return _curriculum(batches)[::-1].copy()


def move(batches, example: int, position: int) -> np.ndarray:
    """Moves every occurrence of ``example`` to flat position ``position`` (0 = first
    example trained on; negative counts from the end, -1 = last); re-packed."""
    b = _curriculum(batches)
    seq = flatten(b)
    hits = seq == int(example)
    if not hits.any():
        raise ValueError(f"example {example} does not occur in the curriculum")
    rest = seq[~hits]
    n = rest.size + 1
    if not -n <= position < n:
        raise ValueError(f"position {position} out of range for {rest.size + 1} examples")
    pos = position % n
    moved = np.concatenate([rest[:pos], seq[hits], rest[pos:]])
    return pack(moved, b.shape[1])


def move_to_end(batches, example: int) -> np.ndarray:
    """Moves ``example`` so that it is trained on last."""
    b = _curriculum(batches)
    seq = flatten(b)
    hits = seq == int(example)
    if not hits.any():
        raise ValueError(f"example {example} does not occur in the curriculum")
    return pack(np.concatenate([seq[~hits], seq[hits]]), b.shape[1])


def stack(curricula: Sequence) -> np.ndarray:
    """Stacks curricula ``[T_i, B]`` into ``int32[C, max T_i, B]``, padding with empty steps."""
    cs = [_curriculum(c) for c in curricula]
    if not cs:
        raise ValueError("nothing to stack")
    B = cs[0].shape[1]
    if any(c.shape[1] != B for c in cs):
        raise ValueError(f"curricula have different batch sizes: {[c.shape[1] for c in cs]}")
    T = max(c.shape[0] for c in cs)
    out = np.full((len(cs), T, B), -1, np.int32)
    for i, c in enumerate(cs):
        out[i, : c.shape[0]] = c
    return out


def keep_schedule(learning_rates, num_steps: int) -> np.ndarray | None:
    """The logged schedule ``float[..., T]`` for an edited curriculum of ``num_steps`` steps:
    its first ``num_steps`` rates, extended with the last rate when the edit made the
    curriculum longer. ``None`` stays ``None`` (the run has no logged rates)."""
    if learning_rates is None:
        return None
    lr = np.asarray(learning_rates, np.float32)
    if lr.shape[-1] >= num_steps:
        return lr[..., :num_steps]
    extra = np.repeat(lr[..., -1:], num_steps - lr.shape[-1], axis=-1)
    return np.concatenate([lr, extra], axis=-1)
