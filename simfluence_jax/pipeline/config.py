"""Plain configuration records for the pipeline (gin binds them at the entry points).

The defaults are close to the quickstart: the pretrained MiniLM fine-tuned on the bundled
``polarity`` task with plain SGD, top layer trained on cached lower-layer outputs, runs of
48 steps at batch 4, each a random 96 of the 150 pool examples (a scaled-down GPTfluence
protocol); ``gin_configs/`` holds the exact experiment settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: The default simulators, in table order (any name in ``simfluence_jax.SIMULATORS`` works).
DEFAULT_SIMULATORS = (
    "linear", "linear_one_plus_sum", "linear_kernel", "additive", "multiplicative",
    "constant", "mean", "shuffled",
    "tracin_cp", "tracin_cp_calibrated", "grad_dot", "grad_dot_calibrated",
    "influence", "influence_calibrated",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunsConfig:
    """What runs to make: task, model, training method, optimizer and curricula.

    Attributes:
      task, task_kwargs: a name in ``simfluence_jax.data.tasks.TASKS`` and its options.
      model, model_kwargs: a name in ``simfluence_jax.models.MODELS`` and its options.
      pretrain: for T5, start from the cached span-corruption pretraining stage.
      format_warmup_steps: for a pretrained T5, fine-tune it this many steps on the task's
        warm-up split first (cached; ``training.format_warmup``), so every logged run starts
        from the warmed-up model; 0 (default) skips the stage.
      format_warmup_kwargs: other ``FormatWarmupConfig`` settings (``batch_size``,
        ``optimizer``, ``learning_rate``, ``seed``).
      method, method_kwargs: a training method (``full``, ``prompt``, ``lora``,
        ``top_layers``) and its options.
      optimizer, learning_rate, optimizer_kwargs: see ``training.optim.make_optimizer``.
      num_runs, subset_size, batch_size, num_steps, epochs: the curriculum sampler
        (GPTfluence: 32 runs, 128 of a 200 pool, batch 4, 96 steps).
      seed: base seed of curricula and step randomness.
      group_size: runs vmapped together.
      checkpoint_steps: steps after which parameters are kept (TracIn-CP); empty: none.
      chunk_steps: steps per compiled call.
      seqio: for T5, feed the task through a seqio Task and ``EncDecFeatureConverter``:
        ``"auto"`` (when seqio is installed), ``"always"`` or ``"never"``.
    """

    task: str = "polarity"
    task_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model: str = "minilm"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"max_length": 48})
    pretrain: bool = False
    format_warmup_steps: int = 0
    format_warmup_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    method: str = "top_layers"
    method_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"n_top": 1})
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    optimizer_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_runs: int = 32
    subset_size: int | None = 96
    batch_size: int = 4
    num_steps: int | None = 48
    epochs: int = 1
    seed: int = 0
    group_size: int = 1
    checkpoint_steps: tuple[int, ...] = (0, 16, 32)
    chunk_steps: int = 8
    seqio: str = "auto"


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How runs are split and which simulators are fitted.

    Attributes:
      num_fit, num_val, num_heldout: run split (the rest of the runs is unused).
      simulators: names in ``simfluence_jax.SIMULATORS`` (those needing gradients get the
        scores computed from the fitting runs' checkpoints).
      l2: ridge strength(s); ``None`` searches ``DEFAULT_L2_GRID`` on validation runs.
      solver: ridge solver (``auto``, ``direct``, ``cg``, ``dual``).
      gradient_kwargs: options of the gradient baselines (projection, damping, ...).
    """

    num_fit: int = 24
    num_val: int = 2
    num_heldout: int = 6
    simulators: tuple[str, ...] = DEFAULT_SIMULATORS
    l2: Any = None
    solver: str = "auto"
    gradient_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CounterfactualConfig:
    """The counterfactual shown against reality in the report.

    Remove the ``num_remove`` training examples of one held-out run that the simulator says
    lower ``test_index``'s loss most, simulate, then retrain for real and compare.
    ``test_index=None`` picks the test example whose loss falls most in that run.
    """

    enabled: bool = True
    simulator: str = "linear"
    num_remove: int = 8
    test_index: int | None = None
    heldout_run: int = 0
