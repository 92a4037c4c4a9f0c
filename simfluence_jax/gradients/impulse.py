"""Impulse responses of a logged run, measured exactly: how the effect of up-weighting one
training slot unfolds over every later step, for every test example.

For a run of the run factory (curriculum ``c int32[T, B]``, seed) with slot weights ``w``
(``gradients.metagradient``: ``w = 1`` is the logged run), the impulse response of slot
``(s, b)`` (0-based step ``s``, position ``b``) is

    R[t, j] = dL_t[j] / dw[s, b],     t = 0..T,

the derivative of test example ``j``'s loss after step ``t`` (row 0 is ``L_0``, row ``t``
the loss after the ``t``-th update) with respect to the weight of that slot. The update of
step ``s`` is the ``(s+1)``-th, so ``R[t] = 0`` for ``t <= s`` and ``R[s+1]`` is the first
loss it moves; lag ``k = t - (s+1)``.

Each response is one forward-mode pass (``jax.jvp``) along the one-hot direction of the
slot, through the factory's own update (``Replay``); the directions of ``chunk`` slots are
``vmap``-ed together so that the run itself (the primal) is computed once per chunk. A chunk
starts differentiating at its earliest step ``s0``: the steps before it only train (no test
losses, no tangents), since no direction of the chunk touches them; with a ``horizon`` it
stops after the last lag any of its slots needs. The summaries of these
arrays (normalised shapes, geometric fits) are ``simfluence_jax.impulse_shape``.
"""

from __future__ import annotations

import dataclasses
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.sampling import validate_curricula


@dataclasses.dataclass(frozen=True)
class ImpulseResponses:
    """The impulse responses of some slots of one run.

    Attributes:
      slots: ``int32[S, 2]`` the slots ``(s, b)``: 0-based step and position in the batch.
      ids: ``int32[S]`` the training id at each slot.
      response: ``float[S, T+1, M]`` ``R[n, t, j] = dL_t[j] / dw[s_n, b_n]`` (zero for
        ``t <= s_n``; NaN for rows past the last one computed, when a horizon was given).
      losses: ``float[T+1, M]`` the run's test losses (``w = 1``).
      learning_rates: ``float32[T]`` the rate of each step (entry ``t`` is update ``t+1``).
      seed: the run's seed.
    """

    slots: np.ndarray
    ids: np.ndarray
    response: np.ndarray
    losses: np.ndarray
    learning_rates: np.ndarray
    seed: int


def sample_slots(batches, num: int, *, seed: int = 0, last_step: int | None = None) -> np.ndarray:
    """``int32[S, 2]``: ``num`` slots at distinct steps spread evenly over ``0..last_step``
    (default ``T-2``: the last update has no later step), each at a random real position.

    Raises:
      ValueError: for ``num < 1`` or more slots than steps.
    """
    b = validate_curricula(batches)
    if b.shape[0] != 1:
        raise ValueError(f"slots are sampled from one curriculum int32[T, B], got {b.shape}")
    b = b[0]
    T = b.shape[0]
    last = max(T - 2, 0) if last_step is None else int(last_step)
    if not 0 <= last <= T - 1:
        raise ValueError(f"last_step must lie in 0..T-1 = 0..{T - 1}, got {last}")
    if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    if num > last + 1:
        raise ValueError(f"cannot place {num} slots at distinct steps among {last + 1}")
    steps = np.unique(np.round(np.linspace(0, last, num)).astype(np.int64))
    rng = np.random.default_rng(seed)
    pos = [rng.choice(np.flatnonzero(b[s] >= 0)) for s in steps]
    return np.stack([steps, pos], axis=1).astype(np.int32)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _chunk_fn(replay):
    """The jitted ``(w, V, s0, t_end, seed, batches, data) -> (losses, tangents)`` of
    ``replay``: ``V float[C, T, B]`` directions that are zero before step ``s0``; ``tangents
    float[C, T+1, M]`` and ``losses float[T+1, M]`` computed for rows ``s0+1..t_end`` only
    (0-based steps ``s0..t_end-1``; the other rows are zero)."""
    if replay in _COMPILED:
        return _COMPILED[replay]

    def run(w, V, s0, t_end, seed, batches, data):
        T = batches.shape[0]
        steps = jnp.arange(T)
        M = replay.num_test

        def train(state, x):
            t, ids, w_t = x
            live = lambda st: replay.update(st, ids, data, w_t)  # noqa: E731
            return jax.lax.cond(t < s0, live, lambda st: st, state), None

        state_s0 = jax.lax.scan(train, replay.initial_state(seed), (steps, batches, w))[0]

        def trajectory(w_):
            def step(state, x):
                t, ids, w_t = x

                def live(st):
                    st = replay.update(st, ids, data, w_t)
                    return st, replay.eval_losses(st.trainable, data)

                def idle(st):
                    return st, jnp.zeros((M,), w_.dtype)

                return jax.lax.cond((t >= s0) & (t < t_end), live, idle, state)

            losses = jax.lax.scan(step, state_s0, (steps, batches, w_))[1]
            return jnp.concatenate([jnp.zeros((1, M), losses.dtype), losses])

        def one(v):
            return jax.jvp(trajectory, (w,), (v,))

        losses, tangents = jax.vmap(one)(V)
        return losses[0], tangents

    fn = jax.jit(run)
    _COMPILED[replay] = fn
    return fn


