"""EK-FAC influence: Kronecker-factored curvature of dense layers, corrected in its eigenbasis.

Influence functions (``gradients.influence``) score ``g_i^T (G + lambda I)^{-1} g_test_j``;
here ``G`` is a Gauss-Newton (Fisher) matrix of the mean training loss, approximated per
dense layer by EK-FAC (George et al., 2018, "Fast Approximate Natural Gradient Descent in a
Kronecker-factored Eigenbasis"), the approximation Grosse et al. (2023, "Studying Large
Language Model Generalization with Influence Functions") use for influence at scale.

**Curvature.** ``G = (1/n) sum_i sum_r w_ir g_ir g_ir^T`` over the n examples of the
Hessian inputs, with rows ``g_ir`` the gradients of ``l(z_i)`` under a label ``r``:

* ``fisher="empirical"`` (default): one row, the true label, ``w = 1`` (empirical Fisher);
* ``fisher="true"``: every class ``c`` of ``num_classes``, ``w = p(c | x_i)`` (read from
  the loss as ``exp(-l)``); for softmax cross-entropy this is the exact Gauss-Newton matrix
  ``J^T (diag p - p p^T) J``, enumerated rather than sampled. It needs inputs carrying an
  integer ``label`` (the classifiers of this package; not sequence targets).

**Blocks.** Every selected dense layer (a 2-D ``kernel`` leaf; ``layers`` selects them by
path) is one block, its ``bias`` sibling folded in as an extra input row: the block
gradient is ``Gb = [grad W; grad b]``, ``float32[d_in + 1, d_out]``. Cross-block curvature
is dropped (block-diagonal), and parameters outside the blocks (embeddings, layer norms)
enter neither the curvature nor the scores.

**Kronecker factors.** K-FAC writes a block as ``A (x) S``, ``A`` the covariance of the
layer's inputs ``x`` (with a 1 appended for the bias) and ``S`` of the gradients ``delta`` at
its outputs. The models here expose only their loss, not their activations, so the factors
are read off the per-example block gradients:

* ``factors="gradient"`` (default, any layer): ``A = (1/n) sum w Gb Gb^T``,
  ``S = (1/n) sum w Gb^T Gb`` and the block ``~ A (x) S / c``, ``c = tr A = tr S``. For a
  layer applied at one position (``Gb = x delta^T``) these are the activation and
  pre-activation-gradient covariances with each example weighted by the squared norm of the
  other side; for a layer applied at many positions (``Gb = sum_t x_t delta_t^T``, a
  transformer layer over tokens) they are the first step of the nearest-Kronecker-product
  iteration from the identity. When the block truly is a Kronecker product they are exactly
  its factors.
* ``factors="activation"``: K-FAC's own ``A = (1/n) sum w x x^T`` and
  ``S = (1/n) sum w delta delta^T``, recovered exactly for a layer with a bias applied at one
  position per example (a hidden layer of an MLP, a head on a pooled vector): there
  ``Gb = x delta^T`` with ``x``'s last entry 1, so ``delta`` is the bias row,
  ``|delta|^2`` its squared norm and ``|x|^2 = |Gb|^2 / |delta|^2``, and
  ``A = (1/n) sum w Gb Gb^T / |delta|^2``, ``S = (1/n) sum w Gb^T Gb / |x|^2``. For a layer
  applied at several positions this is not K-FAC's factor (the bias row is then
  ``sum_t delta_t``); use ``gradient`` there.

**Eigenvalue correction.** With ``A = U_A diag(a) U_A^T`` and ``S = U_S diag(s) U_S^T``,
K-FAC's eigenvalues are ``a_p s_q / c``; EK-FAC keeps the eigenbasis ``U_A (x) U_S`` and
replaces them by the exact diagonal of the block in that basis,

    Lambda[p, q] = (1/n) sum_ir w_ir ((U_A^T Gb_ir U_S)[p, q])^2,

which minimises the Frobenius error over that basis. So the result depends on the factors
only through their eigenvectors, and it is exact whenever they diagonalise the block.

**Inverse.** ``(G + lambda I)^{-1} v`` for each test gradient, block by block:
``U_A ((U_A^T V U_S) / (Lambda + lambda)) U_S^T``. ``lambda = damping`` times the mean of
``Lambda`` over all blocks (``relative_damping=True``, the heuristic of Grosse et al.) or
``damping`` itself. Scores follow ``simfluence_jax.gradients``: train x test, positive lowers
the test loss (the up-weighting influence on the test loss, negated).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from simfluence_jax.gradients.influence import scores_through
from simfluence_jax.gradients.per_example import (
    LossFn,
    _num_rows,
    param_paths,
    restrict,
)

FISHERS = ("empirical", "true")
FACTORS = ("gradient", "activation")


@dataclasses.dataclass(frozen=True)
class EKFACConfig:
    """Options of EK-FAC influence (see the module docstring).

    Attributes:
      damping: ``lambda`` (relative to the mean corrected eigenvalue when
        ``relative_damping``).
      relative_damping: whether ``damping`` is relative.
      layers: regular expression on the ``/``-joined path of the dense kernels (2-D leaves)
        that form blocks, or a predicate on the path; their ``bias`` siblings join them.
      fisher: ``empirical`` (true labels) or ``true`` (every class, weighted by the model's
        probability: the exact Gauss-Newton matrix of softmax cross-entropy).
      num_classes: the classes enumerated by ``fisher="true"``.
      factors: ``gradient`` or ``activation`` (see the module docstring).
      correct: ``False`` gives plain K-FAC (eigenvalues ``a_p s_q / c``), for comparison.
      chunk_size: examples whose gradients are alive at once.
    """

    damping: float = 0.1
    relative_damping: bool = True
    layers: str | Callable[[tuple[str, ...]], bool] = r"(^|/)kernel$"
    fisher: str = "empirical"
    num_classes: int | None = None
    factors: str = "gradient"
    correct: bool = True
    chunk_size: int = 16

    def __post_init__(self):
        if not (np.isfinite(self.damping) and self.damping > 0):
            raise ValueError(f"EK-FAC needs damping > 0, got {self.damping}")
        if self.fisher not in FISHERS:
            raise ValueError(f"unknown fisher {self.fisher!r}; known: {', '.join(FISHERS)}")
        if self.fisher == "true" and not (self.num_classes and self.num_classes >= 2):
            raise ValueError("fisher='true' enumerates the classes: give num_classes >= 2")
        if self.factors not in FACTORS:
            raise ValueError(f"unknown factors {self.factors!r}; known: {', '.join(FACTORS)}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


@dataclasses.dataclass(frozen=True)
class Block:
    """One dense layer: the positions of its kernel (and bias) among the selected leaves."""

    name: str
    kernel: int
    bias: int | None
    d_in: int
    d_out: int


def _matches(layers, path: tuple[str, ...]) -> bool:
    if callable(layers):
        return bool(layers(path))
    return bool(re.search(layers, "/".join(path)))


def dense_blocks(theta: Any, layers) -> tuple[Callable, list[Block]]:
    """``(select, blocks)``: a predicate selecting the blocks' leaves for ``restrict``, and
    the blocks indexed into the leaves it keeps (tree order).

    Raises:
      ValueError: if ``layers`` selects no 2-D leaf.
    """
    paths = param_paths(theta)
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(theta)]
    kernels = [i for i, p in enumerate(paths) if len(shapes[i]) == 2 and _matches(layers, p)]
    if not kernels:
        shown = ", ".join("/".join(p) for p in paths[:8])
        raise ValueError(f"layers={layers!r} selects no dense kernel (paths: {shown} ...)")
    chosen = {}
    for i in kernels:
        chosen[i] = None
        bias_path = paths[i][:-1] + ("bias",)
        for j, p in enumerate(paths):
            if p == bias_path and shapes[j] == (shapes[i][1],):
                chosen[i] = j
    keep = set(chosen) | {j for j in chosen.values() if j is not None}
    order = {leaf: k for k, leaf in enumerate(sorted(keep))}  # position among kept leaves
    blocks = [
        Block(
            name="/".join(paths[i][:-1]) or paths[i][-1],
            kernel=order[i],
            bias=None if j is None else order[j],
            d_in=shapes[i][0] + (j is not None),
            d_out=shapes[i][1],
        )
        for i, j in chosen.items()
    ]
    kept_paths = {paths[i] for i in keep}
    return (lambda path: tuple(path) in kept_paths), blocks


def _block_matrices(leaves: list[jax.Array], blocks: list[Block]) -> list[jax.Array]:
    """``[d_in + 1, d_out]`` (kernel over bias) for each block, from one set of leaves (any
    leading batch axes)."""
    out = []
    for b in blocks:
        K = leaves[b.kernel]
        if b.bias is not None:
            K = jnp.concatenate([K, leaves[b.bias][..., None, :]], axis=-2)
        out.append(K)
    return out


def _relabel(inputs, c: int):
    found = []

    def go(x):
        if isinstance(x, Mapping):
            out = {}
            for k, v in x.items():
                if k == "label":
                    found.append(k)
                    out[k] = jnp.full_like(v, c)
                else:
                    out[k] = go(v)
            return out
        return x

    out = go(inputs)
    if not found:
        raise ValueError("fisher='true' needs inputs with an integer 'label' entry to relabel")
    return out


def _row_grads(loss_fn, theta, frozen, rows, config: EKFACConfig):
    """Per-example gradient pytrees of a chunk and their weights: leaves ``[R, c, ...]`` and
    ``float32[R, c]`` with R = 1 (empirical) or ``num_classes`` (true Fisher)."""

    def one(th, z):
        return loss_fn(th, frozen, jax.tree_util.tree_map(lambda x: x[None], z))[0]

    grad = jax.vmap(jax.value_and_grad(one), in_axes=(None, 0))
    if config.fisher == "empirical":
        _, g = grad(theta, rows)
        n = _num_rows(rows)
        return jax.tree_util.tree_map(lambda x: x[None], g), jnp.ones((1, n))
    losses, grads = zip(*(grad(theta, _relabel(rows, c)) for c in range(config.num_classes)))
    g = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *grads)
    return g, jnp.exp(-jnp.stack(losses))


def _chunks(inputs, chunk: int):
    """``(chunked inputs [n_chunks, chunk, ...], mask float32[n_chunks, chunk])``."""
    n = _num_rows(inputs)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def split(x):
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)])
        return x.reshape((n_chunks, chunk) + x.shape[1:])

    mask = (jnp.arange(n_chunks * chunk) < n).astype(jnp.float32).reshape(n_chunks, chunk)
    return jax.tree_util.tree_map(split, jnp_tree(inputs)), mask


def jnp_tree(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


def _accumulate(loss_fn, theta, frozen, inputs, blocks, config, stat):
    """``(1/n) sum_rows w * stat(block matrices of the row)`` for each block, by a scan over
    chunks; ``stat(list of [R, c, d_in, d_out]) -> list of per-block sums``."""
    chunked, mask = _chunks(inputs, config.chunk_size)
    n = _num_rows(inputs)

    def body(acc, xs):
        rows, m = xs
        g, w = _row_grads(loss_fn, theta, frozen, rows, config)
        w = w * m[None]
        mats = _block_matrices(jax.tree_util.tree_leaves(g), blocks)
        return [a + s for a, s in zip(acc, stat(mats, w))], None

    init = [jnp.zeros(s) for s in stat_shapes(stat, blocks)]
    acc, _ = jax.lax.scan(body, init, (chunked, mask))
    return [a / n for a in acc]


def stat_shapes(stat, blocks):
    probe = [jax.ShapeDtypeStruct((1, 1, b.d_in, b.d_out), jnp.float32) for b in blocks]
    w = jax.ShapeDtypeStruct((1, 1), jnp.float32)
    return [s.shape for s in jax.eval_shape(stat, probe, w)]


def _factor_stat(factors: str):
    def stat(mats, w):
        out = []
        for G in mats:
            wA = wS = w
            if factors == "activation":
                d2 = jnp.sum(G[..., -1, :] ** 2, axis=-1)  # |delta|^2 from the bias row
                g2 = jnp.sum(G**2, axis=(-2, -1))  # |x|^2 |delta|^2
                ok = d2 > 0
                wA = jnp.where(ok, w / jnp.where(ok, d2, 1.0), 0.0)
                wS = jnp.where(ok, w * d2 / jnp.where(ok, g2, 1.0), 0.0)
            out.append(jnp.einsum("rc,rcij,rckj->ik", wA, G, G))  # A: sum w G G^T
            out.append(jnp.einsum("rc,rcji,rcjk->ik", wS, G, G))  # S: sum w G^T G
        return out

    return stat


def _eigen_stat(bases):
    def stat(mats, w):
        return [
            jnp.einsum("rc,rcpq->pq", w, jnp.einsum("ap,rcab,bq->rcpq", UA, G, US) ** 2)
            for G, (UA, US) in zip(mats, bases)
        ]

    return stat


def ekfac_factors(
    loss_fn: LossFn, theta: Any, frozen: Any, inputs, *, config: EKFACConfig | None = None
) -> dict:
    """The EK-FAC curvature of the mean loss on ``inputs`` over the dense blocks.

    Returns a dict: ``select`` (the predicate of the blocks' leaves), ``blocks``
    (:class:`Block` list), ``bases`` (``(U_A, U_S)`` float32 per block) and ``eigenvalues``
    (``float64[d_in, d_out]`` per block: corrected, or K-FAC's ``a_p s_q / c`` when
    ``config.correct`` is False).
    """
    config = EKFACConfig() if config is None else config
    select, blocks = dense_blocks(theta, config.layers)
    if config.factors == "activation" and any(b.bias is None for b in blocks):
        names = [b.name for b in blocks if b.bias is None]
        raise ValueError(f"factors='activation' reads delta off the bias; {names} have none")
    r = restrict(loss_fn, theta, frozen, select=select)
    fac = jax.jit(
        lambda th, fr, x: _accumulate(
            r.loss_fn, th, fr, x, blocks, config, _factor_stat(config.factors)
        )
    )(r.theta, r.frozen, inputs)
    bases, kfac = [], []
    for k in range(len(blocks)):
        A, S = (np.asarray(fac[2 * k + i], np.float64) for i in (0, 1))
        a, UA = np.linalg.eigh((A + A.T) / 2)
        s, US = np.linalg.eigh((S + S.T) / 2)
        c = 1.0 if config.factors == "activation" else float(np.trace(A))
        c = max(c, np.finfo(np.float64).tiny)
        bases.append((jnp.asarray(UA, jnp.float32), jnp.asarray(US, jnp.float32)))
        kfac.append(np.maximum(np.outer(a, s), 0.0) / c)
    if config.correct:
        stat = _eigen_stat(bases)
        eig = jax.jit(lambda th, fr, x: _accumulate(r.loss_fn, th, fr, x, blocks, config, stat))(
            r.theta, r.frozen, inputs
        )
        eigenvalues = [np.asarray(e, np.float64) for e in eig]
    else:
        eigenvalues = kfac
    return dict(select=select, blocks=blocks, bases=bases, eigenvalues=eigenvalues)


def _inverse_fn(blocks, bases, eigenvalues, lam: float, unravel):
    """A jitted ``float32[M, P] -> float32[M, P]``: ``(G + lambda I)^{-1} v`` per row."""
    inv = [jnp.asarray(1.0 / (e + lam), jnp.float32) for e in eigenvalues]

    def one(v):
        leaves, treedef = jax.tree_util.tree_flatten(unravel(v))
        leaves = list(leaves)
        for b, G, (UA, US), d in zip(blocks, _block_matrices(leaves, blocks), bases, inv):
            X = UA @ ((UA.T @ G @ US) * d) @ US.T
            if b.bias is not None:
                leaves[b.kernel], leaves[b.bias] = X[:-1], X[-1]
            else:
                leaves[b.kernel] = X
        return ravel_pytree(jax.tree_util.tree_unflatten(treedef, leaves))[0]

    return jax.jit(jax.vmap(one))


def ekfac_scores(
    loss_fn: LossFn,
    theta: Any,
    frozen: Any,
    train_inputs,
    test_inputs,
    *,
    hessian_inputs=None,
    config: EKFACConfig | None = None,
) -> tuple[np.ndarray, dict]:
    """``float32[N, M]``: ``g_i^T (G_ekfac + lambda I)^{-1} g_test_j`` over the dense blocks.

    Args:
      loss_fn: ``loss_fn(theta, frozen, inputs) -> float32[B]``.
      theta: the parameters (usually the final model).
      frozen: passed to ``loss_fn``.
      train_inputs, test_inputs: the pool (N) and test (M) examples.
      hessian_inputs: examples whose mean loss defines ``G`` (default ``train_inputs``).
      config: an :class:`EKFACConfig` (default ``EKFACConfig()``).

    Returns:
      ``(scores, info)``; ``info`` holds ``lambda``, the blocks and their eigenvalues.
    """
    config = EKFACConfig() if config is None else config
    hessian_inputs = train_inputs if hessian_inputs is None else hessian_inputs
    f = ekfac_factors(loss_fn, theta, frozen, hessian_inputs, config=config)
    r = restrict(loss_fn, theta, frozen, select=f["select"])
    mean = float(np.mean(np.concatenate([e.ravel() for e in f["eigenvalues"]])))
    lam = config.damping * mean if config.relative_damping else config.damping
    if not lam > 0:
        raise ValueError(f"EK-FAC damping resolves to lambda={lam:g}; the curvature is zero")
    _, unravel = ravel_pytree(r.theta)
    apply = _inverse_fn(f["blocks"], f["bases"], f["eigenvalues"], lam, unravel)

    def inverse(G_test):
        V = apply(G_test)
        if not bool(jnp.all(jnp.isfinite(V))):
            raise ValueError(f"the EK-FAC inverse is not finite (lambda={lam:g})")
        return V, None

    scores, _ = scores_through(r, train_inputs, test_inputs, inverse, chunk_size=config.chunk_size)
    info = dict(
        **{"lambda": lam},
        blocks=[(b.name, b.d_in, b.d_out) for b in f["blocks"]],
        eigenvalues=f["eigenvalues"],
    )
    return scores, info


__all__ = ["Block", "EKFACConfig", "dense_blocks", "ekfac_factors", "ekfac_scores"]
