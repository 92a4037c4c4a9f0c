"""The run factory: instrumented fine-tuning that records every test loss after every step.

See ``train_step`` (the compiled step), ``methods`` (full, prompt, LoRA, cached top layers),
``optim`` (optimizers and schedules by name), ``loop`` (the ``RunFactory``: many runs through
one compiled step), ``produce`` (runs written to a run store, resumable) and ``distributed``
(several processes sharing one store).
"""

from simfluence_jax.training.loop import RunFactory, plan_groups
from simfluence_jax.training.methods import TRAINING_METHODS, MethodData, make_method
from simfluence_jax.training.optim import OPTIMIZERS, SCHEDULES, Optimizer, make_optimizer
from simfluence_jax.training.produce import ProduceReport, produce_runs
from simfluence_jax.training.train_step import (
    TrainState,
    init_state,
    make_eval_losses,
    make_train_step,
    make_update,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "TRAINING_METHODS",
    "MethodData",
    "Optimizer",
    "ProduceReport",
    "RunFactory",
    "TrainState",
    "init_state",
    "make_eval_losses",
    "make_method",
    "make_optimizer",
    "make_train_step",
    "make_update",
    "plan_groups",
    "produce_runs",
]
