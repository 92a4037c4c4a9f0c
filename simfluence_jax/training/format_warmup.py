"""Format warm-up: a short fine-tuning of the pretrained tiny T5 on a task's warm-up split.

A T5 model that has never produced a task's target words starts with a per-example loss
(the sum of target-token cross-entropies) far above what it reaches after a few updates:
every run would spend its first steps learning the output format, the same for every
curriculum, and that shared collapse would dominate the loss trajectories a simulator is
judged on. So before any run is logged, the pretrained model is
fine-tuned for ``num_steps`` (a few hundred) on the task's warm-up split, examples that are
neither in the pool nor in the test set (``Task.warmup_texts``), the way T5X fine-tunes:

* Adafactor without momentum, factored second moments, updates scaled by the parameter
  scale, a constant rate (``optax.adafactor``'s defaults are T5X's: ``momentum=None``,
  ``factored=True``, ``multiply_by_parameter_scale=True``, ``decay_rate=0.8``,
  ``clipping_threshold=1.0``);
* the loss of a batch is the mean over its examples of the model's per-example loss (the
  sum over target tokens, or the per-token mean with ``loss_normalization="mean"``);
* batches are drawn epoch by epoch, each epoch a fresh permutation of the warm-up split.

The result is cached with orbax exactly like the span-corruption pretraining
(:func:`simfluence_jax.training.pretrain.save_pretrained`): in
``<cache>/warmup-<hash>/``, where the hash covers the pretrained model's settings, these
settings, the feature lengths and the warm-up examples, so the same call returns at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from simfluence_jax.training.chunked import train_in_chunks
from simfluence_jax.training.optim import make_optimizer
from simfluence_jax.training.pretrain import (
    PRETRAIN_FORMAT,
    PretrainedT5,
    default_cache_dir,
    load_pretrained,
    save_pretrained,
)


@dataclasses.dataclass(frozen=True)
class FormatWarmupConfig:
    """Settings of the format warm-up (all enter the cache key).

    Attributes:
      num_steps: updates (a few hundred).
      batch_size: warm-up examples per update.
      optimizer, learning_rate: see ``training.optim.make_optimizer``; constant rate. The
        default is T5X's fine-tuning: Adafactor at 1e-3.
      seed: the order of the warm-up examples.
      chunk_steps: steps per compiled call.
    """

    num_steps: int = 300
    batch_size: int = 8
    optimizer: str = "adafactor"
    learning_rate: float = 1e-3
    seed: int = 0
    chunk_steps: int = 50

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "chunk_steps"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"FormatWarmupConfig.{name} must be >= 1, got {getattr(self, name)}"
                )
        if not self.learning_rate > 0:
            raise ValueError(
                f"FormatWarmupConfig.learning_rate must be > 0, got {self.learning_rate}"
            )


def checked_examples(texts, targets, what: str) -> tuple[list[str], list[str]]:
    """The warm-up examples as strings; ``ValueError`` naming ``what`` if there are none or
    the texts and targets differ in number."""
    texts, targets = [str(t) for t in texts], [str(t) for t in targets]
    if not texts:
        raise ValueError(f"{what} needs warm-up examples; the task has none")
    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} warm-up texts but {len(targets)} targets")
    return texts, targets


def examples_digest(texts: Sequence[str], targets: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text, target in zip(texts, targets, strict=True):
        h.update(text.encode("utf-8") + b"\0" + target.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def format_warmup_t5(
    pretrained: PretrainedT5,
    texts: Sequence[str],
    targets: Sequence[str],
    config: FormatWarmupConfig = FormatWarmupConfig(),
    *,
    input_length: int = 64,
    target_length: int = 8,
    loss_normalization: str = "sum",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> PretrainedT5:
    """Returns ``pretrained`` fine-tuned on ``(texts, targets)``, training it first if not cached.

    Args:
      pretrained: the starting model (``pretrain_t5(...)``).
      texts, targets: the warm-up examples (``Task.warmup_texts``/``warmup_targets``).
      config: the settings.
      input_length, target_length, loss_normalization: those of the runs' ``T5Model``.
      cache_dir: cache root (default: the pretraining cache, ``default_cache_dir()``).
      progress: print the loss every chunk.

    Returns:
      a :class:`PretrainedT5` whose ``settings`` hold the starting model's (``"base"``) and
      the warm-up's (``"format_warmup"``), and whose ``losses`` are the mean training loss
      of each chunk.
    """
    texts, targets = checked_examples(texts, targets, "the format warm-up")
    warmup = {
        **dataclasses.asdict(config),
        "input_length": input_length,
        "target_length": target_length,
        "loss_normalization": loss_normalization,
        "examples": examples_digest(texts, targets),
        "num_examples": len(texts),
    }
    base = {k: v for k, v in pretrained.settings.items() if k != "model_config"}
    settings = {"format": PRETRAIN_FORMAT, "base": base, "format_warmup": warmup}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"warmup-{key}"
    if (target / "COMPLETE").exists():
        return load_pretrained(target)

    model = pretrained.model(
        input_length=input_length,
        target_length=target_length,
        loss_normalization=loss_normalization,
    )
    arrays = model.example_arrays(texts, targets)
    params, losses = _train(model, pretrained.params, arrays, config, progress=progress)
    return save_pretrained(
        target,
        params=params,
        model_config=pretrained.config,
        vocab_path=pretrained.vocab_path,
        losses=losses,
        settings=settings,
    )


def _train(model, params, arrays: dict, config: FormatWarmupConfig, *, progress: bool):
    def batch_loss(p, batch, rng):
        del rng  # no dropout: the model's own setting, deterministic
        return jnp.mean(model.per_example_loss(p, batch))

    return train_in_chunks(
        batch_loss,
        params,
        make_optimizer(config.optimizer, learning_rate=config.learning_rate),
        lambda rng: arrays,
        num_examples=len(next(iter(arrays.values()))),
        num_steps=config.num_steps,
        batch_size=config.batch_size,
        chunk_steps=config.chunk_steps,
        seed=config.seed,
        key=jax.random.PRNGKey(config.seed),
        label="format warm-up",
        progress=progress,
    )
