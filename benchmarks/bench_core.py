"""Fit and rollout speed of the core against the NumPy / scikit-learn code a researcher
would otherwise write, side by side in one run, on synthetic problems of known truth.

Problems:
* ``gptfluence``: N=200 pool, M=200 test examples, 25 fitting runs of 128 examples x 3
  epochs, batch 4 (T=96);
* ``large``: N=5000, M=1000, same run shape;
* ``tiny``: a seconds-long smoke version used by the test suite.

Baselines: a per-test-example loop of scikit-learn ``Ridge`` on the explicit design
matrix; a vectorised NumPy closed form (batched normal equations + ``np.linalg.solve``)
where it fits in memory; a Python/NumPy rollout loop over steps and test examples, and a
NumPy rollout vectorised over test examples. Where a baseline would run for too long it is
timed on a few test examples and scaled up linearly, and the table says so.

The optimizer kernel (``--kernel``): GPTfluence-sized runs (25 fitting, 2 validation, 5
held-out) drawn from the kernel law with mu = 0.8 and a warm-up/decay schedule
(``kernel_world``), so held-out MSEs mean something: one plain fit, one kernel fit, the
7-value l2 path, the 20 x 7 (mu, l2) grid of ``momentum="auto"`` with validation rollouts,
against the fastest NumPy closed form of the same plain fit we could write (normal
equations scattered with a sparse pair matrix, as ``np.bincount`` would, then one batched
``numpy.linalg.solve``), and the rollout of 1,000 curricula at once; times as ratios to one
plain fit and to one kernel fit.

Run: ``python -m benchmarks.bench_core [--size gptfluence|large|tiny|all] [--kernel]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import simfluence_jax as sj
from benchmarks.common import table, timeit, write
from simfluence_jax import metrics
from simfluence_jax.fitting import MOMENTUM_GRID, rollout_mse
from simfluence_jax.solvers import RidgeProblem, solve_ridge
from simfluence_jax.synthetic import make_kernel_runs, make_problem, warmup_decay_schedule

SIZES = {
    "tiny": dict(num_train=40, num_test=16, subset=24, epochs=2, sk_tests=16, loop_tests=16),
    "gptfluence": dict(num_train=200, num_test=200, subset=128, epochs=3, sk_tests=200,
                       loop_tests=200),
    "large": dict(num_train=5000, num_test=1000, subset=128, epochs=3, sk_tests=4,
                  loop_tests=50),
}  # fmt: skip
FIT_RUNS, HELD_OUT_RUNS, L2 = 25, 5, 1e-2


def dense_design(problem: RidgeProblem, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Explicit design matrix [S, 2N] and target [S] of test example j."""
    ids = problem.ids.reshape(-1, problem.ids.shape[-1])
    S, N = ids.shape[0], problem.num_train
    C = np.zeros((S, N))
    rows = np.repeat(np.arange(S), ids.shape[1])
    keep = ids.reshape(-1) >= 0
    np.add.at(C, (rows[keep], ids.reshape(-1)[keep]), 1.0)
    Lp = problem.Lp[j].reshape(-1).astype(np.float64)
    return np.concatenate([Lp[:, None] * C, C], axis=1), problem.y[j].reshape(-1)


def sklearn_loop(problem: RidgeProblem, tests: int) -> np.ndarray:
    from sklearn.linear_model import Ridge

    out = []
    for j in range(tests):
        X, y = dense_design(problem, j)
        out.append(Ridge(alpha=L2, fit_intercept=False).fit(X, y).coef_)
    return np.stack(out)


def numpy_closed_form(problem: RidgeProblem) -> np.ndarray:
    """All test examples at once: batched normal equations and one batched solve."""
    ids = problem.ids.reshape(-1, problem.ids.shape[-1])
    S, N = ids.shape[0], problem.num_train
    C = np.zeros((S, N))
    rows = np.repeat(np.arange(S), ids.shape[1])
    keep = ids.reshape(-1) >= 0
    np.add.at(C, (rows[keep], ids.reshape(-1)[keep]), 1.0)
    Lp = problem.Lp.reshape(problem.num_test, -1).astype(np.float64)  # [M, S]
    y = problem.y.reshape(problem.num_test, -1).astype(np.float64)
    LC = Lp[:, :, None] * C[None]  # [M, S, N]
    G_AA = np.matmul(np.swapaxes(LC, 1, 2), LC)
    G_AB = np.matmul(np.swapaxes(LC, 1, 2), C[None])
    G_BB = np.broadcast_to(C.T @ C, G_AA.shape)
    G = np.concatenate(
        [np.concatenate([G_AA, G_AB], 2), np.concatenate([np.swapaxes(G_AB, 1, 2), G_BB], 2)], 1
    )
    G = G + L2 * np.eye(2 * N)
    r = np.concatenate([np.einsum("msn,ms->mn", LC, y), y @ C], axis=1)
    return np.linalg.solve(G, r[..., None])[..., 0]