def impulse_responses(
    replay,
    batches,
    seed: int,
    slots=None,
    *,
    num_slots: int = 16,
    chunk: int = 4,
    horizon: int | None = None,
    progress: bool = False,
) -> ImpulseResponses:
    """The impulse responses of ``slots`` of the run ``(batches, seed)`` (module docstring).

    Args:
      replay: a ``gradients.metagradient.Replay`` of the run's factory.
      batches: ``int32[T, B]`` the run's curriculum.
      seed: the run's seed.
      slots: ``int[S, 2]`` slots ``(s, b)`` on real examples (default: ``sample_slots(batches,
        num_slots)``).
      num_slots: slots sampled when ``slots`` is not given.
      chunk: slots differentiated together (one primal run per chunk; memory grows with it).
      horizon: compute each slot's response for lags ``0..horizon`` at least (rows up to
        ``s + 1 + horizon``) and stop there; default: to the end of the run.
      progress: show a progress bar over the slots.

    Returns:
      :class:`ImpulseResponses`, its slots in the order given.

    Raises:
      ValueError: for a bad curriculum, seed, slot or chunk, or a non-finite derivative.
    """
    b = validate_curricula(batches, pool_size=replay.num_train)
    if b.shape[0] != 1:
        raise ValueError(f"an impulse response takes one curriculum int32[T, B], got {b.shape}")
    b = b[0]
    T, B = b.shape
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"the run's seed must be an integer, got {seed!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if horizon is not None and (
        isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 0
    ):
        raise ValueError(f"horizon must be a nonnegative integer or None, got {horizon!r}")
    slots = sample_slots(b, num_slots) if slots is None else np.asarray(slots)
    if slots.ndim != 2 or slots.shape[1] != 2 or len(slots) == 0 or slots.dtype.kind not in "iu":
        raise ValueError(f"slots must be int[S, 2] pairs (step, position), got {slots.shape}")
    s, p = slots[:, 0], slots[:, 1]
    if s.min() < 0 or s.max() >= T or p.min() < 0 or p.max() >= B:
        raise ValueError(f"slots must lie in steps 0..{T - 1} and positions 0..{B - 1}")
    if np.any(b[s, p] < 0):
        n = int(np.argmax(b[s, p] < 0))
        raise ValueError(f"slot {slots[n].tolist()} is padding: it has no weight to perturb")
    dtype = replay.dtype or jax.tree_util.tree_leaves(replay.trainable0)[0].dtype
    fn = _chunk_fn(replay)
    w = jnp.ones((T, B), dtype)
    seed_arr = jnp.asarray(np.asarray(seed).astype(np.uint32))
    order = np.argsort(s, kind="stable")
    out = np.full((len(slots), T + 1, replay.num_test), np.nan, np.dtype(dtype))
    computed = np.zeros((len(slots), T + 1), bool)
    from simfluence_jax.training.loop import progress_bar

    with progress_bar(len(slots), progress) as bar:
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            padded = np.concatenate([idx, np.full(chunk - len(idx), idx[-1])])
            V = np.zeros((chunk, T, B), np.dtype(dtype))
            V[np.arange(chunk), s[padded], p[padded]] = 1.0
            t_end = T if horizon is None else min(T, int(s[idx].max()) + 1 + int(horizon))
            s0, t_end_arr = jnp.asarray(int(s[idx].min())), jnp.asarray(t_end)
            args = (w, jnp.asarray(V), s0, t_end_arr, seed_arr, jnp.asarray(b), replay.data)
            tangents = np.asarray(fn(*args)[1])[: len(idx)]
            out[idx, : t_end + 1] = tangents[:, : t_end + 1]
            computed[idx, : t_end + 1] = True
            bar.update(len(idx))
    if not np.all(np.isfinite(out[computed])):
        raise ValueError("the impulse response is not finite: a derivative through the run is "
                         "undefined (see gradients.metagradient)")  # fmt: skip
    return ImpulseResponses(
        slots=slots.astype(np.int32),
        ids=b[s, p].astype(np.int32),
        response=out,
        losses=replay.losses(b, int(seed)),
        learning_rates=np.asarray(replay.optimizer.learning_rates(T), np.float32),
        seed=int(seed),
    )
