"""TracIn-CP and Grad-Dot: gradient dot products at saved checkpoints.

TracIn (Pruthi et al., 2020, "Estimating Training Data Influence by Tracing Gradient
Descent") follows the first-order change of the test loss along training. A step ``t`` of
plain SGD on the mean loss of batch ``c_t`` (``B_t`` real examples, rate ``eta_t``) moves
``theta_t = theta_{t-1} - (eta_t / B_t) sum_{i in c_t} g_i(theta_{t-1})``, so to first order

    L_test(theta_t) - L_test(theta_{t-1})
        ~= -(eta_t / B_t) sum_{i in c_t} <g_i(theta_{t-1}), g_test(theta_{t-1})>.

TracIn-CP replaces the unknown ``theta_{t-1}`` by saved checkpoints ``theta_{s_k}``:

    score[i, j] = sum_k eta_k <g_i(theta_{s_k}), g_test_j(theta_{s_k})>            (summed form)

with ``eta_k`` the rate of the update taken from checkpoint k; the per-step form uses, for
step ``t``, the checkpoint nearest ``t - 1`` (the parameters the update is taken from).
Grad-Dot is the same dot product at the final model only.

Checkpoints of several runs at the same step are averaged (their dot products are), so a
simulator can use all fitting runs' checkpoints; the per-checkpoint dot products are
``dots float32[K, N, M]`` over the K distinct steps. Sign and axes follow
``simfluence_jax.gradients``: train x test, positive lowers the test loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from simfluence_jax.gradients.per_example import LossFn, Projection, Select, gradient_dots, restrict


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Parameters saved during a run.

    Attributes:
      step: updates taken before it was saved (``theta_step``; 0 is the initial model).
      theta: the trainable pytree at that step.
      learning_rate: the rate of the update taken from it (step ``step + 1``).
      run: the run it came from (informational).
    """

    step: int
    theta: Any
    learning_rate: float
    run: int = -1


def load_checkpoints(store, runs: int | Sequence[int]) -> list[Checkpoint]:
    """Every checkpoint a run store kept for ``runs`` (see ``simfluence_jax.store``).

    Args:
      store: a ``RunStore`` or its directory.
      runs: one run index or several.

    Raises:
      ValueError: if a run kept no checkpoint.
    """
    from simfluence_jax import store as store_lib

    runs = [runs] if isinstance(runs, (int, np.integer)) else list(runs)
    if not runs:
        raise ValueError("no runs given to load checkpoints from")
    out = []
    for run in runs:
        steps = store_lib.checkpoint_steps(store, int(run))
        if not steps:
            raise ValueError(
                f"run {run} kept no checkpoint; make the runs with produce_runs(..., "
                "checkpoint_steps=[...]) to use TracIn-CP"
            )
        for step in steps:
            ck = store_lib.load_checkpoint(store, int(run), step)
            out.append(Checkpoint(ck["step"], ck["trainable"], ck["learning_rate"], int(run)))
    return out


def group_by_step(checkpoints: Sequence[Checkpoint]) -> dict[int, list[Checkpoint]]:
    """``{step: checkpoints}`` in increasing step order; checks the rates agree per step."""
    if not checkpoints:
        raise ValueError("no checkpoints given")
    groups: dict[int, list[Checkpoint]] = {}
    for ck in checkpoints:
        if ck.step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {ck.step}")
        groups.setdefault(int(ck.step), []).append(ck)
    for step, cks in groups.items():
        rates = {float(c.learning_rate) for c in cks}
        if len(rates) > 1:
            raise ValueError(f"checkpoints at step {step} disagree on the learning rate: {rates}")
    return dict(sorted(groups.items()))


def checkpoint_dots(
    loss_fn: LossFn,
    checkpoints: Sequence[Checkpoint],
    frozen: Any,
    train_inputs,
    test_inputs,
    *,
    select: Select = None,
    chunk_size: int | None = 32,
    projection: Projection | None = None,
    dots_fn=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient dot products at every checkpoint.

    Args:
      loss_fn: ``loss_fn(theta, frozen, inputs) -> float32[B]``.
      checkpoints: from one or several runs; those at the same step are averaged.
      frozen: passed to ``loss_fn``.
      train_inputs, test_inputs: N and M examples (leaves ``[N, ...]``, ``[M, ...]``).
      select: which parameters enter (see ``per_example.param_mask``).
      chunk_size, projection: see ``per_example.gradient_dots``.
      dots_fn: optional compiled ``(theta, frozen) -> float32[N, M]`` to reuse (the
        ``GradientContext`` passes one so every checkpoint runs the same program).

    Returns:
      ``(steps int64[K], learning_rates float32[K], dots float32[K, N, M])``, K distinct
      steps in increasing order.
    """
    groups = group_by_step(checkpoints)
    if dots_fn is None:
        dots_fn = make_dots_fn(
            loss_fn,
            train_inputs,
            test_inputs,
            select=select,
            chunk_size=chunk_size,
            projection=projection,
        )
    dots = []
    for cks in groups.values():
        per_run = [np.asarray(dots_fn(ck.theta, frozen), np.float64) for ck in cks]
        dots.append(np.mean(per_run, axis=0))
    steps = np.asarray(list(groups), np.int64)
    rates = np.asarray([cks[0].learning_rate for cks in groups.values()], np.float32)
    return steps, rates, np.asarray(dots, np.float32)


def make_dots_fn(
    loss_fn: LossFn,
    train_inputs,
    test_inputs,
    *,
    select: Select = None,
    chunk_size: int | None = 32,
    projection: Projection | None = None,
):
    """A jitted ``dots(theta, frozen) -> float32[N, M]`` of gradient dot products.

    ``select`` splits ``theta`` into differentiated and fixed leaves on every call (the
    split is static structure, the values are arguments), so one compiled program serves
    every checkpoint of the same structure.
    """

    def dots(theta, frozen, train, test):
        r = restrict(loss_fn, theta, frozen, select=select)
        return gradient_dots(
            r.loss_fn, r.theta, r.frozen, train, test, chunk_size=chunk_size, projection=projection
        )

    compiled = jax.jit(dots)
    return lambda theta, frozen: compiled(theta, frozen, train_inputs, test_inputs)


def tracin_cp(dots: np.ndarray, learning_rates: np.ndarray) -> np.ndarray:
    """``float32[N, M]``: the summed TracIn-CP score ``sum_k eta_k dots[k]``."""
    dots = np.asarray(dots)
    rates = np.asarray(learning_rates, np.float64).reshape(-1)
    if dots.ndim != 3 or rates.shape != (dots.shape[0],):
        raise ValueError(
            f"need dots [K, N, M] and K learning rates, got {dots.shape} and {rates.shape}"
        )
    return np.einsum("k,knm->nm", rates, dots.astype(np.float64)).astype(np.float32)


def nearest_checkpoint(steps: Sequence[int], num_steps: int) -> np.ndarray:
    """``int32[T]``: for step ``t = 1..T``, the index of the checkpoint nearest ``t - 1``.

    The update of step t is taken from ``theta_{t-1}``; ties go to the earlier checkpoint.
    """
    steps = np.asarray(steps, np.int64).reshape(-1)
    if steps.size == 0:
        raise ValueError("no checkpoint steps")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"checkpoint steps must increase strictly, got {steps.tolist()}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    prev = np.arange(num_steps)[:, None]  # t - 1
    return np.argmin(np.abs(prev - steps[None, :]), axis=1).astype(np.int32)