def numpy_rollout_loop(A, B, batches, L0, tests: int) -> np.ndarray:
    """Loops over curricula, test examples and steps."""
    R, T, _ = batches.shape
    out = np.zeros((R, T + 1, tests))
    for r in range(R):
        for j in range(tests):
            L = out[r, 0, j] = L0[r, j]
            for t in range(T):
                ids = batches[r, t][batches[r, t] >= 0]
                L = A[j, ids].sum() * L + B[j, ids].sum()
                out[r, t + 1, j] = L
    return out


def numpy_rollout_vectorised(A, B, batches, L0) -> np.ndarray:
    """Loops over steps only; vectorised over curricula and test examples."""
    R, T, _ = batches.shape
    out = np.zeros((R, T + 1, A.shape[0]))
    out[:, 0] = L0
    w = (batches >= 0).astype(np.float64)
    safe = np.where(batches >= 0, batches, 0)
    for t in range(T):
        alpha = np.einsum("mrb,rb->rm", A[:, safe[:, t]], w[:, t])
        beta = np.einsum("mrb,rb->rm", B[:, safe[:, t]], w[:, t])
        out[:, t + 1] = alpha * out[:, t] + beta
    return out


def run_size(name: str) -> list[dict]:
    cfg = dict(SIZES[name])
    sk_tests, loop_tests = cfg.pop("sk_tests"), cfg.pop("loop_tests")
    p = make_problem(num_runs=FIT_RUNS + HELD_OUT_RUNS, batch_size=4, noise=0.01, seed=0, **cfg)
    fit, _, test = p.runs.split(FIT_RUNS, 0, HELD_OUT_RUNS)
    problem = RidgeProblem.from_runs(fit)
    M, N = problem.num_test, problem.num_train
    print(f"\n## {name}: N={N} M={M} fit runs={fit.num_runs} T={fit.num_steps} B=4")
    rows = []

    # --- fit -------------------------------------------------------------------------
    solver = sj.choose_solver(problem)
    t0 = time.perf_counter()
    solve_ridge(problem, L2)  # compile
    compile_s = time.perf_counter() - t0
    ours_s, (A, B, info) = timeit(lambda: solve_ridge(problem, L2), repeat=3)
    A, B = np.asarray(A[0]), np.asarray(B[0])
    sim = sj.LinearSimulator(A=A, B=B, seen=fit.used_ids())
    ours_mse = metrics.all_steps_mse(sj.predict(sim, test), test.losses)[0]
    rows.append(dict(problem=name, task="fit", method=f"simfluence_jax ({solver})",
                     seconds=ours_s, compile_s=compile_s, heldout_mse=ours_mse))  # fmt: skip

    t0 = time.perf_counter()
    theta_sk = sklearn_loop(problem, sk_tests)
    sk_s = (time.perf_counter() - t0) * M / sk_tests
    ref = np.concatenate([A, B], axis=1)[:sk_tests]
    rel = float(np.abs(theta_sk - ref).max() / np.abs(theta_sk).max())
    note = "" if sk_tests == M else f"timed on {sk_tests} test examples, scaled x{M / sk_tests:g}"
    sk_mse = float("nan")
    if sk_tests == M:
        sk_sim = sj.LinearSimulator(A=theta_sk[:, :N], B=theta_sk[:, N:], seen=fit.used_ids())
        sk_mse = metrics.all_steps_mse(sj.predict(sk_sim, test), test.losses)[0]
    rows.append(dict(problem=name, task="fit", method="sklearn Ridge loop", seconds=sk_s,
                     speedup=sk_s / ours_s, max_rel_param_diff=rel, heldout_mse=sk_mse,
                     note=note))  # fmt: skip

    dense_bytes = M * (2 * N) ** 2 * 8 * 3
    if dense_bytes < 8 * 1024**3:
        np_s, theta_np = timeit(lambda: numpy_closed_form(problem), repeat=1)
        rel = float(np.abs(theta_np - np.concatenate([A, B], 1)).max() / np.abs(theta_np).max())
        rows.append(dict(problem=name, task="fit", method="NumPy vectorised closed form",
                         seconds=np_s, speedup=np_s / ours_s, max_rel_param_diff=rel))  # fmt: skip
    else:
        rows.append(dict(problem=name, task="fit", method="NumPy vectorised closed form",
                         note=f"infeasible: needs {dense_bytes / 1024**3:.0f} GiB"))  # fmt: skip

    # --- rollout ---------------------------------------------------------------------
    batches, L0 = test.batches, test.L0
    sj.rollout(sim, batches, L0)  # compile
    roll_s, ours = timeit(lambda: sj.rollout(sim, batches, L0), repeat=5)
    ours = np.asarray(ours)
    rows.append(dict(problem=name, task="rollout", method="simfluence_jax (scan+vmap)",
                     seconds=roll_s))  # fmt: skip
    t0 = time.perf_counter()
    loop = numpy_rollout_loop(A.astype(np.float64), B.astype(np.float64), batches, L0, loop_tests)
    loop_s = (time.perf_counter() - t0) * M / loop_tests
    diff = float(np.abs(loop - ours[..., :loop_tests]).max())
    note = "" if loop_tests == M else f"timed on {loop_tests} test examples, scaled"
    rows.append(dict(problem=name, task="rollout", method="Python loop (steps x tests)",
                     seconds=loop_s, speedup=loop_s / roll_s, max_abs_diff=diff,
                     note=note))  # fmt: skip
    vec_s, vec = timeit(lambda: numpy_rollout_vectorised(A, B, batches, L0), repeat=3)
    rows.append(dict(problem=name, task="rollout", method="NumPy loop over steps",
                     seconds=vec_s, speedup=vec_s / roll_s,
                     max_abs_diff=float(np.abs(vec - ours).max())))  # fmt: skip
    return rows


