"""``SIMULATORS``, the registry of fitters, and the calls that go through it.

Every fitter declares its keywords (keyword-only parameters), the inputs it needs beyond the
runs (``inputs``: ``gradients``, ``features``) and its report group (``group``). Fitters that
need the training stack (the gradient baselines, the featurized simulator) or that import
this package (the filter kernel) are ``LazyFitter`` entries, registered below, that import
their module on first use. ``fit_simulator`` rejects unknown keywords by name and names a
missing input; ``fit_all`` passes each fitter only the keywords it declares.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Sequence

from simfluence_jax.registry import Registry
from simfluence_jax.runs import RunSet

SIMULATORS: Registry[Callable[..., object]] = Registry("simulator")


@dataclasses.dataclass(frozen=True)
class LazyFitter:
    """A registry entry whose fitter lives in a module that needs the training stack (or
    that imports this package: the filter kernel's ``filter_fit``).

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
    names: Sequence[str],
    runs: RunSet,
    *,
    validation: RunSet | None = None,
    strict: bool = True,
    **kwargs,
) -> dict[str, object]:
    """``{name: fit_simulator(name, ...)}`` for several names; each fitter gets only the
    keywords it declares. A keyword no fitter among ``names`` declares is an error, unless
    ``strict=False`` (the pipeline passes its whole configuration, e.g. ``solver`` to a set
    of controls), which drops it."""
    declared = {n: accepted_keywords(n) for n in names}
    unused = sorted(set(kwargs) - set().union(*declared.values()))
    if unused and strict:
        raise ValueError(f"no simulator among {list(names)} takes {', '.join(map(repr, unused))}")
    return {
        n: fit_simulator(
            n, runs, validation=validation, **{k: v for k, v in kwargs.items() if k in declared[n]}
        )
        for n in names
    }
