"""Counterfactual curricula: edits of an observed curriculum ``int32[T, B]``.

Each edit returns a new curriculum (the input is never modified). Edits that change how
many examples are trained on re-pack the flat sequence of examples into batches of the
same size, keeping their order, so the result is what retraining without (or with extra
copies of) those examples would feed the model; the last batch is ragged (``-1`` padded).
Curricula of different lengths stack with ``stack``, which pads with all-padding steps
(simulated as no update).

Ids are checked: they must be integers (``1.7`` is an error, not example 1) and, for
``remove``, ``duplicate``, ``move`` and ``move_to_end``, occur in the curriculum, since an edit
that silently changes nothing reads as "this example does not matter". Pass
``missing="ignore"`` to ``remove`` / ``duplicate`` to skip ids that do not occur.

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


def _ids(ids, what: str = "ids") -> np.ndarray:
    """``int64[k]`` ids, checked: integers (integral floats such as ``3.0`` are accepted),
    non-negative."""
    arr = np.atleast_1d(np.asarray(ids))
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a list of integers, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = arr[~np.isfinite(arr) | (arr != np.round(arr))]
            raise ValueError(f"{what} must be integers, got {bad.tolist()}")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be non-negative integers, got {ids!r}")
    if arr.min() < 0:
        raise ValueError(f"{what} must be non-negative integers, got {arr[arr < 0].tolist()}")
    return arr.astype(np.int64)


def _example(example) -> int:
    if isinstance(example, (bool, np.bool_)):
        raise ValueError(f"example must be an integer id, got {example!r}")
    return int(_ids([example], "example")[0])


def _check_present(b: np.ndarray, ids: np.ndarray, missing: str) -> np.ndarray:
    """The ids that occur in curriculum ``b``; raises for the others unless ignored."""
    if missing not in ("raise", "ignore"):
        raise ValueError(f"missing must be 'raise' or 'ignore', got {missing!r}")
    present = np.isin(ids, b[b >= 0])
    if not present.all() and missing == "raise":
        absent = sorted(set(ids[~present].tolist()))
        raise ValueError(
            f"ids {absent} do not occur in the curriculum, so the edit would not change it; "
            "pass missing='ignore' to skip them"
        )
    return ids[present]


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


def remove(
    batches, ids: Sequence[int], *, repack: bool = True, missing: str = "raise"
) -> np.ndarray:
    """Drops every occurrence of ``ids``.

    With ``repack`` (default) the remaining examples are re-packed into full batches;
    otherwise their slots become padding and the step structure is kept.

    Raises:
      ValueError: for ids that are not integers, or (unless ``missing="ignore"``) do not
        occur in the curriculum.
    """
    b = _curriculum(batches)
    drop = np.isin(b, _check_present(b, _ids(ids), missing))
    if not repack:
        return np.where(drop, -1, b).astype(np.int32)
    seq = b[(b >= 0) & ~drop]
    return pack(seq, b.shape[1])


def duplicate(batches, ids: Sequence[int], *, times: int = 1, missing: str = "raise") -> np.ndarray:
    """Each occurrence of ``ids`` is followed by ``times`` extra copies; re-packed.

    Raises:
      ValueError: for ids that are not integers, or (unless ``missing="ignore"``) do not
        occur in the curriculum.
    """
    if isinstance(times, bool) or not isinstance(times, (int, np.integer)) or times < 0:
        raise ValueError(f"times must be an integer >= 0, got {times!r}")
    b = _curriculum(batches)
    seq = flatten(b)
    reps = np.where(np.isin(seq, _check_present(b, _ids(ids), missing)), times + 1, 1)
    return pack(np.repeat(seq, reps), b.shape[1])


def reverse(batches) -> np.ndarray:
    """The same batches in reverse step order."""
    return _curriculum(batches)[::-1].copy()


def move(batches, example: int, position: int) -> np.ndarray:
    """Moves every occurrence of ``example`` to flat position ``position`` (0 = first
    example trained on; negative counts from the end, -1 = last); re-packed."""
    b = _curriculum(batches)
    seq = flatten(b)
    hits = seq == _example(example)
    if not hits.any():
        raise ValueError(f"example {example} does not occur in the curriculum")
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
        raise ValueError(f"position must be an integer, got {position!r}")
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
    hits = seq == _example(example)
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
