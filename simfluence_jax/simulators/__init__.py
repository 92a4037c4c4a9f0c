"""Simulators: the stateful step interface, the index-based Simfluence-Linear family with the
optimizer kernel, its learned-filter form (the filter kernel), the controls, the gradient
baselines' additive form and the featurized simulator, and the metagradient simulator
(first-order edits of one logged run).

Fitting lives in ``simfluence_jax.fitting``; the registry of fitters is ``SIMULATORS``.
"""

from simfluence_jax.simulators.base import AffineSimulator, Simulator
from simfluence_jax.simulators.featurized import FeaturizedSimulator
from simfluence_jax.simulators.filter import FilterSimulator
from simfluence_jax.simulators.linear import LinearSimulator, MeanSimulator
from simfluence_jax.simulators.metagradient import MetagradientSimulator
from simfluence_jax.simulators.segmented import SegmentedSimulator

__all__ = [
    "AffineSimulator",
    "FeaturizedSimulator",
    "FilterSimulator",
    "LinearSimulator",
    "MeanSimulator",
    "MetagradientSimulator",
    "SegmentedSimulator",
    "Simulator",
]
