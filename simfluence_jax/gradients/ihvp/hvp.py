"""Hessian-vector products of the mean training loss, and a linear map's explicit matrix.

Only Hessian-vector products are formed, by forward-over-reverse differentiation
(``jax.jvp`` of ``jax.grad``; Pearlmutter, 1994, "Fast Exact Multiplication by the
Hessian"), chunked over the examples, so memory scales with the chunk, not the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from simfluence_jax.gradients.per_example import LossFn, map_chunks

Matvec = Callable[[jax.Array], jax.Array]


def mean_loss_hvp(
    loss_fn: LossFn, theta: Any, frozen: Any, inputs, *, chunk_size: int | None = 64
) -> Matvec:
    """``hvp(v float32[P]) -> float32[P]``: ``H v`` for the mean loss over ``inputs``.

    ``H = (1/n) sum_i hess l(z_i; theta)`` in the raveled coordinates of ``theta``: the HVP
    of each chunk's summed loss (padding rows weighted 0), accumulated by a ``lax.scan`` over
    chunks, so memory scales with ``chunk_size``. jit-safe; ``jax.vmap`` it over vectors.
    """
    w0, unravel = ravel_pytree(theta)
    leaves = jax.tree_util.tree_leaves(inputs)
    n = leaves[0].shape[0]
    rows = {"inputs": inputs, "weight": jnp.ones((n,), jnp.float32)}

    def hvp(v):
        if chunk_size is None or chunk_size >= n:
            chunks = jax.tree_util.tree_map(lambda x: x[None], rows)
        else:
            n_chunks = -(-n // chunk_size)
            pad = n_chunks * chunk_size - n

            def chunked(x, zero=False):
                if pad:
                    fill = jnp.zeros_like(x[:pad]) if zero else jnp.repeat(x[:1], pad, axis=0)
                    x = jnp.concatenate([x, fill])
                return x.reshape((n_chunks, chunk_size) + x.shape[1:])

            chunks = {
                "inputs": jax.tree_util.tree_map(chunked, inputs),
                "weight": chunked(rows["weight"], zero=True),
            }

        def one_chunk(acc, c):
            grad = jax.grad(
                lambda w: jnp.sum(c["weight"] * loss_fn(unravel(w), frozen, c["inputs"]))
            )
            return acc + jax.jvp(grad, (w0,), (v,))[1], None

        total, _ = jax.lax.scan(one_chunk, jnp.zeros_like(v), chunks)
        return total / n

    return hvp


def explicit_matrix(matvec: Matvec, dim: int, *, chunk_size: int | None = 256) -> jax.Array:
    """``float32[P, P]``: a linear map's matrix from ``P`` matvecs on the unit vectors."""
    eye = jnp.eye(dim, dtype=jnp.float32)
    return map_chunks(jax.vmap(matvec), eye, chunk_size=chunk_size).T
