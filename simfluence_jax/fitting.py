"""Fitting simulators from logged runs, with l2 (and the kernel's mu) chosen on validation runs.

``fit_simulator(name, runs, ...)`` looks the name up in ``SIMULATORS`` and returns a fitted
simulator (a pytree). The ridge-based ones (``linear``, ``additive``, ``multiplicative``,
``shuffled``) solve the teacher-forced regression of docs/design.md ("Fitting") exactly,
optionally with the optimizer kernel's rows (``momentum``, ``lr_scaled``). When several l2
values are given (or ``l2=None`` with validation runs) the whole l2 path is solved at once
(the normal equations are shared) and the value whose rollout on the validation runs has the
lowest all-steps MSE wins (not the one-step error, which rewards fits that drift when fed
their own predictions). ``momentum="auto"`` does the same over a grid of mu, so the choice
costs one solve of the l2 path per mu.

``SIMULATORS`` is the only source of simulators: importing ``simfluence_jax`` registers every
fitter, those that need the training stack (gradient baselines, the featurized simulator) as
``LazyFitter`` entries that import their module on first use. Every fitter declares its
keywords and the inputs it needs beyond the runs (``gradients``, ``features``) and its report
group; ``fit_simulator`` rejects unknown keywords by name, and ``fit_all`` passes each fitter
only the keywords it declares and names a missing input.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Sequence

import numpy as np

from simfluence_jax import metrics
from simfluence_jax.registry import Registry
from simfluence_jax.rollout import rollout, teacher_forced
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.linear import LinearSimulator, MeanSimulator
from simfluence_jax.solvers import RidgeProblem, solve_ridge, solve_ridge_grid

SIMULATORS: Registry[Callable[..., object]] = Registry("simulator")

#: l2 used when neither l2 nor validation runs are given.
DEFAULT_L2 = 1e-2
#: l2 grid searched when validation runs are given and l2 is None.
DEFAULT_L2_GRID = tuple(float(x) for x in np.logspace(-4, 2, 7))
#: mu grid searched by ``momentum="auto"``: 0, 0.05, ..., 0.95.
MOMENTUM_GRID = tuple(round(0.05 * k, 2) for k in range(20))
#: Most bytes of candidate parameters a (mu, l2) grid holds at once; larger grids are
#: solved in chunks of mu values.
GRID_CHUNK_BYTES = 256 * 1024**2

ALPHA_FORMS = {"sum": 0.0, "one_plus_sum": 1.0}


def rollout_mse(sim, runs: RunSet, *, mesh=None) -> float:
    """All-steps MSE of ``sim``'s rollout on ``runs`` (inf if it diverges)."""
    pred = np.asarray(
        rollout(sim, runs.batches, runs.L0, learning_rates=runs.learning_rates, mesh=mesh)
    )
    if not np.all(np.isfinite(pred)):
        return float("inf")
    with np.errstate(over="ignore", invalid="ignore"):
        mse = metrics.all_steps_mse(pred, runs.losses)[0]
    return mse if np.isfinite(mse) else float("inf")


def path_mse(sims: LinearSimulator, K: int, runs: RunSet, *, mesh=None) -> np.ndarray:
    """``float[K]`` all-steps validation MSE of K Linear simulators stacked along the test
    axis (``A: [K*M, N]``), rolled out together in one call (inf where one diverges).

    The rollout runs in float32, so float64 fits are scored with their parameters rounded
    to float32."""
    M = runs.num_test
    sims = sims.replace(A=np.asarray(sims.A, np.float32), B=np.asarray(sims.B, np.float32))
    L0 = np.tile(runs.L0, (1, K))
    pred = np.asarray(
        rollout(sims, runs.batches, L0, learning_rates=runs.learning_rates, mesh=mesh)
    )
    pred = pred.reshape(pred.shape[:2] + (K, M))
    with np.errstate(over="ignore", invalid="ignore"):
        err = (pred[:, 1:] - runs.losses[:, 1:, None, :]) ** 2
        mse = np.mean(err, axis=(0, 1, 3))
    finite = np.all(np.isfinite(pred), axis=(0, 1, 3))
    return np.where(finite & np.isfinite(mse), mse, np.inf)


