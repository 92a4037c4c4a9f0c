"""Curriculum search: which training examples, in which order, lower a target set's loss.

Given target test examples J, a pool of candidate training examples and a curriculum shape,
find the curriculum whose simulated mean final loss over J,

    F(c) = (1 / |J|) sum_{j in J} L^_T,j(c),

is lowest. A curriculum is written as a *layout* ``int32[T, B]`` of slot ranks
``0..k-1`` (``-1`` = padding), e.g. k examples seen for some epochs in a random order, and a
*subset* ``int32[k]`` of distinct pool ids: the curriculum is ``subset[layout]``. Changing
the subset changes which examples are trained on; permuting it changes their order.

Two searches:

* ``greedy_search`` (any simulator): best-improvement coordinate search. For each rank r in
  turn, every pool id c is scored at once (one vmapped rollout of N curricula): c not in
  the subset replaces the example at rank r, c at rank s swaps ranks r and s (an order
  move); the best move is taken if it lowers F. Sweeps repeat until no move helps.
* ``gradient_search`` (simulators linear in the batch counts: Simfluence-Linear, the
  featurized simulator of order 1): the rank-to-example assignment is relaxed to a soft
  assignment ``P [k, N]`` (rows sum to 1, columns to at most 1) by Sinkhorn normalisation
  of learned logits (Mena et al., 2018, "Learning Latent Permutations with Gumbel-Sinkhorn
  Networks"), with ``N - k`` shared "not chosen" rows. Step t's batch becomes the soft
  count vector ``m_t = sum_b P[layout[t, b]]``, the rollout
  ``L_t = (alpha0 + m_t . A_j) L_{t-1} + m_t . B_j`` stays differentiable, F is minimised
  with Adam (optax) through it, and the result is rounded to distinct ids by an optimal
  assignment (Hungarian algorithm) on the logits.

``check_by_retraining`` then trains the picks and random curricula of the same shape for
real, and reports predicted against achieved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.optimize import linear_sum_assignment

from simfluence_jax.rollout import rollout
from simfluence_jax.runs import RunSet
from simfluence_jax.sampling import sample_curricula


# Layouts ---------------------------------------------------------------------------------
def random_layout(
    k: int, *, batch_size: int, epochs: int = 1, num_steps: int | None = None, seed: int = 0
) -> np.ndarray:
    """``int32[T, B]``: ranks ``0..k-1`` seen ``epochs`` times (or for ``num_steps``
    batches), each epoch in a fresh random order; the layout of ``sampling``'s runs."""
    return sample_curricula(
        num_runs=1, pool_size=k, batch_size=batch_size, subset_size=k, epochs=epochs,
        num_steps=num_steps, seed=seed,
    )[0]  # fmt: skip


def curriculum(subset, layout) -> np.ndarray:
    """``int32[..., T, B]``: ``subset[..., layout]`` with padding kept."""
    subset = np.asarray(subset)
    layout = np.asarray(layout)
    return np.where(layout >= 0, np.take(subset, np.maximum(layout, 0), axis=-1), -1).astype(
        np.int32
    )


def _check_layout(layout, subset) -> tuple[np.ndarray, np.ndarray]:
    layout = np.asarray(layout)
    subset = np.asarray(subset)
    if layout.ndim != 2 or layout.dtype.kind not in "iu":
        raise ValueError(f"layout must be int[T, B], got {layout.dtype} {layout.shape}")
    k = subset.shape[0]
    if subset.ndim != 1 or len(np.unique(subset)) != k:
        raise ValueError(f"subset must be {k} distinct ids, got {subset.tolist()}")
    used = np.unique(layout[layout >= 0])
    if layout.min() < -1 or not np.array_equal(used, np.arange(k)):
        raise ValueError(f"layout must use every rank 0..{k - 1} (and -1 for padding)")
    return layout.astype(np.int32), subset.astype(np.int32)


def _candidates(candidates, N: int, k: int) -> np.ndarray:
    mask = np.ones(N, bool) if candidates is None else np.asarray(candidates, bool)
    if mask.shape != (N,):
        raise ValueError(f"candidates must be bool[N={N}], got shape {mask.shape}")
    if mask.sum() < k:
        raise ValueError(f"only {int(mask.sum())} candidate ids for a subset of {k}")
    return mask


# Objective -------------------------------------------------------------------------------
def restrict(sim, targets) -> object:
    """``sim`` on the target test examples only when it can be restricted (``restrict``),
    otherwise ``sim`` itself."""
    try:
        return sim.restrict(np.asarray(targets))
    except NotImplementedError:
        return sim


@jax.jit
def _final_mean(sim, curricula, L0, columns, learning_rates):
    """``float32[C]``: mean over ``columns`` of the simulated final losses."""
    final = rollout(sim, curricula, L0, learning_rates=learning_rates)[:, -1, :]
    return jnp.mean(final[:, columns], axis=-1)


