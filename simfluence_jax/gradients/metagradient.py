"""Exact metagradients: the derivative of test losses after training with respect to a weight
on every training example of one logged run, through the whole run.

Fix a run of the run factory (its curriculum ``c int32[T, B]``, seed, model, training method,
optimizer and schedule) and put a weight ``w[t, b]`` on the loss of slot ``b`` of step ``t``.
Step ``t`` trains on the weighted batch loss of ``training.train_step.batch_weights``,

    J_t(theta; w) = sum_b w[t, b] m[t, b] l(z_{c[t, b]}; theta) / max(1, sum_b w[t, b] m[t, b])

(``m`` = 1 for real slots, 0 for padding), so ``w = 1`` is the logged run and ``w[t, b] = 0``
is that slot turned into padding: removal means what it means for retraining. The run is
``theta_t(w) = step(theta_{t-1}, grad J_t; eta_t)`` with the factory's own update (dropout key
``fold_in(seed, t)``, optimizer state, schedule); ``L_t[j](w) = l(z_test_j; theta_t(w))``. This
module differentiates readouts of the trajectory,

    y_k[j](w) = sum_t R[k, t] L_t[j](w)        (default: the mean of the last ``horizon`` steps)

with respect to ``w`` (Ilyas & Engstrom, 2025, "MAGIC: Near-Optimal Data Attribution for Deep
Learning", the "Replay" of a fixed training run; Maclaurin et al., 2015, for reverse-mode
hyperparameter gradients through training):

* reverse mode (:meth:`Replay.metagradients`): ``dy_k[j] / dw[t, b]`` for every slot, every
  test example and readout, as ``grad`` of the per-test-example readout ``vmap``-ed over test
  examples (the training trajectory is shared, only the cotangents are batched) and
  ``lax.map``-ed over chunks of them. The run is a ``lax.scan`` over chunks of
  ``remat_chunk`` steps, each chunk a ``jax.checkpoint``-ed scan: the forward pass keeps only
  the state at chunk boundaries and the backward pass recomputes one chunk at a time, so
  memory grows with ``T / remat_chunk + remat_chunk`` states instead of ``T``;
* forward mode (:meth:`Replay.trajectory_jvp`): for one direction ``v float[T, B]``, the
  directional derivative ``sum_{t,b} v[t, b] dL_s[j] / dw[t, b]`` of every test example's
  whole trajectory ``s = 0..T``, in a single ``jax.jvp`` pass.

The derivative of the aggregated weight of a training id ``i`` (one weight for all of its
occurrences) is the sum over its slots (:attr:`Metagradients.by_id`).

What it differentiates, and what it cannot:

* every training method (full, LoRA, prompt tuning, cached top layers) and model of the run
  factory: the update is the factory's ``make_update`` with slot weights;
* SGD (with or without momentum or Nesterov), Adam/AdamW and Adafactor, with any schedule and
  gradient clipping. Adam's ``sqrt(nu)`` has an infinite derivative where ``nu = 0`` (a
  parameter that has had only zero gradients, e.g. the embedding of an unused token), which
  gives ``0 * inf = NaN``; the replay therefore uses Adam with ``eps_root = 1e-30`` when the
  run had ``eps_root = 0``: in float32 ``nu + 1e-30 == nu`` for every ``nu > 1e-23``, and a
  parameter with ``nu = 0`` has a zero first moment and a zero update either way, so the run
  is unchanged (checked: ``w = 1`` reproduces the factory's losses);
* not Lion (``ValueError``): its update is the sign of a momentum, whose derivative is zero
  almost everywhere, so the metagradient would be exactly zero and meaningless;
* Adafactor scales by ``rsqrt(v)`` with ``v`` the mean of ``g^2 + eps``, ``eps = 1e-30``:
  where ``g = 0`` the derivative of ``rsqrt`` at ``1e-30`` is ``1e45``, beyond float32, and
  ``0 * inf = NaN``. A float32 replay therefore uses ``eps = 1e-22``
  (``ADAFACTOR_EPS_FLOAT32``; a float64 one keeps the run's ``eps``): in float32
  ``g^2 + 1e-22 == g^2`` for ``|g| > 4e-8``, so only coordinates with smaller gradients
  update differently, and ``w = 1`` reproduces the factory's losses to float32 rounding
  (measured in tests/test_metagradient.py). Its update clipping divides by the RMS of a
  whole parameter block, whose derivative is NaN when the block's update is exactly zero
  (LoRA's ``A`` factors have a zero gradient at step 1, while ``B = 0``); the replay builds
  Adafactor from the same optax parts as ``optax.adafactor`` with that RMS given a zero
  derivative on an all-zero block, the values unchanged. Any other non-finite result is
  reported as an error.

The derivative is exact up to floating point; it is the first-order term of an edit,
``y(w) ~ y(1) + J (w - 1)``, so it predicts small edits of this run (same seed and order)
and nothing about another curriculum (``simfluence_jax.simulators.metagradient``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simfluence_jax.runs import RunSet
from simfluence_jax.sampling import validate_curricula
from simfluence_jax.simulators.metagradient import MetagradientSimulator
from simfluence_jax.training.optim import SCHEDULE_KEYS, Optimizer, make_optimizer
from simfluence_jax.training.train_step import (
    TrainState,
    gather,
    init_state,
    make_eval_losses,
    make_update,
)

#: ``eps_root`` given to Adam/AdamW for the replay when the run used 0 (module docstring).
ADAM_EPS_ROOT = 1e-30
#: Adafactor's ``eps`` (added to squared gradients) for a float32 replay (module docstring).
ADAFACTOR_EPS_FLOAT32 = 1e-22
#: Optimizers whose derivative is defined and informative.
DIFFERENTIABLE_OPTIMIZERS = ("sgd", "adam", "adamw", "adafactor")


def differentiable_optimizer(optimizer: Optimizer, *, dtype=None) -> Optimizer:
    """The run's optimizer in a form that can be differentiated in ``dtype`` (default
    float32; see the module docstring).

    Raises:
      ValueError: for Lion or another optimizer this module cannot differentiate.
    """
    config = dict(optimizer.config)
    name = config.pop("name", None)
    if name is None:
        raise ValueError(
            "the optimizer has no name in its config; build it with "
            "training.optim.make_optimizer so the metagradient knows what it differentiates"
        )
    if name == "lion":
        raise ValueError(
            "metagradients through Lion are not supported: its update is the sign of a "
            "momentum, whose derivative is zero almost everywhere"
        )
    if name not in DIFFERENTIABLE_OPTIMIZERS:
        raise ValueError(
            f"metagradients support the optimizers {', '.join(DIFFERENTIABLE_OPTIMIZERS)}; "
            f"got {name!r}"
        )
    if name in ("adam", "adamw") and not config.get("eps_root"):
        config["eps_root"] = ADAM_EPS_ROOT
        return make_optimizer(name, **config)
    if name == "adafactor":
        single = jnp.dtype(dtype or jnp.float32).itemsize <= 4
        if single and config.get("eps", 1e-30) < ADAFACTOR_EPS_FLOAT32:
            config["eps"] = ADAFACTOR_EPS_FLOAT32
        return _adafactor(optimizer, config)
    return optimizer


def _adafactor(optimizer: Optimizer, config: dict) -> Optimizer:
    """optax.adafactor with the settings of ``config``, built from the same optax parts,
    except that the update clipping takes the RMS of a block with a zero derivative where the
    block is all zeros (optax's ``sqrt(mean(u^2))`` gives NaN there: LoRA's ``A`` factors
    have an exactly zero gradient at step 1, while ``B = 0``). The values are unchanged."""
    defaults = {k: p.default for k, p in inspect.signature(optax.adafactor).parameters.items()}
    known = set(defaults) | {"learning_rate", "schedule", "grad_clip_norm", *SCHEDULE_KEYS}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"adafactor settings {unknown} are not optax.adafactor arguments")
    a = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    tx = [
        optax.scale_by_factored_rms(
            a["factored"], a["decay_rate"], a["decay_offset"], a["min_dim_size_to_factor"],
            a["eps"],
        )
    ]  # fmt: skip
    if a["clipping_threshold"] is not None:
        tx.append(_clip_by_block_rms(a["clipping_threshold"]))
    tx.append(optax.scale_by_learning_rate(optimizer.schedule, flip_sign=False))
    if a["multiply_by_parameter_scale"]:
        tx.append(optax.scale_by_param_block_rms())
    if a["momentum"] is not None:
        tx.append(optax.ema(a["momentum"], debias=False, accumulator_dtype=a["dtype_momentum"]))
    if a["weight_decay_rate"] is not None:
        tx.append(optax.add_decayed_weights(a["weight_decay_rate"], mask=a["weight_decay_mask"]))
    tx.append(optax.scale(-1))
    chain = optax.chain(*tx)
    if config.get("grad_clip_norm") is not None:
        chain = optax.chain(optax.clip_by_global_norm(config["grad_clip_norm"]), chain)
    return Optimizer(tx=chain, schedule=optimizer.schedule, config=optimizer.config)


def _clip_by_block_rms(threshold) -> optax.GradientTransformation:
    """optax.clip_by_block_rms with a zero (not NaN) derivative of the RMS of a zero block."""

    def clip(u):
        ms = jnp.mean(jnp.square(u))
        rms = jnp.where(ms > 0, jnp.sqrt(jnp.where(ms > 0, ms, 1.0)), 0.0)
        return u / jnp.maximum(1.0, rms / threshold)

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@dataclasses.dataclass(frozen=True)
class Metagradients:
    """Reverse-mode metagradients of one run.

    Attributes:
      batches: ``int32[T, B]`` the run's curriculum (-1 padding).
      seed: the run's seed.
      readout: ``float[K, T]``; readout ``k`` of test example ``j`` is
        ``y[k, j] = sum_t readout[k, t-1] L_t[j]``.
      values: ``float[K, M]`` the readouts at ``w = 1``.
      slot: ``float[M, K, T, B]`` ``dy[k, j] / dw[t, b]`` (zero on padding slots).
      num_train: the pool size N.
      test_index: ``int[M]`` the factory's test examples these rows are.
    """

    batches: np.ndarray
    seed: int
    readout: np.ndarray
    values: np.ndarray
    slot: np.ndarray
    num_train: int
    test_index: np.ndarray

    @property
    def by_id(self) -> np.ndarray:
        """``float[M, K, N]``: the derivative with respect to one weight shared by all the
        occurrences of each training id (the sum over its slots; 0 for absent ids)."""
        m, k = self.slot.shape[:2]
        out = np.zeros((m, k, self.num_train), self.slot.dtype)
        real = self.batches >= 0
        np.add.at(
            out,
            (slice(None), slice(None), self.batches[real]),
            self.slot[:, :, real],
        )
        return out

    def effects(self, candidates=None):
        """The first-order removal effects of training ids, as ``attribution.Effects``.

        Removing id ``i`` sets the weights of all its slots to 0 (they become padding), so
        ``delta[k, j] = y_j(w without ids[k]) - y_j(1) ~ -by_id[j, 0, ids[k]]``: ``> 0``
        means removing it raises the loss (it helps), as in ``attribution.removal_effects``.
        Needs a single readout that is the mean of the last ``horizon`` steps (the default
        of ``Replay.metagradients``).

        Args:
          candidates: ``int[K]`` training ids (default: every distinct id of the run);
            each must occur in the run's curriculum.
        """
        from simfluence_jax.attribution import Effects

        r = np.asarray(self.readout)
        T = r.shape[1]
        horizon = int(np.count_nonzero(r[0])) if r.shape[0] == 1 else 0
        if not horizon or not np.allclose(r, horizon_readout(T, horizon)):
            raise ValueError(
                "removal effects need the metagradients of one readout, the mean of the last "
                "horizon steps (metagradients(..., horizon=h)); got readouts of shape "
                f"{list(r.shape)}"
            )
        present = np.unique(self.batches[self.batches >= 0])
        if candidates is None:
            ids = present
        else:
            ids = np.asarray(candidates).reshape(-1)
            if ids.size == 0 or ids.dtype.kind not in "iu":
                raise ValueError("candidates must be a non-empty list of training ids")
            missing = np.setdiff1d(ids, present)
            if missing.size:
                raise ValueError(f"candidates {missing[:10].tolist()} do not occur in the run")
        delta = -self.by_id[:, 0, ids].T.astype(np.float32)
        return Effects(
            ids=ids.astype(np.int32), delta=delta, baseline=self.values[0].astype(np.float32),
            horizon=horizon, repack=False, batch_loss="mean",
        )  # fmt: skip


def horizon_readout(num_steps: int, horizon: int = 1) -> np.ndarray:
    """``float32[1, T]``: the mean of the losses after the last ``horizon`` steps."""
    _check_int("horizon", horizon, 1, num_steps)
    r = np.zeros((1, num_steps), np.float32)
    r[0, num_steps - horizon :] = 1.0 / horizon
    return r


def steps_readout(num_steps: int, steps) -> np.ndarray:
    """``float32[K, T]``: one readout per step of ``steps`` (1-based), its loss alone."""
    steps = np.asarray(steps).reshape(-1)
    if steps.size == 0 or steps.dtype.kind not in "iu":
        raise ValueError(f"steps must be a non-empty list of integers, got {steps!r}")
    if steps.min() < 1 or steps.max() > num_steps:
        raise ValueError(f"steps must lie in 1..T = 1..{num_steps}, got {steps.tolist()}")
    r = np.zeros((len(steps), num_steps), np.float32)
    r[np.arange(len(steps)), steps - 1] = 1.0
    return r


def _check_int(name, value, low, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def remat_scan(step, carry, xs, *, chunk: int | None):
    """``lax.scan(step, carry, xs)[0]`` for ``step(carry, x) -> carry``, with ``chunk``:
    a scan over ``ceil(T / chunk)`` chunks, each a ``jax.checkpoint``-ed scan of ``chunk``
    steps (steps past ``T`` are inactive), so reverse mode stores one carry per chunk and
    recomputes the steps of one chunk at a time."""

    def plain(c, x):
        return step(c, x), None

    if chunk is None:
        return jax.lax.scan(plain, carry, xs)[0]
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    n = -(-T // chunk)
    pad = n * chunk - T

    def split(x):
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
        return x.reshape((n, chunk) + x.shape[1:])

    active = split(jnp.ones((T,), bool))

    def guarded(c, xa):
        x, a = xa
        return jax.lax.cond(a, step, lambda c, _: c, c, x), None

    @jax.checkpoint
    def run_chunk(c, chunk_xs):
        return jax.lax.scan(guarded, c, chunk_xs)[0]

    def outer(c, chunk_xs):
        return run_chunk(c, chunk_xs), None

    return jax.lax.scan(outer, carry, (jax.tree_util.tree_map(split, xs), active))[0]


class Replay:
    """The differentiable replay of the runs of one ``RunFactory`` (see the module docstring).

    Args:
      factory: the ``training.RunFactory`` that made (or would make) the runs.
      dtype: compute in this floating dtype (e.g. ``jnp.float64`` under ``jax.enable_x64``
        for checks against finite differences); default: the factory's.

    Raises:
      ValueError: for an optimizer it cannot differentiate.
    """

    def __init__(self, factory, *, dtype=None):
        self.factory = factory
        self.optimizer = differentiable_optimizer(factory.optimizer, dtype=dtype)
        settings = factory.settings
        self.update = make_update(
            factory.model,
            method=factory.method,
            optimizer=self.optimizer,
            train_rng=settings["train_rng"],
        )
        self.eval_losses = make_eval_losses(
            factory.model, method=factory.method, eval_batch_size=settings["eval_batch_size"]
        )
        cast = _caster(dtype)
        self.dtype = dtype
        self.data = cast(factory.data)
        self.trainable0 = cast(factory.trainable0)
        self.num_train = factory.num_train
        self.num_test = factory.num_test
        self._reverse = jax.jit(
            self._reverse_core, static_argnames=("remat_chunk", "test_batch_size")
        )
        self._forward = jax.jit(self._forward_core)
        self._trajectory = jax.jit(self.trajectory)

    # -- pure cores -----------------------------------------------------------------------------
    def initial_state(self, seed) -> TrainState:
        return init_state(self.trainable0, self.optimizer, seed=seed)

    def _test_loss(self, trainable, j, data):
        """``l(z_test_j; theta)`` of one test example (deterministic forward)."""
        method, model = self.factory.method, self.factory.model
        inputs = gather(data.test, j[None])
        return method.loss(model, trainable, data.frozen, inputs, rng=None)[0]

    def readouts(self, w, seed, batches, readout, j, data, *, remat_chunk):
        """``float[K]``: the readouts of test example ``j`` after the run with weights ``w``.

        Args:
          w: ``float[T, B]`` slot weights; ``seed``: the run's seed; ``batches``:
            ``int32[T, B]``; ``readout``: ``float[K, T]``; ``j``: ``int32[]`` a test index.
          remat_chunk: steps per checkpointed chunk (``None``: no rematerialisation).
        """
        needed = jnp.any(readout != 0, axis=0)  # bool[T], not batched over j or k
        zero = jnp.zeros(readout.shape[:1], w.dtype)

        def step(carry, x):
            state, acc = carry
            ids, w_t, r_t, need = x
            state = self.update(state, ids, data, w_t)
            acc = jax.lax.cond(
                need,
                lambda a: a + r_t * self._test_loss(state.trainable, j, data),
                lambda a: a,
                acc,
            )
            return state, acc

        xs = (batches, w, readout.T, needed)
        _, acc = remat_scan(step, (self.initial_state(seed), zero), xs, chunk=remat_chunk)
        return acc

    def _reverse_core(
        self, w, seed, batches, readout, tests, data, *, remat_chunk, test_batch_size
    ):
        def one(j):
            return jax.value_and_grad(
                lambda w_, k: self.readouts(
                    w_, seed, batches, readout, j, data, remat_chunk=remat_chunk
                )[k]
            )

        def per_test(j):
            k = jnp.arange(readout.shape[0])
            return jax.vmap(lambda kk: one(j)(w, kk))(k)  # ([K], [K, T, B])

        chunks = tests.reshape(-1, test_batch_size)
        values, grads = jax.lax.map(jax.vmap(per_test), chunks)
        return values.reshape((-1,) + values.shape[2:]), grads.reshape((-1,) + grads.shape[2:])

    def trajectory(self, w, seed, batches, data):
        """``float[T+1, M]``: every test loss after every step of the run with weights ``w``
        (row 0 is L_0); ``w = 1`` is the factory's run."""
        state0 = self.initial_state(seed)

        def step(state, x):
            ids, w_t = x
            state = self.update(state, ids, data, w_t)
            return state, self.eval_losses(state.trainable, data)

        _, losses = jax.lax.scan(step, state0, (batches, w))
        L0 = self.eval_losses(state0.trainable, data)
        return jnp.concatenate([L0[None], losses])

    def _forward_core(self, w, v, seed, batches, data):
        return jax.jvp(lambda w_: self.trajectory(w_, seed, batches, data), (w,), (v,))

    # -- checked entry points -------------------------------------------------------------------
    def _inputs(self, batches, weights):
        b = validate_curricula(batches, pool_size=self.num_train)
        if b.shape[0] != 1:
            raise ValueError(f"a replay takes one curriculum int32[T, B], got shape {b.shape}")
        b = b[0]
        dtype = self.dtype or jax.tree_util.tree_leaves(self.trainable0)[0].dtype
        if weights is None:
            w = np.ones(b.shape, dtype)
        else:
            w = np.asarray(weights)
            if w.shape != b.shape:
                raise ValueError(
                    f"weights must have the curriculum's shape {b.shape} (one per slot), "
                    f"got {w.shape}"
                )
            if not np.all(np.isfinite(w)):
                raise ValueError("weights contain NaN or infinite values")
            w = w.astype(dtype)
        return jnp.asarray(b), jnp.asarray(w)

    def logged_run(self, runs: RunSet, run: int, *, atol: float = 1e-5) -> tuple[np.ndarray, int]:
        """``(batches int32[T, B], seed)`` of run ``run`` of ``runs``, checked to be a run of
        this replay's factory.

        Raises:
          ValueError: if the run set did not log the seeds or the learning rates of its runs,
            if the run's schedule is not the factory's, or if replaying it does not reproduce
            its logged losses to ``atol`` (another model, method, optimizer or data).
        """
        run = _check_int("run", run, 0, runs.num_runs - 1)
        seeds = runs.metadata.get("seeds")
        if not isinstance(seeds, list) or len(seeds) != runs.num_runs:
            raise ValueError(
                "the run set did not log its runs' seeds (metadata['seeds'], one per run); a "
                "metagradient replays a run exactly and needs its seed"
            )
        if runs.learning_rates is None:
            raise ValueError(
                "the run set did not log its runs' learning rates; a metagradient replays a "
                "run exactly and needs its schedule"
            )
        T = runs.num_steps
        want = np.asarray(self.optimizer.learning_rates(T))
        got = runs.learning_rates[run]
        if not np.allclose(got, want, rtol=1e-6, atol=0):
            t = int(np.argmax(~np.isclose(got, want, rtol=1e-6, atol=0)))
            raise ValueError(
                f"run {run} was trained under another schedule than this factory's optimizer "
                f"(step {t + 1}: logged rate {got[t]:.6g}, factory {want[t]:.6g})"
            )
        batches, seed = runs.batches[run], int(seeds[run])
        replayed = self.losses(batches, seed)
        gap = float(np.max(np.abs(replayed - runs.losses[run])))
        if not gap <= atol:
            raise ValueError(
                f"replaying run {run} (seed {seed}) does not reproduce its logged losses (largest "
                f"difference {gap:.3g} > atol {atol:g}): it was made with another model, training "
                "method, optimizer or data than this factory"
            )
        return batches, seed

    def simulator(
        self,
        batches,
        seed: int,
        *,
        steps=None,
        remat_chunk: int | None = 8,
        test_batch_size: int | None = None,
    ) -> MetagradientSimulator:
        """The metagradient simulator of the run ``(batches, seed)``: first-order predictions
        of its slot removals at ``steps`` (default: every step, the whole trajectory; the
        cost grows with the number of steps, so give the window an attribution needs, e.g.
        the last ``horizon`` steps)."""
        b, _ = self._inputs(batches, None)
        T = b.shape[0]
        steps = np.arange(1, T + 1) if steps is None else steps
        mg = self.metagradients(
            batches, seed, steps=steps, remat_chunk=remat_chunk, test_batch_size=test_batch_size
        )
        return metagradient_simulator(mg, self.losses(batches, seed))

    def losses(self, batches, seed: int, *, weights=None) -> np.ndarray:
        """``float[T+1, M]``: the run's test losses with slot ``weights`` (default 1, the
        logged run)."""
        b, w = self._inputs(batches, weights)
        return np.asarray(self._trajectory(w, _seed(seed), b, self.data))

    def trajectory_jvp(self, batches, seed: int, direction, *, weights=None):
        """Forward mode: every test example's whole trajectory and its derivative along one
        edit direction, in one pass.

        Args:
          batches: ``int32[T, B]`` the run's curriculum.
          seed: the run's seed.
          direction: ``float[T, B]`` the direction ``v`` in slot weights (e.g. ``-1`` on
            the slots of the examples to remove); padding slots are ignored.
          weights: the point ``w`` (default 1, the logged run).

        Returns:
          ``(losses float[T+1, M], tangent float[T+1, M])`` with
          ``tangent[s, j] = sum_{t,b} v[t, b] dL_s[j] / dw[t, b]``.
        """
        b, w = self._inputs(batches, weights)
        v = np.asarray(direction)
        if v.shape != b.shape:
            raise ValueError(f"direction must have shape {b.shape}, got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("direction contains NaN or infinite values")
        losses, tangent = self._forward(w, jnp.asarray(v, w.dtype), _seed(seed), b, self.data)
        return np.asarray(losses), _finite(np.asarray(tangent), "forward-mode metagradient")

    def metagradients(
        self,
        batches,
        seed: int,
        *,
        horizon: int = 1,
        steps=None,
        readout=None,
        tests=None,
        remat_chunk: int | None = 8,
        test_batch_size: int | None = None,
        weights=None,
        _lower: bool = False,
    ) -> Metagradients:
        """Reverse mode: the derivative of readouts of every test example's trajectory with
        respect to every slot weight.

        Args:
          batches: ``int32[T, B]`` the run's curriculum.
          seed: the run's seed.
          horizon: the readout is the mean loss over the last ``horizon`` steps (default: the
            final loss), unless ``steps`` or ``readout`` is given.
          steps: one readout per listed step (1-based): the loss after that step.
          readout: ``float[K, T]`` general readouts ``y_k = sum_t readout[k, t-1] L_t``.
          tests: ``int[M']`` the test examples to differentiate (default: all).
          remat_chunk: steps per rematerialised chunk; ``None`` stores every step.
          test_batch_size: test examples whose cotangents are ``vmap``-ed together (the
            rest are ``lax.map``-ed, each chunk replaying the run); default: all at once.
          weights: the point ``w`` (default 1, the logged run).

        Returns:
          :class:`Metagradients`.

        Raises:
          ValueError: naming the problem (bad curriculum, weights, readout, horizon, test
            indices or sizes), or when the result is not finite.
        """
        b, w = self._inputs(batches, weights)
        T = b.shape[0]
        if sum(x is not None for x in (steps, readout)) > 1:
            raise ValueError("give at most one of steps and readout")
        if readout is not None:
            r = np.asarray(readout, np.float64)
            if r.ndim != 2 or r.shape[1] != T or r.shape[0] == 0:
                raise ValueError(f"readout must have shape [K, T] with T = {T}, got {r.shape}")
            if not np.all(np.isfinite(r)):
                raise ValueError("readout contains NaN or infinite values")
        elif steps is not None:
            r = steps_readout(T, steps)
        else:
            r = horizon_readout(T, horizon)
        if tests is None:
            tests = np.arange(self.num_test)
        tests = np.asarray(tests).reshape(-1)
        if tests.size == 0 or tests.dtype.kind not in "iu":
            raise ValueError("tests must be a non-empty list of test indices")
        if tests.min() < 0 or tests.max() >= self.num_test:
            raise ValueError(
                f"tests must be indices in 0..{self.num_test - 1}, got {tests.min()}..{tests.max()}"
            )
        if remat_chunk is not None:
            remat_chunk = _check_int("remat_chunk", remat_chunk, 1)
        size = len(tests) if test_batch_size is None else test_batch_size
        size = min(_check_int("test_batch_size", size, 1), len(tests))
        padded = np.concatenate([tests, np.full(-len(tests) % size, tests[0])]).astype(np.int32)
        args = (w, _seed(seed), b, jnp.asarray(r, w.dtype), jnp.asarray(padded), self.data)
        static = dict(remat_chunk=remat_chunk, test_batch_size=size)
        if _lower:
            return self._reverse.lower(*args, **static), args
        values, grads = self._reverse(*args, **static)
        m = len(tests)
        grads = _finite(np.asarray(grads)[:m], "reverse-mode metagradient")
        return Metagradients(
            batches=np.asarray(b),
            seed=int(seed),
            readout=r.astype(np.float32),
            values=np.asarray(values)[:m].T,
            slot=grads,
            num_train=self.num_train,
            test_index=tests.astype(np.int32),
        )

    def lower_metagradients(self, batches, seed: int, **kwargs):
        """``(jax.stages.Lowered, args)`` of the compiled program ``metagradients(batches,
        seed, **kwargs)`` runs (same checks), for cost and memory analysis: ``lowered.compile()
        (*args)`` returns ``(values, slot gradients)`` of the padded test examples."""
        return self.metagradients(batches, seed, _lower=True, **kwargs)


def metagradient_simulator(mg: Metagradients, losses) -> MetagradientSimulator:
    """The simulator of edits of ``mg``'s run (``simulators.metagradient``).

    Args:
      mg: metagradients whose readouts are single steps (``Replay.metagradients(...,
        steps=...)``), for every test example of the factory in order.
      losses: ``float[T+1, M]`` the run's losses at ``w = 1`` (logged, or ``Replay.losses``).

    Raises:
      ValueError: if a readout is not a single step, or the sizes disagree.
    """
    r = np.asarray(mg.readout)
    T = r.shape[1]
    steps = np.argmax(r != 0, axis=1) + 1
    one_hot = np.zeros_like(r)
    one_hot[np.arange(len(steps)), steps - 1] = 1.0
    if not np.array_equal(r, one_hot) or len(np.unique(steps)) != len(steps):
        raise ValueError(
            "the metagradient simulator needs readouts of distinct single steps "
            "(metagradients(..., steps=...)), not averages over a horizon"
        )
    losses = np.asarray(losses, np.float32)
    m = mg.slot.shape[0]
    if losses.shape != (T + 1, m) or not np.array_equal(mg.test_index, np.arange(m)):
        raise ValueError(
            f"losses must be [T+1, M] = [{T + 1}, {m}] and the metagradients must cover the "
            f"test examples 0..M-1 in order; got losses {losses.shape}"
        )
    index = np.full(T, -1, np.int32)
    index[steps - 1] = np.arange(len(steps))
    return MetagradientSimulator(
        reference=jnp.asarray(losses.T),
        J=jnp.asarray(mg.slot, jnp.float32),
        batches=jnp.asarray(mg.batches, jnp.int32),
        step_index=jnp.asarray(index),
        seed=int(mg.seed),
    )


def _seed(seed) -> jax.Array:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"the run's seed must be an integer, got {seed!r}")
    return jnp.asarray(np.asarray(seed).astype(np.uint32))  # as RunFactory.init_states


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        raise ValueError(
            f"the {what} is not finite: a derivative through the run is undefined (e.g. "
            "Adafactor's update clipping of a parameter block whose gradient is exactly zero)"
        )
    return x


def _caster(dtype):
    if dtype is None:
        return lambda tree: tree

    def cast(tree: Any):
        def leaf(x):
            x = jnp.asarray(x)
            return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

        return jax.tree_util.tree_map(leaf, tree)

    return cast
