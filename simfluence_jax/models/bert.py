"""A BERT encoder in Flax (post-LayerNorm, exact GELU), with a mean-pooled classification head.

The architecture is the original BERT (Devlin et al., 2019, arXiv 1810.04805), as used by
MiniLM (Wang et al., 2020, arXiv 2002.10957) and all-MiniLM-L6-v2:

    h_0 = LN(E_word[x] + E_pos[0..L-1] + E_type[s])
    a_l = LN(h_{l-1} + Dropout(Attn(h_{l-1})))                      (post-LN residual)
    h_l = LN(a_l + Dropout(W_2 gelu(W_1 a_l + b_1) + b_2))

with ``gelu(x) = x/2 (1 + erf(x / sqrt 2))`` (the exact form, not the tanh approximation) and
multi-head scaled dot-product attention ``softmax(q k^T / sqrt(d_head) + bias) v`` where
``bias`` is the most negative float32 at padded keys. LayerNorm's epsilon is configurable
(1e-12 for BERT checkpoints; Flax's default 1e-6 measurably changes the outputs).

On top sits the sentence-level head of a classifier: the mask-aware mean over positions
(the sentence-transformers pooling), dropout, and a dense layer to ``num_labels`` logits.

Two extras serve the training methods of the instrumented loop:

* **prompt tuning** (Lester et al., 2021, arXiv 2104.08691): a soft prompt
  ``float32[P, hidden]`` is inserted into the word-embedding sequence, after ``[CLS]`` or
  before it, with attention-mask 1; position embeddings then run over the longer sequence
  ``0..P+L-1``, which must fit in ``max_position``;
* **cached lower layers**: :func:`frozen_features` runs the embeddings and the lower
  ``num_layers - n_top`` layers once (deterministically) and :func:`logits_from_features` runs
  only the top ``n_top`` layers and the head on them. With ``n_top=0`` the cached feature is
  the mean-pooled final hidden state and only the head trains.

Parameters are a plain nested dict (the ``"params"`` collection of the Flax module)::

    {"encoder": {"embeddings": {"word", "position", "token_type", "norm"},
                 "layer_0": {"attention": {"query", "key", "value", "output"},
                             "attention_norm", "intermediate", "output", "output_norm"},
                 ...},
     "head": {"kernel": float32[hidden, num_labels], "bias": float32[num_labels]}}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any
PromptPosition = Literal["after_cls", "prepend"]


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of a BERT encoder; the defaults are those of all-MiniLM-L6-v2."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        for field in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "max_position",
        ):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _dense(cfg: BertConfig, features: int, name: str) -> nn.Dense:
    init = nn.initializers.truncated_normal(cfg.initializer_range)
    return nn.Dense(features, kernel_init=init, name=name)


def _norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name=name)


def attention_bias(mask: jax.Array) -> jax.Array:
    """``float32[B, 1, 1, L]``: 0 at real keys, the most negative float32 at padded keys."""
    neg = jnp.finfo(jnp.float32).min
    return jnp.where(mask[:, None, None, :] > 0, 0.0, neg).astype(jnp.float32)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate Q, K, V projections and an output projection."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, h: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
        """``h: float32[B, L, H]``, ``bias: float32[B, 1, 1, L]`` -> ``float32[B, L, H]``."""
        cfg = self.cfg
        b, length, _ = h.shape
        split = (b, length, cfg.num_heads, cfg.head_dim)
        q = _dense(cfg, cfg.hidden_size, "query")(h).reshape(split)
        k = _dense(cfg, cfg.hidden_size, "key")(h).reshape(split)
        v = _dense(cfg, cfg.hidden_size, "value")(h).reshape(split)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(cfg.head_dim))
        probs = jax.nn.softmax(scores + bias, axis=-1)
        probs = nn.Dropout(cfg.attention_dropout_rate)(probs, deterministic=deterministic)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, cfg.hidden_size)
        return _dense(cfg, cfg.hidden_size, "output")(ctx)


class Layer(nn.Module):
    """One post-LN transformer layer: attention and MLP, each ``LN(x + Dropout(f(x)))``."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, h: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout_rate)
        a = SelfAttention(cfg, name="attention")(h, bias, deterministic)
        h = _norm(cfg, "attention_norm")(h + drop(a, deterministic=deterministic))
        m = _dense(cfg, cfg.intermediate_size, "intermediate")(h)
        m = _dense(cfg, cfg.hidden_size, "output")(jax.nn.gelu(m, approximate=False))
        return _norm(cfg, "output_norm")(h + drop(m, deterministic=deterministic))


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout; optional soft prompt."""

    cfg: BertConfig
    prompt_position: PromptPosition = "after_cls"

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        attention_mask: jax.Array,
        prompt: jax.Array | None,
        deterministic: bool,
    ) -> tuple[jax.Array, jax.Array]:
        """Returns ``(float32[B, L', H], mask[B, L'])`` with ``L' = L + P`` under a prompt."""
        cfg = self.cfg
        init = nn.initializers.truncated_normal(cfg.initializer_range)
        word = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, name="word")
        e = word(input_ids)
        types = token_type_ids
        mask = attention_mask
        if prompt is not None:
            e, types, mask = insert_prompt(e, types, mask, prompt, position=self.prompt_position)
        length = e.shape[1]
        if length > cfg.max_position:
            raise ValueError(
                f"sequence length {length} (prompt included) exceeds max_position "
                f"{cfg.max_position}"
            )
        pos = nn.Embed(cfg.max_position, cfg.hidden_size, embedding_init=init, name="position")
        typ = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init, name="token_type")
        e = e + pos(jnp.arange(length))[None] + typ(types)
        e = _norm(cfg, "norm")(e)
        return nn.Dropout(cfg.dropout_rate)(e, deterministic=deterministic), mask


