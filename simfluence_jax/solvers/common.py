"""Pieces the ridge solvers share: masked ids, the row products X theta and X^T v.

Rows are grouped as ``ids: [T, R, B]`` (step, run, slot). A ``kernel = (F [T, T],
scales [T, R])`` turns the count rows into the optimizer kernel's rows
``s_t sum_k F[t, k] m(c_k)`` (see ``problem.RidgeProblem``); ``None`` keeps plain counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