def numpy_scatter_closed_form(problem: RidgeProblem, l2: float) -> np.ndarray:
    """Plain Simfluence-Linear normal equations for all test examples by scatters (a sparse
    (pair -> N*N) matrix applied to per-row weights, what ``np.bincount`` does per test
    example), then one batched ``numpy.linalg.solve``: ``theta [M, 2N]``."""
    from scipy import sparse

    ids = problem.ids.reshape(-1, problem.ids.shape[-1])  # [S, B]
    S, Bsz = ids.shape
    N, M = problem.num_train, problem.num_test
    valid = ids >= 0
    a = np.repeat(ids, Bsz, axis=1)  # [S, B*B] row id of each slot pair
    b = np.tile(ids, (1, Bsz))
    keep = (np.repeat(valid, Bsz, axis=1) & np.tile(valid, (1, Bsz))).reshape(-1)
    pair = (a * N + b).reshape(-1)[keep]
    row = np.repeat(np.arange(S), Bsz * Bsz)[keep]
    P = sparse.csr_matrix((np.ones(pair.size), (row, pair)), shape=(S, N * N))  # rows -> pairs
    slot = sparse.csr_matrix(
        (
            valid.reshape(-1).astype(float),
            (np.repeat(np.arange(S), Bsz), np.maximum(ids, 0).reshape(-1)),
        ),
        shape=(S, N),
    )  # rows -> ids
    Lp = problem.Lp.reshape(M, -1).astype(np.float64)  # [M, S]
    y = problem.y.reshape(M, -1).astype(np.float64)
    G_AA = (P.T @ (Lp * Lp).T).T.reshape(M, N, N)
    G_AB = (P.T @ Lp.T).T.reshape(M, N, N)
    G_BB = np.asarray(P.sum(axis=0)).reshape(N, N)
    G = np.empty((M, 2 * N, 2 * N))
    G[:, :N, :N], G[:, :N, N:], G[:, N:, :N], G[:, N:, N:] = G_AA, G_AB, G_AB, G_BB
    G[:, np.arange(2 * N), np.arange(2 * N)] += l2
    r = np.concatenate([(slot.T @ (Lp * y).T).T, (slot.T @ y.T).T], axis=1)
    return np.linalg.solve(G, r[..., None])[..., 0]


