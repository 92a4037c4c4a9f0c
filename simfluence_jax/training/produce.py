"""Runs written to a run store: resumable, checkpointed, shared between processes.

:func:`produce_runs` makes the planned runs of a :class:`~simfluence_jax.store.RunStore`
that are not complete, with a :class:`~simfluence_jax.training.loop.RunFactory` driven
through its public group interface (``plan_groups``, ``fill_slots``, ``init_states``,
``stack_states``, ``initial_losses``, ``segments``). Each chunk's losses reach the disk
before the next chunk runs; every ``snapshot_every`` steps the train state is saved so an
interrupted run resumes from there, and at ``checkpoint_steps`` the trainable parameters
are kept (``checkpoints/step_NNNNNN.npz``) for TracIn-CP. A resumed run replays the same
compiled program, so its record is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from simfluence_jax.fileio import git_revision
from simfluence_jax.sampling import validate_curricula
from simfluence_jax.store import RunStore, checkpoint_problem
from simfluence_jax.training.loop import RunFactory, fill_slots, plan_groups, progress_bar


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
    waits. A complete run whose checkpoint is incomplete is redone (its losses come
    out bit-identical); so is an incomplete run whose partial files are damaged.

    Args:
      factory: the :class:`RunFactory`; its settings must match the store's fingerprint.
      store: from ``simfluence_jax.store.create_store``.
      group_size: runs vmapped together (groups are fixed by this number).
      snapshot_every: save a resume snapshot of the train state every this many steps
        (rounded to chunk ends); ``None`` means a resumed run replays from step 0.
      checkpoint_steps: steps (0..T) after which to keep a checkpoint of the trainable
        parameters and the learning rate, for TracIn-CP.
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
    factory.check_group_size(group_size)
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
        bar = stack.enter_context(contextlib.closing(progress_bar(len(todo) * t, progress)))
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
    """Checkpoints of ``run`` that exist but are incomplete (cheap: files only)."""
    out = []
    for step in sorted(ckpt_steps):
        path = store.checkpoint_path(run, step)
        if path.exists():
            problem = checkpoint_problem(path)
            if problem is not None:
                out.append(f"{path} {problem}")
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

    slots = fill_slots(active, group_size)
    states = factory.init_states(store.seeds[slots])
    start = _resume_step(writers, states, rows_done, ckpt_steps)
    if start > 0:
        snaps = [writers[run].load_state(_unstack(jax.device_get(states), 0))[1] for run in slots]
        states = factory.stack_states(snaps)
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
    segments = factory.segments(states, batches[slots], start, cuts)
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
            if checkpoint_problem(w.checkpoint_path(s), s) is not None:
                return 0
    return step