def make_objective(sim, L0, targets, *, learning_rates=None) -> Callable[[np.ndarray], np.ndarray]:
    """``F``: curricula ``int32[C, T, B]`` -> ``float64[C]`` mean simulated final loss of
    ``targets`` starting from ``L0: float[M]`` (inf for a diverging rollout);
    ``learning_rates: float[T]`` is the schedule, for ``lr_scaled`` simulators."""
    targets = np.asarray(targets, np.int64).reshape(-1)
    L0 = np.asarray(L0, np.float32)
    if L0.ndim != 1 or targets.size == 0 or targets.min() < 0 or targets.max() >= len(L0):
        raise ValueError(f"targets {targets.tolist()} must index the M = {L0.size} entries of L0")
    small = restrict(sim, targets)
    if small is sim:
        L0_used, columns = L0, targets
    else:
        L0_used, columns = L0[targets], np.arange(targets.size)
    L0_used, columns = jnp.asarray(L0_used), jnp.asarray(columns)
    lr = None if learning_rates is None else jnp.asarray(learning_rates, jnp.float32)

    def F(curricula):
        out = np.asarray(
            _final_mean(small, jnp.asarray(curricula, jnp.int32), L0_used, columns, lr)
        )
        return np.where(np.isfinite(out), out, np.inf).astype(np.float64)

    return F


@dataclasses.dataclass
class SearchResult:
    """A searched curriculum.

    Attributes:
      subset: ``int32[k]`` pool ids by rank.
      curriculum: ``int32[T, B]``.
      predicted: F of the result under the simulator searched with.
      initial: F of the starting curriculum.
      history: F after every accepted move (greedy) or optimisation chunk (gradient).
      method: ``greedy`` or ``gradient``.
    """

    subset: np.ndarray
    curriculum: np.ndarray
    predicted: float
    initial: float
    history: list[float]
    method: str