def _l2_grid(l2, validation) -> np.ndarray:
    if l2 is None:
        l2 = DEFAULT_L2_GRID if validation is not None else DEFAULT_L2
    grid = np.atleast_1d(np.asarray(l2, np.float64))
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"l2 must be a float or a non-empty 1-D sequence, got {l2!r}")
    if not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ValueError(f"every l2 must be a finite number > 0, got {grid.tolist()}")
    if grid.size > 1 and validation is None:
        raise ValueError(f"{grid.size} l2 values given but no validation runs to choose among them")
    return grid


def _momentum_grid(momentum, validation) -> np.ndarray:
    if isinstance(momentum, str):
        if momentum != "auto":
            raise ValueError(f"momentum must be a number in [0, 1) or 'auto', got {momentum!r}")
        if validation is None:
            raise ValueError("momentum='auto' chooses mu on validation runs; pass validation=")
        return np.asarray(MOMENTUM_GRID)
    grid = np.atleast_1d(np.asarray(momentum, np.float64))
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError(f"momentum must be a number in [0, 1) or 'auto', got {momentum!r}")
    if np.any(grid < 0) or np.any(grid >= 1):
        raise ValueError(f"momentum must lie in [0, 1), got {grid.tolist()}")
    if grid.size > 1 and validation is None:
        raise ValueError(f"{grid.size} momentum values given but no validation runs")
    return grid


def _check_prior(prior, runs: RunSet, use_A: bool, use_B: bool):
    """A prior mean for (A, B): a ``LinearSimulator`` over the same pool and test examples."""
    if prior is None:
        return None
    if not isinstance(prior, LinearSimulator):
        raise ValueError(f"prior must be a LinearSimulator, got {type(prior).__name__}")
    shape = (runs.num_test, runs.num_train)
    if np.shape(prior.A) != shape or np.shape(prior.B) != shape:
        raise ValueError(f"prior A and B must have shape [M, N] = {list(shape)}")
    A = np.asarray(prior.A, np.float32) if use_A else np.zeros(shape, np.float32)
    B = np.asarray(prior.B, np.float32) if use_B else np.zeros(shape, np.float32)
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
        raise ValueError("prior A and B must be finite")
    return prior.replace(A=A, B=B)


def _lr_reference(runs: RunSet, validation: RunSet | None) -> float:
    for what, rs in (("fitting", runs), ("validation", validation)):
        if rs is not None and rs.learning_rates is None:
            raise ValueError(
                f"lr_scaled=True needs the learning rates of the {what} runs "
                "(RunSet.learning_rates is None)"
            )
    ref = float(np.max(runs.learning_rates))
    if not ref > 0:
        raise ValueError("lr_scaled=True needs a positive learning rate in the fitting runs")
    return ref


def _ridge_fit(
    runs: RunSet,
    *,
    name: str,
    alpha0: float,
    use_A: bool,
    use_B: bool,
    l2,
    validation: RunSet | None,
    solver: str,
    mesh,
    momentum=0.0,
    lr_scaled: bool = False,
    dtype=np.float32,
    prior: LinearSimulator | None = None,
) -> LinearSimulator:
    grid = _l2_grid(l2, validation)
    mus = _momentum_grid(momentum, validation)
    if not isinstance(lr_scaled, bool):
        raise ValueError(f"lr_scaled must be True or False, got {lr_scaled!r}")
    lr_ref = _lr_reference(runs, validation) if lr_scaled else None
    base = RidgeProblem.from_runs(runs, alpha0=alpha0, use_A=use_A, use_B=use_B, lr_ref=lr_ref)
    if np.dtype(dtype) != np.float32:
        base = base.astype(dtype)
    seen = runs.used_ids()
    common = dict(seen=seen, alpha0=alpha0, name=name, lr_scaled=lr_scaled)
    if lr_scaled:
        common["lr_ref"] = lr_ref
    prior = _check_prior(prior, runs, use_A, use_B)
    if len(grid) * len(mus) == 1:
        A, B = next(_candidates(base, grid, mus, runs, prior, solver=solver, mesh=mesh,
                                alpha0=alpha0, lr_scaled=lr_scaled, lr_ref=lr_ref))[1:]  # fmt: skip
        return LinearSimulator(A=A[0], B=B[0], momentum=float(mus[0]), l2=float(grid[0]), **common)
    best, best_score = None, np.inf
    for mu, A, B in _candidates(base, grid, mus, runs, prior, solver=solver, mesh=mesh,
                                alpha0=alpha0, lr_scaled=lr_scaled, lr_ref=lr_ref):  # fmt: skip
        K, M, N = A.shape
        stacked = LinearSimulator(
            A=np.asarray(A).reshape(K * M, N), B=np.asarray(B).reshape(K * M, N),
            momentum=mu, **common,
        )  # fmt: skip
        scores = path_mse(stacked, K, validation, mesh=mesh)
        k = int(np.argmin(scores))
        if scores[k] < best_score:
            best_score = scores[k]
            best = LinearSimulator(A=A[k], B=B[k], momentum=mu, l2=float(grid[k]), **common)
    if best is None:
        raise ValueError(
            f"every l2 in {grid.tolist()} (momentum {mus.tolist()}) gives a diverging rollout "
            "on validation runs"
        )
    return best


