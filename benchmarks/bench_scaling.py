"""How time and memory grow with N, M, R and T: every solver's fit, the rollout and
``removal_effects``, beside each operation's floor, in one process.

The grid sweeps each axis from a middle point (N=1,000, M=500, R=100, T=96, B=4): N in
{200, 1k, 5k, 20k}, M in {50, 500, 5,000}, R in {25, 100, 400}, T in {96, 1,000}; plus the
GPTfluence size (N=M=200, R=25, T=96) and the largest (N=20k, M=5,000, R=100, T=96), which
is run once, compilation included, for its memory. Runs follow the GPTfluence protocol
(each run a random subset of the pool, several epochs, truncated to T steps) with losses
from a known Simfluence-Linear law.

Each operation is timed after a warm-up call (wall time, the least of up to three calls;
also the process CPU time), with the peak resident memory the timed call adds (``VmHWM``
reset before it). Its floor is ``max(flops / matmul rate, bytes / bandwidth)`` with the
rate of a 2048 x 2048 float32 matrix product and the bandwidth of a 256 MiB array update,
measured in the same run; a fit's flops and bytes are those of ``solvers.cost.work``
(CG's with its measured iterations), the direct solver's floor is the factorisation of
the 2N x 2N normal equations of every test example (``M (2N)^3 / 3`` flops). A solver the
cost model predicts above ``--cap`` seconds, or whose memory does not fit, is skipped and
the prediction recorded. Slopes are least-squares fits of log time on log size along each
sweep. ``--fit`` refits ``solvers.cost.COEFFICIENTS`` to the measured fits.

Run: ``nice python -m benchmarks.bench_scaling [--quick] [--skip-largest] [--fit]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks.common import RESULTS, reset_peak_rss, status_kb, table, write
from simfluence_jax.solvers import cost, memory

CENTRE = dict(N=1000, M=500, R=100, T=96)
AXES = dict(N=[200, 1000, 5000, 20000], M=[50, 500, 5000], R=[25, 100, 400], T=[96, 1000])
GPTFLUENCE = dict(N=200, M=200, R=25, T=96)
LARGEST = dict(N=20000, M=5000, R=100, T=96)
QUICK_CENTRE = dict(N=100, M=40, R=10, T=24)
QUICK_AXES = dict(N=[50, 100, 200], M=[20, 40], R=[5, 10], T=[24, 48])
B, L2, SOLVERS = 4, 1e-2, ("direct", "cg", "dual")
LARGEST_CAP = 4 * 3600.0


def measure_rates() -> dict:
    """Matmul rate (flop/s) and memory bandwidth (byte/s), the best of five calls each."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    x = jnp.ones((64 * 1024**2,), jnp.float32)
    add = jax.jit(lambda x: x * 1.0001 + 1.0)
    best = {}
    for name, fn, arg, work in (("rate", mm, a, 2 * 2048**3), ("bandwidth", add, x, 2 * x.nbytes)):
        jax.block_until_ready(fn(arg))
        secs = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(arg))
            secs.append(time.perf_counter() - t0)
        best[name] = work / min(secs)
    return best


