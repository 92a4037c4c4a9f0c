"""``Replay``: the differentiable replay of the runs of one run factory, in reverse mode
(``metagradients``) and forward mode (``trajectory_jvp``); the package docstring states
what is differentiated."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.gradients.metagradient.optimizers import differentiable_optimizer
from simfluence_jax.gradients.metagradient.readouts import (
    check_int,
    horizon_readout,
    remat_scan,
    steps_readout,
)
from simfluence_jax.gradients.metagradient.record import Metagradients, metagradient_simulator
from simfluence_jax.runs import RunSet
from simfluence_jax.sampling import validate_curricula
from simfluence_jax.simulators.metagradient import MetagradientSimulator
from simfluence_jax.training.train_step import (
    TrainState,
    gather,
    init_state,
    make_eval_losses,
    make_update,
)


class Replay:
    """The differentiable replay of the runs of one ``RunFactory`` (see the package docstring).

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
        run = check_int("run", run, 0, runs.num_runs - 1)
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
            remat_chunk = check_int("remat_chunk", remat_chunk, 1)
        size = len(tests) if test_batch_size is None else test_batch_size
        size = min(check_int("test_batch_size", size, 1), len(tests))
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
