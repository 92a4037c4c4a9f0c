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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from simfluence_jax.io import git_revision
from simfluence_jax.sampling import validate_curricula
from simfluence_jax.store import RunStore, checkpoint_problem
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

    # -- compiled pieces --------------------------------------------------------------------
    def _shard(self, tree):
        """Places arrays with a leading group axis on the mesh (no-op without a mesh)."""
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, PartitionSpec(RUNS_AXIS))
        return jax.device_put(tree, sharding)

    def _check_group(self, group_size: int) -> None:
        if self.mesh is not None and group_size % self.mesh.shape[RUNS_AXIS] != 0:
            raise ValueError(
                f"group_size {group_size} must be a multiple of the {self.mesh.shape[RUNS_AXIS]} "
                "devices of the mesh's 'runs' axis"
            )

    def init_states(self, seeds: Sequence[int]) -> TrainState:
        """Stacked ``TrainState[G]`` at step 0 for the given seeds."""
        return self._init_states(self._shard(jnp.asarray(np.asarray(seeds), jnp.uint32)))

    def initial_losses(self, states: TrainState) -> jax.Array:
        """``float32[G, M]``: L_0 of each run."""
        return self._initial(states, self.data)

    def advance(self, states: TrainState, ids: np.ndarray, num_active: int):
        """Runs ``num_active <= C`` steps; ``ids`` is ``int32[G, C, B]`` (rows past
        ``num_active`` are ignored). Returns ``(states, float32[G, C, M])``; ``states`` is
        donated."""
        active = np.arange(ids.shape[1]) < num_active
        return self._advance(states, self._shard(jnp.asarray(ids)), jnp.asarray(active), self.data)

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
        self._check_group(group_size)
        out = np.empty((r, t + 1, self.num_test), np.float32)
        bar = _progress_bar(r * t, progress)
        for group in plan_groups(r, group_size):
            slots = _fill_slots(group, group_size)
            states = self.init_states(seeds[slots])
            out[group, 0] = np.asarray(self.initial_losses(states))[: len(group)]
            for start, stop, _, losses in self._segments(states, batches[slots], 0, ()):
                out[group, start + 1 : stop + 1] = losses[: len(group)]
                bar.update((stop - start) * len(group))
        bar.close()
        return out

    def _segments(self, states, batches: np.ndarray, start: int, extra_cuts):
        """Yields ``(start, stop, states, float32[G, stop-start, M])`` chunk by chunk from
        step ``start`` to T; chunk ends fall on multiples of ``chunk_steps`` and
        ``extra_cuts``."""
        g, t, b = batches.shape
        cuts = sorted(
            {c for c in range(self.chunk_steps, t, self.chunk_steps)}
            | {c for c in extra_cuts if 0 < c < t}
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


def _fill_slots(runs: Sequence[int], group_size: int) -> list[int]:
    """``runs`` padded to ``group_size`` slots with copies of its first run."""
    return list(runs) + [runs[0]] * (group_size - len(runs))


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="step", desc="runs", leave=False)


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProduceReport:
    """What :func:`produce_runs` did: runs completed now, skipped as complete, and resumed
    (with the step each resumed from)."""

    completed: list[int]
    skipped: list[int]
    resumed: dict[int, int]


