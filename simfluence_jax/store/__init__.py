"""The run store: training runs written step by step to disk, safe against crashes.

Modules: :mod:`.layout` (the files and their names), :mod:`.reader` (:class:`RunStore`,
:func:`open_store`), :mod:`.create` (:func:`create_store`), :mod:`.writer`
(:class:`RunWriter`), :mod:`.collect` (checkpoints and :func:`collect`), :mod:`.errors`
(:class:`StoreWriteError`). Every public name is imported here.

Guarantees:

* **Atomic small files.** Every JSON/npz file is written through
  :func:`simfluence_jax.fileio.atomic_write` (temporary name, fsync, ``os.replace``); a reader
  sees the old file or the new.
* **Ordering.** Loss rows are written into the memory map and flushed *before*
  ``progress.json`` names them, and ``COMPLETE`` is written after every row and every
  checkpoint of the run is on disk and verified; so a run is complete only once its marker
  exists, and :func:`collect` never reads another run. The marker holds the SHA-256 of
  ``losses.npy`` and ``collect`` checks it.
* **Checkpoints** (:mod:`simfluence_jax.checkpoints`) are written under a temporary name,
  read back and compared with what was saved, and only then renamed into place; each process
  of a multi-process job writes the checkpoints of its own runs. A checkpoint found damaged on
  resume is redone (its run replays from a step before it), never skipped. Orbax checkpoint
  folders kept by stores of earlier versions are read as well; one that does not hold the
  tree a replay reproduces is replaced by a ``.npz`` file.
* **One writer.** Every process that writes a store holds its ``LOCK`` (``fcntl.flock``,
  with its pid and host written in it): one process alone holds it exclusively; the
  processes of one multi-process job (``process_count > 1``) share it, and each also holds
  the lock of every run it writes, so they write disjoint runs. A second writer stops at
  once with :class:`StoreBusyError` naming the other process, or waits (``wait=True`` or a
  number of seconds). Locks die with their process, so a crash leaves nothing locked.
* **Resume.** A killed job is resumed by re-running it: a run restarts from its last
  ``state.npz`` snapshot (step s, taken every ``snapshot_every`` steps, stored as plain npz
  and read with ``allow_pickle=False``) or from step 0, and replays the steps after s.
  Because step t depends only on the state after step t-1, the batch ids of step t and
  ``fold_in(seed, t)``, and the replay runs the same compiled program, the rows it rewrites
  are bit-identical to those lost, and the final record equals an uninterrupted run's
  (``tests/test_store.py`` and ``tests/test_reliability.py`` kill workers to check this).
  An incomplete run whose partial files are damaged is redone from step 0.
* **Validation.** Every file is checked where it is read; a damaged one is a ``ValueError``
  naming the file and the problem. ``open_store`` refuses a store of another format
  version, naming both (and saying so when a newer version wrote it).
* **Write errors** (a full disk, missing permissions) raise
  :class:`StoreWriteError` naming the path and the free space; runs already complete are
  never opened for writing again, so they stay intact, and the run that failed resumes
  later.

Checkpoints for TracIn-CP (Pruthi et al., 2020) hold the trainable parameters at chosen
steps, each with the learning rate of the update taken from it."""

from simfluence_jax.locks import StoreBusyError
from simfluence_jax.store.collect import (
    checkpoint_problem,
    checkpoint_steps,
    collect,
    load_checkpoint,
    remove_incomplete,
)
from simfluence_jax.store.create import CREATE_WAIT, create_store
from simfluence_jax.store.errors import StoreWriteError
from simfluence_jax.store.layout import FORMAT_NAME, FORMAT_VERSION
from simfluence_jax.store.reader import RunStore, open_store
from simfluence_jax.store.writer import RunWriter

__all__ = [
    "CREATE_WAIT",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RunStore",
    "RunWriter",
    "StoreBusyError",
    "StoreWriteError",
    "checkpoint_problem",
    "checkpoint_steps",
    "collect",
    "create_store",
    "load_checkpoint",
    "open_store",
    "remove_incomplete",
]
