"""Simulators: the interface and the index-based Simfluence-Linear family and controls.

Fitting lives in ``simfluence_jax.fitting``; the registry of fitters is ``SIMULATORS``.
"""

from simfluence_jax.simulators.base import Simulator
from simfluence_jax.simulators.featurized import FeaturizedSimulator, rollout_markov
from simfluence_jax.simulators.linear import LinearSimulator, MeanSimulator
from simfluence_jax.simulators.segmented import SegmentedSimulator

__all__ = [
    "FeaturizedSimulator",
    "LinearSimulator",
    "MeanSimulator",
    "SegmentedSimulator",
    "Simulator",
    "rollout_markov",
]
