"""TRAK: random projections of per-example gradients, the after-kernel, an ensemble of models.

TRAK (Park et al., 2023, "TRAK: Attributing Model Behavior at Scale", arXiv 2303.14186)
linearises the model around its trained parameters, projects every per-example gradient to
``k`` dimensions with a random matrix ``P float32[p, k]`` and scores with the after-kernel of
the projected features. For one model, with ``phi(z) = P^T grad_theta f(z)``,
``Phi float32[N, k]`` the rows ``phi(z_i)`` of the training examples and ``Q`` the diagonal
of loss-over-output derivatives, the paper's score of training example ``i`` for ``z`` is

    tau(z)_i = phi(z)^T (Phi^T Phi)^{-1} Phi^T Q e_i,

and the ensemble estimate averages it over models (the paper averages the kernel part and
``Q`` separately; here the training side carries its own ``Q``, see below, so the average of
the per-model scores is the same estimator).

**The variant implemented**, for a simulator of test *losses* and any model of the protocol
(only ``per_example_loss`` is known, no separate output function):

    score[i, j] = g_test_j^T (Phi^T Phi + lambda I)^{-1} g_i           (train x test, [N, M])

with ``g = P^T grad_theta l(z)`` the projected *loss* gradient on both sides:

* **test side**: the simulator predicts the test loss, so the test feature is the gradient
  of the test loss (the paper scores an output function, the margin);
* **training side**: ``Phi^T Q e_i`` is the projected loss gradient of ``z_i`` up to sign,
  for the paper's margin ``f = log(p / (1 - p))`` and ``Q_ii = 1 - p_i`` (the derivative of
  ``l = -log p`` with respect to ``f`` is ``-(1 - p)``), so ``g_i`` is exactly the paper's
  training term for classification, and the natural one for any other loss;
* **kernel** ``Phi^T Phi``: ``output="loss"`` (default) uses the loss gradients,
  ``Phi_i = g_i`` (the projected empirical Fisher, summed over the pool); ``output="margin"``
  uses the paper's output-function gradients, obtained from the loss alone for a loss of
  the form ``l = -log p`` (classification cross-entropy; the summed token cross-entropy of a
  sequence, whose ``p`` is then the sequence's probability): ``grad f = -grad l / (1 - p)``
  with ``p = exp(-l)``, i.e. ``Phi_i = g_i / (1 - p_i)`` (``1 - p`` floored at ``1e-6``).

Signs follow ``simfluence_jax.gradients``: a positive score means ``z_i`` lowers the test
loss (TracIn's proponent; ``g_test^T K^{-1} g_i > 0`` when a gradient step on ``z_i`` moves
along ``-g_i`` and decreases the test loss in the kernel's metric). The kernel is the *sum*
over the N training examples, as in the paper, so a score estimates the effect of removing
``z_i`` in loss units (the leave-one-out effect of a Gauss-Newton step), not a per-step
change: as a simulator its raw magnitudes are not calibrated, like influence functions.

``lambda = ridge * trace(Phi^T Phi) / k`` (``ridge`` times the mean eigenvalue of the
kernel). The paper has no ridge (``k`` is far below ``N`` there); with a pool of a few
hundred examples and ``k = 1024`` the kernel is singular, and ``lambda > 0`` is needed. The
solve is exact, in float64, in the smaller of the two spaces: ``k x k`` (primal) or, when
``N < k``, ``N x N`` by ``(Phi^T Phi + lambda)^{-1} Phi^T = Phi^T (Phi Phi^T + lambda)^{-1}``.

**The ensemble** here: the models whose gradients are available, i.e. the checkpoints the
runs saved (the paper's cheaper variant of independently trained models: several
checkpoints of one run, or the final models of several runs when more runs kept
checkpoints), the latest first, at most ``ensemble_size`` of them. Model ``m`` uses its own
projection (seed ``seed + m``), so the ensemble also averages over projections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.gradients.per_example import (
    PROJECTIONS,
    LossFn,
    Projection,
    Select,
    map_chunks,
    per_example_grads,
    restrict,
)

OUTPUTS = ("loss", "margin")
#: Floor of ``1 - p`` in the margin weights ``1 / (1 - p)``.
MARGIN_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class TRAKConfig:
    """Options of TRAK (see the module docstring).

    Attributes:
      dim: projection dimension ``k``.
      projection: ``gaussian`` (dense JL, the paper's) or ``countsketch`` (sparse).
      seed: seed of the projection of model 0 (model ``m`` uses ``seed + m``).
      ridge: ``lambda`` relative to the mean eigenvalue of ``Phi^T Phi`` (``>= 0``).
      output: ``loss`` (kernel of loss gradients) or ``margin`` (the paper's kernel of
        output-function gradients, for losses ``-log p``).
      ensemble_size: at most this many models (latest checkpoints first); ``None``: all.
      select: parameters whose gradients are projected (``per_example.param_mask``).
      chunk_size: gradients alive at once.
    """

    dim: int = 1024
    projection: str = "gaussian"
    seed: int = 0
    ridge: float = 1e-3
    output: str = "loss"
    ensemble_size: int | None = None
    select: Select = None
    chunk_size: int | None = 32

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"TRAK needs dim >= 1, got {self.dim}")
        if self.projection not in PROJECTIONS:
            raise ValueError(
                f"unknown projection {self.projection!r}; known: {', '.join(PROJECTIONS)}"
            )
        if not (np.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"TRAK's ridge must be a finite number >= 0, got {self.ridge}")
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown TRAK output {self.output!r}; known: {', '.join(OUTPUTS)}")
        if self.ensemble_size is not None and self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1 or None, got {self.ensemble_size}")


def make_features_fn(loss_fn: LossFn, *, config: TRAKConfig):
    """A jitted ``features(theta, frozen, inputs, seed) -> (g float32[n, k], l float32[n])``:
    projected per-example loss gradients (projection of seed ``seed``) and the losses.

    The seed is an argument, so every model of an ensemble runs one compiled program.
    """

    def features(theta, frozen, inputs, seed):
        r = restrict(loss_fn, theta, frozen, select=config.select)
        projection = Projection(dim=config.dim, kind=config.projection, seed=seed)
        g = per_example_grads(
            r.loss_fn, r.theta, r.frozen, inputs, chunk_size=config.chunk_size,
            projection=projection,
        )  # fmt: skip
        losses = map_chunks(
            lambda rows: r.loss_fn(r.theta, r.frozen, rows), inputs, chunk_size=config.chunk_size
        )
        return g, losses

    return jax.jit(features)


def kernel_weights(losses: np.ndarray, output: str) -> np.ndarray:
    """``float64[n]``: the factor taking loss gradients to kernel rows (1, or ``1 / (1 - p)``
    with ``p = exp(-l)`` for ``output="margin"``)."""
    losses = np.asarray(losses, np.float64)
    if output == "loss":
        return np.ones_like(losses)
    if output != "margin":
        raise ValueError(f"unknown TRAK output {output!r}; known: {', '.join(OUTPUTS)}")
    if np.any(losses < 0):
        raise ValueError("output='margin' needs losses of the form -log p >= 0")
    return 1.0 / np.maximum(-np.expm1(-losses), MARGIN_FLOOR)


def after_kernel_scores(
    g_train: np.ndarray,
    g_test: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    ridge: float = 0.0,
) -> tuple[np.ndarray, float]:
    """``float64[N, M]``: ``g_test_j^T (Phi^T Phi + lambda I)^{-1} g_i`` with ``Phi_i = w_i g_i``.

    Args:
      g_train: ``[N, k]`` projected training gradients ``g_i``.
      g_test: ``[M, k]`` projected test gradients.
      weights: ``[N]`` kernel-row factors ``w_i`` (default 1).
      ridge: ``lambda / (trace(Phi^T Phi) / k)``.

    Returns:
      ``(scores, lambda)``. Raises ``ValueError`` if the damped kernel is singular.
    """
    G = np.asarray(g_train, np.float64)
    V = np.asarray(g_test, np.float64)
    N, k = G.shape
    w = np.ones(N) if weights is None else np.asarray(weights, np.float64)
    Phi = G * w[:, None]
    lam = float(ridge) * float(np.sum(Phi * Phi)) / k
    try:
        if k <= N:
            K = Phi.T @ Phi + lam * np.eye(k)
            X = np.linalg.solve(K, V.T)  # [k, M]
            scores = G @ X
        else:
            Kd = Phi @ Phi.T + lam * np.eye(N)
            scores = np.linalg.solve(Kd, Phi @ V.T) / w[:, None]
    except np.linalg.LinAlgError:
        raise ValueError(
            f"the TRAK kernel is singular (N={N}, k={k}, lambda={lam:g}); raise the ridge"
        ) from None
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"the TRAK solve is not finite (lambda={lam:g}); raise the ridge")
    return scores, lam


def trak_scores(
    loss_fn: LossFn,
    thetas: Sequence[Any],
    frozen: Any,
    train_inputs,
    test_inputs,
    *,
    config: TRAKConfig | None = None,
    features_fn=None,
) -> tuple[np.ndarray, dict]:
    """``float32[N, M]``: the TRAK score averaged over the models ``thetas``.

    Args:
      loss_fn: ``loss_fn(theta, frozen, inputs) -> float32[B]``.
      thetas: the ensemble (its first ``config.ensemble_size`` members are used).
      frozen: passed to ``loss_fn``.
      train_inputs, test_inputs: the pool (N) and test (M) examples.
      config: a :class:`TRAKConfig` (default ``TRAKConfig()``).
      features_fn: optional result of :func:`make_features_fn` to reuse.

    Returns:
      ``(scores, info)``; ``info`` holds the models used and each model's ``lambda``.
    """
    config = TRAKConfig() if config is None else config
    thetas = list(thetas)
    if not thetas:
        raise ValueError("TRAK needs at least one model")
    if config.ensemble_size is not None:
        thetas = thetas[: config.ensemble_size]
    features = make_features_fn(loss_fn, config=config) if features_fn is None else features_fn
    total, lams = None, []
    for m, theta in enumerate(thetas):
        seed = jnp.int32(config.seed + m)
        g_train, losses = features(theta, frozen, train_inputs, seed)
        g_test, _ = features(theta, frozen, test_inputs, seed)
        w = kernel_weights(np.asarray(losses), config.output)
        scores, lam = after_kernel_scores(
            np.asarray(g_train), np.asarray(g_test), weights=w, ridge=config.ridge
        )
        total = scores if total is None else total + scores
        lams.append(lam)
    info = {"models": len(thetas), "lambda": lams, "dim": config.dim, "output": config.output}
    return (total / len(thetas)).astype(np.float32), info


__all__ = ["TRAKConfig", "after_kernel_scores", "kernel_weights", "make_features_fn", "trak_scores"]
