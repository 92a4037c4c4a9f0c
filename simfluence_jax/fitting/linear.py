"""The fitters of the Simfluence-Linear family and the controls (their names, groups and
docs are declared with their classes in ``simulators/linear.py``).

``linear``, ``additive``, ``multiplicative`` and ``shuffled`` are ridge fits
(``ridge.ridge_fit``), optionally with the optimizer kernel's rows (``momentum``,
``lr_scaled``); ``linear`` with ``kernel="filter"`` hands over to ``filter_fit``.
``constant``, ``mean`` and ``shuffled`` are controls.
"""

from __future__ import annotations

import numpy as np

from simfluence_jax.fitting.ridge import ALPHA_FORMS, ridge_fit
from simfluence_jax.simulators.linear import LinearSimulator, MeanSimulator


def fit_linear(
    runs, *, l2=None, validation=None, solver="auto", mesh=None, alpha="sum", momentum=0.0,
    lr_scaled=False, dtype=np.float32, prior=None, kernel="momentum", filter_length=None,
    filter_init=None,
):  # fmt: skip
    """Simfluence-Linear with the optimizer kernel: alpha_t = alpha0 + s_t A . x_t,
    beta_t = s_t B . x_t, x_t = mu x_{t-1} + m(c_t); fitted by ridge.

    ``momentum``: mu in [0, 1), a sequence of candidates, or ``"auto"`` (``MOMENTUM_GRID``,
    chosen with l2 on ``validation``); ``lr_scaled``: scale effects by ``eta_t / eta_ref``;
    ``prior``: a ``LinearSimulator`` whose (A, B) the ridge shrinks toward instead of 0
    (e.g. calibrated gradient scores written as Linear parameters).
    ``kernel="filter"``: x_t = sum_k h[k] m(c_{t-k}) with a learned causal filter of
    ``filter_length`` K (``filter_fit``; ``filter_init`` its start), a ``FilterSimulator``.
    """
    if alpha not in ALPHA_FORMS:
        raise ValueError(f"unknown alpha form {alpha!r}; known: {', '.join(ALPHA_FORMS)}")
    if kernel != "momentum" or filter_length is not None or filter_init is not None:
        from simfluence_jax import filter_fit  # imports this package, so not at the top

        return filter_fit.fit_linear_kernel_filter(
            runs, kernel=kernel, momentum=momentum, prior=prior, solver=solver, l2=l2,
            validation=validation, mesh=mesh, alpha=alpha, lr_scaled=lr_scaled, dtype=dtype,
            filter_length=filter_length, filter_init=filter_init,
        )  # fmt: skip
    name = "linear" if alpha == "sum" else "linear_one_plus_sum"
    return ridge_fit(
        runs, name=name, alpha0=ALPHA_FORMS[alpha], use_A=True, use_B=True, l2=l2,
        validation=validation, solver=solver, mesh=mesh, momentum=momentum,
        lr_scaled=lr_scaled, dtype=dtype, prior=prior,
    )  # fmt: skip


def fit_linear_kernel(
    runs, *, l2=None, validation=None, solver="auto", mesh=None, alpha=None, momentum="auto",
    lr_scaled=None, dtype=np.float32,
):  # fmt: skip
    """Simfluence-Linear with the optimizer kernel: mu chosen with l2 on the validation runs
    (``momentum="auto"``), effects scaled by the learning rate when the runs carry their
    learning rates (``lr_scaled=None``), in the ``one_plus_sum`` form when scaled.

    The scale multiplies alpha's per-example part too, so in the plain-sum form
    (alpha_t = s_t A . x_t) a step with a zero learning rate (the first step of a linear
    warm-up) would send the simulated loss to zero; with ``alpha_t = 1 + s_t A . x_t`` it
    leaves the loss unchanged, as the optimizer does.
    """
    if lr_scaled is None:
        lr_scaled = runs.learning_rates is not None and (
            validation is None or validation.learning_rates is not None
        )
    if alpha is None:
        alpha = "one_plus_sum" if lr_scaled else "sum"
    sim = fit_linear(
        runs, l2=l2, validation=validation, solver=solver, mesh=mesh, alpha=alpha,
        momentum=momentum, lr_scaled=lr_scaled, dtype=dtype,
    )  # fmt: skip
    return sim.replace(name="linear_kernel")


def _special_case(name: str, doc: str, *, alpha0: float, use_A: bool, use_B: bool):
    """The ridge fitter of a special case of Linear: a fixed alpha0 and only A or only B."""

    def fit(
        runs, *, l2=None, validation=None, solver="auto", mesh=None, momentum=0.0,
        lr_scaled=False, dtype=np.float32,
    ):  # fmt: skip
        return ridge_fit(
            runs, name=name, alpha0=alpha0, use_A=use_A, use_B=use_B, l2=l2,
            validation=validation, solver=solver, mesh=mesh, momentum=momentum,
            lr_scaled=lr_scaled, dtype=dtype,
        )  # fmt: skip

    fit.__name__ = fit.__qualname__ = f"fit_{name}"
    fit.__doc__ = doc
    return fit


fit_additive = _special_case(
    "additive", "Additive (TracIn-like): L_t = L_{t-1} + s_t B . x_t.",
    alpha0=1.0, use_A=False, use_B=True,
)  # fmt: skip
fit_multiplicative = _special_case(
    "multiplicative", "Multiplicative: L_t = (s_t A . x_t) L_{t-1}.",
    alpha0=0.0, use_A=True, use_B=False,
)  # fmt: skip


def fit_constant(runs, *, validation=None, mesh=None):
    """Control: L^_t = L_0 for every curriculum."""
    del validation, mesh
    zeros = np.zeros((runs.num_test, runs.num_train), np.float32)
    return LinearSimulator(A=zeros, B=zeros, seen=np.ones(runs.num_train, bool), alpha0=1.0,
                           name="constant")  # fmt: skip


def fit_mean(runs, *, validation=None, mesh=None):
    """Control: the mean per-step change over the fitting runs, ignoring the curriculum."""
    del validation, mesh
    delta = np.diff(runs.losses, axis=1).mean(axis=0).T  # [M, T]
    return MeanSimulator(delta=delta.astype(np.float32))


def fit_shuffled(
    runs, *, seed: int = 0, l2=None, validation=None, solver="auto", mesh=None, alpha="sum",
    momentum=0.0, lr_scaled=False,
):  # fmt: skip
    """Control: Linear with its fitted (A_i, B_i) permuted across the training ids it saw.

    If this control does as well as Linear, per-example information is not being used.
    """
    sim = fit_linear(
        runs, l2=l2, validation=validation, solver=solver, mesh=mesh, alpha=alpha,
        momentum=momentum, lr_scaled=lr_scaled,
    )  # fmt: skip
    seen = np.flatnonzero(np.asarray(sim.seen))
    perm = np.arange(sim.num_train)
    perm[seen] = np.random.default_rng(seed).permutation(seen)
    A, B = np.asarray(sim.A)[:, perm], np.asarray(sim.B)[:, perm]
    return sim.replace(A=A, B=B, name="shuffled")


def fit_linear_one_plus_sum(
    runs, *, l2=None, validation=None, solver="auto", mesh=None, momentum=0.0, lr_scaled=False,
    dtype=np.float32, prior=None,
):  # fmt: skip
    """Simfluence-Linear in the ``one_plus_sum`` form: alpha = 1 + sum A_i."""
    return fit_linear(
        runs, l2=l2, validation=validation, solver=solver, mesh=mesh, alpha="one_plus_sum",
        momentum=momentum, lr_scaled=lr_scaled, dtype=dtype, prior=prior,
    )  # fmt: skip
