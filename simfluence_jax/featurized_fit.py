"""Fitting the featurized simulator with optax on the teacher-forced objective.

For the featurized simulator (``simulators.featurized``) of Markov order n, with observed
losses ``L`` of the fitting runs, the objective over the learned weights theta is

    J(theta) = sum_{r, t, j} (L_t - L^tf_t)^2 / sum_{r, t, j} (L_t - L_{t-1})^2 + l2 |theta|^2
    L^tf_t = L_{t-1} + sum_k (sum_{i in c_t} A^(k)_ij) L_{t-k} + sum_{i in c_t} B_ij

i.e. the one-step error with the *observed* history (teacher forcing, docs/design.md, section 4),
normalised so that the constant simulator scores 1, plus weight decay ``l2``. Unlike the
Linear family it is not linear in theta, so it is minimised with Adam (optax), full-batch
over all fitting runs (the residuals are ``vmap``-ed over runs; the weights are shared by
every pair). Training runs in jit-compiled chunks of ``eval_every`` steps
(``lax.fori_loop``); after each chunk the all-steps MSE of the *rollout* on the validation
runs is measured and the best weights are kept; training stops after ``patience`` chunks
without improvement (early stopping). Without validation runs it trains ``max_steps``.

Registered in ``fitting.SIMULATORS`` as ``featurized``; it needs
``features=(train_emb float32[N, Dx], test_emb float32[M, Dz])``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simfluence_jax.rollouts import rollout
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.base import batch_mask
from simfluence_jax.simulators.featurized import (
    TRAINABLE,
    FeaturizedSimulator,
    markov_update,
)

#: Weight decay used when none is given.
DEFAULT_L2 = 1e-4


@dataclasses.dataclass(frozen=True)
class FeaturizedConfig:
    """Hyperparameters of the map and of its training (hashable: a static jit argument).

    Attributes:
      order: Markov order n (L_t depends on the last n losses).
      proj_dim: d, the width of the projections P, Q.
      hidden: H, the hidden width.
      out_scale: s, the fixed output scale (loss units per unit of output).
      learning_rate: Adam step size.
      max_steps: most optimisation steps.
      eval_every: steps per compiled chunk between validation checks.
      patience: chunks without validation improvement before stopping.
      seed: initialisation seed.
      tied: one projection for both sides (``Q`` unused, ``v_j = P z~_j``): training and
        test examples are embedded by the same encoder, and the test side, usually seen
        through far fewer examples, borrows the projection learned on the pool.
    """

    order: int = 1
    proj_dim: int = 32
    hidden: int = 64
    out_scale: float = 0.1
    learning_rate: float = 3e-3
    max_steps: int = 3000
    eval_every: int = 100
    patience: int = 5
    seed: int = 0
    tied: bool = False

    def __post_init__(self):
        for key in ("order", "proj_dim", "hidden", "max_steps", "eval_every", "patience"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.learning_rate > 0 or not self.out_scale > 0:
            raise ValueError(
                f"learning_rate and out_scale must be > 0, got {self.learning_rate}, "
                f"{self.out_scale}"
            )


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (1 where a dimension is constant)."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    return mu.astype(np.float32), np.where(sd > 1e-6, sd, 1.0).astype(np.float32)


def init_simulator(train_features, test_features, cfg: FeaturizedConfig) -> FeaturizedSimulator:
    """A featurized simulator with fresh weights: ``W_out = 0`` (the constant simulator),
    the rest Gaussian with variance 1 / fan-in."""
    x = np.asarray(train_features, np.float32)
    z = np.asarray(test_features, np.float32)
    if x.ndim != 2 or z.ndim != 2:
        raise ValueError(
            f"features must be (train float[N, Dx], test float[M, Dz]), got shapes {x.shape} "
            f"and {z.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(z))):
        raise ValueError("features contain NaN or infinite values")
    if cfg.tied and x.shape[1] != z.shape[1]:
        raise ValueError(
            f"tied projections need train and test features of one width, got {x.shape[1]} "
            f"and {z.shape[1]}"
        )
    d, H, K = cfg.proj_dim, cfg.hidden, cfg.order + 1
    keys = jax.random.split(jax.random.PRNGKey(cfg.seed), 5)
    normal = lambda k, shape, fan_in: jax.random.normal(k, shape) / np.sqrt(fan_in)
    x_shift, x_scale = _standardiser(x)
    z_shift, z_scale = _standardiser(z)
    return FeaturizedSimulator(
        train_features=jnp.asarray(x), test_features=jnp.asarray(z),
        x_shift=x_shift, x_scale=x_scale, z_shift=z_shift, z_scale=z_scale,
        P=normal(keys[0], (x.shape[1], d), x.shape[1]),
        Q=normal(keys[1], (z.shape[1], d), z.shape[1]),
        W_x=normal(keys[2], (d, H), d), W_z=normal(keys[3], (d, H), d),
        W_xz=normal(keys[4], (d, H), d), b_h=jnp.zeros(H),
        W_out=jnp.zeros((H, K)), b_out=jnp.zeros(K),
        order=cfg.order, out_scale=cfg.out_scale, tied=cfg.tied,
    )  # fmt: skip


# Teacher-forced objective ----------------------------------------------------------------
def teacher_forcing_data(runs: RunSet, order: int) -> dict[str, jax.Array]:
    """The observed quantities of the objective.

    Returns:
      ``batches: int32[R, T, Bsz]``, ``history: float32[R, T, M, n]`` (L_{t-1}..L_{t-n}, with
      L_0 for t - k < 0), ``target: float32[R, T, M]`` (L_t) and ``scale``, the sum of
      squared one-step changes (the constant simulator's error).
    """
    L = np.asarray(runs.losses, np.float32)  # [R, T+1, M]
    T = runs.num_steps
    lags = np.arange(1, order + 1)
    rows = np.clip(np.arange(1, T + 1)[:, None] - lags[None, :], 0, None)  # [T, n]
    history = np.moveaxis(L[:, rows], 2, 3)  # [R, T, n, M] -> [R, T, M, n]
    change = np.sum((L[:, 1:] - L[:, :-1]).astype(np.float64) ** 2)
    return {
        "batches": jnp.asarray(runs.batches),
        "history": jnp.asarray(history),
        "target": jnp.asarray(L[:, 1:]),
        "scale": jnp.float32(max(change, 1e-12)),
    }


def _run_residuals(A, B, batches, history, target):
    """One run: ``float32[T, M]`` residuals ``L_t - L^tf_t``.

    ``A: [M, N, n]``, ``B: [M, N]``, ``batches: [T, Bsz]``, ``history: [T, M, n]``,
    ``target: [T, M]``.
    """
    ids, w = batch_mask(batches)  # [T, Bsz]
    a = jnp.einsum("mtbk,tb->tmk", A[:, ids], w)  # [T, M, n]
    b = jnp.einsum("mtb,tb->tm", B[:, ids], w)  # [T, M]
    pred = jax.vmap(jax.vmap(markov_update))(history, a, b)  # over steps, then tests
    return target - pred


def objective(params, sim: FeaturizedSimulator, data, l2) -> jax.Array:
    """J(theta) of the module docstring; ``params`` holds the ``TRAINABLE`` fields."""
    A, B = sim.replace(**params).effects()
    res = jax.vmap(_run_residuals, in_axes=(None, None, 0, 0, 0))(
        A, B, data["batches"], data["history"], data["target"]
    )
    decay = sum(jnp.sum(p**2) for p in jax.tree_util.tree_leaves(params))
    return jnp.sum(res**2) / data["scale"] + l2 * decay


def _optimizer(cfg: FeaturizedConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.learning_rate)


@partial(jax.jit, static_argnames=("cfg", "steps"))
def train_chunk(params, opt_state, sim, data, l2, *, cfg: FeaturizedConfig, steps: int):
    """``steps`` Adam steps on ``objective``; returns ``(params, opt_state, last J)``."""
    opt = _optimizer(cfg)

    def body(_, carry):
        params, opt_state, _ = carry
        value, grads = jax.value_and_grad(objective)(params, sim, data, l2)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.lax.fori_loop(0, steps, body, (params, opt_state, jnp.float32(0.0)))


@jax.jit
def params_rollout_mse(params, sim, batches, losses) -> jax.Array:
    """All-steps MSE of the rollout of ``sim`` with the trainable ``params`` swapped in (the
    fitting loop's jitted form of ``fitting.rollout_mse``), on runs ``batches [R, T, Bsz]``,
    ``losses [R, T+1, M]`` (inf if non-finite)."""
    pred = rollout(sim.replace(**params), batches, losses[:, 0])
    mse = jnp.mean((pred[:, 1:] - losses[:, 1:]) ** 2)
    return jnp.where(jnp.isfinite(mse), mse, jnp.inf)


def train(
    sim: FeaturizedSimulator,
    runs: RunSet,
    *,
    l2: float,
    cfg: FeaturizedConfig,
    validation: RunSet | None = None,
) -> tuple[FeaturizedSimulator, dict]:
    """Trains ``sim``'s weights on ``runs``; returns the best simulator and a history
    ``{"steps", "objective", "val_mse"}`` (one entry per chunk)."""
    data = teacher_forcing_data(runs, cfg.order)
    params = {k: getattr(sim, k) for k in TRAINABLE}
    opt_state = _optimizer(cfg).init(params)
    l2 = jnp.float32(l2)
    history = {"steps": [], "objective": [], "val_mse": []}
    best, best_mse, stale, done = params, np.inf, 0, 0
    if validation is not None:
        vb, vl = jnp.asarray(validation.batches), jnp.asarray(validation.losses)
        best_mse = float(params_rollout_mse(params, sim, vb, vl))  # the constant simulator
    while done < cfg.max_steps:
        steps = min(cfg.eval_every, cfg.max_steps - done)
        params, opt_state, value = train_chunk(
            params, opt_state, sim, data, l2, cfg=cfg, steps=steps
        )
        done += steps
        history["steps"].append(done)
        history["objective"].append(float(value))
        if not np.isfinite(float(value)):
            break
        if validation is None:
            best = params
            continue
        mse = float(params_rollout_mse(params, sim, vb, vl))
        history["val_mse"].append(mse)
        if mse < best_mse:
            best, best_mse, stale = params, mse, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    history["best_val_mse"] = best_mse
    return sim.replace(**best, l2=float(l2)), history


def _check_features(features, runs: RunSet):
    if features is None:
        raise ValueError(
            "the featurized simulator needs features=(train_emb float[N, D], test_emb "
            "float[M, D]), e.g. from models.minilm.sentence_embeddings"
        )
    if not isinstance(features, (tuple, list)) or len(features) != 2:
        raise ValueError("features must be a pair (train_emb [N, D], test_emb [M, D])")
    x, z = (np.asarray(f, np.float32) for f in features)
    if x.ndim != 2 or x.shape[0] != runs.num_train:
        raise ValueError(
            f"train features must have shape [N={runs.num_train}, D] (one row per pool "
            f"example), got {x.shape}"
        )
    if z.ndim != 2 or z.shape[0] != runs.num_test:
        raise ValueError(
            f"test features must have shape [M={runs.num_test}, D] (one row per test "
            f"example of the runs), got {z.shape}"
        )
    return x, z


def fit_featurized(
    runs: RunSet,
    *,
    features=None,
    validation: RunSet | None = None,
    l2: float | Sequence[float] | None = None,
    mesh=None,
    order: int = 1,
    proj_dim: int = 32,
    hidden: int = 64,
    out_scale: float = 0.1,
    learning_rate: float = 3e-3,
    max_steps: int = 3000,
    eval_every: int = 100,
    patience: int = 5,
    seed: int = 0,
    tied: bool = False,
) -> FeaturizedSimulator:
    """Fits a featurized simulator (see the module docstring).

    Args:
      runs: the fitting runs.
      features: ``(train_emb float[N, Dx], test_emb float[M, Dz])``; rows of ``train_emb``
        are the pool ids 0..N-1 (also those no run used), rows of ``test_emb`` the runs'
        test examples.
      validation: runs for early stopping (and for choosing among several ``l2``).
      l2: weight decay, or several (needs ``validation``); default ``DEFAULT_L2``.
      mesh: unused (the fit is one small dense problem); accepted for a uniform interface.
      order, proj_dim, hidden, out_scale, learning_rate, max_steps, eval_every, patience,
        seed, tied: see ``FeaturizedConfig``.

    Returns:
      the fitted ``FeaturizedSimulator``; ``name`` is ``featurized`` (order 1) or
      ``featurized_order{n}``.
    """
    del mesh
    x, z = _check_features(features, runs)
    if validation is not None and validation.num_test != runs.num_test:
        raise ValueError(
            f"validation runs have M={validation.num_test} test examples, the fitting runs "
            f"M={runs.num_test}"
        )
    cfg = FeaturizedConfig(
        order=order, proj_dim=proj_dim, hidden=hidden, out_scale=out_scale,
        learning_rate=learning_rate, max_steps=max_steps, eval_every=eval_every,
        patience=patience, seed=seed, tied=tied,
    )  # fmt: skip
    grid = np.atleast_1d(np.asarray(DEFAULT_L2 if l2 is None else l2, np.float64))
    if grid.size > 1 and validation is None:
        raise ValueError(f"{grid.size} l2 values given but no validation runs to choose among them")
    if np.any(grid < 0):
        raise ValueError(f"l2 must be >= 0, got {grid.tolist()}")
    name = "featurized" if order == 1 else f"featurized_order{order}"
    init = init_simulator(x, z, cfg).replace(name=name)
    fits = [train(init, runs, l2=float(v), cfg=cfg, validation=validation) for v in grid]
    best = int(np.argmin([h["best_val_mse"] for _, h in fits])) if grid.size > 1 else 0
    return fits[best][0]


def synthetic_features(runs: RunSet, *, seed: int = 0, dim: int = 8):
    """Random Gaussian ``(train [N, dim], test [M, dim])`` features for ``runs`` (for the
    shared simulator test battery, whose synthetic runs carry no text)."""
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(runs.num_train, dim)).astype(np.float32),
        rng.normal(size=(runs.num_test, dim)).astype(np.float32),
    )