def make_runs(N: int, M: int, R: int, T: int, seed: int = 0):
    """A RunSet of R runs of T steps (each a random subset of the pool, 3+ epochs) with
    losses from random Simfluence-Linear parameters, and the true simulator."""
    import simfluence_jax as sj
    from simfluence_jax.synthetic import sample_curricula

    rng = np.random.default_rng(seed)
    subset = int(min(N, max(B, -(-4 * T * B // 3 // B) * B)))
    epochs = -(-T * B // subset)
    batches = sample_curricula(rng, R, N, subset, B, epochs)[:, :T]
    A = ((1.0 - rng.uniform(0.0, 0.08, (M, N))) / B).astype(np.float32)
    Bp = (rng.uniform(0.0, 0.04, (M, N)) / B).astype(np.float32)
    L = np.empty((R, T + 1, M), np.float32)
    L[:, 0] = rng.uniform(1.0, 3.0, M)[None]
    for t in range(T):
        ids = batches[:, t]
        w = (ids >= 0).astype(np.float32)
        safe = np.where(ids >= 0, ids, 0)
        alpha = np.einsum("mrb,rb->rm", A[:, safe], w)
        beta = np.einsum("mrb,rb->rm", Bp[:, safe], w)
        L[:, t + 1] = alpha * L[:, t] + beta + 0.01 * rng.standard_normal((R, M))
    runs = sj.RunSet(batches=batches, losses=L, num_train=N)
    sim = sj.LinearSimulator(A=A, B=Bp, seen=np.ones(N, bool))
    return runs, sim


def run_op(fn, *, long_after: float = 2.0, warm_up: bool = True):
    """``(wall, cpu, first, peak_bytes, out)`` of ``fn``: a warm-up call, then up to three
    timed calls (one if the warm-up took over ``long_after`` s); the peak RSS the first
    timed call adds. ``warm_up=False`` (the largest size, run for its memory): one call,
    compilation included, whose peak is the one reported."""
    import gc

    import jax

    if not warm_up:
        base, reset = status_kb("VmRSS"), reset_peak_rss()
        c0, t0 = time.process_time(), time.perf_counter()
        out = jax.block_until_ready(fn())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = max(0, status_kb("VmHWM") - base) * 1024 if reset else None
        return wall, cpu, wall, peak, out
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    del out
    gc.collect()
    walls, cpus, peak = [], [], None
    for _ in range(1 if first > long_after else 3):
        base = status_kb("VmRSS")
        reset = reset_peak_rss()
        c0, t0 = time.process_time(), time.perf_counter()
        out = jax.block_until_ready(fn())
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if peak is None and reset:
            peak = max(0, status_kb("VmHWM") - base) * 1024
    return min(walls), min(cpus), first, peak, out


def point(size: dict, rates: dict, *, cap: float, budget: int, warm_up: bool = True) -> list[dict]:
    """Every operation at one size (``warm_up``: see :func:`run_op`)."""
    import simfluence_jax as sj
    from simfluence_jax.attribution import removal_effects
    from simfluence_jax.solvers import RidgeProblem, choose_solver, solve_ridge

    N, M, R, T = size["N"], size["M"], size["R"], size["T"]
    runs, sim = make_runs(N, M, R, T)
    problem = RidgeProblem.from_runs(runs)
    sz = cost.sizes(problem)
    base = dict(N=N, M=M, R=R, T=T, O=sz["O"], auto=choose_solver(problem))
    rows = []

    def record(op, flops, nbytes, res, **extra):
        wall, cpu, first, peak, _ = res
        floor = max(flops / rates["rate"], nbytes / rates["bandwidth"])
        rows.append(dict(base, op=op, seconds=wall, cpu_seconds=cpu, first_call_s=first,
                         peak_bytes=peak, flops=flops, bytes=nbytes, floor_s=floor,
                         x_floor=wall / floor, **extra))  # fmt: skip
        print(table(rows[-1:], ["N", "M", "R", "T", "op", "seconds", "x_floor", "peak_bytes"]),
              flush=True)  # fmt: skip

    for name in SOLVERS:
        flops, nbytes = cost.work(name, M=M, **sz)
        predicted = cost.predict_seconds(name, flops, nbytes)
        shared, per_test = memory.solver_bytes(name, **sz)
        if predicted > cap or not memory.fits(shared, per_test, budget):
            why = "memory" if not memory.fits(shared, per_test, budget) else "time"
            rows.append(dict(base, op=f"fit:{name}", skipped=why, predicted_s=predicted,
                             needs_bytes=shared + per_test))  # fmt: skip
            continue
        res = run_op(lambda n=name: solve_ridge(problem, L2, solver=n), warm_up=warm_up)
        extra = dict(predicted_s=predicted, chunk=res[-1][2]["chunk"])
        if name == "cg":
            extra["iterations"] = int(res[-1][2]["iterations"][0])
            flops, nbytes = cost.work("cg", M=M, iterations=extra["iterations"], **sz)
        if name == "direct":
            flops = M * (2 * N) ** 3 / 3  # the 2N x 2N factorisation of every test example
        record(f"fit:{name}", flops, nbytes, res, **extra)

    res = run_op(lambda: sj.rollout(sim, runs.batches, runs.L0), warm_up=warm_up)
    record("rollout", R * M * T * (2 * B + 4), 4 * R * M * (T + 1 + 2 * T * B), res)
    curriculum = runs.batches[0]
    K = len(np.unique(curriculum[curriculum >= 0]))
    res = run_op(lambda: removal_effects(sim, curriculum, runs.L0[0]).delta, warm_up=warm_up)
    record("removal_effects", K * M * T * (2 * B + 4), 4 * K * M * (T + 1 + 2 * T * B), res,
           edits=K)  # fmt: skip
    return rows


def slopes(rows: list[dict], centre: dict, axes: dict) -> list[dict]:
    """Least-squares slope of log seconds on log size along each sweep, per operation."""
    out = []
    for axis, values in axes.items():
        others = {k: v for k, v in centre.items() if k != axis}
        ops = sorted({r["op"] for r in rows})
        for op in ops:
            pts = [
                (r[axis], r["seconds"])
                for r in rows
                if r["op"] == op
                and "seconds" in r
                and all(r[k] == v for k, v in others.items())
                and r[axis] in values
            ]
            pts = sorted(set(pts))
            if len({p[0] for p in pts}) >= 2:
                x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
                out.append(dict(axis=axis, op=op, slope=float(np.polyfit(x, y, 1)[0]),
                                points=len(pts)))  # fmt: skip
    return out


def fit_coefficients(rows: list[dict], rates: dict) -> dict:
    """Per solver ``(a, b, c)`` of ``cost.predict_seconds`` by non-negative least squares on
    relative error, against the rate and bandwidth measured in the same run (set them as
    ``cost.RATE`` and ``cost.BANDWIDTH``)."""
    from scipy.optimize import nnls

    coeffs = {}
    for name in SOLVERS:
        fits = [r for r in rows if r["op"] == f"fit:{name}" and "seconds" in r]
        if len(fits) < 3:
            continue
        X, y = [], []
        for r in fits:
            sz = dict(N=r["N"], S=r["R"] * r["T"], B=B, P=2 * r["N"], O=r["O"])
            # CG's predicted iterations, not the measured ones: ``auto`` chooses before it
            # runs, so the model is fitted to what it will see.
            flops, nbytes = cost.work(name, M=r["M"], **sz)
            X.append([flops / rates["rate"], nbytes / rates["bandwidth"], 1.0])
            y.append(r["seconds"])
        X, y = np.asarray(X), np.asarray(y)
        sol, _ = nnls(X / y[:, None], np.ones(len(y)))
        coeffs[name] = [float(v) for v in sol]
    return coeffs


def plots(rows: list[dict], centre: dict, axes: dict, stem: str) -> str:
    """Log-log plots of seconds (solid) and floor (dashed) along each sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 3.6))
    ops = sorted({r["op"] for r in rows})
    for ax, (axis, values) in zip(panels, axes.items()):
        others = {k: v for k, v in centre.items() if k != axis}
        for op in ops:
            pts = sorted((r[axis], r["seconds"], r["floor_s"]) for r in rows
                         if r["op"] == op and "seconds" in r and r[axis] in values
                         and all(r[k] == v for k, v in others.items()))  # fmt: skip
            if not pts:
                continue
            x, s, f = zip(*pts)
            (line,) = ax.loglog(x, s, "o-", label=op)
            ax.loglog(x, f, "--", color=line.get_color(), alpha=0.5)
        ax.set_xlabel(axis)
        ax.set_title(", ".join(f"{k}={v}" for k, v in others.items()), fontsize=8)
    panels[0].set_ylabel("seconds (dashed: floor)")
    panels[-1].legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / f"{stem}.png"
    fig.savefig(path, dpi=110)
    return str(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (seconds)")
    parser.add_argument("--skip-largest", action="store_true", help="leave out N=20k, M=5k")
    parser.add_argument("--only-largest", action="store_true", help="only N=20k, M=5k")
    parser.add_argument("--only-gptfluence", action="store_true",
                        help="only the GPTfluence size (the auto and floor checks)")  # fmt: skip
    parser.add_argument("--cap", type=float, default=None, help="skip fits predicted slower")
    parser.add_argument("--fit", action="store_true", help="refit the cost coefficients")
    args = parser.parse_args(argv)
    centre, axes = (QUICK_CENTRE, QUICK_AXES) if args.quick else (CENTRE, AXES)
    cap = args.cap if args.cap is not None else (30.0 if args.quick else 120.0)
    free = status_meminfo("MemAvailable")
    budget = int(0.8 * free)
    gpt = dict(N=50, M=20, R=10, T=24) if args.quick else GPTFLUENCE
    sweep = [dict(centre, **{a: v}) for a, vs in axes.items() for v in vs]
    sizes = [gpt] + sorted(sweep, key=lambda s: (s["N"], s["M"], s["R"], s["T"]))
    if args.only_largest or args.only_gptfluence:
        sizes = [LARGEST] if args.only_largest else [gpt]
    elif not (args.quick or args.skip_largest):
        sizes.append(LARGEST)
    sizes = [dict(t) for t in dict.fromkeys(tuple(s.items()) for s in sizes)]  # unique
    rates = measure_rates()
    print(f"matmul {rates['rate'] / 1e9:.1f} GFLOP/s, bandwidth "
          f"{rates['bandwidth'] / 1e9:.1f} GB/s, {free / 1024**3:.1f} GiB available")  # fmt: skip
    rows = []
    for size in sizes:
        largest = size == LARGEST
        # The largest size is run once, for its memory; fits the model predicts above
        # LARGEST_CAP seconds (the dual form: days) are left out there too.
        rows += point(size, rates, cap=LARGEST_CAP if largest else cap, budget=budget,
                      warm_up=not largest)  # fmt: skip
    gpt_rows = [r for r in rows if all(r[k] == v for k, v in gpt.items()) and "seconds" in r]
    fits = {r["op"][4:]: r["seconds"] for r in gpt_rows if r["op"].startswith("fit:")}
    checks = {}
    if fits:
        auto = gpt_rows[0]["auto"]
        fastest = min(fits, key=fits.get)
        direct = next(r for r in gpt_rows if r["op"] == "fit:direct")
        checks = dict(size=gpt, auto=auto, fastest=fastest, seconds=fits,
                      auto_x_fastest=fits[auto] / fits[fastest],
                      direct_x_floor=direct["x_floor"])  # fmt: skip
        print(json.dumps(checks, indent=1))
    payload = dict(rates=rates, centre=centre, axes=axes, l2=L2, batch_size=B, rows=rows,
                   slopes=slopes(rows, centre, axes), checks=checks, memory_available=free,
                   coefficients_used=cost.COEFFICIENTS, cap_s=cap,
                   openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS"))  # fmt: skip
    if args.fit:
        payload["coefficients"] = fit_coefficients(rows, rates)
        print("COEFFICIENTS =", json.dumps(payload["coefficients"]))
    stem = "bench_scaling" + ("_quick" if args.quick else "_largest" if args.only_largest
                              else "_gptfluence" if args.only_gptfluence else "")  # fmt: skip
    if not (args.only_largest or args.only_gptfluence):
        payload["plot"] = os.path.basename(plots(rows, centre, axes, stem))
    cols = ["N", "M", "R", "T", "op", "seconds", "floor_s", "x_floor", "peak_bytes", "auto",
            "iterations", "skipped", "predicted_s"]  # fmt: skip
    print(table(rows, cols))
    print(table(payload["slopes"], ["axis", "op", "slope", "points"]))
    print(f"\nwrote {write(stem, payload)}")
    return payload


def status_meminfo(field: str) -> int:
    """A field of ``/proc/meminfo`` in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/meminfo")


if __name__ == "__main__":
    main()
