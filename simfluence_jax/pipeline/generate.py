"""Making runs: from a ``RunsConfig`` to a crash-safe run store and a ``RunSet``.

``prepare`` builds everything a run needs once (task, model, pretrained parameters, training
method with its cached features, optimizer, the compiled-step factory); ``generate_runs``
samples the curricula, writes them into a run store and produces every run not yet complete
(a re-run resumes, a finished store is just read back); ``retrain`` trains extra curricula
(the counterfactuals) through the same factory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from simfluence_jax.pipeline.config import RunsConfig
from simfluence_jax.runs import RunSet


@dataclasses.dataclass
class Setup:
    """Everything built once for a ``RunsConfig``."""

    config: RunsConfig
    task: Any
    model: Any
    params: Any
    method: Any
    optimizer: Any
    pool: dict
    test: dict
    factory: Any

    @property
    def num_steps(self) -> int:
        return _num_steps(self.config, len(self.task.train_texts))


def _num_steps(cfg: RunsConfig, pool_size: int) -> int:
    if cfg.num_steps is not None:
        return cfg.num_steps
    k = cfg.subset_size or pool_size
    return cfg.epochs * -(-k // cfg.batch_size)


def _model(cfg: RunsConfig, task):
    from simfluence_jax.models import MODELS

    kwargs = dict(cfg.model_kwargs)
    if cfg.format_warmup_steps and not (cfg.model == "t5" and cfg.pretrain):
        raise ValueError(
            "RunsConfig.format_warmup_steps > 0 needs the pretrained T5 (model 't5' with "
            f"pretrain=True), got model {cfg.model!r} with pretrain={cfg.pretrain}"
        )
    if cfg.format_warmup_steps:
        _need_warmup_split(task, f"RunsConfig.format_warmup_steps={cfg.format_warmup_steps}")
    if cfg.model == "t5" and cfg.pretrain:
        from simfluence_jax.training.pretrain import PretrainConfig, pretrain_t5

        pre = pretrain_t5(PretrainConfig(**kwargs.pop("pretrain", {})))
        if cfg.format_warmup_steps:
            pre = _format_warmup(cfg, task, pre, pre.model(**kwargs))
        return pre.model(**kwargs)
    if cfg.model == "minilm" and task.label_names and "label_names" not in kwargs:
        kwargs["label_names"] = tuple(task.label_names)
    return MODELS.get(cfg.model)(**kwargs)


def _need_warmup_split(task, what: str) -> None:
    if not task.warmup_texts:
        raise ValueError(
            f"task {task.name!r} has no warm-up split for {what}; give it one "
            "(e.g. task_kwargs {'num_warmup': 20})"
        )


def _format_warmup(cfg: RunsConfig, task, pre, model):
    """``pre`` fine-tuned on ``task``'s warm-up split (cached), see ``training.format_warmup``."""
    from simfluence_jax.training.format_warmup import FormatWarmupConfig, format_warmup_t5

    config = FormatWarmupConfig(num_steps=cfg.format_warmup_steps, **dict(cfg.format_warmup_kwargs))
    return format_warmup_t5(
        pre,
        task.warmup_texts,
        task.warmup_targets,
        config,
        input_length=model.input_length,
        target_length=model.target_length,
        loss_normalization=model.loss_normalization,
    )


def _prompt_warmup(cfg: RunsConfig, task, model, params, method, optimizer, opt_kwargs):
    """``method`` starting from its prompt trained on ``task``'s warm-up split (cached), see
    ``training.prompt_warmup``."""
    from simfluence_jax.training.prompt_warmup import prompt_warmup

    _need_warmup_split(task, f"the prompt's warmup_steps={method.warmup_steps}")
    path = prompt_warmup(
        method, model, params, task.warmup_texts, task.warmup_targets, optimizer,
        optimizer_settings={"name": cfg.optimizer, "learning_rate": cfg.learning_rate,
                            **opt_kwargs},
        batch_size=method.warmup_batch_size, seed=cfg.seed,
    )  # fmt: skip
    return dataclasses.replace(method, init_from=str(path))


def _use_seqio(cfg: RunsConfig) -> bool:
    if cfg.seqio not in ("auto", "always", "never"):
        raise ValueError(f"RunsConfig.seqio must be 'auto', 'always' or 'never', got {cfg.seqio!r}")
    if cfg.model != "t5" or cfg.seqio == "never":
        return False
    if cfg.seqio == "always":
        return True
    import importlib.util

    return importlib.util.find_spec("seqio") is not None


def _example_arrays(cfg: RunsConfig, task, model) -> tuple[dict, dict]:
    """The pool and test arrays: through seqio (T5, when enabled) or the model's tokenizer."""
    if _use_seqio(cfg):
        from simfluence_jax.data.seqio_tasks import register_seqio_task, seqio_task_to_arrays

        name = register_seqio_task(task, model.vocab_path)
        lengths = {"inputs": model.input_length, "targets": model.target_length}
        return (
            seqio_task_to_arrays(name, "train", lengths),
            seqio_task_to_arrays(name, "test", lengths),
        )
    return (
        model.example_arrays(task.train_texts, task.train_targets),
        model.example_arrays(task.test_texts, task.test_targets),
    )


