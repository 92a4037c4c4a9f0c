"""Pretraining a tiny T5 with span corruption on the bundled corpus, cached on disk.

No pretrained T5 weights can be downloaded here, so fine-tuning runs on the T5 path start
from a model pretrained locally: a SentencePiece vocabulary and a T5.1.1 model of size
``tiny`` are trained on the 300 news documents of gensim's ``lee_background.cor`` with the
span-corruption objective of Raffel et al. (2020, §3.1.4, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer"):

* the corpus is tokenized and cut into windows of ``raw_length`` pieces, the largest length
  whose corrupted input and target fit ``input_length`` and ``target_length`` (EOS
  included);
* in each window ``n = round(raw_length * noise_density)`` pieces are masked in
  ``k = round(n / mean_noise_span_length)`` spans: the masked and the kept pieces are each
  cut into ``k`` random non-empty segments and interleaved, kept first;
* the input keeps the unmasked pieces with span i replaced by sentinel ``s_i``; the target
  is ``s_0 span_0 s_1 span_1 ...``; sentinels are the last ids of the model's vocabulary
  (``s_i = V - 1 - i``), after the SentencePiece pieces;
* the loss is the token-mean cross-entropy of the targets, masks redrawn every epoch.

The result is saved with orbax under ``<cache>/pretrain/t5-<hash>/`` where the hash covers
every setting and the corpus text, so the same call returns the cached model at once;
the folder is written under a temporary name and swapped in when complete
(``simfluence_jax.fileio.replace_directory``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax import fileio
from simfluence_jax.training.chunked import train_in_chunks
from simfluence_jax.training.optim import make_optimizer

PRETRAIN_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Settings of the span-corruption pretraining (all enter the cache key).

    Attributes:
      size: T5 size name (``simfluence_jax.models.t5.T5_SIZES``).
      spm_vocab_size: SentencePiece pieces requested (pad, eos, unk included).
      num_sentinels: sentinel ids appended after the pieces.
      input_length, target_length: encoder and decoder lengths.
      noise_density, mean_noise_span_length: the corruption (T5: 0.15 and 3).
      batch_size, num_steps, learning_rate, warmup_steps: Adam with linear warm-up and
        inverse-square-root decay.
      dropout_rate: dropout during pretraining.
      seed: parameter initialisation and masks.
      chunk_steps: steps per compiled call.
    """

    size: str = "tiny"
    spm_vocab_size: int = 512
    num_sentinels: int = 32
    input_length: int = 64
    target_length: int = 16
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    batch_size: int = 16
    num_steps: int = 2000
    learning_rate: float = 3e-3
    warmup_steps: int = 60
    dropout_rate: float = 0.0
    seed: int = 0
    chunk_steps: int = 50


@dataclasses.dataclass(frozen=True)
class PretrainedT5:
    """A pretrained tiny T5: where it lives and how its pretraining went.

    Attributes:
      directory: the cache folder (``params/`` orbax checkpoint, ``vocab.model``,
        ``settings.json``, ``losses.npy``).
      config: the ``T5Config`` of the model.
      params: the parameter pytree.
      vocab_path: the SentencePiece model.
      losses: ``float32[num_steps // chunk_steps]``, mean training loss per chunk.
      settings: the :class:`PretrainConfig` as a dict, plus the corpus digest.
    """

    directory: Path
    config: Any
    params: Any
    vocab_path: Path
    losses: np.ndarray
    settings: dict

    def model(
        self,
        *,
        input_length: int = 64,
        target_length: int = 8,
        loss_normalization: str = "sum",
        **overrides,
    ):
        """A ``T5Model`` starting from these parameters (``overrides``: e.g. dropout;
        ``loss_normalization``: ``"sum"`` or ``"mean"``, see ``t5_model``)."""
        from simfluence_jax.models.t5 import replace_config
        from simfluence_jax.models.t5_model import T5Model

        return T5Model(
            replace_config(self.config, **overrides),
            vocab_path=self.vocab_path,
            input_length=input_length,
            target_length=target_length,
            params=self.params,
            loss_normalization=loss_normalization,
        )


# ---------------------------------------------------------------------------------------------
# Span corruption (pure NumPy).


def _segments(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A random composition of ``n`` into ``k`` positive parts, ``int[k]``."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False)) if k > 1 else []
    return np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64)


