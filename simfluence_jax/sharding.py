"""Sharding the test-example axis over a device mesh.

Test examples are independent in every fit and rollout, so the per-test arrays are split
along their test axis across the devices of a one-dimensional ``Mesh`` named ``"test"``
and each device runs the same vmapped code on its share with ``jax.shard_map``: no
communication is needed. M is padded up to a multiple of the device count with copies of
the last test example, and the padding is dropped from the result.

A mesh may span several processes (``jax.distributed``): every process then holds the whole
problem, places its own shards of the per-test arrays on its devices, and gets the whole
result back (an all-gather over the test axis, the only communication).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TEST_AXIS = "test"


def test_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all local devices) with axis ``"test"``."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (TEST_AXIS,))


def _pad_axis(x, axis: int, multiple: int):
    n = x.shape[axis]
    pad = (-n) % multiple
    if pad == 0:
        return x
    edge = jnp.take(x, jnp.full((pad,), n - 1), axis=axis)
    return jnp.concatenate([x, edge], axis=axis)


def map_over_test(
    fn: Callable,
    per_test: Sequence,
    *,
    shared: Sequence = (),
    test_axis_in: int = 0,
    test_axis_out: int | Sequence[int] = 0,
    mesh: Mesh | None = None,
):
    """Calls ``fn(*per_test, *shared)``, sharding the test axis of ``per_test`` over ``mesh``.

    Args:
      fn: a jit-compatible function whose outputs keep the test axis at ``test_axis_out``.
      per_test: arrays whose axis ``test_axis_in`` is the test axis (length M).
      shared: arrays replicated on every device.
      test_axis_in: the test axis of every ``per_test`` array.
      test_axis_out: the test axis of each output (an int for all, or one per output).
      mesh: a mesh from ``test_mesh``; ``None`` (or one device) calls ``fn`` directly.

    Returns:
      ``fn``'s outputs, each with exactly M entries along its test axis.
    """
    if mesh is None or mesh.size == 1:
        return fn(*per_test, *shared)
    M = per_test[0].shape[test_axis_in]
    padded = [_pad_axis(jnp.asarray(x), test_axis_in, mesh.size) for x in per_test]

    def spec(axis: int, ndim: int) -> PartitionSpec:
        parts = [None] * ndim
        parts[axis] = TEST_AXIS
        return PartitionSpec(*parts)

    probe = jax.eval_shape(fn, *padded, *shared)
    leaves, treedef = jax.tree_util.tree_flatten(probe)
    axes_out = (
        [test_axis_out] * len(leaves) if isinstance(test_axis_out, int) else list(test_axis_out)
    )
    in_specs = tuple(spec(test_axis_in, x.ndim) for x in padded) + tuple(
        PartitionSpec() for _ in shared
    )
    out_specs = jax.tree_util.tree_unflatten(
        treedef, [spec(a, leaf.ndim) for a, leaf in zip(axes_out, leaves)]
    )
    # Each shard runs independent per-test code; no replication checks are needed.
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    args = (*padded, *shared)
    spanning = any(d.process_index != jax.process_index() for d in mesh.devices.flat)
    if spanning:  # global arrays: each process places the shards of its own devices
        args = tuple(
            jax.device_put(np.asarray(x), NamedSharding(mesh, sp)) for x, sp in zip(args, in_specs)
        )
    out = jax.jit(sharded)(*args)
    out_leaves = jax.tree_util.tree_leaves(out)
    if spanning:
        from jax.experimental import multihost_utils

        out_leaves = [jnp.asarray(multihost_utils.process_allgather(x, tiled=True))
                      for x in out_leaves]  # fmt: skip
    trimmed = [jax.lax.slice_in_dim(x, 0, M, axis=a) for x, a in zip(out_leaves, axes_out)]
    return jax.tree_util.tree_unflatten(treedef, trimmed)
