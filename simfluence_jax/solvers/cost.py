"""What each solver costs, and the automatic choice by that cost.

For a problem of N training examples, M test examples, R runs of T steps with batches of B
(S = R T rows, P unknowns, O the most occurrences of one id) and K l2 values, each solver's
work is counted in flops and bytes moved (``work``):

* ``direct``: per test example the blocks from the occurrence lists (``4 N^2 O``), then per
  l2 the Schur complement product and its Cholesky factorisation (``2 N^3 + N^3 / 3``),
  six N x N matrices moved; shared: the eigendecomposition of ``S0`` (about ``9 N^3``);
* ``cg``: per test example, l2 and iteration two gathers and two scatters of the S B batch
  slots and the vector updates (``8 S B + 12 P`` flops, ``4 (4 S B + 10 P)`` bytes), times
  the iterations (``cg_iterations``);
* ``dual``: per test example and l2 the S x S Gram matrix and its factorisation
  (``S^3 / 3 + 3 S^2``), three S x S matrices moved; shared: the ``S^2 N`` overlap.

The predicted time is ``a flops / RATE + b bytes / BANDWIDTH + c`` with per-solver
coefficients (``COEFFICIENTS``) fitted by ``benchmarks/bench_scaling.py`` to the measured
times of every solver over its grid (the rates there are the measured matrix-product rate
and memory bandwidth; here they are the nominal values of that machine, which only scale
every solver alike). ``choose`` takes the solver of least predicted time among those whose
memory (``memory.solver_bytes``, one test example at a time at least) fits the budget.
"""

from __future__ import annotations

import numpy as np

from simfluence_jax.solvers import memory

#: Matrix-product rate (flop/s) and memory bandwidth (byte/s) the coefficients are expressed
#: against: those measured in the benchmark run (a shared 2-core machine,
#: benchmarks/results/bench_scaling.json).
RATE, BANDWIDTH = 1.65e11, 5.2e9

#: CG iterations at l2 = 0.01 grow with the unknowns per batch slot, ``x = P / (S B)`` (an id
#: that occurs rarely is held mostly by the ridge term): ``iterations = a x^e``, at least
#: ``CG_MIN_ITERATIONS``; fitted to the benchmark grid (8 to 240 iterations measured).
CG_ITERATIONS = (190.0, 0.67)
CG_MIN_ITERATIONS = 5

#: Per solver ``(a, b, c)``: flop and byte multipliers (1 = the rate / bandwidth) and a fixed
#: cost in seconds, fitted by ``benchmarks/bench_scaling.py --fit`` (non-negative least
#: squares on relative error, CG with its predicted iterations, as ``choose`` sees them) to
#: the grid run with the cache-sized chunks of ``memory.default_chunk``. CG comes out as pure
#: memory traffic. The dual form has one point on the grid (the GPTfluence size, where it
#: is 100x slower than the others): its flop multiplier comes from it. The grid (0.17 s and
#: up) cannot see costs of milliseconds: the fixed costs of CG and the dual form are their
#: least times on problems of 20 to 96 rows (about 1.5 and 1 ms), where the dual form is the
#: fastest solver.
COEFFICIENTS = {
    "direct": (4.27, 1.32, 0.0193),
    "cg": (0.0, 1.26, 0.0015),
    "dual": (11.2, 0.0, 0.001),
}

SOLVER_NAMES = ("direct", "cg", "dual")


def cg_iterations(*, S: int, B: int, P: int) -> float:
    """CG's predicted iterations at l2 = 0.01 (``CG_ITERATIONS``)."""
    a, e = CG_ITERATIONS
    return max(CG_MIN_ITERATIONS, a * (P / (S * B)) ** e)


def work(
    name: str, *, N: int, M: int, S: int, B: int, P: int, O: int, K: int = 1, iterations=None
) -> tuple[float, float]:
    """``(flops, bytes)`` of solver ``name`` (module docstring; float32 bytes)."""
    N, M, S, B, P, O, K = map(float, (N, M, S, B, P, O, K))
    if name == "direct":
        per_l2 = 2 * N**3 + N**3 / 3
        flops = M * (4 * N * N * O + K * per_l2) + 9 * N**3 + 4 * S * N * N
        nbytes = 4 * M * (2 + 6 * K) * N * N
    elif name == "cg":
        it = cg_iterations(S=S, B=B, P=P) if iterations is None else iterations
        flops = M * K * it * (8 * S * B + 12 * P)
        nbytes = 4 * M * K * it * (4 * S * B + 10 * P)
    elif name == "dual":
        flops = M * K * (S**3 / 3 + 3 * S * S) + 2 * S * S * N
        nbytes = 4 * (M * K * 3 * S * S + S * S + S * N)
    else:
        raise ValueError(f"unknown solver {name!r}; known: {', '.join(SOLVER_NAMES)}")
    return flops, nbytes


def predict_seconds(name: str, flops: float, nbytes: float) -> float:
    """The model's time for ``(flops, bytes)`` of solver ``name``."""
    a, b, c = COEFFICIENTS[name]
    return a * flops / RATE + b * nbytes / BANDWIDTH + c


def sizes(problem) -> dict:
    """The sizes ``work`` and ``memory.solver_bytes`` take, of a ``RidgeProblem``."""
    T, R, B = problem.ids.shape
    return dict(
        N=problem.num_train,
        S=T * R,
        B=B,
        P=problem.num_unknowns,
        O=memory.max_occurrences(problem.ids, problem.num_train),
    )


def choose(
    *, N: int, M: int, S: int, B: int, P: int, O: int, K: int = 1, kernel: bool = False,
    budget: int | None = None, itemsize: int = 4,
) -> tuple[str, dict]:  # fmt: skip
    """The solver of least predicted time whose memory fits ``budget`` bytes (default
    ``memory.MEMORY_BUDGET_BYTES``), and every solver's ``(seconds, fits)``. If none fits,
    ``cg`` (the least memory)."""
    budget = memory.MEMORY_BUDGET_BYTES if budget is None else budget
    table = {}
    for name in SOLVER_NAMES:
        shared, per_test = memory.solver_bytes(
            name, N=N, S=S, B=B, P=P, O=O, K=K, kernel=kernel, itemsize=itemsize
        )
        seconds = predict_seconds(name, *work(name, N=N, M=M, S=S, B=B, P=P, O=O, K=K))
        table[name] = (seconds, memory.fits(shared, per_test, budget))
    fitting = [n for n in SOLVER_NAMES if table[n][1]]
    if not fitting:
        return "cg", table
    return min(fitting, key=lambda n: table[n][0]), table


def choose_for(problem, *, K: int = 1, kernel: bool | None = None, budget=None) -> str:
    """``choose`` for a ``RidgeProblem``."""
    kernel = (not problem.plain) if kernel is None else kernel
    itemsize = np.dtype(problem.Lp.dtype).itemsize
    name, _ = choose(M=problem.num_test, K=K, kernel=kernel, budget=budget,
                     itemsize=itemsize, **sizes(problem))  # fmt: skip
    return name