def _span_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span)), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def noise_mask(
    length: int, *, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """``bool[length]``: alternating kept / masked spans, kept first (see module docstring)."""
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {length}")
    num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
    noise = _segments(num_noise, num_spans, rng)
    keep = _segments(length - num_noise, num_spans, rng)
    parts = []
    for k, m in zip(keep, noise):
        parts += [np.zeros(k, bool), np.ones(m, bool)]
    return np.concatenate(parts)


def corrupt(
    tokens: np.ndarray, mask: np.ndarray, *, vocab_size: int
) -> tuple[list[int], list[int]]:
    """``(inputs, targets)`` for one window: masked spans become sentinels ``V-1-i``."""
    inputs, targets, span = [], [], -1
    for i, (tok, masked) in enumerate(zip(tokens.tolist(), mask.tolist())):
        if masked:
            if i == 0 or not mask[i - 1]:
                span += 1
                inputs.append(vocab_size - 1 - span)
                targets.append(vocab_size - 1 - span)
            targets.append(tok)
        else:
            inputs.append(tok)
    return inputs, targets


def raw_length_for(
    *, input_length: int, target_length: int, noise_density: float, mean_span: float
) -> int:
    """The longest window whose corrupted input and target (plus EOS) fit the lengths."""
    best = 0
    for length in range(2, 4 * input_length):
        num_noise, num_spans = _span_counts(length, noise_density, mean_span)
        if (
            length - num_noise + num_spans + 1 <= input_length
            and num_noise + num_spans + 1 <= target_length
        ):
            best = length
    if best < 2:
        raise ValueError(f"input_length {input_length} / target_length {target_length} too short")
    return best


# ---------------------------------------------------------------------------------------------


def _corpus_digest(texts) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$SIMFLUENCE_CACHE/pretrain``, else ``~/.cache/simfluence_jax/pretrain``."""
    root = os.environ.get("SIMFLUENCE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "simfluence_jax"
    return base / "pretrain"


def pretrain_t5(
    config: PretrainConfig = PretrainConfig(),
    *,
    texts=None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> PretrainedT5:
    """Returns the tiny T5 pretrained with ``config``, training it first if not cached.

    Args:
      config: the settings.
      texts: the corpus (default: ``lee_background.cor`` through the ``lee_pretrain`` task).
      cache_dir: cache root (default :func:`default_cache_dir`).
      progress: print the loss every chunk.
    """
    from simfluence_jax.models.vocab import train_sentencepiece

    if texts is None:
        from simfluence_jax.data.tasks import get_task

        texts = get_task("lee_pretrain").train_texts
    texts = [str(t) for t in texts]
    settings = {**dataclasses.asdict(config), "corpus": _corpus_digest(texts)}
    settings["format"] = PRETRAIN_FORMAT
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"t5-{key}"
    if (target / "COMPLETE").exists():
        return load_pretrained(target)

    spm_path = train_sentencepiece(texts, vocab_size=config.spm_vocab_size, cache_dir=root / "spm")
    params, model_config, losses = _train(config, texts, spm_path, progress=progress)
    return save_pretrained(
        target,
        params=params,
        model_config=model_config,
        vocab_path=spm_path,
        losses=losses,
        settings=settings,
    )


def save_pretrained(
    target: Path, *, params, model_config, vocab_path: Path, losses: np.ndarray, settings: dict
) -> PretrainedT5:
    """Writes ``target`` in the layout :func:`load_pretrained` reads and returns it loaded.

    The folder (``params/`` orbax checkpoint, ``vocab.model``, ``settings.json`` with the
    model config, ``losses.npy``, ``COMPLETE``) is written under a temporary name and swapped
    in when complete, so a killed job never leaves a folder that reads as complete.
    """
    from simfluence_jax import checkpoints

    config_dict = dataclasses.asdict(model_config)
    config_dict["dtype"] = jnp.dtype(config_dict["dtype"]).name
    # A half-written folder from a killed run (no COMPLETE) is replaced atomically.
    with fileio.replace_directory(target) as tmp:
        shutil.copyfile(vocab_path, tmp / "vocab.model")
        np.save(tmp / "losses.npy", np.asarray(losses, np.float32))
        settings_text = json.dumps({**settings, "model_config": config_dict}, indent=1)
        fileio.write_files(tmp, {"settings.json": settings_text})
        checkpoints.checkpointer().save(
            (tmp / "params").absolute(), args=checkpoints.save_args(params)
        )
        fileio.write_files(tmp, {"COMPLETE": "ok\n"})
    return load_pretrained(target)


def load_pretrained(directory: str | Path) -> PretrainedT5:
    """Reads a folder written by :func:`pretrain_t5`."""
    from simfluence_jax import checkpoints
    from simfluence_jax.models.t5 import T5Config

    directory = fileio.resolve_directory(directory)
    if not (directory / "COMPLETE").exists():
        raise ValueError(f"{directory} is not a complete pretrained T5 (COMPLETE missing)")
    settings_file = directory / "settings.json"
    settings = fileio.read_json(
        settings_file, what="pretraining settings", required=["format", "model_config"],
        types={"model_config": dict},
    )  # fmt: skip
    if settings.get("format") != PRETRAIN_FORMAT:
        raise ValueError(
            f"{settings_file}: pretrain format {settings.get('format')}, expected {PRETRAIN_FORMAT}"
        )
    fields = {f.name for f in dataclasses.fields(T5Config)}
    stored = {k: v for k, v in settings["model_config"].items() if k in fields}
    stored["dtype"] = getattr(jnp, stored.get("dtype", "float32"))
    stored["mlp_activations"] = tuple(stored.get("mlp_activations", ("gelu", "linear")))
    model_config = T5Config(**stored)
    params = checkpoints.restore(directory / "params")
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return PretrainedT5(
        directory=directory,
        config=model_config,
        params=params,
        vocab_path=directory / "vocab.model",
        losses=fileio.read_npy(
            directory / "losses.npy", dtype=np.float32, what="pretraining losses"
        ),
        settings=settings,
    )


def span_corruption_arrays(
    windows: list[np.ndarray], config: PretrainConfig, *, vocab_size: int, rng
) -> dict[str, np.ndarray]:
    """Encoder/decoder arrays ``int32[n, length]`` of freshly corrupted windows."""
    from simfluence_jax.models.t5_model import encdec_arrays

    inputs, targets = [], []
    for window in windows:
        mask = noise_mask(
            len(window),
            noise_density=config.noise_density,
            mean_noise_span_length=config.mean_noise_span_length,
            rng=rng,
        )
        x, y = corrupt(window, mask, vocab_size=vocab_size)
        inputs.append(x)
        targets.append(y)
    return encdec_arrays(
        inputs, targets, input_length=config.input_length, target_length=config.target_length
    )


def _train(config: PretrainConfig, texts, spm_path: Path, *, progress: bool):
    from simfluence_jax.models.t5 import t5_config
    from simfluence_jax.models.t5_model import T5Model
    from simfluence_jax.models.vocab import load_sentencepiece

    vocab = load_sentencepiece(spm_path)
    pieces = vocab.get_piece_size()
    vocab_size = pieces + config.num_sentinels
    vocab_size += (-vocab_size) % 8
    model_config = t5_config(config.size, vocab_size=vocab_size, dropout_rate=config.dropout_rate)
    model = T5Model(
        model_config,
        input_length=config.input_length,
        target_length=config.target_length,
    )
    raw = raw_length_for(
        input_length=config.input_length,
        target_length=config.target_length,
        noise_density=config.noise_density,
        mean_span=config.mean_noise_span_length,
    )
    stream = np.concatenate([np.asarray(ids, np.int32) for ids in vocab.encode(texts)])
    windows = [stream[i : i + raw] for i in range(0, len(stream) - raw + 1, raw)]
    if len(windows) < config.batch_size:
        raise ValueError(f"the corpus gives {len(windows)} windows, fewer than one batch")

    optimizer = make_optimizer(
        "adam",
        learning_rate=config.learning_rate,
        schedule="rsqrt",
        warmup_steps=max(config.warmup_steps, 1),
    )

    def token_mean_loss(p, batch, rng):
        losses = model.per_example_loss(p, batch, rng=rng)
        return losses.sum() / jnp.maximum(batch["decoder_loss_weights"].sum(), 1.0)

    params, losses = train_in_chunks(
        token_mean_loss,
        model.init_random(jax.random.PRNGKey(config.seed)),
        optimizer,
        # each epoch corrupts the windows afresh
        lambda rng: span_corruption_arrays(windows, config, vocab_size=vocab_size, rng=rng),
        num_examples=len(windows),
        num_steps=config.num_steps,
        batch_size=config.batch_size,
        chunk_steps=config.chunk_steps,
        seed=config.seed,
        key=jax.random.PRNGKey(config.seed + 1),
        label="pretrain",
        progress=progress,
    )
    return params, model_config, losses