# Greedy coordinate search -------------------------------------------------------------------
def _moves(subset: np.ndarray, r: int, N: int, order_moves: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(subsets int32[N, k], valid bool[N])``: every id placed at rank r."""
    k = subset.shape[0]
    rank_of = np.full(N, -1)
    rank_of[subset] = np.arange(k)
    out = np.repeat(subset[None], N, axis=0)
    ids = np.arange(N)
    out[:, r] = ids
    inside = rank_of >= 0
    s = rank_of[inside]
    out[np.flatnonzero(inside), s] = subset[r]  # swap: rank s gets rank r's old id
    valid = ~inside | (order_moves & (ids != subset[r]))
    return out, valid


def greedy_search(
    sim,
    L0,
    targets,
    *,
    layout,
    init_subset,
    candidates=None,
    order_moves: bool = True,
    max_sweeps: int = 3,
    tol: float = 1e-7,
    learning_rates=None,
) -> SearchResult:
    """Best-improvement coordinate search over the subset and its order (module docstring).

    Args:
      sim: any simulator over the pool (featurized ones of any order included).
      L0: ``float[M]`` starting losses.
      targets: indices of the target test examples.
      layout: ``int32[T, B]`` slot ranks (``random_layout``).
      init_subset: ``int32[k]`` distinct pool ids to start from.
      candidates: ``bool[N]`` ids allowed in the curriculum (default: all).
      order_moves: also try swapping two ranks (reordering), not only replacing.
      max_sweeps: passes over the ranks.
      tol: a move must lower F by more than this.
      learning_rates: ``float[T]`` schedule of the curriculum (``lr_scaled`` simulators).
    """
    layout, subset = _check_layout(layout, init_subset)
    N = _pool_size(sim)
    mask = _candidates(candidates, N, subset.shape[0])
    if not mask[subset].all():
        raise ValueError("init_subset uses ids that are not candidates")
    F = make_objective(sim, L0, targets, learning_rates=learning_rates)
    current = float(F(curriculum(subset, layout)[None])[0])
    initial, history = current, [current]
    for _ in range(max_sweeps):
        improved = False
        for r in range(subset.shape[0]):
            subsets, valid = _moves(subset, r, N, order_moves)
            scores = np.where(valid & mask, F(curriculum(subsets, layout)), np.inf)
            best = int(np.argmin(scores))
            if scores[best] < current - tol:
                subset, current, improved = subsets[best], float(scores[best]), True
                history.append(current)
        if not improved:
            break
    return SearchResult(subset, curriculum(subset, layout), current, initial, history, "greedy")


def _pool_size(sim) -> int:
    N = sim.num_train
    if N is None:
        raise ValueError(f"cannot tell the pool size of {type(sim).__name__}")
    return N


# Gradient search through the relaxed rollout -------------------------------------------------
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
    layout, subset = _check_layout(layout, init_subset)
    alpha0, A, B = count_effects(sim)
    targets = np.asarray(targets, np.int64).reshape(-1)
    N, k = A.shape[1], subset.shape[0]
    mask = _candidates(candidates, N, k)
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


# Checking picks by real training --------------------------------------------------------------
@dataclasses.dataclass
class SearchCheck:
    """Picks and random curricula, simulated and trained.

    Attributes:
      targets: target test indices.
      picks: ``{label: SearchResult}``.
      achieved: ``{label: float}`` real mean final target loss of each pick.
      random_achieved: ``float[R]`` the same for R random curricula of the same shape.
      random_predicted: ``{label: float[R]}`` the pick's simulator on the random curricula.
      losses: ``float32[P + R, T+1, M]`` everything trained (picks first).
    """

    targets: np.ndarray
    picks: dict[str, SearchResult]
    achieved: dict[str, float]
    random_achieved: np.ndarray
    random_predicted: dict[str, np.ndarray]
    losses: np.ndarray

    def rows(self) -> dict[str, dict[str, float]]:
        """One row per pick: predicted, achieved, their gain over the random mean, and the
        share of random curricula the pick beats in real training."""
        rnd = self.random_achieved
        out = {}
        for label, pick in self.picks.items():
            pred_rnd = self.random_predicted[label]
            out[label] = {
                "predicted": pick.predicted,
                "achieved": self.achieved[label],
                "random_achieved_mean": float(rnd.mean()),
                "random_achieved_std": float(rnd.std()),
                "random_predicted_mean": float(pred_rnd.mean()),
                "predicted_gain": float(pred_rnd.mean() - pick.predicted),
                "achieved_gain": float(rnd.mean() - self.achieved[label]),
                "beats_random_fraction": float(np.mean(self.achieved[label] < rnd)),
            }
        return out


def check_by_retraining(
    picks: Mapping[str, tuple[object, SearchResult]],
    train: Callable[[np.ndarray], object],
    *,
    targets,
    L0,
    random_curricula,
    random_losses=None,
) -> SearchCheck:
    """Trains every pick and the random curricula with ``train`` and compares.

    Args:
      picks: ``{label: (simulator, SearchResult)}``.
      train: ``curricula int32[C, T, B] -> losses float[C, T+1, M]`` (or a ``RunSet``).
      targets: target test indices.
      L0: ``float[M]`` the starting losses the search used.
      random_curricula: ``int32[R, T, B]`` of the picks' shape.
      random_losses: ``float[R, T+1, M]`` if the random curricula were trained already (e.g.
        the logged runs, which are random curricula of this shape); else they are trained.
    """
    targets = np.asarray(targets, np.int64).reshape(-1)
    labels = list(picks)
    rnd = np.asarray(random_curricula, np.int32)
    picked = np.stack([picks[n][1].curriculum for n in labels])
    if random_losses is not None:
        random_losses = np.asarray(random_losses, np.float32)
        if random_losses.shape[:2] != (rnd.shape[0], rnd.shape[1] + 1):
            raise ValueError(
                f"random_losses has shape {random_losses.shape}, expected [R={rnd.shape[0]}, "
                f"T+1={rnd.shape[1] + 1}, M]"
            )
    batches = picked if random_losses is not None else np.concatenate([picked, rnd])
    out = train(batches)
    losses = np.asarray(out.losses if isinstance(out, RunSet) else out, np.float32)
    if random_losses is not None:
        losses = np.concatenate([losses, random_losses])
    final = losses[:, -1][:, targets].mean(axis=1)
    achieved = {n: float(final[i]) for i, n in enumerate(labels)}
    random_predicted = {n: make_objective(picks[n][0], L0, targets)(rnd) for n in labels}
    return SearchCheck(targets, {n: picks[n][1] for n in labels}, achieved,
                       final[len(labels):], random_predicted, losses)  # fmt: skip


def search_all(
    sims: Mapping[str, object],
    L0,
    targets,
    *,
    layout,
    init_subset,
    candidates=None,
    methods: Sequence[str] = ("greedy", "gradient"),
    greedy_kwargs: Mapping | None = None,
    gradient_kwargs: Mapping | None = None,
) -> dict[str, tuple[object, SearchResult]]:
    """``{"<sim>/<method>": (sim, result)}`` for every simulator and method (gradient only
    where the simulator is linear in the counts)."""
    out = {}
    for name, sim in sims.items():
        for method in methods:
            kw = dict(layout=layout, init_subset=init_subset, candidates=candidates)
            if method == "greedy":
                res = greedy_search(sim, L0, targets, **kw, **dict(greedy_kwargs or {}))
            elif method == "gradient":
                try:
                    count_effects(sim)
                except ValueError:
                    continue
                res = gradient_search(sim, L0, targets, **kw, **dict(gradient_kwargs or {}))
            else:
                raise ValueError(f"unknown search method {method!r}; known: greedy, gradient")
            out[f"{name}/{method}"] = (sim, res)
    return out
