"""A tiny run-factory job shared by the tests, importable and runnable as a subprocess.

``python tests/run_factory_worker.py --store DIR [--kill-at GROUP:STEP] [--process-id I
--num-processes P --port PORT]`` makes the toy runs into DIR; ``--kill-at`` sends SIGKILL to
the worker itself once the chunk ending at STEP of its GROUP-th group is on disk (a crash at a
known point), and the distributed flags join a ``jax.distributed`` job.

More crash points and pauses for the reliability tests:

* ``--kill-before-snapshot STEP:NTH``: SIGKILL just before the NTH (0-based) call that
  writes the resume snapshot of step STEP (calls go run by run, group by group);
* ``--pause-at GROUP:STEP:FOLDER``: once that chunk is on disk, create ``FOLDER/ready`` and
  wait until ``FOLDER/go`` exists (so a test can start a second writer meanwhile);
* ``--wait``: wait for another writer instead of stopping.

A store error (another writer, a damaged file) prints one line and exits with status 3.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from simfluence_jax.sampling import sample_curricula  # noqa: E402
from simfluence_jax.training import RunFactory, make_method, make_optimizer  # noqa: E402
from simfluence_jax.training.toy import ToyClassifier, random_task  # noqa: E402

NUM_TRAIN, NUM_TEST, NUM_RUNS, NUM_STEPS, BATCH = 24, 6, 4, 12, 3


def toy_factory(method: str = "full", *, chunk_steps: int = 4, mesh=None, **method_kwargs):
    """A RunFactory over the toy classifier with dropout (so step rngs matter)."""
    model = ToyClassifier(dropout=0.2)
    params = model.init(jax.random.PRNGKey(0))
    pool, test = random_task(model, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=3)
    return RunFactory(
        model,
        params,
        method=make_method(method, **method_kwargs),
        optimizer=make_optimizer(
            "adam", learning_rate=0.05, schedule="linear", total_steps=NUM_STEPS, warmup_steps=2
        ),
        pool=pool,
        test=test,
        chunk_steps=chunk_steps,
        mesh=mesh,
    )


def toy_plan(num_runs: int = NUM_RUNS):
    """``(batches int32[R, T, B], seeds int64[R])`` of the toy job."""
    batches = sample_curricula(
        num_runs=num_runs,
        pool_size=NUM_TRAIN,
        subset_size=16,
        batch_size=BATCH,
        num_steps=NUM_STEPS,
        seed=7,
    )
    return batches, np.arange(100, 100 + num_runs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--group-size", type=int, default=2)
    parser.add_argument("--snapshot-every", type=int, default=4)
    parser.add_argument("--kill-at", default=None)
    parser.add_argument("--kill-before-snapshot", default=None)
    parser.add_argument("--pause-at", default=None)
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)

    kill = tuple(int(x) for x in args.kill_at.split(":")) if args.kill_at else None
    pause = args.pause_at.split(":", 2) if args.pause_at else None

    def on_chunk(group: int, step: int) -> None:
        if (group, step) == kill:
            os.kill(os.getpid(), signal.SIGKILL)
        if pause is not None and (group, step) == (int(pause[0]), int(pause[1])):
            folder = Path(pause[2])
            (folder / "ready").write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            while not (folder / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    if args.kill_before_snapshot:
        from simfluence_jax.store import RunWriter

        snap_step, nth = (int(x) for x in args.kill_before_snapshot.split(":"))
        calls = []
        save_state = RunWriter.save_state

        def killing_save_state(self, step, state):
            if step == snap_step:
                if len(calls) == nth:
                    os.kill(os.getpid(), signal.SIGKILL)
                calls.append(self.run)
            return save_state(self, step, state)

        RunWriter.save_state = killing_save_state

    kwargs = dict(
        group_size=args.group_size,
        snapshot_every=args.snapshot_every,
        checkpoint_steps=[0, 6, NUM_STEPS],
        config_text="toy worker\n",
        progress=False,
        on_chunk=on_chunk,
        wait=args.wait,
    )
    batches, seeds = toy_plan()
    if args.process_id is not None:
        from simfluence_jax.training import distributed

        distributed.initialize(
            process_id=args.process_id, num_processes=args.num_processes, port=args.port
        )
        factory = toy_factory()
        runset = distributed.produce_distributed(
            factory, args.store, batches=batches, seeds=seeds, **kwargs
        )
        if runset is not None:
            print(f"collected {runset.num_runs} runs")
        return
    from simfluence_jax.store import create_store
    from simfluence_jax.training import produce_runs

    factory = toy_factory()
    try:
        store = create_store(
            args.store,
            batches=batches,
            seeds=seeds,
            num_train=NUM_TRAIN,
            num_test=NUM_TEST,
            fingerprint=factory.fingerprint,
        )
        report = produce_runs(factory, store, **kwargs)
    except (ValueError, OSError) as err:
        print(f"worker {os.getpid()}: error: {err}", file=sys.stderr)
        sys.exit(3)
    print(f"completed {report.completed} resumed {report.resumed} skipped {report.skipped}")


if __name__ == "__main__":
    main()
