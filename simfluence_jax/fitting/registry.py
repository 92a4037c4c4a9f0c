"""``SIMULATORS``, the registry of fitters, and the calls that go through it.

Every name is a :class:`~simfluence_jax.simulators.fitter.Fitter` record declared by a
module of ``simfluence_jax/simulators/`` (next to the class it fits) in its ``EXTENSIONS``
under ``"simulator"``, or by an extension module (``simfluence_jax.registry``); nothing here
lists them. A record holds the fitter (or a ``"module:attr"`` reference imported on first
use, for fitters that need the training stack or this package), the inputs it needs beyond
the runs and its report group; the fitter's keyword-only parameters are its keywords.
``fit_simulator`` rejects unknown keywords by name and names a missing input; ``fit_all``
passes each fitter only the keywords it declares.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from simfluence_jax.registry import Registry
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.fitter import Fitter
from simfluence_jax.simulators.segmented import CALIBRATED_SUFFIX, GRADIENT_BASELINES

__all__ = [
    "CALIBRATED_SUFFIX",
    "GRADIENT_BASELINES",
    "SIMULATORS",
    "Fitter",
    "accepted_keywords",
    "fit_all",
    "fit_simulator",
    "fitter",
    "required_inputs",
    "simulator_group",
]

SIMULATORS: Registry[Fitter] = Registry("simulator", packages=("simfluence_jax.simulators",))


def fitter(name: str) -> Fitter:
    """The record registered as ``name``; a plain function registered at run time
    (``SIMULATORS.register(name)(fit)``) reads as ``Fitter(fit)``.

    Raises:
      ValueError: an unknown name (listing the known ones), or an entry that is neither.
    """
    entry = SIMULATORS.get(name)
    if isinstance(entry, Fitter):
        return entry
    if callable(entry):
        return Fitter(entry)
    raise ValueError(
        f"simulator {name!r} (declared by {SIMULATORS.origin(name)}) is not a Fitter: {entry!r}"
    )


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
    return fitter(name).load()


def accepted_keywords(name: str) -> frozenset[str]:
    """The keyword arguments the fitter registered as ``name`` declares."""
    params = inspect.signature(_fitter_function(name)).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def required_inputs(name: str) -> tuple[str, ...]:
    """What the fitter ``name`` needs besides the runs (e.g. ``("gradients",)``)."""
    return fitter(name).inputs


def simulator_group(name: str) -> str:
    """The report group of a simulator name (``fitted`` unless its record declares another,
    or the name is not registered)."""
    return fitter(name).group if name in SIMULATORS else "fitted"


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
    fit = fitter(name).load()
    _check_runs(runs, validation)
    missing = [k for k in required_inputs(name) if kwargs.get(k) is None]
    if missing:
        raise ValueError(
            f"simulator {name!r} needs {', '.join(f'{k}=' for k in missing)} besides the runs "
            "(see its docstring); none was given"
        )
    accepted = accepted_keywords(name)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"{name} does not take {', '.join(map(repr, unknown))}; it accepts "
            f"{', '.join(sorted(accepted - {'validation'}))}"
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
