"""The run loop: a thin shell that drives one compiled step over many runs.

:class:`RunFactory` holds the model, the training method, the optimizer and the pool and
test arrays, and compiles exactly two functions, once:

* ``initial(states) -> float32[G, M]``: L_0 of a group of G runs;
* ``advance(states, ids int32[G, C, B], active bool[C]) -> (states, float32[G, C, M])``:
  ``C`` steps of the instrumented ``train_step`` (``lax.scan`` over steps, ``vmap`` over
  the G runs of a group), steps with ``active = False`` leaving the state untouched, so
  every chunk, including a short last one, reuses the same program.

Runs are processed in groups of ``group_size`` (``vmap`` over runs). ``group_size=1`` is
the plain loop over runs reusing one compiled (unbatched) step; which is faster depends on
the model and the machine (``benchmarks/bench_run_factory.py`` measures both; on the 2-core
CPU machines the loop won). With a ``jax.sharding.Mesh`` the group axis is split across the
mesh's devices (axis ``"runs"``) with ``shard_map``, each device running its own runs (the
unbatched program when it holds one run); ``group_size`` must then be a multiple of the
mesh size. Across processes, :mod:`simfluence_jax.training.distributed` gives each process
its share of groups.

Groups are fixed by ``group_size`` alone (runs ``[0, G)``, ``[G, 2G)``, ...); a group whose
runs are partly complete fills the free slots with copies of one of its incomplete runs,
whose results are dropped. Runs never interact inside a group, so the values in other slots
do not change a run's losses.

:meth:`RunFactory.run` makes runs in memory. Runs written to a crash-safe run store, with
resume snapshots and checkpoints, are :func:`simfluence_jax.training.produce.produce_runs`;
it drives a factory through its public group interface only: :func:`plan_groups`,
:func:`fill_slots`, :meth:`~RunFactory.check_group_size`, :meth:`~RunFactory.init_states`,
:meth:`~RunFactory.stack_states`, :meth:`~RunFactory.initial_losses` and
:meth:`~RunFactory.segments`, with the ``fingerprint``, ``settings``, ``optimizer``,
``trainable0`` and ``chunk_steps`` attributes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from simfluence_jax.sampling import validate_curricula
from simfluence_jax.training.optim import Optimizer
from simfluence_jax.training.train_step import (
    TrainState,
    init_state,
    make_eval_losses,
    make_train_step,
)

RUNS_AXIS = "runs"


def _digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(jax.device_get(tree)):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(str((arr.dtype, arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def _describe(obj) -> str:
    """A repr that is the same in every process (object addresses are dropped)."""
    text = repr(obj)
    if " at 0x" in text:
        config = getattr(obj, "config", None)
        text = type(obj).__qualname__ + ("" if config is None else f"({config!r})")
    return text


def plan_groups(num_runs: int, group_size: int) -> list[list[int]]:
    """Runs ``[0, G)``, ``[G, 2G)``, ...: the fixed groups that are vmapped together."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return [list(range(i, min(i + group_size, num_runs))) for i in range(0, num_runs, group_size)]


