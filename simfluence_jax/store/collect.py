"""Reading what complete runs left: their checkpoints, and the ``RunSet`` of their losses
(:func:`collect`); :func:`remove_incomplete` clears the runs that did not finish."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simfluence_jax import checkpoints as ckpt
from simfluence_jax.store.layout import CHECKPOINT_NAME
from simfluence_jax.store.reader import RunStore, open_store

_CHECKPOINT_KEYS = {"trainable", "learning_rate", "step"}


def checkpoint_problem(path: Path, step: int | None = None) -> str | None:
    """What is wrong with a run's checkpoint (a ``.npz`` file or an older orbax folder), or
    ``None``: with ``step``, it is read back and must hold that step; else only its files
    are checked."""
    if step is None:
        return ckpt.problem(path)

    def same_step(tree):
        held = int(np.asarray(tree["step"]))
        return None if held == step else f"holds step {held}, not {step}"

    return ckpt.problem(path, keys=_CHECKPOINT_KEYS, check=same_step)


def checkpoint_steps(store: RunStore | str | Path, run: int) -> list[int]:
    """Steps at which run ``run`` kept a checkpoint: ``.npz`` files and the orbax folders of
    earlier versions (temporaries left by a killed save are not counted)."""
    store = store if isinstance(store, RunStore) else open_store(store)
    folder = store.run_dir(run) / "checkpoints"
    if not folder.exists():
        return []
    steps = set()
    for p in folder.iterdir():
        match = CHECKPOINT_NAME.match(p.name)
        if match:
            steps.add(int(match.group(1)))
    return sorted(steps)


def load_checkpoint(store: RunStore | str | Path, run: int, step: int) -> dict:
    """``{"trainable", "learning_rate", "step"}`` saved by run ``run`` after ``step`` updates.

    ``trainable`` is the method's trainable pytree; combine it with the base parameters via
    the training method (e.g. ``method.reference_loss(model, params, trainable, batch)``).

    Both the ``.npz`` checkpoints and the orbax folders of earlier versions are read.

    Raises:
      ValueError: if there is no such checkpoint, or naming the file or folder if it is
        incomplete, damaged or in an unknown format.
    """
    store = store if isinstance(store, RunStore) else open_store(store)
    target = store.checkpoint_path(run, step)
    if not target.exists():
        have = checkpoint_steps(store, run)
        raise ValueError(f"run {run} kept no checkpoint at step {step}; it has steps {have}")
    try:
        tree = ckpt.restore(target, keys=_CHECKPOINT_KEYS)
    except ValueError as err:
        raise ValueError(f"{err}; the store is damaged (rerun the job to redo it)") from None
    return {
        "trainable": tree["trainable"],
        "learning_rate": float(tree["learning_rate"]),
        "step": int(tree["step"]),
    }


def collect(store_dir: str | Path, *, require_all: bool = False):
    """Merges the complete runs of a store into a ``RunSet``; never reads incomplete runs.

    Args:
      store_dir: the store directory.
      require_all: raise if some planned run is not complete yet.

    Returns:
      A ``simfluence_jax.runs.RunSet`` of the complete runs in run order; its metadata holds
      the store metadata plus ``runs`` (store indices), ``seeds``, ``learning_rates``
      (``[T]``, the schedule eta_1..eta_T of the first run) and ``git_revisions``; its
      ``learning_rates`` array holds every run's schedule, ``[R, T]``.

    Raises:
      ValueError: if no run (or, with ``require_all``, not every run) is complete, or naming
        a damaged file.
    """
    from simfluence_jax.runs import RunSet

    store = open_store(store_dir)
    done = store.complete_runs()
    missing = sorted(set(range(store.num_runs)) - set(done))
    if require_all and missing:
        raise ValueError(
            f"{len(missing)} of {store.num_runs} runs are not complete: {missing[:10]}"
        )
    if not done:
        raise ValueError(f"no complete run in {store.path} yet")
    losses = np.stack([store.load_losses(r) for r in done])
    metas = [store.run_meta(r) for r in done]
    metadata = dict(store.info.get("metadata", {}))
    metadata.update(
        runs=done,
        seeds=[int(store.seeds[r]) for r in done],
        learning_rates=metas[0].get("learning_rates"),
        git_revisions=sorted({m.get("git_revision", "unknown") for m in metas}),
        store=str(store.path),
    )
    rates = [m.get("learning_rates") for m in metas]
    learning_rates = None
    if all(r is not None for r in rates):
        learning_rates = np.asarray(rates, np.float32)
    return RunSet(
        batches=store.batches[done],
        losses=losses,
        num_train=int(store.info["num_train"]),
        train_ids=store.train_ids,
        test_ids=store.test_ids,
        metadata=metadata,
        learning_rates=learning_rates,
    )


def remove_incomplete(store_dir: str | Path, *, wait: bool | float = False) -> list[int]:
    """Deletes the directories of incomplete runs (to restart them from scratch), holding
    the store's lock (``StoreBusyError`` if a writer is at work)."""
    store = open_store(store_dir)
    lock = store.lock(wait=wait, doing="removing incomplete runs")
    try:
        removed = []
        for r in range(store.num_runs):
            if not store.is_complete(r) and store.run_dir(r).exists():
                ckpt.discard(store.run_dir(r))
                removed.append(r)
        return removed
    finally:
        lock.release()
