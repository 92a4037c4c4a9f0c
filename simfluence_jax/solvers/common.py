"""Pieces the ridge solvers share: masked ids, the row products X theta and X^T v.

Rows are grouped as ``ids: [T, R, B]`` (step, run, slot). A ``kernel = (F [T, T],
scales [T, R])`` turns the count rows into the optimizer kernel's rows
``s_t sum_k F[t, k] m(c_k)`` (see ``problem.RidgeProblem``); ``None`` keeps plain counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def occurrences(ids: np.ndarray, num_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each training id occurs, on the host: ``(rows int32[N, O], weights float32[N, O])``.

    ``rows[i, o]`` is the flat row index ``t * R + r`` of the o-th batch slot holding id i
    (an id twice in a batch is listed twice), padded to the largest count O with row 0 and
    weight 0. It depends only on the batch ids, not on the kernel's ``mu`` or the losses.
    """
    ids = np.asarray(ids)
    B = ids.shape[-1]
    flat = ids.reshape(-1)
    row = np.repeat(np.arange(flat.size // B, dtype=np.int64), B)
    keep = flat >= 0
    slot_id, row = flat[keep].astype(np.int64), row[keep]
    order = np.argsort(slot_id, kind="stable")
    slot_id, row = slot_id[order], row[order]
    count = np.bincount(slot_id, minlength=num_train)
    width = max(1, int(count.max(initial=0)))
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    pos = np.arange(slot_id.size) - start[slot_id]
    rows = np.zeros((num_train, width), np.int32)
    weights = np.zeros((num_train, width), np.float32)
    rows[slot_id, pos] = row
    weights[slot_id, pos] = 1.0
    return rows, weights


def masked_ids(ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``ids[..., B]`` -> (ids with padding clipped to 0, float weights 0/1)."""
    valid = ids >= 0
    return jnp.where(valid, ids, 0), valid.astype(jnp.float32)


def _filter(g, kernel):
    """Row values ``g [T, R]`` of the count rows -> those of the kernel rows."""
    if kernel is None:
        return g
    F, scales = kernel
    return scales * (F @ g)


def _filter_transpose(u, kernel):
    if kernel is None:
        return u
    F, scales = kernel
    return F.T @ (scales * u)


def predict_rows(
    theta, ids, w, Lp, num_train: int, use_A: bool, use_B: bool, kernel=None
) -> jax.Array:
    """X theta for one test example: ``[T, R]`` (``ids, w: [T, R, B]``, ``Lp: [T, R]``)."""
    out = jnp.zeros(Lp.shape, Lp.dtype)
    off = 0
    if use_A:
        a = theta[:num_train]
        out = out + Lp * _filter(jnp.sum(a[ids] * w, axis=-1), kernel)
        off = num_train
    if use_B:
        b = theta[off : off + num_train]
        out = out + _filter(jnp.sum(b[ids] * w, axis=-1), kernel)
    return out


def scatter_rows(v, ids, w, Lp, num_train: int, use_A: bool, use_B: bool, kernel=None) -> jax.Array:
    """X^T v for one test example, ``v: [T, R]`` -> ``[P]`` (A block, then B block)."""
    dtype = Lp.dtype

    def back(u):
        u = _filter_transpose(u, kernel)
        return jnp.zeros(num_train, dtype).at[ids].add(w * u[..., None])

    parts = []
    if use_A:
        parts.append(back(Lp * v))
    if use_B:
        parts.append(back(v))
    return jnp.concatenate(parts)


def rhs_one(ids, w, Lp, y, num_train: int, use_A: bool, use_B: bool, kernel=None):
    """X^T y for one test example: ``[P]``."""
    return scatter_rows(y, ids, w, Lp, num_train, use_A, use_B, kernel)


def dense_rows(ids, w, num_train: int, kernel) -> jax.Array:
    """``[T, R, N]``: the shared rows ``s_t x_t`` (the design of B; A's is it times Lp)."""
    T, R = ids.shape[:2]
    counts = (
        jnp.zeros((T, R, num_train), w.dtype)
        .at[jnp.arange(T)[:, None, None], jnp.arange(R)[None, :, None], ids]
        .add(w)
    )
    if kernel is None:
        return counts
    F, scales = kernel
    return scales[..., None] * jnp.einsum("tk,krn->trn", F, counts)


def map_chunks(fn, per_test, chunk: int, test_axis_out=0):
    """``fn(*per_test)`` computed ``chunk`` test examples at a time (``lax.map``).

    ``per_test`` arrays have the test axis (length M) first; M is padded to a multiple of
    ``chunk`` with copies of the last test example. ``fn`` maps a chunk to outputs whose
    test axis is ``test_axis_out``; the result has M entries along it, as ``fn`` on all.
    """
    M = per_test[0].shape[0]
    chunk = max(1, min(int(chunk), M))
    if chunk == M:
        return fn(*per_test)
    n = -(-M // chunk)
    pad = n * chunk - M

    def split(x):
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        return x.reshape((n, chunk) + x.shape[1:])

    out = jax.lax.map(lambda xs: fn(*xs), tuple(split(x) for x in per_test))

    def merge(y):
        a = test_axis_out
        y = jnp.moveaxis(y, 0, a)  # [..., n, chunk, ...] with n at the test axis
        y = y.reshape(y.shape[:a] + (n * chunk,) + y.shape[a + 2 :])
        return jax.lax.slice_in_dim(y, 0, M, axis=a)

    return jax.tree_util.tree_map(merge, out)