def _candidates(base, grid, mus, runs, prior, *, solver, mesh, alpha0, lr_scaled, lr_ref):
    """Yields ``(mu, A [K, M, N], B [K, M, N])`` for every mu of ``mus``, the whole l2 path
    of each.

    Without a prior and with several mu, the grid is solved by ``solve_ridge_grid`` (the
    direct solver shares across mu what does not depend on it, in one compiled loop over
    mu), in chunks of at most ``GRID_CHUNK_BYTES`` of parameters. With a prior the target
    depends on mu, so each mu is its own solve (CG warm-started from the previous mu).
    """
    if prior is None and len(mus) > 1:
        K, M, P = len(grid), base.num_test, base.num_unknowns
        per_mu = K * M * max(P, 1) * np.dtype(base.Lp.dtype).itemsize
        size = int(max(1, min(len(mus), GRID_CHUNK_BYTES // per_mu)))
        for start in range(0, len(mus), size):
            chunk = mus[start : start + size]
            # Pad the last chunk with its last mu: one compiled shape for every chunk.
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk))])
            A, B, _ = solve_ridge_grid(base, grid, padded, solver=solver, mesh=mesh)
            for i, mu in enumerate(chunk):
                yield float(mu), A[i], B[i]
        return
    x0 = None
    for mu in mus:
        problem = base.with_kernel(float(mu), base.scales)
        if prior is not None:
            # Shrink toward the prior: solve for theta - theta0 against y - X theta0.
            p0 = prior.replace(momentum=float(mu), alpha0=alpha0, lr_scaled=lr_scaled,
                               lr_ref=lr_ref if lr_scaled else np.nan)  # fmt: skip
            X_theta0 = teacher_forced(p0, runs) - alpha0 * runs.losses[:, :-1]  # [R, T, M]
            y = problem.y - np.transpose(X_theta0, (2, 1, 0)).astype(problem.y.dtype)
            problem = dataclasses.replace(problem, y=y)
        A, B, info = solve_ridge(problem, grid, solver=solver, mesh=mesh, x0=x0)
        if info["solver"] == "cg":
            # Every l2 of the next mu starts from this mu's solution at the same l2.
            parts = ([A] if base.use_A else []) + ([B] if base.use_B else [])
            x0 = np.concatenate([np.asarray(p) for p in parts], axis=-1)
        if prior is not None:
            A, B = A + np.asarray(prior.A)[None], B + np.asarray(prior.B)[None]
        yield float(mu), A, B


def _check_runs(runs, validation):
    if not isinstance(runs, RunSet):
        raise ValueError(f"runs must be a RunSet, got {type(runs).__name__}")
    if validation is not None:
        if not isinstance(validation, RunSet):
            raise ValueError(f"validation must be a RunSet, got {type(validation).__name__}")
        if validation.num_test != runs.num_test or validation.num_train != runs.num_train:
            raise ValueError(
                f"validation runs (N={validation.num_train}, M={validation.num_test}) do not "
                f"match the fitting runs (N={runs.num_train}, M={runs.num_test})"
            )


@SIMULATORS.register("linear")
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
        from simfluence_jax import filter_fit  # imports this module, so not at the top

        return filter_fit.fit_linear_kernel_filter(
            runs, kernel=kernel, momentum=momentum, prior=prior, solver=solver, l2=l2,
            validation=validation, mesh=mesh, alpha=alpha, lr_scaled=lr_scaled, dtype=dtype,
            filter_length=filter_length, filter_init=filter_init,
        )  # fmt: skip
    name = "linear" if alpha == "sum" else "linear_one_plus_sum"
    return _ridge_fit(
        runs, name=name, alpha0=ALPHA_FORMS[alpha], use_A=True, use_B=True, l2=l2,
        validation=validation, solver=solver, mesh=mesh, momentum=momentum,
        lr_scaled=lr_scaled, dtype=dtype, prior=prior,
    )  # fmt: skip


