"""The training loop of the local pretraining and the format warm-up: ``scan`` over a chunk
of steps per compiled call, batches drawn epoch by epoch.

Each epoch is a fresh permutation of the examples drawn from one ``numpy`` generator
(``default_rng(seed)``), which first gives ``new_epoch`` the chance to rebuild the example
arrays (the pretraining corrupts its windows afresh); the steps left over from one epoch
are taken before the next epoch's. Step ``k`` (0-based) gets the key
``jax.random.fold_in(key, k)``. The loss of every chunk (the mean of its steps' losses) is
returned, so a chunk is one point of the loss curve.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.training.optim import Optimizer


def train_in_chunks(
    loss: Callable[[object, dict, jax.Array], jax.Array],
    params,
    optimizer: Optimizer,
    new_epoch: Callable[[np.random.Generator], dict[str, np.ndarray]],
    *,
    num_examples: int,
    num_steps: int,
    batch_size: int,
    chunk_steps: int,
    seed: int,
    key: jax.Array,
    label: str,
    progress: bool,
) -> tuple[object, np.ndarray]:
    """Trains ``params`` for ``num_steps`` updates of ``optimizer`` on ``loss``.

    Args:
      loss: ``loss(params, batch, rng) -> scalar``; ``batch`` holds ``[batch_size, ...]`` rows.
      params: the starting parameters (copied: the caller's arrays are not donated).
      optimizer: its ``tx`` makes the updates.
      new_epoch: ``rng -> {name: [num_examples, ...] array}``, called at each new epoch
        before the permutation is drawn from the same ``rng``.
      num_examples: rows of the arrays ``new_epoch`` returns.
      num_steps, batch_size, chunk_steps: updates, rows per update, updates per call.
      seed: the ``numpy`` generator of the order (and of ``new_epoch``).
      key: the base key of the per-step rng.
      label: names the loop in the progress lines.
      progress: print a line after every chunk.

    Returns:
      ``(params, float32[num_chunks] mean loss of each chunk)``.
    """

    def chunk(carry, batches):
        def body(carry, batch):
            p, s, step = carry
            value, grads = jax.value_and_grad(loss)(p, batch, jax.random.fold_in(key, step))
            updates, s = optimizer.tx.update(grads, s, p)
            return (jax.tree_util.tree_map(jnp.add, p, updates), s, step + 1), value

        return jax.lax.scan(body, carry, batches)

    chunk = jax.jit(chunk, donate_argnums=0)
    params = jax.tree_util.tree_map(jnp.array, params)  # a copy: the carry is donated
    carry = (params, optimizer.tx.init(params), jnp.zeros((), jnp.int32))
    rng = np.random.default_rng(seed)
    order, arrays = np.zeros(0, np.int64), {}
    losses, done, t0 = [], 0, time.perf_counter()
    while done < num_steps:
        c = min(chunk_steps, num_steps - done)
        need = c * batch_size
        while len(order) < need:  # a new epoch: fresh arrays (if any) and a fresh order
            arrays = new_epoch(rng)
            order = np.concatenate([order, rng.permutation(num_examples)])
        idx, order = order[:need], order[need:]
        batches = {k: jnp.asarray(v[idx].reshape(c, batch_size, -1)) for k, v in arrays.items()}
        carry, chunk_losses = chunk(carry, batches)
        losses.append(float(np.mean(np.asarray(chunk_losses))))
        done += c
        if progress:
            print(
                f"{label} step {done}/{num_steps} loss {losses[-1]:.3f} "
                f"({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    return jax.device_get(carry[0]), np.asarray(losses, np.float32)
