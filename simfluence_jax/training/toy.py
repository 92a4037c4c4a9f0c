"""A tiny bag-of-embeddings classifier that follows the model protocol, optional parts too.

It exists so the run factory, its tests and its examples run in seconds on a CPU: every
training method (full, prompt, LoRA, cached top layers) works on it. Architecture::

    e   = mean over tokens (and soft-prompt rows) of  E[token]          float32[D]
    h_0 = e;  h_{l+1} = tanh(h_l @ W_l + b_l)  for l = 0 .. n_layers-1
    logits = h_L @ W_head + b_head;  loss = cross-entropy(logits, label)

Texts are turned into tokens by hashing lower-cased words into ``vocab_size`` buckets
(id 0 is padding), so ``example_arrays`` works on any list of strings.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ToyClassifier:
    """Bag-of-embeddings MLP classifier (see module docstring).

    Attributes:
      vocab_size: hash buckets for words; id 0 is padding.
      dim: embedding and hidden width ``D``.
      n_layers: hidden layers ``L``.
      n_classes: output classes.
      seq_len: tokens per example after padding/truncation.
      dropout: dropout rate on the pooled embedding when a training rng is given.
    """

    vocab_size: int = 64
    dim: int = 16
    n_layers: int = 2
    n_classes: int = 2
    seq_len: int = 8
    dropout: float = 0.0
    name: str = "toy_classifier"

    @property
    def prompt_dim(self) -> int:
        return self.dim

    def init(self, rng: jax.Array) -> dict:
        keys = jax.random.split(rng, self.n_layers + 2)
        params = {"embed": 0.5 * jax.random.normal(keys[0], (self.vocab_size, self.dim))}
        for layer in range(self.n_layers):
            params[f"layer_{layer}"] = {
                "kernel": jax.random.normal(keys[layer + 1], (self.dim, self.dim))
                / np.sqrt(self.dim),
                "bias": jnp.zeros((self.dim,)),
            }
        params["head"] = {
            "kernel": jax.random.normal(keys[-1], (self.dim, self.n_classes)) / np.sqrt(self.dim),
            "bias": jnp.zeros((self.n_classes,)),
        }
        return params

    def example_arrays(self, texts: Sequence[str], targets: Sequence[Any]) -> dict[str, Any]:
        """Returns ``{"tokens": int32[N, seq_len], "label": int32[N]}``."""
        tokens = np.zeros((len(texts), self.seq_len), np.int32)
        for row, text in enumerate(texts):
            words = text.lower().split()[: self.seq_len]
            for col, word in enumerate(words):
                tokens[row, col] = 1 + zlib.crc32(word.encode()) % (self.vocab_size - 1)
        labels = np.asarray(targets, np.int32)
        if labels.shape != (len(texts),):
            raise ValueError(f"need one integer target per text, got shape {labels.shape}")
        return {"tokens": tokens, "label": labels}

    def _pooled(self, params, batch, prompt, rng):
        tokens = batch["tokens"]
        mask = (tokens > 0).astype(jnp.float32)
        emb = params["embed"][tokens] * mask[..., None]
        total = emb.sum(axis=1)
        count = mask.sum(axis=1)
        if prompt is not None:
            total = total + prompt.sum(axis=0)[None, :]
            count = count + prompt.shape[0]
        pooled = total / jnp.maximum(count, 1.0)[:, None]
        if rng is not None and self.dropout > 0:
            keep = jax.random.bernoulli(rng, 1.0 - self.dropout, pooled.shape)
            pooled = jnp.where(keep, pooled / (1.0 - self.dropout), 0.0)
        return pooled

    def _layers(self, params, h, start: int):
        for layer in range(start, self.n_layers):
            p = params[f"layer_{layer}"]
            h = jnp.tanh(h @ p["kernel"] + p["bias"])
        return h

    def _loss(self, params, h, batch):
        logits = h @ params["head"]["kernel"] + params["head"]["bias"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, batch["label"][:, None], axis=-1)[:, 0]

    def per_example_loss(self, params, batch, *, rng=None, prompt=None) -> jax.Array:
        """``float32[B]`` cross-entropy of every example."""
        h = self._layers(params, self._pooled(params, batch, prompt, rng), 0)
        return self._loss(params, h, batch)

    def frozen_features(self, params, batch, *, n_top: int) -> jax.Array:
        """``float32[B, D]``: the hidden state below the top ``n_top`` layers (no dropout)."""
        self._check_n_top(n_top)
        h = self._pooled(params, batch, None, None)
        for layer in range(self.n_layers - n_top):
            p = params[f"layer_{layer}"]
            h = jnp.tanh(h @ p["kernel"] + p["bias"])
        return h

    def per_example_loss_from_features(
        self, params, features, batch, *, n_top: int, rng=None
    ) -> jax.Array:
        """``float32[B]``: runs only the top ``n_top`` layers and the head on ``features``."""
        del rng  # dropout sits below the cached layers
        h = self._layers(params, features, self.n_layers - n_top)
        return self._loss(params, h, batch)

    def top_param_filter(self, path: tuple[str, ...], n_top: int) -> bool:
        """True for the head and the top ``n_top`` hidden layers."""
        first = path[0]
        if first == "head":
            return True
        if first.startswith("layer_"):
            return int(first.split("_")[1]) >= self.n_layers - n_top
        return False

    def _check_n_top(self, n_top: int) -> None:
        if not 0 <= n_top <= self.n_layers:
            raise ValueError(f"n_top must be in [0, {self.n_layers}], got {n_top}")


def random_task(
    model: ToyClassifier, *, num_train: int, num_test: int, seed: int = 0
) -> tuple[dict, dict]:
    """Random token sequences with labels from a fixed random linear rule.

    Returns ``(pool, test)``, each ``{"tokens": int32[n, seq_len], "label": int32[n]}``.
    """
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    tokens = rng.integers(1, model.vocab_size, size=(n, model.seq_len)).astype(np.int32)
    lengths = rng.integers(2, model.seq_len + 1, size=n)
    tokens[np.arange(model.seq_len)[None, :] >= lengths[:, None]] = 0
    weights = rng.normal(size=(model.vocab_size, model.n_classes))
    weights[0] = 0
    labels = weights[tokens].sum(axis=1).argmax(axis=1).astype(np.int32)
    pool = {"tokens": tokens[:num_train], "label": labels[:num_train]}
    test = {"tokens": tokens[num_train:], "label": labels[num_train:]}
    return pool, test
