"""``T5Model``: the T5.1.1 encoder-decoder behind the model protocol (``protocol.Model``).

Per-example loss (T5X's ``EncoderDecoderModel.score_batch`` negated, Raffel et al., 2020)::

    loss_b = sum_t w_bt * (logsumexp(z_bt) - z_bt[y_bt])  (+ z_loss * logsumexp(z_bt)**2)

with logits ``z``, targets ``y = decoder_target_tokens`` and weights
``w = decoder_loss_weights``. The score has no z-loss; ``z_loss > 0`` gives T5X's per-example
*training* loss (``sum_t w * (CE + z_loss * logZ**2)``, not normalised by token count).
This per-example sum is the default (``loss_normalization="sum"``), the loss T5X reports per
example; ``loss_normalization="mean"`` divides it by the example's target token count
``sum_t w_bt`` (EOS included), the per-token mean.

``example_arrays`` follows seqio's ``EncDecFeatureConverter(pack=False)`` with a T5
SentencePiece vocabulary: each text is tokenized, trimmed to ``length - 1`` pieces, given
EOS (id 1) and padded with 0; ``decoder_input_tokens`` are the padded targets shifted right
with a leading 0, and ``decoder_loss_weights = (decoder_target_tokens > 0)``.

Prompt tuning (Lester et al., 2021): ``per_example_loss(..., prompt=float32[P, emb_dim])``
prepends ``P`` soft-prompt embeddings to the encoder input, attended to as real tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.models.t5 import T5Config, T5Transformer, replace_config, t5_config
from simfluence_jax.models.t5x_checkpoint import check_params, load_t5x_checkpoint
from simfluence_jax.models.vocab import EOS_ID, PAD_ID, load_sentencepiece, train_sentencepiece

LOSS_NORMALIZATIONS = ("sum", "mean")
"""``sum``: sum of target-token cross-entropies (T5X's per-example score); ``mean``: per token."""

BATCH_KEYS = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
)