def produce_runs(
    factory: RunFactory,
    store: RunStore,
    *,
    group_size: int = 1,
    snapshot_every: int | None = None,
    checkpoint_steps: Sequence[int] = (),
    config_text: str = "",
    run_metadata: dict | None = None,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
    on_chunk: Callable[[int, int], Any] | None = None,
    wait: bool | float = False,
) -> ProduceReport:
    """Makes the store's planned runs that are not complete yet, resuming interrupted ones.

    The process holds the store's writer lock throughout (exclusively, or shared with the
    other processes of a job when ``process_count > 1``) and the locks of the runs it
    writes, so a second writer stops at once (``StoreBusyError`` naming this process) or
    waits. A complete run whose checkpoint folder is incomplete is redone (its losses come
    out bit-identical); so is an incomplete run whose partial files are damaged.

    Args:
      factory: the :class:`RunFactory`; its settings must match the store's fingerprint.
      store: from ``simfluence_jax.store.create_store``.
      group_size: runs vmapped together (groups are fixed by this number).
      snapshot_every: save a resume snapshot of the train state every this many steps
        (rounded to chunk ends); ``None`` means a resumed run replays from step 0.
      checkpoint_steps: steps (0..T) after which to keep an orbax checkpoint of the
        trainable parameters and the learning rate, for TracIn-CP.
      config_text: the operative configuration text, stored with every run.
      run_metadata: extra JSON-serialisable metadata stored with every run.
      process_index, process_count: this process takes groups
        ``process_index, process_index + process_count, ...``.
      progress: show a tqdm bar.
      on_chunk: called as ``on_chunk(group_index, step)`` after each chunk is on disk
        (used by tests to interrupt a job).
      wait: if another process writes the store (or one of this process's runs): ``False``
        stops at once with ``StoreBusyError``, ``True`` waits, a number waits that many
        seconds at most. Runs another process completed meanwhile are skipped.

    Returns:
      A :class:`ProduceReport`.

    Raises:
      StoreBusyError: if another process writes the store and ``wait`` is not set.
      StoreWriteError: if the disk is full or not writable (complete runs stay intact).
    """
    store.check_fingerprint(factory.fingerprint)
    if store.num_test != factory.num_test:
        raise ValueError(
            f"the store has {store.num_test} test examples, the factory {factory.num_test}"
        )
    batches = validate_curricula(store.batches, pool_size=factory.num_train)
    factory._check_group(group_size)
    r, t, _ = batches.shape
    bad = [s for s in checkpoint_steps if not 0 <= s <= t]
    if bad:
        raise ValueError(f"checkpoint steps {bad} are outside 0..{t}")
    if snapshot_every is not None and snapshot_every < 1:
        raise ValueError(f"snapshot_every must be >= 1 or None, got {snapshot_every}")
    snap_steps = set(range(snapshot_every, t, snapshot_every)) if snapshot_every else set()
    ckpt_steps = set(int(s) for s in checkpoint_steps)
    lrs = factory.optimizer.learning_rates(t + 1)
    revision = git_revision()

    groups = plan_groups(r, group_size)[process_index::process_count]
    report = ProduceReport(completed=[], skipped=[], resumed={})
    doing = f"produce_runs, process {process_index} of {process_count}"
    store_lock = store.lock(shared=process_count > 1, wait=wait, doing=doing)
    with contextlib.ExitStack() as stack:
        stack.callback(store_lock.release)
        todo = [run for group in groups for run in group if _needs_work(store, run, ckpt_steps)]
        bar = stack.enter_context(contextlib.closing(_progress_bar(len(todo) * t, progress)))
        for gi, group in enumerate(groups):
            candidates = [run for run in group if _needs_work(store, run, ckpt_steps)]
            report.skipped.extend(run for run in group if run not in candidates)
            if not candidates:
                continue
            with store.holding_runs(candidates, wait=wait, doing=doing):
                # Another process may have finished some of them while we waited.
                active = [run for run in candidates if _needs_work(store, run, ckpt_steps)]
                report.skipped.extend(run for run in candidates if run not in active)
                if not active:
                    continue
                for run in active:
                    _reopen_if_checkpoints_broken(store, run, ckpt_steps)
                _produce_group(
                    factory, store, gi, active, batches, group_size=group_size,
                    snap_steps=snap_steps, ckpt_steps=ckpt_steps, lrs=lrs, revision=revision,
                    config_text=config_text, run_metadata=run_metadata,
                    process_index=process_index, report=report, bar=bar, on_chunk=on_chunk,
                )  # fmt: skip
    return report


def _broken_checkpoints(store: RunStore, run: int, ckpt_steps) -> list[str]:
    """Checkpoint folders of ``run`` that exist but are incomplete (cheap: files only)."""
    out = []
    for step in sorted(ckpt_steps):
        folder = store.run_dir(run) / "checkpoints" / f"step_{step:06d}"
        if folder.exists():
            problem = checkpoint_problem(folder)
            if problem is not None:
                out.append(f"{folder} {problem}")
    return out


def _needs_work(store: RunStore, run: int, ckpt_steps) -> bool:
    return not store.is_complete(run) or bool(_broken_checkpoints(store, run, ckpt_steps))


def _reopen_if_checkpoints_broken(store: RunStore, run: int, ckpt_steps) -> None:
    """A complete run with an incomplete checkpoint is redone, never skipped: its marker is
    removed (the replay rewrites bit-identical losses and the missing checkpoint)."""
    broken = _broken_checkpoints(store, run, ckpt_steps)
    if store.is_complete(run) and broken:
        warnings.warn(
            f"run {run} of {store.path} is redone: {broken[0]}", RuntimeWarning, stacklevel=3
        )
        os.unlink(store.run_dir(run) / "COMPLETE")


