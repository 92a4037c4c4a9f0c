"""The files of a run store and their names.

Layout (``FORMAT_VERSION`` 1)::

    store/
      store.json            format name and version, sizes, shared metadata, fingerprint
      plan.npz              batches int32[R, T, B], seeds int64[R], train_ids, test_ids
      LOCK                  the writers' lock (pid and host of each holder)
      locks/run_000007.lock the lock of one run
      runs/run_000007/
        meta.json           seed, git revision, learning rates eta_1..eta_T, run metadata
        config.txt          the operative configuration text that made the run
        losses.npy          float32[T+1, M], preallocated (NaN), filled row by row
        progress.json       {"rows": k}: rows 0..k-1 of losses.npy are on disk
        state.npz           resume snapshot of the train state at some step s < T
        checkpoints/step_000032.npz  checkpoint {trainable, learning_rate, step}
                            (stores written before: orbax folders step_000032/, still read)
        COMPLETE            {"rows": T+1, "sha256": ...}: written last, atomically"""

from __future__ import annotations

import re
from pathlib import Path

from simfluence_jax import checkpoints as ckpt
from simfluence_jax import fileio

FORMAT_NAME = "simfluence_jax.RunStore"
FORMAT_VERSION = 1


INFO_TYPES = {
    "num_runs": int,
    "num_steps": int,
    "batch_size": int,
    "num_train": int,
    "num_test": int,
    "metadata": dict,
    "fingerprint": str,
}
PLAN_SPECS = {
    "batches": fileio.ArraySpec("iu", ("R", "T", "B")),
    "seeds": fileio.ArraySpec("iu", ("R",)),
    "train_ids": fileio.ArraySpec("iuU", ("N",)),
    "test_ids": fileio.ArraySpec("iuU", ("M",)),
}
#: A checkpoint's name: ``step_NNNNNN.npz``, or ``step_NNNNNN`` (an orbax folder of an
#: earlier version; a file of that name is listed too and reported as an unknown format).
CHECKPOINT_NAME = re.compile(r"^step_(\d{6,})(\.npz)?$")


def run_checkpoint_path(run_dir: Path, step: int) -> Path:
    """The checkpoint of ``step`` in a run directory: the ``.npz`` file, else an older
    orbax folder, else (neither exists) the ``.npz`` file a save would write."""
    new = run_dir / "checkpoints" / f"step_{step:06d}{ckpt.SUFFIX}"
    old = new.with_suffix("")
    return old if not new.exists() and old.exists() else new
