"""Attribution speed and memory: removal effects against a plain rollout, and the score
matrix over many sampled curricula, side by side in one run on synthetic simulators.

* ``removal``: ``removal_effects`` for every distinct id of one curriculum of the quickstart
  protocol (pool 150, a random 96 of it, batch 4, 48 steps, 50 test examples) against one
  ``rollout`` of 96 curricula of the same shape (the target: at most 3x), and against a
  Python loop that rolls out the 96 edited curricula one call at a time. Simulators:
  Simfluence-Linear (plain sum), the optimizer kernel (mu = 0.9, learning-rate scaled, under
  a warm-up/decay schedule) and the additive gradient form (``SegmentedSimulator``, 3
  segments). Compilation is excluded (one warm-up call each); medians of 7.
* ``score_matrix``: the GPTfluence size (N = M = 200; 128 of the pool, batch 4, 96 steps)
  over 1,000 curricula sampled like the runs, in one call, compilation included; seconds
  and the process's peak resident memory (``getrusage``) before and after.

Run: ``python -m benchmarks.bench_attribution [--size full|tiny]``.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import simfluence_jax as sj
from benchmarks.common import table, timeit, write
from simfluence_jax import attribution
from simfluence_jax import counterfactuals as cf
from simfluence_jax.simulators import SegmentedSimulator
from simfluence_jax.synthetic import make_problem, warmup_decay_schedule

SIZES = {
    "full": dict(pool=150, subset=96, steps=48, tests=50, matrix_pool=200, matrix_tests=200,
                 matrix_subset=128, matrix_epochs=3, curricula=1000),
    "tiny": dict(pool=40, subset=24, steps=12, tests=8, matrix_pool=20, matrix_tests=20,
                 matrix_subset=12, matrix_epochs=2, curricula=20),
}  # fmt: skip
TARGET_RATIO = 3.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def simulators(truth, steps: int, seed: int = 0) -> dict:
    """The simulators timed: the law itself, its optimizer-kernel form, an additive one."""
    rng = np.random.default_rng(seed)
    M, N = np.shape(truth.A)
    eta = warmup_decay_schedule(steps)
    segmented = SegmentedSimulator(
        S=rng.normal(0.0, 0.01, (M, 3, N)).astype(np.float32), eta=eta,
        segment=np.minimum(np.arange(steps) * 3 // steps, 2).astype(np.int32),
        seen=np.ones(N, bool),
    )  # fmt: skip
    kernel = truth.replace(momentum=0.9, lr_scaled=True, lr_ref=float(eta.max()))
    return {"linear": truth, "linear_kernel": kernel, "segmented": segmented}, eta


def run_removal(size: str) -> list[dict]:
    cfg = SIZES[size]
    p = make_problem(
        num_train=cfg["pool"], num_test=cfg["tests"], num_runs=cfg["subset"],
        subset=cfg["subset"], epochs=cfg["steps"] * 4 // cfg["subset"], seed=0,
    )  # fmt: skip
    curricula, L0 = p.runs.batches, p.runs.L0[0]
    b = curricula[0]
    K = len(np.unique(b[b >= 0]))
    sims, eta = simulators(p.truth, b.shape[0])
    problem = f"quickstart shape (T={b.shape[0]}, B={b.shape[1]}, M={cfg['tests']}, K={K})"
    rows = []
    for name, sim in sims.items():
        rates = np.tile(eta, (len(curricula), 1))
        edits = [cf.remove(b, [i], repack=False) for i in np.unique(b[b >= 0])]

        def rollout_all(sim=sim, rates=rates):
            return sj.rollout(sim, curricula, L0, learning_rates=rates)

        def removal(sim=sim, **kw):
            return attribution.removal_effects(sim, b, L0, learning_rates=eta, **kw).delta

        def loop(sim=sim, edits=edits):
            return [sj.rollout(sim, e, L0, learning_rates=eta) for e in edits]

        cases = [
            ("rollout", f"rollout of {len(curricula)} curricula", rollout_all),
            ("removal_effects", "horizon 1", removal),
            ("removal_effects", "horizon 8, repack", lambda: removal(horizon=8, repack=True)),
            ("python loop", f"{K} single rollouts of the edits (sum weighting)", loop),
        ]
        base = None
        for task, method, fn in cases:
            fn()  # compile
            seconds, _ = timeit(fn, repeat=7)
            base = seconds if base is None else base
            rows.append({"problem": problem, "simulator": name, "task": task, "method": method,
                         "seconds": seconds, "x_rollout": seconds / base})  # fmt: skip
    return rows


def run_matrix(size: str) -> list[dict]:
    cfg = SIZES[size]
    p = make_problem(
        num_train=cfg["matrix_pool"], num_test=cfg["matrix_tests"], num_runs=4,
        subset=cfg["matrix_subset"], epochs=cfg["matrix_epochs"], seed=1,
    )  # fmt: skip
    runs, C = p.runs, cfg["curricula"]
    pairs = C * cfg["matrix_subset"]
    before = _peak_rss_mb()
    t0 = time.perf_counter()
    S = sj.score_matrix(p.truth, runs, runs.L0[0], num_curricula=C, seed=0)
    seconds = time.perf_counter() - t0
    after = _peak_rss_mb()
    T, M = runs.num_steps, runs.num_test
    chunk = attribution._chunk_size(None, pairs, T, M, attribution.CHUNK_MULTIPLE)
    problem = f"N={runs.num_train}, M={M}, T={T}, B={runs.batch_size}, {C} curricula"
    return [
        {"problem": problem, "simulator": "linear", "task": "score_matrix",
         "method": f"{pairs} edited curricula in chunks of {chunk}", "seconds": seconds,
         "peak_rss_before_mb": before, "peak_rss_after_mb": after,
         "nan_rows": int(np.isnan(S).all(axis=1).sum())}
    ]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", choices=list(SIZES))
    args = parser.parse_args(argv)
    rows = run_matrix(args.size) + run_removal(args.size)
    cols = ["problem", "simulator", "task", "method", "seconds", "x_rollout",
            "peak_rss_before_mb", "peak_rss_after_mb", "nan_rows"]  # fmt: skip
    print(table(rows, cols))
    worst = max(r["x_rollout"] for r in rows if r["task"] == "removal_effects")
    verdict = "met" if worst <= TARGET_RATIO else "NOT met"
    print(f"\nremoval_effects: at most {worst:.2f}x one rollout of as many curricula "
          f"(target {TARGET_RATIO:g}x: {verdict})")  # fmt: skip
    path = write(f"bench_attribution_{args.size}", {"target_ratio": TARGET_RATIO, "rows": rows})
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