def _produce_group(
    factory, store, gi, active, batches, *, group_size, snap_steps, ckpt_steps, lrs, revision,
    config_text, run_metadata, process_index, report, bar, on_chunk,
) -> None:  # fmt: skip
    """Makes (or resumes) the runs ``active`` of group ``gi``; their locks are held."""
    t = batches.shape[1]
    writers = {run: store.writer(run) for run in active}
    rows_done = {}
    for run, w in writers.items():
        meta = {
            "run": run,
            "seed": int(store.seeds[run]),
            "git_revision": revision,
            "learning_rates": [float(x) for x in lrs[:t]],
            "settings": factory.settings,
            "fingerprint": factory.fingerprint,
            "group_size": group_size,
            "chunk_steps": factory.chunk_steps,
            "process_index": process_index,
            **(run_metadata or {}),
        }
        rows_done[run] = w.begin(num_test=factory.num_test, meta=meta, config_text=config_text)
        _check_same_program(store.run_meta(run), meta, run)

    slots = _fill_slots(active, group_size)
    states = factory.init_states(store.seeds[slots])
    start = _resume_step(writers, states, rows_done, ckpt_steps)
    if start > 0:
        snaps = [writers[run].load_state(_unstack(jax.device_get(states), 0))[1] for run in slots]
        states = factory._shard(jax.tree_util.tree_map(lambda *x: jnp.stack(x), *snaps))
    if any(rows_done.values()):
        report.resumed.update({run: start for run in active})
    if start == 0:
        l0 = np.asarray(factory.initial_losses(states))
        for slot, run in enumerate(active):
            writers[run].write_rows(0, l0[slot : slot + 1])
        if 0 in ckpt_steps:
            for run in active:
                writers[run].save_checkpoint(0, factory.trainable0, float(lrs[0]))
    bar.update(start * len(active))
    cuts = snap_steps | ckpt_steps
    segments = factory._segments(states, batches[slots], start, cuts)
    for seg_start, stop, states, losses in segments:  # noqa: B007 (states used below)
        host = None
        for slot, run in enumerate(active):
            writers[run].write_rows(seg_start + 1, losses[slot])
        if stop in ckpt_steps or (stop in snap_steps):
            host = jax.device_get(states)
        if stop in ckpt_steps:
            for slot, run in enumerate(active):
                trainable = _unstack(host.trainable, slot)
                writers[run].save_checkpoint(stop, trainable, float(lrs[stop]))
        if stop in snap_steps:
            for slot, run in enumerate(active):
                writers[run].save_state(stop, _unstack(host, slot))
        bar.update((stop - seg_start) * len(active))
        if on_chunk is not None:
            on_chunk(gi, stop)
    for run in active:
        writers[run].finish(checkpoint_steps=sorted(ckpt_steps))
        report.completed.append(run)


def _check_same_program(stored: dict, meta: dict, run: int) -> None:
    """A resumed run must replay the same compiled program to give bit-identical rows."""
    for key in ("group_size", "chunk_steps"):
        if stored.get(key) != meta[key]:
            raise ValueError(
                f"run {run} was started with {key}={stored.get(key)}; resume it with the same "
                f"value (now {meta[key]}) so the record stays bit-identical"
            )


def _unstack(tree, index: int):
    return jax.tree_util.tree_map(lambda x: np.asarray(x[index]), tree)


def _resume_step(writers: dict, states, rows_done: dict, ckpt_steps=frozenset()) -> int:
    """The step a group restarts from: the common step of its runs' snapshots, else 0.

    A snapshot that cannot be read is dropped (with a warning), and so is one taken after a
    checkpoint that is not complete on disk: the run then replays from step 0 and redoes it.
    """
    template = _unstack(jax.device_get(states), 0)
    steps = set()
    for w in writers.values():
        try:
            snap = w.load_state(template)
        except ValueError as err:
            warnings.warn(f"{err}; run {w.run} replays from step 0", RuntimeWarning, stacklevel=3)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(w.dir / "state.npz")
            snap = None
        steps.add(snap[0] if snap is not None else 0)
    if len(steps) != 1:
        return 0
    step = steps.pop()
    if any(rows_done[run] < step + 1 for run in writers):
        return 0
    for w in writers.values():
        for s in sorted(c for c in ckpt_steps if c <= step):
            if checkpoint_problem(w.checkpoint_dir(s), s) is not None:
                return 0
    return step