@SIMULATORS.register("linear_kernel")
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


@SIMULATORS.register("additive")
def fit_additive(
    runs, *, l2=None, validation=None, solver="auto", mesh=None, momentum=0.0, lr_scaled=False,
    dtype=np.float32,
):  # fmt: skip
    """Additive (TracIn-like): L_t = L_{t-1} + s_t B . x_t."""
    return _ridge_fit(
        runs, name="additive", alpha0=1.0, use_A=False, use_B=True, l2=l2,
        validation=validation, solver=solver, mesh=mesh, momentum=momentum,
        lr_scaled=lr_scaled, dtype=dtype,
    )  # fmt: skip


@SIMULATORS.register("multiplicative")
def fit_multiplicative(
    runs, *, l2=None, validation=None, solver="auto", mesh=None, momentum=0.0, lr_scaled=False,
    dtype=np.float32,
):  # fmt: skip
    """Multiplicative: L_t = (s_t A . x_t) L_{t-1}."""
    return _ridge_fit(
        runs, name="multiplicative", alpha0=0.0, use_A=True, use_B=False, l2=l2,
        validation=validation, solver=solver, mesh=mesh, momentum=momentum,
        lr_scaled=lr_scaled, dtype=dtype,
    )  # fmt: skip


@SIMULATORS.register("constant")
def fit_constant(runs, *, validation=None, mesh=None):
    """Control: L^_t = L_0 for every curriculum."""
    del validation, mesh
    zeros = np.zeros((runs.num_test, runs.num_train), np.float32)
    return LinearSimulator(A=zeros, B=zeros, seen=np.ones(runs.num_train, bool), alpha0=1.0,
                           name="constant")  # fmt: skip


@SIMULATORS.register("mean")
def fit_mean(runs, *, validation=None, mesh=None):
    """Control: the mean per-step change over the fitting runs, ignoring the curriculum."""
    del validation, mesh
    delta = np.diff(runs.losses, axis=1).mean(axis=0).T  # [M, T]
    return MeanSimulator(delta=delta.astype(np.float32))


@SIMULATORS.register("shuffled")
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


@SIMULATORS.register("linear_one_plus_sum")
def fit_linear_one_plus_sum(
    runs, *, l2=None, validation=None, solver="auto", mesh=None, momentum=0.0, lr_scaled=False,
    dtype=np.float32, prior=None,
):  # fmt: skip
    """Simfluence-Linear in the ``one_plus_sum`` form: alpha = 1 + sum A_i."""
    return fit_linear(
        runs, l2=l2, validation=validation, solver=solver, mesh=mesh, alpha="one_plus_sum",
        momentum=momentum, lr_scaled=lr_scaled, dtype=dtype, prior=prior,
    )  # fmt: skip


fit_constant.group = fit_mean.group = fit_shuffled.group = "control"


@dataclasses.dataclass(frozen=True)
class LazyFitter:
    """A registry entry whose fitter lives in a module that needs the training stack (or
    that imports this one: the filter kernel's ``filter_fit``).

    ``module.attr(*args)`` is the fitter; it is imported on first use, so the registry lists
    every simulator while ``import simfluence_jax`` needs only JAX and NumPy.

    Attributes:
      module, attr, args: where the fitter is (``attr`` is the fitter, or a factory of it
        when ``args`` are given).
      inputs: keywords the fitter cannot do without (``gradients``, ``features``).
      group: the report group (``fitted``, ``control``, ``gradient baseline (raw)``, ...).
      doc: one line for listings.
    """

    module: str
    attr: str
    args: tuple = ()
    inputs: tuple[str, ...] = ()
    group: str = "fitted"
    doc: str = ""

    def load(self) -> Callable[..., object]:
        obj = getattr(importlib.import_module(self.module), self.attr)
        return obj(*self.args) if self.args else obj

    def __call__(self, runs, **kwargs):
        return self.load()(runs, **kwargs)

    @property
    def requires_gradients(self) -> bool:
        return "gradients" in self.inputs


#: The gradient baselines (``simfluence_jax.gradients.baselines``), each raw and calibrated.
GRADIENT_BASELINES = ("tracin_cp", "tracin_cp_summed", "grad_dot", "influence", "trak", "ekfac")
CALIBRATED_SUFFIX = "_calibrated"

