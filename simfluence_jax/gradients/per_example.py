"""Per-example gradients of any protocol model: vmapped, chunked, restricted, projected.

For a loss ``l(theta; z)`` and N examples the per-example gradient matrix is

    G[i] = ravel(grad_theta l(theta; z_i))          float32[N, P]

computed as ``vmap`` of ``grad`` over single examples (each fed to the model as a batch of
one), in chunks of ``chunk_size`` examples (``lax.map`` over chunks), so at most
``chunk_size`` gradients are alive at once. ``P`` counts only the selected parameters
(``select``: all of them, a regular expression on the ``/``-joined parameter path, or a
predicate on the path); LoRA-only and prompt-only gradients come from differentiating the
training method's trainable pytree (:func:`method_loss`), which holds only those parameters.

Optionally each gradient is mapped to ``dim`` coordinates by a random projection
(Johnson-Lindenstrauss; the TRAK recipe, Park et al., 2023, arXiv 2303.14186):

* ``gaussian``: ``Phi float32[P, dim]`` with i.i.d. ``N(0, 1/dim)`` entries, so
  ``E <Phi^T x, Phi^T y> = <x, y>`` and ``Var = (|x|^2 |y|^2 + <x, y>^2) / dim``;
* ``countsketch``: each coordinate ``p`` goes to one bucket ``h(p)`` with a random sign
  ``s(p)`` (Charikar et al., 2002; the sparse JL transform of Kane & Nelson, 2014), unbiased
  with a variance no larger than the Gaussian one, at ``O(P)`` cost per gradient instead
  of ``O(P dim)``.

Both matrices are generated ``block`` rows at a time from ``fold_in(PRNGKey(seed), b)``
inside the projection, so no more than one ``[block, dim]`` piece ever exists, and the same
``(P, seed)`` always gives the same matrix (train and test gradients share it).

Every function here is pure and jit-safe; ``loss_fn`` (a Python callable), ``chunk_size``
and ``projection`` are static.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Params = Any
Batch = Any

#: ``loss_fn(theta, frozen, inputs) -> float32[B]``: per-example losses of a batch.
LossFn = Callable[[Params, Any, Batch], jax.Array]
#: ``None`` / ``"all"``, a regular expression on the ``/``-joined path, or ``path -> bool``.
Select = None | str | Callable[[tuple[str, ...]], bool]


# ---------------------------------------------------------------------------------------------
# Losses from models and training methods.


def model_loss(model) -> LossFn:
    """``loss_fn(params, _, batch) = model.per_example_loss(params, batch)`` (no dropout)."""

    def loss_fn(theta, frozen, batch):
        del frozen
        return model.per_example_loss(theta, batch, rng=None)

    return loss_fn


def method_loss(model, method) -> LossFn:
    """The loss a training method trains: ``method.loss(model, trainable, frozen, inputs)``.

    ``theta`` is the method's trainable pytree (all parameters, a LoRA delta, a soft prompt
    or the top layers), ``frozen`` its ``MethodData.frozen`` and ``inputs`` rows of its
    ``MethodData.pool`` / ``.test``; dropout is off.
    """

    def loss_fn(theta, frozen, inputs):
        return method.loss(model, theta, frozen, inputs, rng=None)

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Parameter selection.


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def param_paths(theta: Params) -> list[tuple[str, ...]]:
    """The path of every leaf of ``theta`` as a tuple of strings, in tree order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(theta)
    return [tuple(_key_name(k) for k in path) for path, _ in leaves]


def param_mask(theta: Params, select: Select = None) -> Params:
    """A pytree of Python bools shaped like ``theta``: which leaves are differentiated.

    Args:
      theta: a parameter pytree.
      select: ``None`` or ``"all"`` (every leaf), a regular expression searched in the
        ``/``-joined path (``r"^head/"``), or a predicate on the path tuple.

    Raises:
      ValueError: if ``select`` selects no parameter.
    """
    paths = param_paths(theta)
    if select is None or select == "all":
        keep = [True] * len(paths)
    elif isinstance(select, str):
        pattern = re.compile(select)
        keep = [bool(pattern.search("/".join(p))) for p in paths]
    elif callable(select):
        keep = [bool(select(p)) for p in paths]
    else:
        raise ValueError(f"select must be None, 'all', a regex or a callable, got {select!r}")
    if not any(keep):
        shown = ", ".join("/".join(p) for p in paths[:8])
        raise ValueError(f"select={select!r} matches no parameter (paths: {shown} ...)")
    treedef = jax.tree_util.tree_structure(theta)
    return jax.tree_util.tree_unflatten(treedef, keep)


