"""seqio Tasks for the project's data, and their conversion to T5 arrays (optional extra).

seqio (https://github.com/google/seqio) is how T5X feeds text-to-text data: a ``Task`` reads
a source, tokenizes with a vocabulary and trims; a feature converter turns the result into
model features. This module registers our tasks in seqio's ``TaskRegistry`` and converts a
split into the arrays our T5 adapter consumes, through ``seqio.EncDecFeatureConverter`` with
``pack=False`` (the converter of T5X's ``EncoderDecoderModel``):

* ``encoder_input_tokens: int32[N, L_in]``: input pieces, trimmed to ``L_in - 1``, then EOS
  (id 1), padded with 0;
* ``decoder_target_tokens: int32[N, L_out]``: the same for the target;
* ``decoder_input_tokens: int32[N, L_out]``: targets shifted right, starting with 0;
* ``decoder_loss_weights: int32[N, L_out]``: 1 where the target token is not padding.

seqio brings TensorFlow (about 2.5 GB), so it is imported lazily and only here; the rest of
the package never needs it. Install it with ``pip install seqio`` (the ``seqio`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax.data.tasks import Task, get_task

T5_KEYS = (
    "encoder_input_tokens",
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
)
SPLITS = ("train", "test")


def _import_seqio() -> tuple[Any, Any]:
    try:
        import seqio
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            "seqio tasks need the optional 'seqio' extra (seqio and TensorFlow, about 2.5 GB): "
            f"pip install seqio  [import failed: {e}]"
        ) from e
    return seqio, tf


def register_seqio_task(task: Task, vocab_path: str | Path, *, name: str | None = None) -> str:
    """Registers ``task`` as a seqio Task with splits ``train`` (pool) and ``test``.

    Inputs are the task texts, targets its string targets, both tokenized with the
    SentencePiece model at ``vocab_path`` (T5 ids: pad 0, EOS 1, UNK 2) and closed with EOS
    after trimming. A task already registered under the same name is replaced. Returns the
    seqio name (default ``"simfluence_" + task.name``).
    """
    seqio, tf = _import_seqio()
    if task.is_corpus:
        raise ValueError(f"task {task.name!r} is an unlabelled corpus; seqio tasks need targets")
    vocab_path = Path(vocab_path)
    if not vocab_path.is_file():
        raise FileNotFoundError(f"SentencePiece model {vocab_path} does not exist")
    name = name or f"simfluence_{task.name}"
    data = {
        "train": (list(task.train_texts), list(task.train_targets)),
        "test": (list(task.test_texts), list(task.test_targets)),
    }

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        del shuffle_files, seed  # in-memory data, one shard: nothing to shuffle
        texts, targets = data[split]
        return tf.data.Dataset.from_tensor_slices({"inputs": texts, "targets": targets})

    vocab = seqio.SentencePieceVocabulary(str(vocab_path))
    features = {
        "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
        "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
    }
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=SPLITS),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=features,
    )
    return name


def register_seqio_polarity(
    vocab_path: str | Path, *, name: str = "simfluence_polarity", **task_kwargs: Any
) -> str:
    """Registers the built-in ``polarity`` task (same split; ``task_kwargs`` go to it)."""
    return register_seqio_task(get_task("polarity", **task_kwargs), vocab_path, name=name)


def seqio_task_to_arrays(
    task_name: str, split: str, feature_lengths: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """Runs a seqio Task's ``split`` in order through ``EncDecFeatureConverter(pack=False)``.

    ``feature_lengths`` is ``{"inputs": L_in, "targets": L_out}``. Returns the four
    ``int32[N, L]`` arrays listed in the module docstring, rows in source order.
    """
    seqio, _ = _import_seqio()
    if set(feature_lengths) != {"inputs", "targets"}:
        raise ValueError(
            f"feature_lengths needs exactly the keys 'inputs' and 'targets', got "
            f"{sorted(feature_lengths)}"
        )
    task = seqio.get_mixture_or_task(task_name)
    if split not in task.splits:
        raise ValueError(f"seqio task {task_name!r} has no split {split!r}; it has {task.splits}")
    lengths = {k: int(v) for k, v in feature_lengths.items()}
    ds = task.get_dataset(sequence_length=lengths, split=split, shuffle=False, num_epochs=1)
    ds = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
    rows = list(ds.as_numpy_iterator())
    if not rows:
        raise ValueError(f"seqio task {task_name!r} split {split!r} yielded no examples")
    return {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in T5_KEYS}
