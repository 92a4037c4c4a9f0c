"""A run logger for training loops written in any framework (PyTorch, NumPy, ...).

It imports neither JAX nor Flax, only NumPy, so it can live inside another framework's
training process::

    logger = RunLogger("runs/mine", num_test=M)
    for r in range(logger.num_complete, num_runs):    # after a crash: resume
        model = make_model(seed=r)
        logger.start_run(initial_losses=test_losses(model))   # L_0, before any update
        for batch_ids in curriculum(r):
            train_step(model, batch_ids)
            logger.log_step(batch_ids, test_losses(model), learning_rate=lr)
        logger.end_run()
    runs = logger.close()      # a RunSet; RunSet.load("runs/mine") reads it back

Layout (``FORMAT_VERSION`` 1)::

    path/
      logger.json              format, version, sizes, ids, metadata
      runs/run_000003/
        start.json             L_0 and the run's learning-rate schedule, if given
        steps.jsonl            one line per step: {"step", "batch", "losses", "learning_rate"}
        COMPLETE               {"steps": T, "sha256": ...}: written last, atomically
      meta.json, arrays.<sha>.npz   the RunSet, written by close()
      LOCK                     held by the one process logging to the folder

Guarantees (the same as the run factory's store, ``simfluence_jax.store``, which this module
cannot use because that store handles JAX train states):

* **One writer.** The logger holds an advisory lock on ``path/LOCK`` (``simfluence_jax.locks``)
  from construction until ``close()`` or ``release()``. A second logger on the same path, in
  this or another process, fails at once with a ``StoreBusyError`` naming the holder (pid,
  host, since when), or waits for it with ``wait=True``. The kernel drops the lock when its
  process dies, so a killed job never leaves the path locked.
* **Durable steps.** ``log_step`` appends one line and flushes and fsyncs it before it
  returns, so a killed process loses at most the step in flight. A torn last line (the step
  in flight) is cut off when the run is reopened.
* **Complete runs only.** ``end_run`` writes the ``COMPLETE`` marker (with the SHA-256 of
  the steps file) last, through a temporary file and ``os.replace``; ``close`` reads only
  complete runs and checks their checksums.
* **Resume.** Reopen the same path: ``num_complete`` says where to start, and ``start_run``
  reopens the interrupted run and returns the number of its steps on disk. Replay the run
  from its start: replayed steps are checked against the record (the same batch ids, losses
  within ``rtol=1e-4``) instead of being written again, and logging continues after them.
  Or, if your loop restored its own checkpoint of the model, pass ``skip_logged=True`` and
  continue after them. A deterministic loop produces the same record as an uninterrupted one.

* **Atomic close.** ``close()`` writes the run set into ``path`` itself, next to the logs, so
  ``RunSet.load(path)`` and ``simfluence fit --runs path`` read it: the arrays go to a new
  file ``arrays.<sha>.npz`` first, then ``meta.json``, which names that file and its SHA-256,
  is replaced in one rename; only then are older arrays files removed. A reader (or a kill at
  any point) finds the old run set or the new one, never one's arrays with the other's
  metadata. Temporaries of interrupted ``close`` and ``end_run`` calls are removed when the
  path is next opened.

Modules: :mod:`.run_logger` (:class:`RunLogger`) and :mod:`.files` (the files it writes and
reads back).
"""

from simfluence_jax.logger.files import FORMAT_NAME, FORMAT_VERSION
from simfluence_jax.logger.run_logger import REPLAY_RTOL, RunLogger

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "REPLAY_RTOL", "RunLogger"]