def split_params(theta: Params, mask: Params) -> tuple[Params, Params]:
    """``(selected, rest)``: ``theta`` with the unselected (resp. selected) leaves ``None``."""
    sel = jax.tree_util.tree_map(lambda x, m: x if m else None, theta, mask)
    rest = jax.tree_util.tree_map(lambda x, m: None if m else x, theta, mask)
    return sel, rest


def merge_params(selected: Params, rest: Params) -> Params:
    """Inverse of :func:`split_params`."""
    return jax.tree_util.tree_map(
        lambda s, r: r if s is None else s, selected, rest, is_leaf=lambda x: x is None
    )


@dataclasses.dataclass(frozen=True)
class Restricted:
    """A loss over a subset of the parameters: ``loss_fn(sel, (rest, frozen), inputs)``.

    Attributes:
      loss_fn: the restricted loss, itself a :data:`LossFn`.
      theta: the selected leaves (others ``None``).
      frozen: ``(rest, frozen)``, passed as an argument so that jit never folds large
        parameters into the program as constants.
      num_params: ``P``, the number of selected scalars.
    """

    loss_fn: LossFn
    theta: Params
    frozen: Any
    num_params: int


def restrict(loss_fn: LossFn, theta: Params, frozen: Any = None, *, select: Select = None):
    """Restricts differentiation to the leaves chosen by ``select`` (see :func:`param_mask`).

    Returns a :class:`Restricted` whose ``loss_fn(sel, (rest, frozen), inputs)`` equals
    ``loss_fn(merge(sel, rest), frozen, inputs)``.
    """
    mask = param_mask(theta, select)
    sel, rest = split_params(theta, mask)

    def restricted(sel_, aux, inputs):
        rest_, frozen_ = aux
        return loss_fn(merge_params(sel_, rest_), frozen_, inputs)

    size = sum(int(jnp.size(x)) for x in jax.tree_util.tree_leaves(sel))
    return Restricted(loss_fn=restricted, theta=sel, frozen=(rest, frozen), num_params=size)


# ---------------------------------------------------------------------------------------------
# Random projections.

PROJECTIONS = ("gaussian", "countsketch")