def prepare(cfg: RunsConfig, *, mesh=None) -> Setup:
    """Builds the task, model, method, optimizer and the run factory for ``cfg``."""
    from simfluence_jax.data.tasks import get_task
    from simfluence_jax.training import RunFactory, make_method, make_optimizer

    task = get_task(cfg.task, **dict(cfg.task_kwargs))
    if not task.test_texts:
        raise ValueError(f"task {cfg.task!r} has no test examples to record losses on")
    model = _model(cfg, task)
    params = model.init(jax.random.PRNGKey(cfg.seed))
    method = make_method(cfg.method, **dict(cfg.method_kwargs))
    opt_kwargs = dict(cfg.optimizer_kwargs)
    if opt_kwargs.get("schedule", "constant") != "constant":
        opt_kwargs.setdefault("total_steps", _num_steps(cfg, len(task.train_texts)))
    optimizer = make_optimizer(cfg.optimizer, learning_rate=cfg.learning_rate, **opt_kwargs)
    if getattr(method, "warmup_steps", 0):
        method = _prompt_warmup(cfg, task, model, params, method, optimizer, opt_kwargs)
    pool, test = _example_arrays(cfg, task, model)
    factory = RunFactory(
        model, params, method=method, optimizer=optimizer, pool=pool, test=test,
        chunk_steps=cfg.chunk_steps, mesh=mesh,
    )  # fmt: skip
    return Setup(cfg, task, model, params, method, optimizer, pool, test, factory)


def sample(cfg: RunsConfig, pool_size: int) -> np.ndarray:
    """The curricula ``int32[R, T, B]`` of ``cfg`` (GPTfluence sampler)."""
    from simfluence_jax.sampling import sample_curricula

    return sample_curricula(
        num_runs=cfg.num_runs, pool_size=pool_size, batch_size=cfg.batch_size,
        subset_size=cfg.subset_size, epochs=cfg.epochs, num_steps=cfg.num_steps, seed=cfg.seed,
    )  # fmt: skip


def _metadata(setup: Setup) -> dict:
    task = setup.task
    return {
        "task": task.name,
        "train_texts": list(task.train_texts),
        "train_targets": list(task.train_targets),
        "test_texts": list(task.test_texts),
        "test_targets": list(task.test_targets),
        "runs_config": json.loads(json.dumps(dataclasses.asdict(setup.config), default=str)),
    }


def produce(
    setup: Setup,
    store_dir: str | Path,
    batches: np.ndarray,
    seeds,
    *,
    config_text: str = "",
    checkpoint_steps=(),
    progress: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> RunSet:
    """Produces (or resumes) the runs ``batches`` in ``store_dir`` and returns them all."""
    from simfluence_jax.store import collect, create_store
    from simfluence_jax.training import produce_runs

    task = setup.task
    store = create_store(
        store_dir, batches=batches, seeds=np.asarray(seeds), num_train=len(task.train_texts),
        num_test=len(task.test_texts), metadata=_metadata(setup),
        fingerprint=setup.factory.fingerprint,
    )  # fmt: skip
    group = max(1, min(setup.config.group_size, len(batches)))
    produce_runs(
        setup.factory, store, group_size=group, checkpoint_steps=tuple(checkpoint_steps),
        config_text=config_text, progress=progress, process_index=process_index,
        process_count=process_count, snapshot_every=setup.config.chunk_steps * 2,
    )  # fmt: skip
    return collect(store_dir, require_all=process_count == 1)


_NEWER_FIELDS = ("format_warmup_steps", "format_warmup_kwargs")
"""``RunsConfig`` fields added after stores were first named: left out of the name at their
default values, so stores written before they existed keep their names."""


def store_name(cfg: RunsConfig) -> str:
    """A folder name keyed by the configuration, so a changed config never resumes an old
    store and an unchanged one reuses its runs."""
    fields = dataclasses.asdict(cfg)
    default = RunsConfig()
    for name in _NEWER_FIELDS:
        if fields[name] == getattr(default, name):
            del fields[name]
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return f"runs-{hashlib.sha256(blob).hexdigest()[:12]}"


def generate_runs(
    cfg: RunsConfig,
    store_dir: str | Path,
    *,
    setup: Setup | None = None,
    config_text: str = "",
    progress: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> RunSet:
    """Samples ``cfg``'s curricula and produces every run into ``store_dir``.

    Args:
      cfg: the runs to make.
      store_dir: the run store (created, or resumed if it holds the same plan).
      setup: a ``prepare(cfg)`` result to reuse.
      config_text: the operative configuration stored with every run.
      process_index, process_count: multi-process production; every process calls this
        with the same arguments and makes its share of the runs.

    Returns:
      the ``RunSet`` of all runs (of the complete ones when ``process_count > 1``).
    """
    setup = setup or prepare(cfg)
    batches = sample(cfg, len(setup.task.train_texts))
    seeds = cfg.seed * 100_003 + np.arange(cfg.num_runs)
    return produce(
        setup, store_dir, batches, seeds, config_text=config_text,
        checkpoint_steps=cfg.checkpoint_steps, progress=progress,
        process_index=process_index, process_count=process_count,
    )  # fmt: skip


def retrain(
    setup: Setup, store_dir: str | Path, batches: np.ndarray, seeds, *, progress: bool = False
) -> RunSet:
    """Trains extra curricula ``int32[C, T, B]`` for real (e.g. counterfactuals)."""
    return produce(setup, store_dir, batches, seeds, progress=progress)