def insert_prompt(
    embeddings: jax.Array,
    token_type_ids: jax.Array,
    attention_mask: jax.Array,
    prompt: jax.Array,
    *,
    position: PromptPosition = "after_cls",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inserts ``prompt: float32[P, H]`` into ``embeddings: float32[B, L, H]``.

    ``position="after_cls"`` puts it between ``[CLS]`` (index 0) and the first word, so the
    pretrained ``[CLS]`` keeps position 0; ``"prepend"`` puts it first. Prompt slots get token
    type 0 and attention-mask 1. Returns the three arrays with length ``L + P``.
    """
    if prompt.ndim != 2 or prompt.shape[1] != embeddings.shape[-1]:
        raise ValueError(
            f"prompt must be float32[P, {embeddings.shape[-1]}], got shape {prompt.shape}"
        )
    if position not in ("after_cls", "prepend"):
        raise ValueError(f"prompt position must be 'after_cls' or 'prepend', got {position!r}")
    b, p = embeddings.shape[0], prompt.shape[0]
    prompt_e = jnp.broadcast_to(prompt.astype(embeddings.dtype)[None], (b, p, prompt.shape[1]))
    ones = jnp.ones((b, p), attention_mask.dtype)
    zeros = jnp.zeros((b, p), token_type_ids.dtype)
    cut = 1 if position == "after_cls" else 0

    def join(x, middle):
        return jnp.concatenate([x[:, :cut], middle, x[:, cut:]], axis=1)

    return (
        join(embeddings, prompt_e),
        join(token_type_ids, zeros),
        join(attention_mask, ones),
    )


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """``float32[B, H]``: ``sum_t m_t h_t / max(sum_t m_t, 1e-9)`` (sentence-transformers)."""
    m = mask.astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def l2_normalize(x: jax.Array) -> jax.Array:
    """``x / max(||x||_2, 1e-12)`` along the last axis (``torch.nn.functional.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class BertEncoder(nn.Module):
    """Embeddings and ``num_layers`` layers; methods expose the lower/upper split."""

    cfg: BertConfig
    prompt_position: PromptPosition = "after_cls"

    def setup(self):
        self.embeddings = Embeddings(self.cfg, self.prompt_position)
        self.layers = [Layer(self.cfg, name=f"layer_{i}") for i in range(self.cfg.num_layers)]

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array,
        *,
        prompt: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array]:
        """``int32[B, L]`` x3 -> ``(last_hidden_state float32[B, L', H], mask[B, L'])``."""
        h, mask = self.embed(input_ids, attention_mask, token_type_ids, prompt, deterministic)
        return self.run_layers(h, mask, 0, self.cfg.num_layers, deterministic), mask

    def embed(self, input_ids, attention_mask, token_type_ids, prompt, deterministic):
        return self.embeddings(input_ids, token_type_ids, attention_mask, prompt, deterministic)

    def run_layers(
        self, h: jax.Array, mask: jax.Array, start: int, stop: int, deterministic: bool
    ) -> jax.Array:
        """Applies layers ``start..stop-1`` to ``h: float32[B, L, H]``."""
        bias = attention_bias(mask)
        for layer in self.layers[start:stop]:
            h = layer(h, bias, deterministic)
        return h


class BertClassifier(nn.Module):
    """BERT encoder, mask-aware mean pooling, dropout and a dense head to ``num_labels``."""

    cfg: BertConfig
    num_labels: int = 2
    prompt_position: PromptPosition = "after_cls"

    def setup(self):
        self.encoder = BertEncoder(self.cfg, self.prompt_position)
        self.head = _dense(self.cfg, self.num_labels, "head")
        self.head_dropout = nn.Dropout(self.cfg.dropout_rate)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array,
        *,
        prompt: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """``int32[B, L]`` x3 -> logits ``float32[B, num_labels]``."""
        h, mask = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            prompt=prompt,
            deterministic=deterministic,
        )
        return self.classify(mean_pool(h, mask), deterministic)

    def classify(self, pooled: jax.Array, deterministic: bool) -> jax.Array:
        """``float32[B, H]`` -> ``float32[B, num_labels]``."""
        return self.head(self.head_dropout(pooled, deterministic=deterministic))

    def lower(self, input_ids, attention_mask, token_type_ids, n_top: int):
        """Deterministic embeddings + the lower ``num_layers - n_top`` layers."""
        h, mask = self.encoder.embed(input_ids, attention_mask, token_type_ids, None, True)
        h = self.encoder.run_layers(h, mask, 0, self.cfg.num_layers - n_top, True)
        return h, mask

    def upper(self, hidden, mask, n_top: int, deterministic: bool) -> jax.Array:
        """The top ``n_top`` layers, pooling and head on cached lower-layer output."""
        n = self.cfg.num_layers
        h = self.encoder.run_layers(hidden, mask, n - n_top, n, deterministic)
        return self.classify(mean_pool(h, mask), deterministic)


