"""A NumPy-only training job that logs its runs with ``RunLogger``; run as a subprocess.

``python tests/logger_worker.py --log DIR [--kill-after K]`` trains logistic regression by
SGD on scikit-learn's bundled handwritten digits (0-4 against 5-9, 8x8 pixels), one run per
random curriculum, and logs every step's test losses to DIR. ``--kill-after K`` sends
SIGKILL to the worker itself right after its K-th logged step (a crash mid-run at a known
point); running it again resumes. ``--hold FILE`` stops after the first logged step until FILE
exists (so that a second process can try the same folder while this one runs). JAX and Flax are
blocked: the logger must not need them.
"""

from __future__ import annotations

import argparse
import importlib.abc
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLOCKED = ("jax", "jaxlib", "flax")


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked: the run logger must not import it")
        return None


sys.meta_path.insert(0, _Block())

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from simfluence_jax.logger import RunLogger  # noqa: E402

NUM_TRAIN, NUM_TEST, NUM_RUNS, SUBSET, BATCH = 60, 20, 6, 48, 4
NUM_STEPS = SUBSET // BATCH
SCHEDULE = np.linspace(0.5, 0.05, NUM_STEPS)  # a decaying learning rate


def digits():
    """``(X_train [N, 65], y_train [N], X_test [M, 65], y_test [M])``: pixels in [0, 1]
    plus a bias column; label 1 for the digits 5-9."""
    X, y = load_digits(return_X_y=True)
    X = np.hstack([X / 16.0, np.ones((len(X), 1))])
    y = (y >= 5).astype(np.float64)
    order = np.random.default_rng(0).permutation(len(X))
    train, test = order[:NUM_TRAIN], order[NUM_TRAIN : NUM_TRAIN + NUM_TEST]
    return X[train], y[train], X[test], y[test]


def per_example_loss(w, X, y):
    """Logistic loss log(1 + exp(-s z)), s = +-1, for each row."""
    z = X @ w
    return np.logaddexp(0.0, z) - y * z


def grad(w, X, y):
    p = 1.0 / (1.0 + np.exp(-(X @ w)))
    return X.T @ (p - y) / len(y)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--kill-after", type=int, default=None)
    parser.add_argument("--hold", default=None)
    args = parser.parse_args(argv)

    X, y, X_test, y_test = digits()
    logger = RunLogger(
        args.log,
        num_test=NUM_TEST,
        num_train=NUM_TRAIN,
        metadata={"task": "digits 0-4 vs 5-9", "model": "logistic regression, SGD"},
    )
    logged = 0
    for r in range(logger.num_complete, NUM_RUNS):
        curriculum = np.random.default_rng(100 + r).permutation(NUM_TRAIN)[:SUBSET]
        w = np.zeros(X.shape[1])
        resumed = logger.start_run(per_example_loss(w, X_test, y_test), learning_rates=SCHEDULE)
        if resumed:
            print(f"run {r}: replaying {resumed} logged steps", flush=True)
        for t in range(NUM_STEPS):
            batch = curriculum[t * BATCH : (t + 1) * BATCH]
            w = w - SCHEDULE[t] * grad(w, X[batch], y[batch])
            logger.log_step(batch, per_example_loss(w, X_test, y_test))
            logged += 1
            if logged == 1 and args.hold:
                print("logging", flush=True)
                while not os.path.exists(args.hold):
                    time.sleep(0.05)
            if logged == args.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        logger.end_run()
    runs = logger.close()
    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules)
    print(f"logged {runs}", flush=True)


if __name__ == "__main__":
    main()