#: The kernel world: the law's momentum and its warm-up/decay schedule (as in
#: tests/test_kernel.py, at the GPTfluence size).
KERNEL_MU, KERNEL_WARMUP, KERNEL_PEAK_LR = 0.8, 8, 0.1


def kernel_schedule(T: int) -> np.ndarray:
    """Linear warm-up to the peak over ``KERNEL_WARMUP`` steps, then linear decay to a tenth."""
    return warmup_decay_schedule(T, warmup=KERNEL_WARMUP, peak=KERNEL_PEAK_LR)


def kernel_world(num_runs: int, *, mu: float = KERNEL_MU, seed: int = 0) -> sj.RunSet:
    """Runs drawn from the optimizer kernel's law (one_plus_sum form), GPTfluence-sized
    (``synthetic.make_kernel_runs`` with effects divided by 4, as T is 4x longer than in
    the tests, so the loss falls from 1-2 to about a third)."""
    cfg = SIZES["gptfluence"]
    return make_kernel_runs(
        num_train=cfg["num_train"], num_test=cfg["num_test"], num_runs=num_runs,
        subset=cfg["subset"], epochs=cfg["epochs"], mu=mu, warmup=KERNEL_WARMUP,
        effect_scale=0.25, seed=seed,
    )  # fmt: skip


def run_kernel() -> list[dict]:
    """The optimizer kernel's fits against the plain fit and the NumPy closed form, on runs
    drawn from the kernel law (mu = 0.8, warm-up/decay schedule). Every fit uses the law's
    ``one_plus_sum`` form; ratios are to one plain fit (and to one kernel fit).

    OpenBLAS (NumPy's, and the LAPACK that JAX's CPU linear algebra calls) runs with one
    thread: on these shared 2-core machines its threads, oversubscribed, made NumPy's
    closed form 10-20x slower and one 200 x 200 ``eigh`` up to 100x slower, at random. The
    NumPy closed form is also timed once with its default threads, for the record.
    """
    import jax.numpy as jnp
    from threadpoolctl import threadpool_limits

    jnp.linalg.cholesky(jnp.eye(2)).block_until_ready()  # load JAX's LAPACK first
    with threadpool_limits(limits=1):
        rows, problem = _run_kernel()
    for r in rows:
        r["note"] = "BLAS threads: 1"
    default_s, _ = timeit(lambda: numpy_scatter_closed_form(problem, L2), repeat=1)
    base, kernel_s = rows[0]["seconds"], rows[1]["seconds"]
    row = dict(problem=rows[0]["problem"], task="fit", seconds=default_s,
               method="NumPy scatter closed form (plain), default BLAS threads",
               x_one_fit=default_s / base, x_kernel_fit=default_s / kernel_s,
               note="BLAS threads: default (oversubscribed); timed once")  # fmt: skip
    rows.insert(next(i for i, r in enumerate(rows) if r["task"] == "rollout"), row)
    return rows


