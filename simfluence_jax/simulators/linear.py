"""Simfluence-Linear, its optimizer kernel and its special cases as one index-based simulator.

For one test example, with per-training-example parameters ``A, B: float32[N]``
(Guu et al., 2023, arXiv 2303.08114, section 4) and ``m(c_t)`` the count vector of the
batch of step t (an id repeated in a batch counts twice, ``-1`` padding zero times), the
optimizer kernel of docs/design.md ("The optimizer kernel") filters the counts the way a
momentum buffer filters gradients:

    x_t = mu x_{t-1} + m(c_t),   x_0 = 0
    alpha_t = alpha0 + s_t A . x_t,     beta_t = s_t B . x_t
    L_t = alpha_t L_{t-1} + beta_t

with ``s_t = eta_t / eta_ref`` when the simulator is ``lr_scaled`` (``eta_ref`` the largest
learning rate of the fitting runs) and 1 otherwise. ``mu = 0`` and ``s_t = 1`` is the
paper's Simfluence-Linear exactly. Only ``A . x_t`` and ``B . x_t`` are needed, so the state
of the rollout is the pair ``(a_t, b_t) = (A . x_t, B . x_t)``, updated as
``a_t = mu a_{t-1} + A . m(c_t)``.

``alpha0 = 0`` is the plain-sum form the paper and GPTfluence use; ``alpha0 = 1`` is the
``one_plus_sum`` form, under which ridge shrinkage pulls towards "no change".

Special cases (all the same class, different fitted parameters):

* Additive (TracIn-like): ``alpha0 = 1``, ``A = 0``: L_t = L_{t-1} + s_t B . x_t;
* Multiplicative: ``alpha0 = 0``, ``B = 0``;
* constant control: ``alpha0 = 1``, ``A = B = 0``: L^_t = L_0.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from simfluence_jax.simulators.base import AffineSimulator, simulator_dataclass, static_field
from simfluence_jax.simulators.fitter import Fitter


class PairEffects:
    """What the simulators with per-pair ``A, B: float32[M, N]``, a ``seen: bool[N]`` mask and
    an optional learning-rate scale share (``LinearSimulator``, ``FilterSimulator``): the
    accessors of ``Simulator`` and ``count_effects`` when the step has no memory of earlier
    batches (``memoryless``) and no scale."""

    @property
    def memoryless(self) -> bool:
        """Whether step t depends on the batch of step t only."""
        raise NotImplementedError

    @property
    def lr_reference(self):
        return self.lr_ref if self.lr_scaled else None

    def seen_ids(self):
        return self.seen

    def restrict(self, tests):
        return self.replace(A=jnp.asarray(self.A)[tests], B=jnp.asarray(self.B)[tests])

    def count_effects(self):
        if not self.memoryless or self.lr_scaled:
            return None
        return float(self.alpha0), jnp.asarray(self.A), jnp.asarray(self.B)


@simulator_dataclass
class LinearSimulator(PairEffects, AffineSimulator):
    """Index-based Simfluence-Linear family with the optimizer kernel.

    Attributes:
      A: ``float32[M, N]`` multiplicative parameters per (test, train) pair.
      B: ``float32[M, N]`` additive parameters per (test, train) pair.
      seen: ``bool[N]`` training ids that occurred in the fitting runs.
      momentum: the kernel's ``mu`` in ``[0, 1)``; 0 is the paper's form.
      lr_ref: ``eta_ref`` of ``s_t = eta_t / eta_ref``; ``nan`` unless ``lr_scaled``.
      l2: the ridge strength it was fitted with (``nan`` if not fitted by ridge).
      alpha0: 0.0 (plain sum) or 1.0 (``one_plus_sum``, additive).
      lr_scaled: whether the step's learning-rate scale multiplies the effects.
      name: registry name of the simulator that produced it.
    """

    A: jax.Array
    B: jax.Array
    seen: jax.Array
    momentum: float = 0.0
    lr_ref: float = math.nan
    l2: float = math.nan
    alpha0: float = static_field(0.0)
    lr_scaled: bool = static_field(False)
    name: str = static_field("linear")

    ARRAY_SHAPES: ClassVar[dict[str, tuple]] = {
        "A": ("f", ("M", "N")),
        "B": ("f", ("M", "N")),
        "seen": ("b", ("N",)),
    }

    def per_test(self):
        M = jnp.shape(self.A)[0]
        return (self.A, self.B, jnp.full((M,), self.momentum, jnp.float32))

    def init_state(self, p, L0):
        zero = jnp.zeros((), jnp.float32)
        return (zero, zero)

    def affine_step(self, p, state, ids, w, t, s):
        A, B, mu = p
        a = mu * state[0] + jnp.sum(A[ids] * w)
        b = mu * state[1] + jnp.sum(B[ids] * w)
        return (a, b), self.alpha0 + s * a, s * b

    @property
    def memoryless(self) -> bool:
        return float(self.momentum) == 0.0


@simulator_dataclass
class MeanSimulator(AffineSimulator):
    """Control that ignores the curriculum: the mean trajectory of the fitting runs.

    L^_t = L^_{t-1} + delta_t, with delta_t the mean over fitting runs of L_t - L_{t-1}
    (so L^_t = L_0 + mean change up to t). Steps past the fitted length add nothing.

    Attributes:
      delta: ``float32[M, T_fit]`` mean per-step change of each test example.
    """

    delta: jax.Array
    name: str = static_field("mean")

    ARRAY_SHAPES: ClassVar[dict[str, tuple]] = {"delta": ("f", ("M", "T"))}

    def per_test(self):
        return self.delta

    def affine_step(self, p, state, ids, w, t, s):
        T_fit = p.shape[0]
        beta = jnp.where(t <= T_fit, p[jnp.clip(t - 1, 0, T_fit - 1)], 0.0)
        return state, jnp.float32(1.0), beta

    def restrict(self, tests):
        return self.replace(delta=jnp.asarray(self.delta)[tests])


def _fitting(attr: str, **record) -> Fitter:
    """A fitter of ``fitting.linear`` (referenced by name: ``fitting`` imports this module)."""
    return Fitter(f"simfluence_jax.fitting.linear:{attr}", **record)


EXTENSIONS = {
    "simulator class": {"LinearSimulator": LinearSimulator, "MeanSimulator": MeanSimulator},
    "simulator": {
        "linear": _fitting("fit_linear", doc="Simfluence-Linear with the optimizer kernel"),
        "linear_kernel": _fitting(
            "fit_linear_kernel", doc="Linear with mu chosen on validation runs, lr-scaled"
        ),
        "linear_one_plus_sum": _fitting(
            "fit_linear_one_plus_sum", doc="Linear in the one_plus_sum form: alpha = 1 + sum A_i"
        ),
        "linear_metagradient": Fitter(
            "simfluence_jax.metagradient_fit:fit_linear_metagradients",
            inputs=("metagradients",),
            doc="Linear fitted to the runs' trajectories and their exact metagradients",
        ),
        "additive": _fitting("fit_additive", doc="additive (TracIn-like): A = 0"),
        "multiplicative": _fitting("fit_multiplicative", doc="multiplicative: B = 0"),
        "constant": _fitting("fit_constant", group="control", doc="control: L_t = L_0"),
        "mean": _fitting(
            "fit_mean", group="control", doc="control: the mean change, ignoring the curriculum"
        ),
        "shuffled": _fitting(
            "fit_shuffled", group="control", doc="control: Linear's (A_i, B_i) permuted"
        ),
    },
}