@dataclasses.dataclass(frozen=True)
class Projection:
    """A random linear map ``R^P -> R^dim`` applied row-wise (see module docstring).

    Attributes:
      dim: output dimension.
      kind: ``gaussian`` (dense JL) or ``countsketch`` (sparse, ``O(P)`` per row).
      seed: the matrix is a function of ``(seed, P)`` only.
      block: rows of the matrix generated at a time.
    """

    dim: int
    kind: str = "gaussian"
    seed: int = 0
    block: int = 8192

    def __post_init__(self):
        if self.kind not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.kind!r}; known: {', '.join(PROJECTIONS)}")
        if self.dim < 1 or self.block < 1:
            raise ValueError(
                f"projection needs dim >= 1 and block >= 1, got {self.dim}, {self.block}"
            )

    def _piece(self, b: jax.Array | int, x: jax.Array) -> jax.Array:
        """``x float32[c, r] @ Phi[rows of block b]`` for a block of r rows."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), b)
        r = x.shape[1]
        if self.kind == "gaussian":
            phi = jax.random.normal(key, (r, self.dim), x.dtype) / jnp.sqrt(self.dim)
            return x @ phi
        k_bucket, k_sign = jax.random.split(key)
        bucket = jax.random.randint(k_bucket, (r,), 0, self.dim)
        sign = jax.random.rademacher(k_sign, (r,), x.dtype)
        return jax.ops.segment_sum((x * sign).T, bucket, num_segments=self.dim).T

    def __call__(self, x: jax.Array) -> jax.Array:
        """``float32[c, P] -> float32[c, dim]``."""
        c, P = x.shape
        full, rem = divmod(P, self.block)
        out = jnp.zeros((c, self.dim), x.dtype)
        if full:

            def body(b, acc):
                piece = jax.lax.dynamic_slice(x, (0, b * self.block), (c, self.block))
                return acc + self._piece(b, piece)

            out = jax.lax.fori_loop(0, full, body, out)
        if rem:
            out = out + self._piece(full, x[:, full * self.block :])
        return out


# ---------------------------------------------------------------------------------------------
# Per-example gradients.


def _num_rows(inputs) -> int:
    leaves = jax.tree_util.tree_leaves(inputs)
    if not leaves:
        raise ValueError("inputs hold no arrays")
    n = leaves[0].shape[0]
    if any(x.shape[0] != n for x in leaves):
        raise ValueError(f"inputs disagree on the number of rows: {[x.shape[0] for x in leaves]}")
    return n


def map_chunks(fn: Callable[[Batch], jax.Array], inputs: Batch, *, chunk_size: int | None):
    """``fn`` applied to ``inputs`` (leaves ``[n, ...]``) ``chunk_size`` rows at a time.

    ``fn`` maps a batch of rows to an array with the same leading axis. The rows are padded
    (with copies of row 0, dropped again) to a multiple of ``chunk_size`` and the chunks
    processed one after another by ``lax.map``, so memory scales with ``chunk_size``.
    Returns ``fn(inputs)`` for ``chunk_size=None`` or ``>= n``.
    """
    n = _num_rows(inputs)
    if chunk_size is None or chunk_size >= n:
        return fn(inputs)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n

    def chunked(x):
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)])
        return x.reshape((n_chunks, chunk_size) + x.shape[1:])

    out = jax.lax.map(fn, jax.tree_util.tree_map(chunked, inputs))
    return out.reshape((n_chunks * chunk_size,) + out.shape[2:])[:n]


def single_grad(loss_fn: LossFn, theta: Params, frozen: Any, example: Batch) -> jax.Array:
    """``float32[P]``: the raveled gradient of one example (leaves without a batch axis)."""
    batch = jax.tree_util.tree_map(lambda x: x[None], example)
    grads = jax.grad(lambda th: loss_fn(th, frozen, batch)[0])(theta)
    return ravel_pytree(grads)[0]


def per_example_grads(
    loss_fn: LossFn,
    theta: Params,
    frozen: Any,
    inputs: Batch,
    *,
    chunk_size: int | None = 32,
    projection: Projection | None = None,
) -> jax.Array:
    """Per-example gradients ``float32[N, P]`` (``[N, dim]`` with a projection).

    Args:
      loss_fn: ``loss_fn(theta, frozen, inputs) -> float32[B]``; use :func:`restrict` to
        differentiate a subset of the parameters.
      theta: the differentiated parameters.
      frozen: passed through to ``loss_fn``.
      inputs: N examples, every leaf ``[N, ...]``.
      chunk_size: examples whose gradients are alive at once.
      projection: optional :class:`Projection`, applied chunk by chunk.
    """

    def chunk(rows):
        g = jax.vmap(lambda z: single_grad(loss_fn, theta, frozen, z))(rows)
        return projection(g) if projection is not None else g

    return map_chunks(chunk, inputs, chunk_size=chunk_size)


def dots_with(
    loss_fn: LossFn,
    theta: Params,
    frozen: Any,
    inputs: Batch,
    V: jax.Array,
    *,
    chunk_size: int | None = 32,
    projection: Projection | None = None,
) -> jax.Array:
    """``float32[N, M]``: ``<g_i, V_j>`` for every example i and row ``V_j`` of ``V``.

    ``V`` is ``float32[M, P]`` (``[M, dim]`` with a projection, then ``g_i`` is projected
    first). Only ``chunk_size`` gradients exist at a time; ``[N, P]`` is never formed.
    """

    def chunk(rows):
        g = jax.vmap(lambda z: single_grad(loss_fn, theta, frozen, z))(rows)
        if projection is not None:
            g = projection(g)
        return g @ V.T

    return map_chunks(chunk, inputs, chunk_size=chunk_size)


def gradient_dots(
    loss_fn: LossFn,
    theta: Params,
    frozen: Any,
    train_inputs: Batch,
    test_inputs: Batch,
    *,
    chunk_size: int | None = 32,
    projection: Projection | None = None,
) -> jax.Array:
    """``float32[N, M]``: ``<grad l(z_i; theta), grad l(z_test_j; theta)>``.

    The M test gradients are kept (``[M, P]`` or ``[M, dim]``); the N training gradients
    are formed ``chunk_size`` at a time and dotted with them.
    """
    G_test = per_example_grads(
        loss_fn, theta, frozen, test_inputs, chunk_size=chunk_size, projection=projection
    )
    return dots_with(
        loss_fn, theta, frozen, train_inputs, G_test, chunk_size=chunk_size, projection=projection
    )
