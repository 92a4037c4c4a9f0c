"""Pieces the ridge solvers share: masked ids and the X^T y right-hand side."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_ids(ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``ids[..., B]`` -> (ids with padding clipped to 0, float weights 0/1)."""
    valid = ids >= 0
    return jnp.where(valid, ids, 0), valid.astype(jnp.float32)


def rhs_one(ids, w, Lp, y, num_train: int, use_A: bool, use_B: bool) -> jax.Array:
    """X^T y for one test example: ``[P]`` with the A block then the B block.

    Args:
      ids, w: ``[S, B]`` safe ids and weights of the rows.
      Lp, y: ``[S]``.
    """
    parts = []
    dtype = Lp.dtype
    if use_A:
        parts.append(jnp.zeros(num_train, dtype).at[ids].add(w * (Lp * y)[:, None]))
    if use_B:
        parts.append(jnp.zeros(num_train, dtype).at[ids].add(w * y[:, None]))
    return jnp.concatenate(parts)


def predict_rows(theta, ids, w, Lp, num_train: int, use_A: bool, use_B: bool) -> jax.Array:
    """X theta for one test example: ``[S]``."""
    out = jnp.zeros(Lp.shape, Lp.dtype)
    off = 0
    if use_A:
        a = theta[:num_train]
        out = out + Lp * jnp.sum(a[ids] * w, axis=-1)
        off = num_train
    if use_B:
        b = theta[off : off + num_train]
        out = out + jnp.sum(b[ids] * w, axis=-1)
    return out


def scatter_rows(v, ids, w, Lp, num_train: int, use_A: bool, use_B: bool) -> jax.Array:
    """X^T v for one test example, ``v: [S]`` -> ``[P]``."""
    dtype = Lp.dtype
    parts = []
    if use_A:
        parts.append(jnp.zeros(num_train, dtype).at[ids].add(w * (Lp * v)[:, None]))
    if use_B:
        parts.append(jnp.zeros(num_train, dtype).at[ids].add(w * v[:, None]))
    return jnp.concatenate(parts)