def _run_kernel() -> tuple[list[dict], RidgeProblem]:
    runs = kernel_world(FIT_RUNS + 2 + HELD_OUT_RUNS)
    fit, val, test = runs.split(FIT_RUNS, 2, HELD_OUT_RUNS)
    T = fit.num_steps
    problem = RidgeProblem.from_runs(fit, alpha0=1.0)
    M, N = problem.num_test, problem.num_train
    name = "gptfluence-kernel"
    print(f"\n## {name}: N={N} M={M} fit/val/test runs={fit.num_runs}/{val.num_runs}/"
          f"{test.num_runs} T={T} B=4, law mu={KERNEL_MU}, warm-up/decay schedule")  # fmt: skip
    rows = []
    kw = dict(alpha="one_plus_sum")

    def fit_plain():
        return sj.fit_simulator("linear", fit, l2=L2, **kw)

    def fit_kernel():
        return sj.fit_simulator("linear", fit, l2=L2, momentum=KERNEL_MU, lr_scaled=True, **kw)

    def l2_path():
        return sj.fit_simulator("linear", fit, validation=val, **kw)

    def grid():
        return sj.fit_simulator("linear", fit, validation=val, momentum="auto", lr_scaled=True,
                                **kw)  # fmt: skip

    def loop_over_mu():
        """The grid as 20 separate l2-path fits, one per mu, keeping the best."""
        fits = [
            sj.fit_simulator("linear", fit, validation=val, momentum=mu, lr_scaled=True, **kw)
            for mu in MOMENTUM_GRID
        ]
        scores = [rollout_mse(f, val) for f in fits]
        return fits[int(np.argmin(scores))]

    base = kernel_s = None
    for label, fn, repeat in (
        ("one plain fit", fit_plain, 5),
        (f"one kernel fit (mu={KERNEL_MU}, lr_scaled)", fit_kernel, 5),
        ("7-value l2 path + validation rollouts (plain)", l2_path, 3),
        ("20 x 7 (mu, l2) grid + validation rollouts", grid, 3),
        ("the same grid as 20 l2-path fits in a loop", loop_over_mu, 1),
    ):
        t0 = time.perf_counter()
        fn()  # compile
        first = time.perf_counter() - t0
        secs, sim = timeit(fn, repeat=repeat)
        base = base or secs
        if "kernel fit" in label:
            kernel_s = secs
        rows.append(dict(problem=name, task="fit", method=f"simfluence_jax: {label}",
                         seconds=secs, x_one_fit=secs / base,
                         x_kernel_fit=secs / kernel_s if kernel_s else None,
                         first_call_s=first, chosen=f"mu={sim.momentum:g}, l2={sim.l2:g}",
                         heldout_mse=metrics.all_steps_mse(sj.predict(sim, test),
                                                           test.losses)[0]))  # fmt: skip
    np_s, theta = timeit(lambda: numpy_scatter_closed_form(problem, L2), repeat=3)
    sim = fit_plain()
    ref = np.concatenate([np.asarray(sim.A), np.asarray(sim.B)], 1)
    rel = float(np.abs(theta - ref).max() / np.abs(theta).max())
    rows.append(dict(problem=name, task="fit", method="NumPy scatter closed form (plain)",
                     seconds=np_s, x_one_fit=np_s / base, x_kernel_fit=np_s / kernel_s,
                     max_rel_param_diff=rel))  # fmt: skip

    # Rollout of 1,000 curricula at once (reordered fitting curricula, the logged schedule).
    rng = np.random.default_rng(1)
    curricula = fit.batches[rng.integers(0, fit.num_runs, 1000)]
    curricula = np.stack([c[rng.permutation(T)] for c in curricula])
    rates = np.tile(kernel_schedule(T), (1000, 1))
    L0 = np.tile(test.L0[:1], (1000, 1))
    kernel = fit_kernel()
    for label, sim_ in (("plain", sim), ("kernel", kernel)):
        sj.rollout(sim_, curricula, L0, learning_rates=rates).block_until_ready()
        secs, _ = timeit(
            lambda s=sim_: sj.rollout(s, curricula, L0, learning_rates=rates).block_until_ready(),
            repeat=3,
        )
        method = f"simfluence_jax: 1,000 curricula, {label}"
        rows.append(dict(problem=name, task="rollout", method=method, seconds=secs,
                         x_one_fit=secs / base, x_kernel_fit=secs / kernel_s))  # fmt: skip
    return rows, problem


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="all", choices=[*SIZES, "all", "none"])
    parser.add_argument("--kernel", action="store_true", help="also the optimizer-kernel fits")
    args = parser.parse_args(argv)
    names = {"all": ["gptfluence", "large"], "none": []}.get(args.size, [args.size])
    rows = []
    for n in names:
        rows += run_size(n)
    if args.kernel:
        rows += run_kernel()
    cols = ["problem", "task", "method", "seconds", "speedup", "x_one_fit", "x_kernel_fit",
            "max_rel_param_diff", "max_abs_diff", "heldout_mse", "chosen", "compile_s",
            "first_call_s", "note"]  # fmt: skip
    print(table(rows, cols))
    suffix = args.size + ("_kernel" if args.kernel else "")
    path = write(f"bench_core_{suffix}", {"l2": L2, "rows": rows})
    print(f"\nwrote {path}")
    return rows


if __name__ == "__main__":
    main()
