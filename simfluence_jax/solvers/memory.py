"""How much memory each solver needs, and how many test examples it solves at once.

Every solver splits its arrays into a part shared by all test examples (built once) and a
part per test example, and solves test examples ``chunk`` at a time, so its working set is

    shared + chunk * per_test            (bytes; itemsize of the problem's dtype)

whatever M. With S = R * T rows, P unknowns, O the most occurrences of one id and K l2
values (solved one after another):

* ``direct``: shared ``2 N O N`` gathered rows, ``2 S N`` counts, ``3 N^2``; per test
  ``S2, Q`` plus the l2 solve's Schur complement, its bordered copy and factor: ``6 N^2``;
* ``cg``: shared ``S N`` (the kernel rows' squares) for kernel rows; per test the CG state
  and matvec (``8 P + 8 S B``);
* ``dual``: shared ``S N`` dense rows and the ``S^2`` overlap; per test the Gram matrix,
  its bordered copy and factor: ``3 S^2``.

Each adds the outputs, ``K P`` per test. ``chunk_for`` takes the largest chunk whose
working set fits ``MEMORY_BUDGET_BYTES`` (at least one test example: ``fits`` says whether
even that does). The largest chunk is not the fastest: ``default_chunk``, what the solvers
use when no ``chunk`` is given, also keeps the direct solver's per-test matrices of one
chunk within ``DIRECT_CACHE_BYTES`` (so they stay in cache between the products, the
factorisation and the solve) and iterates CG ``CG_CHUNK`` test examples at a time (a chunk
runs until its slowest test example converges). Measured in one process, each chunk size
timed interleaved with the others (``benchmarks/bench_scaling.py``, README "Scaling"):
N = 200, M = 200, R = 25, T = 96: direct 0.18 s at 16 against 0.29 s at 200, CG 0.13 s at
8 against 0.28 s at 200; N = 1,000, M = 500, R = 100: CG 1.7 s at 8 against 4.6 s at 500.
"""

from __future__ import annotations

import numpy as np

#: Working set the automatic chunk size aims for, in bytes.
MEMORY_BUDGET_BYTES = 2 * 1024**3
#: The direct solver's per-test matrices of one chunk, in bytes (about half a shared L3).
DIRECT_CACHE_BYTES = 16 * 1024**2
#: Test examples CG iterates at once.
CG_CHUNK = 8


def max_occurrences(ids: np.ndarray, num_train: int) -> int:
    """O: the most batch slots one training id fills (1 for none)."""
    flat = np.asarray(ids).reshape(-1)
    flat = flat[flat >= 0]
    return max(1, int(np.bincount(flat, minlength=num_train).max(initial=0)))


def solver_bytes(
    name: str,
    *,
    N: int,
    S: int,
    B: int,
    P: int,
    O: int,
    K: int = 1,
    kernel: bool = False,
    itemsize: int = 4,
) -> tuple[int, int]:
    """``(shared, per_test)`` bytes of solver ``name`` (module docstring)."""
    if name == "direct":
        shared, per_test = 2 * N * O * N + 2 * S * N + 3 * N * N, 6 * N * N
    elif name == "cg":
        shared, per_test = (S * N if kernel else 0), 8 * P + 8 * S * B
    elif name == "dual":
        shared, per_test = S * N + S * S, 3 * S * S
    else:
        raise ValueError(f"unknown solver {name!r}; known: cg, direct, dual")
    return shared * itemsize, (per_test + K * P) * itemsize


def problem_bytes(name: str, problem, K: int = 1, kernel: bool | None = None):
    """``solver_bytes`` of a ``RidgeProblem``."""
    T, R, B = problem.ids.shape
    kernel = (not problem.plain) if kernel is None else kernel
    return solver_bytes(
        name,
        N=problem.num_train,
        S=T * R,
        B=B,
        P=problem.num_unknowns,
        O=max_occurrences(problem.ids, problem.num_train),
        K=K,
        kernel=kernel,
        itemsize=np.dtype(problem.Lp.dtype).itemsize,
    )


def chunk_for(shared: int, per_test: int, num_test: int, budget: int | None = None) -> int:
    """The most test examples (<= ``num_test``) whose working set fits ``budget``; 1 if
    even one does not (``fits`` tells)."""
    budget = MEMORY_BUDGET_BYTES if budget is None else budget
    return int(max(1, min(num_test, (budget - shared) // max(per_test, 1))))


def default_chunk(
    name: str, shared: int, per_test: int, num_test: int, budget: int | None = None
) -> int:
    """The chunk solver ``name`` uses when none is given: ``chunk_for``'s, capped at
    ``DIRECT_CACHE_BYTES / per_test`` (direct) or ``CG_CHUNK`` (CG)."""
    chunk = chunk_for(shared, per_test, num_test, budget)
    if name == "direct":
        chunk = min(chunk, max(1, DIRECT_CACHE_BYTES // max(per_test, 1)))
    elif name == "cg":
        chunk = min(chunk, CG_CHUNK)
    return chunk


def fits(shared: int, per_test: int, budget: int) -> bool:
    """Whether one test example at a time fits ``budget`` bytes."""
    return shared + per_test <= budget
