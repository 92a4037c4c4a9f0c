"""Prompt warm-up: the soft prompt trained on a task's warm-up split before any run is logged.

Prompt tuning (``methods.PromptTuning``) starts every run from the same random prompt. On a
model that already emits the task's target words (after the format warm-up), that prompt
still perturbs the encoder's input, so the first updates of every run remove the same
perturbation: a drop shared by all curricula that the curriculum-blind ``mean`` control
captures and no per-example simulator can attribute (the fidelity matrix's prompt-tuning row,
experiments/README.md). Full fine-tuning gets its format warm-up before runs are logged;
this gives the prompt the same treatment: ``PromptTuning.warmup_steps`` updates of the
prompt alone (the model frozen) on the warm-up split, examples in neither the pool nor the
test set, with the runs' own optimizer (a fresh state; a schedule starts again for the
runs), batches drawn epoch by epoch as in ``training.chunked``.

The warmed prompt is cached as ``<cache>/prompt-<hash>.npz`` (``prompt``, and the loss of
each chunk), the hash covering the frozen parameters' bytes, the warm-up examples as the
model encodes them (so its input and target lengths), its loss normalisation, the method's
settings, the optimizer and these settings; every run of the store then starts from it
(``PromptTuning.init_from``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax import fileio
from simfluence_jax.training.chunked import train_in_chunks
from simfluence_jax.training.format_warmup import checked_examples
from simfluence_jax.training.pretrain import default_cache_dir


def params_digest(params) -> str:
    """A digest of every leaf's path, dtype, shape and bytes (any pytree of arrays)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:20]


def prompt_warmup(
    method,
    model,
    params,
    texts: Sequence[str],
    targets: Sequence[str],
    optimizer,
    *,
    optimizer_settings: dict,
    batch_size: int = 8,
    seed: int = 0,
    chunk_steps: int = 50,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Trains ``method``'s prompt on ``(texts, targets)`` (cached) and returns the file.

    Args:
      method: a ``PromptTuning`` with ``warmup_steps >= 1``; its random prompt is the start.
      model, params: the frozen model and its parameters (after any format warm-up).
      texts, targets: the warm-up examples (``Task.warmup_texts`` / ``warmup_targets``).
      optimizer: the runs' optimizer (``training.make_optimizer``).
      optimizer_settings: what built ``optimizer`` (name, rate, options): enters the key.
      batch_size, seed, chunk_steps: rows per update, the order, updates per compiled call.
      cache_dir: cache root (default: the pretraining cache, ``default_cache_dir()``).
      progress: print the loss every chunk.

    Returns:
      the ``.npz`` holding ``prompt: float32[n_tokens, prompt_dim]``.
    """
    texts, targets = checked_examples(texts, targets, "the prompt warm-up")
    if method.warmup_steps < 1:
        raise ValueError(f"prompt warm-up needs warmup_steps >= 1, got {method.warmup_steps}")
    if batch_size < 1 or chunk_steps < 1:
        raise ValueError(
            f"batch_size and chunk_steps must be >= 1, got {batch_size}, {chunk_steps}"
        )
    arrays = model.example_arrays(texts, targets)
    fields = {k: v for k, v in dataclasses.asdict(method).items() if k != "init_from"}
    settings = {
        "method": fields,
        "params": params_digest(params),
        "arrays": params_digest(arrays),
        "loss_normalization": getattr(model, "loss_normalization", None),
        "optimizer": optimizer_settings,
        "batch_size": batch_size,
        "seed": seed,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"prompt-{key[:20]}.npz"
    if target.exists():
        return target

    start = dataclasses.replace(method, warmup_steps=0).init(model, params)  # the random draw

    def batch_loss(trainable, batch, rng):
        del rng  # the frozen model's own setting, deterministic
        return jnp.mean(method.loss(model, trainable, params, batch))

    trained, losses = train_in_chunks(
        batch_loss,
        start,
        optimizer,
        lambda rng: arrays,
        num_examples=len(texts),
        num_steps=method.warmup_steps,
        batch_size=batch_size,
        chunk_steps=chunk_steps,
        seed=seed,
        key=jax.random.PRNGKey(seed),
        label="prompt warm-up",
        progress=progress,
    )
    fileio.make_dirs(root)
    # Whole file or none: a concurrent process may write the same one.
    fileio.atomic_npz(
        target, {"prompt": np.asarray(trained["prompt"], np.float32), "losses": losses}
    )
    return target


def load_prompt(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """The ``prompt`` array of a warmed-prompt file, checked against ``shape``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    with np.load(path, allow_pickle=False) as f:
        if "prompt" not in f.files:
            raise ValueError(f"{path} holds no 'prompt' array (has {sorted(f.files)})")
        prompt = np.asarray(f["prompt"], np.float32)
    if prompt.shape != tuple(shape):
        raise ValueError(f"{path} holds a prompt of shape {prompt.shape}, the method needs {shape}")
    return prompt
