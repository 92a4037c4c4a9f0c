"""``Fitter``: one record per registered simulator name, declared next to its class.

A module under ``simfluence_jax/simulators/`` (or an extension module, see
``simfluence_jax.registry``) declares its fitters in its ``EXTENSIONS`` beside its classes::

    EXTENSIONS = {
        "simulator class": {"DriftSimulator": DriftSimulator},
        "simulator": {"drift": Fitter(fit_drift, group="control", doc="...")},
    }

``fitting.SIMULATORS`` finds them there. ``fit`` is the fitter itself or a ``"module:attr"``
reference imported on first use, so that listing the simulators imports neither the training
stack (the gradient baselines, the featurized simulator) nor ``simfluence_jax.fitting`` from
the simulators it depends on.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Fitter:
    """How to fit the simulator registered under a name, and what it needs.

    Attributes:
      fit: ``fit(runs, *, validation=None, **options) -> simulator`` with keyword-only
        options (``fitting.fit_simulator`` rejects keywords it does not declare), or
        ``"module:attr"`` naming it, imported on first use.
      args: when given, ``fit`` is a factory and ``fit(*args)`` is the fitter.
      inputs: keywords the fitter cannot do without besides the runs (``"gradients"``,
        ``"features"``); ``fit_simulator`` and ``fit_all`` name them when missing.
      group: the report group (``fitted``, ``control``, ``gradient baseline (raw)``, ...).
      doc: one line for listings.
    """

    fit: Callable[..., object] | str
    args: tuple = ()
    inputs: tuple[str, ...] = ()
    group: str = "fitted"
    doc: str = ""

    def __post_init__(self):
        if isinstance(self.fit, str):
            module, _, attr = self.fit.partition(":")
            if not module or not attr:
                raise ValueError(f"Fitter: {self.fit!r} is not a 'module:attr' reference")
        elif not callable(self.fit):
            raise ValueError(f"Fitter: fit must be callable or 'module:attr', got {self.fit!r}")
        if not isinstance(self.inputs, tuple) or not all(isinstance(i, str) for i in self.inputs):
            raise ValueError(f"Fitter: inputs must be a tuple of names, got {self.inputs!r}")
        if not isinstance(self.args, tuple):
            raise ValueError(f"Fitter: args must be a tuple, got {self.args!r}")

    def load(self) -> Callable[..., object]:
        """The fitter function (importing its module if ``fit`` is a reference).

        Raises:
          ValueError: the reference does not resolve.
        """
        obj = self.fit
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            try:
                obj = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"Fitter: cannot load {self.fit!r}: {err}") from None
        return obj(*self.args) if self.args else obj

    def __call__(self, runs, **kwargs):
        return self.load()(runs, **kwargs)