for _name in GRADIENT_BASELINES:
    for _calibrated in (False, True):
        SIMULATORS.register(_name + (CALIBRATED_SUFFIX if _calibrated else ""))(
            LazyFitter(
                "simfluence_jax.gradients.baselines", "make_fitter", args=(_name, _calibrated),
                inputs=("gradients",),
                group=f"gradient baseline ({'calibrated' if _calibrated else 'raw'})",
                doc=f"{_name} ({'calibrated' if _calibrated else 'raw'}); needs gradients=",
            )
        )  # fmt: skip
SIMULATORS.register("linear_filter")(
    LazyFitter(
        "simfluence_jax.filter_fit", "fit_linear_filter",
        doc="Linear with a learned causal filter of the batch counts (the filter kernel)",
    )
)  # fmt: skip
SIMULATORS.register("featurized")(
    LazyFitter(
        "simfluence_jax.featurized_fit", "fit_featurized", inputs=("features",),
        group="featurized", doc="(A, B) from frozen embeddings; needs features=",
    )
)  # fmt: skip


def _fitter_function(name: str) -> Callable[..., object]:
    fit = SIMULATORS.get(name)
    return fit.load() if isinstance(fit, LazyFitter) else fit


def accepted_keywords(name: str) -> frozenset[str]:
    """The keyword arguments the fitter registered as ``name`` declares."""
    params = inspect.signature(_fitter_function(name)).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def required_inputs(name: str) -> tuple[str, ...]:
    """What the fitter ``name`` needs besides the runs (e.g. ``("gradients",)``)."""
    return tuple(getattr(SIMULATORS.get(name), "inputs", ()))


def simulator_group(name: str) -> str:
    """The report group of a simulator name (``fitted`` unless its fitter declares another,
    or the name is not registered)."""
    if name not in SIMULATORS:
        return "fitted"
    return getattr(SIMULATORS.get(name), "group", "fitted")


def fit_simulator(name: str, runs: RunSet, *, validation: RunSet | None = None, **kwargs):
    """Fits the simulator registered as ``name`` on ``runs``.

    Args:
      name: one of ``SIMULATORS.names()`` (``linear``, ``additive``, ``multiplicative``,
        ``constant``, ``mean``, ``shuffled``, ...).
      runs: the fitting runs.
      validation: runs to choose l2 on (rollout all-steps MSE).
      **kwargs: the fitter's own keywords (``accepted_keywords(name)``), e.g. ``l2``
        (float, sequence, or None for the default), ``solver`` (``auto``, ``direct``,
        ``cg``, ``dual``), ``mesh`` (shard test examples), ``alpha`` (``sum`` or
        ``one_plus_sum``), ``momentum`` (mu, a sequence or ``"auto"``), ``lr_scaled``,
        ``seed`` (shuffled only). Unknown keywords are a ``ValueError`` naming them.

    Returns:
      A fitted simulator pytree; ridge-based ones record their chosen ``l2``.
    """
    fit = SIMULATORS.get(name)
    _check_runs(runs, validation)
    missing = [k for k in required_inputs(name) if kwargs.get(k) is None]
    if missing:
        raise ValueError(
            f"simulator {name!r} needs {', '.join(f'{k}=' for k in missing)} besides the runs "
            "(see its docstring); none was given"
        )
    unknown = sorted(set(kwargs) - accepted_keywords(name))
    if unknown:
        raise ValueError(
            f"{name} does not take {', '.join(map(repr, unknown))}; it accepts "
            f"{', '.join(sorted(accepted_keywords(name) - {'validation'}))}"
        )
    return fit(runs, validation=validation, **kwargs)


def fit_all(
    names: Sequence[str], runs: RunSet, *, validation: RunSet | None = None, **kwargs
) -> dict[str, object]:
    """``{name: fit_simulator(name, ...)}`` for several names; each fitter gets only the
    keywords it declares, and a keyword no fitter declares is an error."""
    declared = {n: accepted_keywords(n) for n in names}
    unused = sorted(set(kwargs) - set().union(*declared.values()))
    if unused:
        raise ValueError(f"no simulator among {list(names)} takes {', '.join(map(repr, unused))}")
    return {
        n: fit_simulator(
            n, runs, validation=validation, **{k: v for k, v in kwargs.items() if k in declared[n]}
        )
        for n in names
    }