class RunFactory:
    """Makes instrumented training runs (see module docstring).

    Args:
      model: a model following ``simfluence_jax.models.protocol``.
      params: the base (pretrained) parameters.
      method: a training method from ``simfluence_jax.training.methods``.
      optimizer: from ``simfluence_jax.training.optim.make_optimizer``.
      pool: ``model.example_arrays`` of the N training examples (leaves ``[N, ...]``).
      test: the same for the M test examples.
      train_rng: dropout in the training forward, keyed by ``fold_in(seed, t)``.
      eval_batch_size: evaluate the test set this many examples at a time.
      chunk_steps: steps per compiled call (``C``); losses reach the host once per chunk.
      mesh: optional mesh with an axis ``"runs"``; groups are sharded along it.

    Attributes:
      num_train, num_test: N and M.
      settings: the JSON-able description of model, method, optimizer and options that
        every run records; ``fingerprint``: a hash of it and of the parameters, pool and
        test arrays (a run store refuses a factory with another fingerprint).
      trainable0: the trainable parameters at step 0 (the step-0 checkpoint).
      optimizer, chunk_steps, mesh: as given.
    """

    def __init__(
        self,
        model,
        params,
        *,
        method,
        optimizer: Optimizer,
        pool: dict,
        test: dict,
        train_rng: bool = True,
        eval_batch_size: int | None = None,
        chunk_steps: int = 8,
        mesh: Mesh | None = None,
    ):
        if chunk_steps < 1:
            raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
        if mesh is not None and RUNS_AXIS not in mesh.axis_names:
            raise ValueError(f"the mesh needs an axis named {RUNS_AXIS!r}, has {mesh.axis_names}")
        self.model = model
        self.method = method
        self.optimizer = optimizer
        self.chunk_steps = chunk_steps
        self.mesh = mesh
        self.num_train = int(jax.tree_util.tree_leaves(pool)[0].shape[0])
        self.num_test = int(jax.tree_util.tree_leaves(test)[0].shape[0])
        self.params = params
        self.data = method.setup(model, params, pool, test)
        self.trainable0 = method.init(model, params)
        self.settings = {
            "model": getattr(model, "name", type(model).__name__),
            "model_config": _describe(model),
            "method": _describe(method),
            "optimizer": optimizer.config,
            "train_rng": train_rng,
            "eval_batch_size": eval_batch_size,
        }
        self.fingerprint = hashlib.sha256(
            json.dumps(
                {
                    **self.settings,
                    "params": _digest(params),
                    "pool": _digest(pool),
                    "test": _digest(test),
                },
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:20]

        step = make_train_step(
            model,
            method=method,
            optimizer=optimizer,
            train_rng=train_rng,
            eval_batch_size=eval_batch_size,
        )
        eval_losses = make_eval_losses(model, method=method, eval_batch_size=eval_batch_size)
        self.train_step = step

        def one_run(state, run_ids, active, data):
            def body(state, x):
                ids_t, act = x
                return jax.lax.cond(
                    act,
                    lambda s: step(s, ids_t, data),
                    lambda s: (s, jnp.zeros((self.num_test,), jnp.float32)),
                    state,
                )

            return jax.lax.scan(body, state, (run_ids, active))

        def local_advance(states, ids, active, data):
            # A group of one runs the unbatched program: XLA's CPU kernels for batched
            # matmuls with a batch of 1 were measured several times slower.
            if ids.shape[0] == 1:
                squeeze = partial(jax.tree_util.tree_map, lambda x: x[0])
                state, losses = one_run(squeeze(states), ids[0], active, data)
                return jax.tree_util.tree_map(lambda x: x[None], state), losses[None]
            return jax.vmap(one_run, in_axes=(0, 0, None, None))(states, ids, active, data)

        def advance(states, ids, active, data):
            if mesh is None:
                return local_advance(states, ids, active, data)
            runs, rest = PartitionSpec(RUNS_AXIS), PartitionSpec()
            return jax.shard_map(
                local_advance,
                mesh=mesh,
                in_specs=(runs, runs, rest, rest),
                out_specs=(runs, runs),
                check_vma=False,
            )(states, ids, active, data)

        def initial(states, data):
            return jax.vmap(lambda s: eval_losses(s.trainable, data))(states)

        def init_states(seeds):
            return jax.vmap(lambda s: init_state(self.trainable0, optimizer, seed=s))(seeds)

        self._advance = jax.jit(advance, donate_argnums=0)
        self._initial = jax.jit(initial)
        self._init_states = jax.jit(init_states)

    # -- groups of runs ---------------------------------------------------------------------
    def place_groups(self, tree):
        """Places arrays with a leading group axis ``[G, ...]`` on the mesh, split along
        ``"runs"`` (returned as given without a mesh)."""
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, PartitionSpec(RUNS_AXIS))
        return jax.device_put(tree, sharding)

    def check_group_size(self, group_size: int) -> None:
        """``ValueError`` unless ``group_size`` runs can be a group: with a mesh, a multiple
        of its ``"runs"`` axis."""
        if self.mesh is not None and group_size % self.mesh.shape[RUNS_AXIS] != 0:
            raise ValueError(
                f"group_size {group_size} must be a multiple of the {self.mesh.shape[RUNS_AXIS]} "
                "devices of the mesh's 'runs' axis"
            )

    def init_states(self, seeds: Sequence[int]) -> TrainState:
        """Stacked ``TrainState[G]`` at step 0 for the given seeds."""
        return self._init_states(self.place_groups(jnp.asarray(np.asarray(seeds), jnp.uint32)))

    def stack_states(self, states: Sequence[TrainState]) -> TrainState:
        """``TrainState[G]`` from G single-run states (e.g. resume snapshots), placed like
        :meth:`init_states`."""
        stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *states)
        return self.place_groups(stacked)

    def initial_losses(self, states: TrainState) -> jax.Array:
        """``float32[G, M]``: L_0 of each run."""
        return self._initial(states, self.data)

    def advance(self, states: TrainState, ids: np.ndarray, num_active: int):
        """Runs ``num_active <= C`` steps; ``ids`` is ``int32[G, C, B]`` (rows past
        ``num_active`` are ignored). Returns ``(states, float32[G, C, M])``; ``states`` is
        donated."""
        active = np.arange(ids.shape[1]) < num_active
        ids = self.place_groups(jnp.asarray(ids))
        return self._advance(states, ids, jnp.asarray(active), self.data)

    def compile_count(self) -> int:
        """Programs compiled for the advance step so far (1 after any number of runs)."""
        return self._advance._cache_size()

    # -- in-memory runs ---------------------------------------------------------------------
    def run(
        self,
        batches: np.ndarray,
        seeds: Sequence[int],
        *,
        group_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Makes R runs in memory; returns ``float32[R, T+1, M]``.

        Args:
          batches: ``int32[R, T, B]`` curricula (-1 padding).
          seeds: ``int[R]`` run seeds.
          group_size: runs vmapped together (default 1: a loop over runs, the faster choice
            measured on CPU for MiniLM, see benchmarks/bench_run_factory.py).
          progress: show a tqdm bar.
        """
        batches = validate_curricula(batches, pool_size=self.num_train)
        seeds = np.asarray(seeds).reshape(-1)
        if seeds.shape[0] != batches.shape[0]:
            raise ValueError(f"need one seed per run: {batches.shape[0]} runs, {seeds.size} seeds")
        r, t, _ = batches.shape
        group_size = group_size or 1
        self.check_group_size(group_size)
        out = np.empty((r, t + 1, self.num_test), np.float32)
        bar = progress_bar(r * t, progress)
        for group in plan_groups(r, group_size):
            slots = fill_slots(group, group_size)
            states = self.init_states(seeds[slots])
            out[group, 0] = np.asarray(self.initial_losses(states))[: len(group)]
            for start, stop, _, losses in self.segments(states, batches[slots]):
                out[group, start + 1 : stop + 1] = losses[: len(group)]
                bar.update((stop - start) * len(group))
        bar.close()
        return out

    def segments(
        self, states: TrainState, batches: np.ndarray, start: int = 0, cuts: Iterable[int] = ()
    ) -> Iterator[tuple[int, int, TrainState, np.ndarray]]:
        """Advances a group from step ``start`` to T chunk by chunk.

        Args:
          states: ``TrainState[G]`` at step ``start`` (donated to the first chunk).
          batches: ``int32[G, T, B]``, the group's curricula (one per slot).
          start: the step the states are at.
          cuts: further steps a chunk must end at (snapshots, checkpoints); chunk ends
            fall on multiples of ``chunk_steps`` and on these.

        Yields:
          ``(start, stop, states, float32[G, stop - start, M])``: the steps of the chunk,
          the states after step ``stop`` (valid until the next chunk is requested) and the
          test losses after each of its steps, on the host.
        """
        g, t, b = batches.shape
        cuts = sorted(
            {c for c in range(self.chunk_steps, t, self.chunk_steps)}
            | {c for c in cuts if 0 < c < t}
            | {t}
        )
        for stop in cuts:
            if stop <= start:
                continue
            n = stop - start
            ids = np.full((g, self.chunk_steps, b), -1, np.int32)
            ids[:, :n] = batches[:, start:stop]
            states, losses = self.advance(states, ids, n)
            yield start, stop, states, np.asarray(losses)[:, :n]
            start = stop


def fill_slots(runs: Sequence[int], group_size: int) -> list[int]:
    """``runs`` padded to ``group_size`` slots with copies of its first run (their results
    are dropped)."""
    return list(runs) + [runs[0]] * (group_size - len(runs))


def progress_bar(total: int, enabled: bool):
    """A tqdm bar over ``total`` steps (disabled unless ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="step", desc="runs", leave=False)
