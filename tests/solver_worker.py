"""One process of a two-process fit and rollout over a test-example mesh spanning both.

``python tests/solver_worker.py --process-id I --num-processes P --port PORT --out FILE``
joins a ``jax.distributed`` job (one CPU device per process), fits the shared synthetic
problem with the direct and CG solvers and with ``fit_simulator``, and rolls out its
curricula, all with the mesh of every process's devices, and (process 0) writes the results
to FILE (``.npz``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import simfluence_jax as sj  # noqa: E402
from simfluence_jax.solvers import RidgeProblem, solve_ridge  # noqa: E402
from simfluence_jax.synthetic import make_problem  # noqa: E402

L2S = [1e-2, 1.0]


def problem():
    """The shared synthetic problem: 7 test examples (not a multiple of the device count)."""
    return make_problem(num_train=24, num_test=7, num_runs=10, noise=0.01, seed=4)


def results(mesh=None) -> dict:
    """Direct and CG parameters (``[K, M, N]`` each, float64), a float32 ``fit_simulator``
    and its rollout of the runs."""
    p = problem()
    prob = RidgeProblem.from_runs(p.runs).astype(np.float64)
    out = {}
    with jax.enable_x64(True):
        for solver in ("direct", "cg"):
            A, B, _ = solve_ridge(prob, L2S, solver=solver, mesh=mesh, chunk=2, tol=1e-11)
            out[f"{solver}_A"], out[f"{solver}_B"] = np.asarray(A), np.asarray(B)
    sim = sj.fit_simulator("linear", p.runs, l2=L2S[0], solver="direct", mesh=mesh)
    out["fit_A"], out["fit_B"] = np.asarray(sim.A), np.asarray(sim.B)
    out["rollout"] = np.asarray(sj.rollout(sim, p.runs.batches, p.runs.L0, mesh=mesh))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--process-id", type=int, required=True)
    ap.add_argument("--num-processes", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from simfluence_jax.training.distributed import initialize

    initialize(process_id=args.process_id, num_processes=args.num_processes, port=args.port)
    assert jax.process_count() == args.num_processes and len(jax.devices()) == args.num_processes
    out = results(mesh=sj.test_mesh(jax.devices()))
    if args.process_id == 0:
        np.savez(args.out, **out)
    print(f"process {args.process_id} done", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
