"""A T5.1.1 encoder-decoder Transformer in Flax, with the parameter layout of T5X.

The architecture is T5.1.1 (Raffel et al., 2020, arXiv 1910.10683; the 1.1 changes are
gated-GELU feed-forward blocks, no parameter sharing between the input embedding and the
output layer, and no dropout in pre-training), laid out exactly like T5X's
``t5x/examples/t5/network.py`` so that a T5X checkpoint's ``target`` tree *is* this module's
``params`` tree (see ``t5x_checkpoint``):

* token embedding ``token_embedder/embedding: [V, E]`` shared by encoder and decoder inputs;
  input embeddings are not scaled;
* pre-norm residual blocks with RMSNorm, ``x * rsqrt(mean(x**2) + 1e-6) * scale`` in float32,
  and a final ``encoder_norm`` / ``decoder_norm``;
* multi-head attention with no biases and **no run-time 1/sqrt(head_dim)**: that factor is
  folded into the query kernel's initialisation (and so into trained weights);
* relative position biases: one table ``relpos_bias/rel_embedding: [H, num_buckets]`` per
  stack, added to self-attention logits in every layer (never to cross-attention);
* gated feed-forward ``wo(act_0(x @ wi_0) * act_1(x @ wi_1))`` with ``('gelu', 'linear')``
  and the tanh approximation of GELU;
* masked attention logits get ``-1e10`` added; padding is ``token id == 0``, read from
  ``encoder_input_tokens`` and from ``decoder_target_tokens``;
* logits from a separate ``decoder/logits_dense/kernel: [E, V]`` or, when
  ``logits_via_embedding``, from the tied embedding divided by ``sqrt(E)``.

Every dense kernel is 2-D ``[in, out]`` and applied as ``x @ kernel``; attention projections
are ``[E, H * D]`` with heads major. Optional soft prompts (Lester et al., 2021, arXiv
2104.08691) are prepended to the encoder's input embeddings and attended to like real tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from simfluence_jax.registry import Registry

NEG_INF = -1e10
"""Additive attention bias at masked positions (T5X's value)."""

RMS_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of a T5.1.1 encoder-decoder (names follow T5X's ``network.T5Config``).

    ``num_heads * head_dim`` need not equal ``emb_dim``. ``dtype`` is the activation dtype;
    parameters are always float32. ``mlp_activations`` with more than one entry makes a gated
    block (kernels ``wi_0``, ``wi_1``, ...); a single entry gives one kernel named ``wi``.
    """

    vocab_size: int
    emb_dim: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    num_encoder_layers: int
    num_decoder_layers: int
    dropout_rate: float = 0.0
    logits_via_embedding: bool = False
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    num_buckets: int = 32
    max_distance: int = 128
    dtype: Any = jnp.float32

    def __post_init__(self):
        for field in (
            "vocab_size",
            "emb_dim",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "num_encoder_layers",
            "num_decoder_layers",
            "num_buckets",
            "max_distance",
        ):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"T5Config.{field} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.num_buckets % 2:
            raise ValueError(f"T5Config.num_buckets must be even, got {self.num_buckets}")
        acts = tuple(self.mlp_activations)
        unknown = [a for a in acts if a not in ACTIVATIONS]
        if not acts or unknown:
            raise ValueError(
                f"T5Config.mlp_activations {acts!r} invalid; known: {sorted(ACTIVATIONS)}"
            )
        object.__setattr__(self, "mlp_activations", acts)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}

T5_SIZES: Registry[T5Config] = Registry("T5 size", packages=("simfluence_jax.models",))
"""Named T5.1.1 sizes, read from ``EXTENSIONS["T5 size"]`` of the modules of
``simfluence_jax.models`` (this one declares ``tiny``, ``small`` and ``base``);
``t5_config(name, **overrides)`` builds one with overrides."""

EXTENSIONS = {
    "T5 size": {
        "tiny": T5Config(
            vocab_size=128,
            emb_dim=128,
            num_heads=4,
            head_dim=32,
            mlp_dim=512,
            num_encoder_layers=2,
            num_decoder_layers=2,
        ),
        "small": T5Config(
            vocab_size=32128,
            emb_dim=512,
            num_heads=6,
            head_dim=64,
            mlp_dim=1024,
            num_encoder_layers=8,
            num_decoder_layers=8,
            dropout_rate=0.0,
        ),
        "base": T5Config(
            vocab_size=32128,
            emb_dim=768,
            num_heads=12,
            head_dim=64,
            mlp_dim=2048,
            num_encoder_layers=12,
            num_decoder_layers=12,
            dropout_rate=0.0,
        ),
    }
}


def t5_config(size: str, **overrides: Any) -> T5Config:
    """The named size (``tiny``, ``small``, ``base``) with fields replaced by ``overrides``.

    ``tiny`` is the architecture of the T5X fixture checkpoint (emb 128, 4 heads x 32,
    mlp 512, 2 + 2 layers, vocab 128); ``small`` and ``base`` are the T5.1.1 sizes.
    """
    return replace_config(T5_SIZES.get(size), **overrides)


def replace_config(config: T5Config, **overrides: Any) -> T5Config:
    """``config`` with some fields replaced; an unknown field name raises ``ValueError``."""
    bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(T5Config)})
    if bad:
        raise ValueError(f"unknown T5Config fields {bad}")
    return dataclasses.replace(config, **overrides)


# ----------------------------------------------------------------------------- positions


def relative_position_buckets(
    query_length: int,
    key_length: int,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> np.ndarray:
    """Bucket ids ``int32[Q, K]`` of the relative positions ``key_pos - query_pos``.

    With ``n = query_pos - key_pos`` (Raffel et al., 2020, section 2.1; T5X's
    ``_relative_position_bucket``): a bidirectional stack gives each sign half the buckets
    (``n < 0`` is offset by ``num_buckets / 2``) and uses ``|n|``; a causal stack clips ``n``
    at 0. In the remaining ``b`` buckets, distances below ``b / 2`` get their own bucket and
    larger ones are spaced logarithmically up to ``max_distance``:
    ``b/2 + floor(log(n / (b/2) + eps) / log(max_distance / (b/2)) * b/2)``, capped at
    ``b - 1``, with ``eps = finfo(float32).eps`` and the logarithm of ``n`` taken in float32,
    exactly as T5X's numpy code evaluates it (checked against T5X's buckets in the tests).
    Shapes are static, so this runs in numpy at trace time.
    """
    query_pos = np.arange(query_length, dtype=np.int32)[:, None]
    key_pos = np.arange(key_length, dtype=np.int32)[None, :]
    n = query_pos - key_pos
    buckets = np.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        buckets += (n < 0).astype(np.int32) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    # float32 log divided by a float64 log, as numpy >= 2 evaluates T5X's expression.
    log_ratio = np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
    scaled = log_ratio / np.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = max_exact + scaled.astype(np.int32)
    large = np.minimum(large, num_buckets - 1)
    buckets += np.where(n < max_exact, n, large)
    return buckets.astype(np.int32)


class RelativePositionBias(nn.Module):
    """Attention bias ``float32[1, H, Q, K]`` looked up from ``rel_embedding: [H, buckets]``."""

    config: T5Config

    @nn.compact
    def __call__(self, query_length: int, key_length: int, *, bidirectional: bool) -> jax.Array:
        cfg = self.config
        table = self.param(
            "rel_embedding",
            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
            (cfg.num_heads, cfg.num_buckets),
            jnp.float32,
        )
        buckets = relative_position_buckets(
            query_length,
            key_length,
            bidirectional=bidirectional,
            num_buckets=cfg.num_buckets,
            max_distance=cfg.max_distance,
        )
        return jnp.asarray(table)[:, buckets][None].astype(cfg.dtype)


# ----------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x**2, -1) + 1e-6) * scale``, computed in float32 (T5X ``LayerNorm``)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x = x.astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + RMS_NORM_EPS)
        return (y * scale).astype(self.dtype)


def _dense(features: int, name: str, dtype: Any, init: Callable | None = None) -> nn.Dense:
    """A bias-free ``x @ kernel[in, out]`` layer."""
    return nn.Dense(
        features,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=init or nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
        name=name,
    )


def attention_bias_from_mask(mask: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``0`` where ``mask`` is true and ``-1e10`` where it is false (same shape)."""
    return jnp.where(mask, 0.0, NEG_INF).astype(dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention with T5X's parameter layout.

    ``softmax(q k^T + bias) v`` per head, with no ``1/sqrt(D)`` at run time (the query
    kernel's init carries it). Kernels: ``query``/``key``/``value`` ``[E, H*D]``,
    ``out`` ``[H*D, E]``. Dropout on the attention weights shares its mask across queries.
    """

    config: T5Config

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        bias: jax.Array,
        *,
        deterministic: bool,
    ) -> jax.Array:
        """``inputs_q: [B, Q, E]``, ``inputs_kv: [B, K, E]``, ``bias: [B|1, H|1, Q, K]`` ->
        ``[B, Q, E]``."""
        cfg = self.config
        h, d = cfg.num_heads, cfg.head_dim
        fan_in_normal = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

        def query_init(key, shape, dtype=jnp.float32):
            return fan_in_normal(key, shape, dtype) / np.sqrt(d).astype(np.float32)

        def heads(x, name, init):
            y = _dense(h * d, name, cfg.dtype, init)(x)
            return y.reshape(*y.shape[:-1], h, d)

        q = heads(inputs_q, "query", query_init)
        k = heads(inputs_kv, "key", fan_in_normal)
        v = heads(inputs_kv, "value", fan_in_normal)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(cfg.dtype)
        if not deterministic and cfg.dropout_rate > 0.0:
            keep_prob = 1.0 - cfg.dropout_rate
            shape = list(weights.shape)
            shape[-2] = 1
            keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, shape)
            weights = weights * keep.astype(weights.dtype) / jnp.asarray(keep_prob, cfg.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        y = y.reshape(*y.shape[:-2], h * d)
        return _dense(inputs_q.shape[-1], "out", cfg.dtype, fan_in_normal)(y)


class MlpBlock(nn.Module):
    """``wo(prod_i act_i(x @ wi_i))``; T5.1.1 uses ``('gelu', 'linear')`` (gated GELU)."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        cfg = self.config
        acts = cfg.mlp_activations
        hidden = None
        for i, act in enumerate(acts):
            name = "wi" if len(acts) == 1 else f"wi_{i}"
            y = ACTIVATIONS[act](_dense(cfg.mlp_dim, name, cfg.dtype)(x))
            hidden = y if hidden is None else hidden * y
        hidden = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=deterministic
        )
        return _dense(x.shape[-1], "wo", cfg.dtype)(hidden)


def _residual_dropout(cfg: T5Config, x: jax.Array, deterministic: bool) -> jax.Array:
    """Dropout whose mask is shared along the sequence axis, as in T5X."""
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class EncoderLayer(nn.Module):
    """``x + Attn(Norm(x))`` then ``x + Mlp(Norm(x))``."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, *, deterministic: bool) -> jax.Array:
        cfg = self.config
        y = RMSNorm(cfg.dtype, name="pre_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, name="attention")(y, y, bias, deterministic=deterministic)
        x = x + _residual_dropout(cfg, y, deterministic)
        y = RMSNorm(cfg.dtype, name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg, name="mlp")(y, deterministic=deterministic)
        return x + _residual_dropout(cfg, y, deterministic)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, then the MLP; all pre-norm."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        encoded: jax.Array,
        self_bias: jax.Array,
        cross_bias: jax.Array,
        *,
        deterministic: bool,
    ) -> jax.Array:
        cfg = self.config
        y = RMSNorm(cfg.dtype, name="pre_self_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, name="self_attention")(
            y, y, self_bias, deterministic=deterministic
        )
        x = x + _residual_dropout(cfg, y, deterministic)
        y = RMSNorm(cfg.dtype, name="pre_cross_attention_layer_norm")(x)
        y = MultiHeadAttention(cfg, name="encoder_decoder_attention")(
            y, encoded, cross_bias, deterministic=deterministic
        )
        x = x + _residual_dropout(cfg, y, deterministic)
        y = RMSNorm(cfg.dtype, name="pre_mlp_layer_norm")(x)
        y = MlpBlock(cfg, name="mlp")(y, deterministic=deterministic)
        return x + _residual_dropout(cfg, y, deterministic)


class Encoder(nn.Module):
    """Embedded inputs ``[B, L, E]`` and key mask ``bool[B, L]`` -> ``float32[B, L, E]``.

    The position bias is computed once per stack and reused by every layer; T5X recomputes it
    per layer from the same table, which gives the same numbers.
    """

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
        cfg = self.config
        length = x.shape[-2]
        position_bias = RelativePositionBias(cfg, name="relpos_bias")(
            length, length, bidirectional=True
        )
        pair_mask = mask[:, None, :, None] & mask[:, None, None, :]
        bias = attention_bias_from_mask(pair_mask, cfg.dtype) + position_bias
        x = _residual_dropout(cfg, x, deterministic).astype(cfg.dtype)
        for i in range(cfg.num_encoder_layers):
            x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias, deterministic=deterministic)
        x = RMSNorm(cfg.dtype, name="encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Decoder stack and output layer: ``[B, T, E]`` embedded inputs -> ``float32[B, T, V]``.

    The output layer is ``logits_dense`` (``[E, V]``, no scaling) or, when
    ``logits_via_embedding``, the shared embedding's transpose divided by ``sqrt(E)``.
    """

    config: T5Config
    shared_embedding: nn.Embed

    @nn.compact
    def __call__(
        self,
        y: jax.Array,
        encoded: jax.Array,
        target_mask: jax.Array,
        encoder_mask: jax.Array,
        *,
        deterministic: bool,
    ) -> jax.Array:
        """``y: [B, T, E]`` embedded decoder inputs, ``encoded: [B, L, E]``,
        ``target_mask: bool[B, T]`` (targets > 0), ``encoder_mask: bool[B, L]``."""
        cfg = self.config
        length = y.shape[-2]
        position_bias = RelativePositionBias(cfg, name="relpos_bias")(
            length, length, bidirectional=False
        )
        causal = jnp.tril(jnp.ones((length, length), bool))
        self_mask = causal[None, None] & target_mask[:, None, :, None] & target_mask[:, None, None]
        self_bias = attention_bias_from_mask(self_mask, cfg.dtype) + position_bias
        cross_mask = target_mask[:, None, :, None] & encoder_mask[:, None, None, :]
        cross_bias = attention_bias_from_mask(cross_mask, cfg.dtype)
        y = _residual_dropout(cfg, y, deterministic).astype(cfg.dtype)
        for i in range(cfg.num_decoder_layers):
            y = DecoderLayer(cfg, name=f"layers_{i}")(
                y, encoded, self_bias, cross_bias, deterministic=deterministic
            )
        y = RMSNorm(cfg.dtype, name="decoder_norm")(y)
        y = _residual_dropout(cfg, y, deterministic).astype(jnp.float32)
        if cfg.logits_via_embedding:
            return self.shared_embedding.attend(y) / jnp.sqrt(jnp.float32(y.shape[-1]))
        return _dense(cfg.vocab_size, "logits_dense", jnp.float32)(y)


class T5Transformer(nn.Module):
    """The whole encoder-decoder; ``params`` match a T5X checkpoint's ``target`` tree.

    ``__call__(encoder_input_tokens int32[B, L], decoder_input_tokens int32[B, T],
    decoder_target_tokens int32[B, T], *, prompt=None, enable_dropout=False)`` returns
    ``float32[B, T, V]`` logits. Dropout needs a ``'dropout'`` rng when enabled.
    ``prompt``: ``float[P, E]`` or ``float[B, P, E]`` soft-prompt embeddings prepended to the
    encoder inputs and treated as non-padding.
    """

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = nn.Embed(
            cfg.vocab_size,
            cfg.emb_dim,
            dtype=cfg.dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(stddev=1.0),
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

    def encode(
        self,
        encoder_input_tokens: jax.Array,
        *,
        prompt: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """Returns ``(encoded float32[B, P+L, E], mask bool[B, P+L])``."""
        _check_tokens("encoder_input_tokens", encoder_input_tokens)
        x = self.token_embedder(encoder_input_tokens.astype(jnp.int32))
        mask = encoder_input_tokens > 0
        if prompt is not None:
            x, mask = prepend_prompt(x, mask, prompt)
        encoded = self.encoder(x, mask, deterministic=not enable_dropout)
        return encoded, mask

    def decode(
        self,
        encoded: jax.Array,
        encoder_mask: jax.Array,
        decoder_input_tokens: jax.Array,
        decoder_target_tokens: jax.Array,
        *,
        enable_dropout: bool = False,
    ) -> jax.Array:
        """Logits ``float32[B, T, V]`` from the encoder output and its mask."""
        _check_tokens("decoder_input_tokens", decoder_input_tokens)
        if decoder_target_tokens.shape != decoder_input_tokens.shape:
            raise ValueError(
                f"decoder_target_tokens {decoder_target_tokens.shape} and decoder_input_tokens "
                f"{decoder_input_tokens.shape} must have the same shape"
            )
        y = self.token_embedder(decoder_input_tokens.astype(jnp.int32))
        return self.decoder(
            y,
            encoded,
            decoder_target_tokens > 0,
            encoder_mask,
            deterministic=not enable_dropout,
        )

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        decoder_target_tokens: jax.Array,
        *,
        prompt: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        encoded, mask = self.encode(
            encoder_input_tokens, prompt=prompt, enable_dropout=enable_dropout
        )
        return self.decode(
            encoded,
            mask,
            decoder_input_tokens,
            decoder_target_tokens,
            enable_dropout=enable_dropout,
        )


def prepend_prompt(x: jax.Array, mask: jax.Array, prompt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Prepends ``prompt: [P, E] | [B, P, E]`` to ``x: [B, L, E]``; prompt slots are unmasked.

    Returns ``(float[B, P+L, E], bool[B, P+L])``.
    """
    if prompt.ndim == 2:
        prompt = jnp.broadcast_to(prompt, (x.shape[0], *prompt.shape))
    if prompt.ndim != 3 or prompt.shape[0] != x.shape[0] or prompt.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"prompt shape {prompt.shape} must be [P, {x.shape[-1]}] or "
            f"[{x.shape[0]}, P, {x.shape[-1]}]"
        )
    prompt_mask = jnp.ones(prompt.shape[:2], bool)
    return (
        jnp.concatenate([prompt.astype(x.dtype), x], axis=1),
        jnp.concatenate([prompt_mask, mask], axis=1),
    )


def _check_tokens(name: str, tokens: jax.Array) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"{name} must be [batch, length], got shape {tokens.shape}")


def param_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """``{"encoder/layers_0/attention/query/kernel": (E, H*D), ...}`` for ``config``.

    Computed with ``jax.eval_shape``, so no parameter is materialised.
    """
    model = T5Transformer(config)
    dummy = jnp.zeros((1, 2), jnp.int32)
    tree = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, dummy, dummy)["params"])
    return flat_shapes(tree)


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Flattens a nested dict of arrays to ``{"a/b/c": shape}``."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {path: tuple(np.shape(leaf)) for path, leaf in sorted(flat.items())}