def per_example_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    *,
    z_loss: float = 0.0,
) -> jax.Array:
    """``float32[B]``: ``sum_t w * (logZ - z[y] + z_loss * logZ**2)``.

    ``logits: float[B, T, V]``, ``targets: int[B, T]``, ``weights: [B, T]``. ``logZ`` is the
    log-sum-exp over all ``V`` logits (T5X's ``cross_entropy_with_logits`` without label
    smoothing).
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), -1)[..., 0]
    token_loss = log_z - target_logit + z_loss * jnp.square(log_z)
    return jnp.sum(token_loss * weights.astype(jnp.float32), axis=-1)


def encdec_arrays(
    input_ids: Sequence[Sequence[int]],
    target_ids: Sequence[Sequence[int]],
    *,
    input_length: int,
    target_length: int,
) -> dict[str, np.ndarray]:
    """Token lists (without EOS) -> the four ``int32[N, length]`` arrays of an unpacked batch.

    Each list is trimmed to ``length - 1`` ids, EOS is appended and 0 pads the rest
    (seqio's ``append_eos_after_trim`` then ``EncDecFeatureConverter(pack=False)``).
    """
    if len(input_ids) != len(target_ids):
        raise ValueError(f"{len(input_ids)} inputs but {len(target_ids)} targets")

    def fixed(seqs: Sequence[Sequence[int]], length: int) -> np.ndarray:
        out = np.full((len(seqs), length), PAD_ID, np.int32)
        for i, ids in enumerate(seqs):
            ids = [*list(ids)[: length - 1], EOS_ID]
            out[i, : len(ids)] = ids
        return out

    inputs = fixed(input_ids, input_length)
    targets = fixed(target_ids, target_length)
    decoder_inputs = np.zeros_like(targets)
    decoder_inputs[:, 1:] = targets[:, :-1]
    return {
        "encoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": decoder_inputs,
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }


class T5Model:
    """A T5.1.1 model with a SentencePiece vocabulary and fixed feature lengths.

    Args:
      config: the architecture (``t5.t5_config('tiny')``, or inferred from a checkpoint).
      vocab_path: a T5-style SentencePiece model (pad 0, eos 1, unk 2, no BOS); needed only
        by ``example_arrays``.
      input_length, target_length: encoder and decoder lengths (seqio's feature lengths).
      params: pretrained parameters (e.g. ``load_t5x_checkpoint(...).params``); when given,
        ``init`` returns them instead of a random draw.
      loss_normalization: ``"sum"`` (default) or ``"mean"``, see the module docstring.

    Attributes: ``name`` ("t5"), ``config``, ``module`` (the Flax ``T5Transformer``),
    ``prompt_dim`` (``config.emb_dim``).
    """

    name = "t5"

    def __init__(
        self,
        config: T5Config,
        *,
        vocab_path: str | Path | None = None,
        input_length: int = 64,
        target_length: int = 16,
        params: Any = None,
        loss_normalization: str = "sum",
    ):
        if input_length < 1 or target_length < 1:
            raise ValueError(
                f"input_length and target_length must be >= 1, got {input_length}, {target_length}"
            )
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got "
                f"{loss_normalization!r}"
            )
        self.loss_normalization = loss_normalization
        self.config = config
        self.module = T5Transformer(config)
        self.input_length = int(input_length)
        self.target_length = int(target_length)
        self.prompt_dim = config.emb_dim
        self.vocab_path = None if vocab_path is None else Path(vocab_path)
        self._vocab = None
        if self.vocab_path is not None:
            self._vocab = load_sentencepiece(self.vocab_path)
            pieces = self._vocab.get_piece_size()
            if pieces > config.vocab_size:
                raise ValueError(
                    f"vocabulary {str(self.vocab_path)!r} has {pieces} pieces but the model has "
                    f"only {config.vocab_size} embedding rows; raise vocab_size"
                )
        if params is not None:
            check_params(params, config)
        self._pretrained = params

    def __repr__(self) -> str:
        # Deterministic: run stores fingerprint their settings with it (parameters are
        # fingerprinted separately).
        # The default normalization is left out so stores written before it existed still match.
        extra = ""
        if self.loss_normalization != "sum":
            extra = f", loss_normalization={self.loss_normalization!r}"
        return (
            f"T5Model(config={self.config!r}, vocab_path={str(self.vocab_path)!r}, "
            f"input_length={self.input_length}, target_length={self.target_length}{extra})"
        )

    # ------------------------------------------------------------------ parameters

    def init(self, rng: jax.Array) -> Any:
        """The pretrained parameters when the model has them, else ``init_random(rng)``."""
        if self._pretrained is not None:
            return jax.tree_util.tree_map(jnp.asarray, self._pretrained)
        return self.init_random(rng)

    def init_random(self, rng: jax.Array) -> Any:
        """A fresh draw with T5X's initialisers (query kernel scaled by ``1/sqrt(head_dim)``)."""
        dummy = jnp.zeros((1, 2), jnp.int32)
        return self.module.init(rng, dummy, dummy, dummy)["params"]

    # ------------------------------------------------------------------ forward

    def logits(
        self,
        params: Any,
        batch: Mapping[str, jax.Array],
        *,
        rng: jax.Array | None = None,
        prompt: jax.Array | None = None,
    ) -> jax.Array:
        """``float32[B, T, V]``; dropout is on iff ``rng`` is given and the rate is positive."""
        missing = [k for k in BATCH_KEYS[:3] if k not in batch]
        if missing:
            raise ValueError(f"batch lacks {missing}; it has {sorted(batch)}")
        dropout = rng is not None and self.config.dropout_rate > 0.0
        return self.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            prompt=prompt,
            enable_dropout=dropout,
            rngs={"dropout": rng} if dropout else None,
        )

    def per_example_loss(
        self,
        params: Any,
        batch: Mapping[str, jax.Array],
        *,
        rng: jax.Array | None = None,
        prompt: jax.Array | None = None,
        z_loss: float = 0.0,
    ) -> jax.Array:
        """``float32[B]``: ``-score`` of each example, summed over its target tokens or, with
        ``loss_normalization="mean"``, averaged over them (see module docstring)."""
        if "decoder_loss_weights" not in batch:
            raise ValueError(f"batch lacks 'decoder_loss_weights'; it has {sorted(batch)}")
        logits = self.logits(params, batch, rng=rng, prompt=prompt)
        weights = batch["decoder_loss_weights"]
        losses = per_example_cross_entropy(
            logits, batch["decoder_target_tokens"], weights, z_loss=z_loss
        )
        if self.loss_normalization == "mean":
            tokens = jnp.sum(jnp.asarray(weights, jnp.float32), axis=-1)
            losses = losses / jnp.maximum(tokens, 1.0)
        return losses

    # ------------------------------------------------------------------ data

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """SentencePiece ids of each text, without EOS."""
        if self._vocab is None:
            raise ValueError("this T5Model has no vocabulary; pass vocab_path")
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise ValueError(f"T5 texts and targets must be strings, got {sorted(set(bad))}")
        return self._vocab.encode(list(texts))

    def example_arrays(self, texts: Sequence[str], targets: Sequence[str]) -> dict[str, Any]:
        """``int32[N, input_length]`` / ``int32[N, target_length]`` arrays (``BATCH_KEYS``)."""
        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        return encdec_arrays(
            self.tokenize(texts),
            self.tokenize(targets),
            input_length=self.input_length,
            target_length=self.target_length,
        )


DEFAULT_VOCAB_PIECES = 8000
"""Upper bound on the pieces of a locally trained vocabulary (tiny models get fewer)."""


def bundled_vocab_texts() -> list[str]:
    """Text for the default vocabulary: gensim's ``lee_background.cor`` news documents and the
    ``pang_lee_polarity.cor`` sentences with both polarity words (see ``data.gensim_text``)."""
    from simfluence_jax.data import gensim_text

    texts, _ = gensim_text.read_polarity()
    return [*gensim_text.read_lee_background(), *texts, "positive", "negative"]


def make_t5_model(
    *,
    vocab_path: str | Path | None = None,
    vocab_texts: Sequence[str] | None = None,
    vocab_pieces: int | None = None,
    vocab_cache_dir: str | Path | None = None,
    size: str | None = None,
    checkpoint: str | Path | None = None,
    input_length: int = 64,
    target_length: int = 16,
    loss_normalization: str = "sum",
    **config_overrides: Any,
) -> T5Model:
    """Builds a ``T5Model`` by size name and/or from a T5X checkpoint.

    Architecture: without ``checkpoint``, ``t5_config(size or 'tiny', **config_overrides)``,
    randomly initialised. With ``checkpoint`` (a T5X ``checkpoint_<step>`` folder), its
    parameters, with the config inferred from their shapes and updated by
    ``config_overrides`` (e.g. ``dropout_rate``); if ``size`` is also given, the checkpoint
    must match it.

    Vocabulary: ``vocab_path`` if given; otherwise a SentencePiece model trained (and cached
    in ``vocab_cache_dir``) on ``vocab_texts``, or on ``bundled_vocab_texts()`` when those are
    not given either, with ``vocab_pieces`` pieces (default: the smaller of the model's
    embedding rows and ``DEFAULT_VOCAB_PIECES``).

    ``loss_normalization``: ``"sum"`` (T5X's per-example loss) or ``"mean"`` (per token).
    """
    if checkpoint is None:
        config = t5_config(size or "tiny", **config_overrides)
        params = None
    else:
        restored = load_t5x_checkpoint(checkpoint)
        if size is not None:
            config = t5_config(size, **config_overrides)
            check_params(restored.params, config)
        else:
            config = replace_config(restored.config, **config_overrides)
        params = restored.params
    if vocab_path is None:
        vocab_path = train_sentencepiece(
            bundled_vocab_texts() if vocab_texts is None else vocab_texts,
            vocab_size=vocab_pieces or min(config.vocab_size, DEFAULT_VOCAB_PIECES),
            cache_dir=vocab_cache_dir,
        )
    elif vocab_texts is not None:
        raise ValueError("give vocab_path or vocab_texts, not both")
    return T5Model(
        config,
        vocab_path=vocab_path,
        input_length=input_length,
        target_length=target_length,
        params=params,
        loss_normalization=loss_normalization,
    )


EXTENSIONS = {"model": {"t5": make_t5_model}}
