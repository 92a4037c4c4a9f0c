"""Gradient search through a Sinkhorn-relaxed rollout, then rounding.

For simulators linear in the batch counts (Simfluence-Linear without momentum or a
learning-rate scale, the featurized simulator of order 1), the rank-to-example assignment
is relaxed to a soft assignment ``P [k, N]`` (rows sum to 1, columns to at most 1) by
Sinkhorn normalisation of learned logits (Mena et al., 2018, "Learning Latent Permutations
with Gumbel-Sinkhorn Networks"), with ``N - k`` shared "not chosen" rows. Step t's batch
becomes the soft count vector ``m_t = sum_b P[layout[t, b]]``, the rollout

    L_t = (alpha0 + m_t . A_j) L_{t-1} + m_t . B_j

stays differentiable, F is minimised with Adam (optax) through it, and the result is
rounded to distinct ids by an optimal assignment (Hungarian algorithm) on the logits.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.optimize import linear_sum_assignment

from simfluence_jax.search.layout import candidate_mask, check_layout, curriculum
from simfluence_jax.search.objective import SearchResult, make_objective


def count_effects(sim) -> tuple[float, jax.Array, jax.Array]:
    """``(alpha0, A [M, N], B [M, N])`` of a simulator linear in the batch counts."""
    effects = sim.count_effects()
    if effects is None:
        raise ValueError(
            f"gradient search needs a simulator linear in the batch counts (plain Linear "
            f"family or featurized order 1), got {sim.name}; use greedy_search"
        )
    return effects


def sinkhorn_assignment(theta, dummy, allowed, *, tau: float, iters: int) -> jax.Array:
    """``float32[k, N]`` soft assignment of k ranks to N ids.

    ``theta: [k, N]`` rank logits, ``dummy: [N]`` logits of the ``N - k`` shared "not chosen"
    rows, ``allowed: bool[N]`` candidates. The ``N x N`` matrix of logits / tau (disallowed
    ids masked out of the rank rows) is Sinkhorn-normalised in the log domain to a doubly
    stochastic matrix, ending with the row step; its first k rows are returned (rows sum
    to exactly 1, so every soft batch holds as many examples as the real one; columns sum
    to about 1 or less).
    """
    k, N = theta.shape
    rows = jnp.where(allowed[None], theta, -jnp.inf)
    logits = jnp.concatenate([rows, jnp.broadcast_to(dummy, (N - k, N))]) / tau

    def body(_, x):
        x = x - jax.nn.logsumexp(x, axis=0, keepdims=True)
        return x - jax.nn.logsumexp(x, axis=1, keepdims=True)

    return jnp.exp(jax.lax.fori_loop(0, iters, body, logits)[:k])


def soft_final(P, layout, L0, alpha0, A, B) -> jax.Array:
    """``float32[J]``: final losses of the relaxed curriculum.

    ``P [k, N]`` soft assignment, ``layout int32[T, Bsz]``, ``L0 [J]``, ``A, B [J, N]``:
    ``m_t = sum_b P[layout[t, b]]`` and ``L_t = (alpha0 + A m_t) L_{t-1} + B m_t``
    (an all-padding step is no update).
    """
    valid = (layout >= 0).astype(P.dtype)
    m = jnp.einsum("tbn,tb->tn", P[jnp.maximum(layout, 0)], valid)  # [T, N]
    empty = valid.sum(axis=1) == 0

    def step(L, xs):
        m_t, skip = xs
        L_next = (alpha0 + A @ m_t) * L + B @ m_t
        return jnp.where(skip, L, L_next), None

    L, _ = jax.lax.scan(step, L0, (m, empty))
    return L


@partial(jax.jit, static_argnames=("alpha0", "steps", "lr", "tau", "iters"))
def _optimise(theta, dummy, allowed, layout, L0, A, B, *, alpha0, steps, lr, tau, iters):
    opt = optax.adam(lr)

    def loss(params):
        P = sinkhorn_assignment(*params, allowed, tau=tau, iters=iters)
        return jnp.mean(soft_final(P, layout, L0, alpha0, A, B))

    def body(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), value

    params = (theta, dummy)
    (params, _), values = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return params, values


def gradient_search(
    sim,
    L0,
    targets,
    *,
    layout,
    init_subset,
    candidates=None,
    steps: int = 300,
    learning_rate: float = 0.1,
    tau: float = 0.3,
    sinkhorn_iters: int = 30,
    init_strength: float = 1.0,
    seed: int = 0,
) -> SearchResult:
    """Gradient search through the relaxed rollout, then rounding (module docstring).

    Args:
      sim: a simulator linear in the batch counts (``count_effects``).
      L0, targets, layout, init_subset, candidates: as in ``greedy_search``.
      steps, learning_rate: Adam on the logits.
      tau: Sinkhorn temperature (lower: closer to a hard assignment).
      sinkhorn_iters: normalisation sweeps.
      init_strength: the starting logits favour ``init_subset`` by this much (plus
        N(0, 0.01) noise from ``seed``).
    """
    layout, subset = check_layout(layout, init_subset)
    alpha0, A, B = count_effects(sim)
    targets = np.asarray(targets, np.int64).reshape(-1)
    N, k = A.shape[1], subset.shape[0]
    mask = candidate_mask(candidates, N, k)
    L0 = np.asarray(L0, np.float32)
    rng = np.random.default_rng(seed)
    theta = rng.normal(0.0, 0.01, (k, N)).astype(np.float32)
    theta[np.arange(k), subset] += init_strength
    dummy = np.zeros(N, np.float32)
    (theta, dummy), values = _optimise(
        jnp.asarray(theta), jnp.asarray(dummy), jnp.asarray(mask), jnp.asarray(layout),
        jnp.asarray(L0[targets]), A[targets], B[targets], alpha0=alpha0, steps=steps,
        lr=learning_rate, tau=tau, iters=sinkhorn_iters,
    )  # fmt: skip
    # Round: the assignment of ranks (and "not chosen" rows) to ids with the largest logits.
    logits = np.concatenate([np.where(mask[None], np.asarray(theta), -1e9),
                             np.broadcast_to(np.asarray(dummy), (N - k, N))])  # fmt: skip
    rows, cols = linear_sum_assignment(-logits)
    picked = cols[np.argsort(rows)][:k].astype(np.int32)
    F = make_objective(sim, L0, targets)
    initial = float(F(curriculum(subset, layout)[None])[0])
    predicted = float(F(curriculum(picked, layout)[None])[0])
    history = [float(v) for v in np.asarray(values)]
    return SearchResult(picked, curriculum(picked, layout), predicted, initial, history, "gradient")