def _check_n_top(cfg: BertConfig, n_top: int) -> None:
    if not 0 <= n_top <= cfg.num_layers:
        raise ValueError(f"n_top must be in [0, {cfg.num_layers}], got {n_top}")


def classifier_logits(
    model: BertClassifier,
    params: Params,
    batch: Mapping[str, jax.Array],
    *,
    rng: jax.Array | None = None,
    prompt: jax.Array | None = None,
) -> jax.Array:
    """Full forward: ``float32[B, num_labels]``; dropout is on iff ``rng`` is given."""
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        prompt=prompt,
        deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng},
    )


def frozen_features(
    model: BertClassifier, params: Params, batch: Mapping[str, jax.Array], *, n_top: int
) -> dict[str, jax.Array]:
    """Output of the frozen part of the network, computed without dropout.

    ``n_top > 0``: ``{"hidden": float32[B, L, H], "mask": int32[B, L]}``, the hidden states
    after layer ``num_layers - n_top``. ``n_top == 0``: ``{"pooled": float32[B, H]}``, the
    mean-pooled final hidden state (only the head remains to be applied).
    """
    _check_n_top(model.cfg, n_top)
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    h, mask = model.apply({"params": params}, *args, n_top, method=BertClassifier.lower)
    if n_top == 0:
        return {"pooled": mean_pool(h, mask)}
    return {"hidden": h, "mask": mask}


def logits_from_features(
    model: BertClassifier,
    params: Params,
    features: Mapping[str, jax.Array],
    *,
    n_top: int,
    rng: jax.Array | None = None,
) -> jax.Array:
    """The top ``n_top`` layers and the head on :func:`frozen_features` output.

    Equals :func:`classifier_logits` on the same batch when ``rng is None``.
    """
    _check_n_top(model.cfg, n_top)
    variables = {"params": params}
    rngs = None if rng is None else {"dropout": rng}
    deterministic = rng is None
    if n_top == 0:
        if "pooled" not in features:
            raise ValueError("n_top=0 needs the 'pooled' features of frozen_features(n_top=0)")
        return model.apply(
            variables,
            features["pooled"],
            deterministic,
            method=BertClassifier.classify,
            rngs=rngs,
        )
    if "hidden" not in features or "mask" not in features:
        raise ValueError(f"n_top={n_top} needs the 'hidden' and 'mask' features of the same n_top")
    return model.apply(
        variables,
        features["hidden"],
        features["mask"],
        n_top,
        deterministic,
        method=BertClassifier.upper,
        rngs=rngs,
    )


def _path_names(path: tuple[Any, ...]) -> list[str]:
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                entry = getattr(entry, attr)
                break
        names.append(str(entry))
    return names


def is_top_param(path: tuple[Any, ...], n_top: int, *, num_layers: int) -> bool:
    """True for parameters of the head and of the top ``n_top`` encoder layers.

    ``path`` is a key path into the parameter dict, either plain strings
    (``("encoder", "layer_5", ...)``) or ``jax.tree_util`` key entries.
    """
    names = _path_names(path)
    if not names:
        return False
    if names[0] == "head":
        return True
    if names[0] != "encoder" or len(names) < 2 or not names[1].startswith("layer_"):
        return False
    return int(names[1].removeprefix("layer_")) >= num_layers - n_top
