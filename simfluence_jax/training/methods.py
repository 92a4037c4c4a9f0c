"""Training methods: which parameters a run trains and how its forward pass is computed.

A method is a small frozen object with four functions; the train step calls them and never
looks inside a model:

* ``setup(model, params, pool, test) -> MethodData``: once per run set, on the host side.
  It fixes the frozen parameters and the inputs the per-step forward reads (for the cached
  top-layer method: the lower layers' outputs for the whole pool and the whole test set).
* ``init(model, params) -> trainable``: the trainable pytree at step 0. It does not depend on
  the run's seed, so every run starts from the same model and L_0 is shared by all runs.
* ``loss(model, trainable, frozen, inputs, *, rng) -> float32[B]``: per-example losses of
  ``inputs`` (the ``MethodData.pool`` or ``.test`` pytree gathered at some ids).
* ``reference_loss(model, params, trainable, batch) -> float32[B]``: the same losses computed
  from the base parameters and raw example arrays with no cache, used to check the recorded
  losses against a fresh forward pass and by the gradient baselines.

Methods (the paper compares full fine-tuning, prompt tuning and LoRA; Guu et al., 2023, §5):

* ``full``: every parameter is trained.
* ``prompt``: a soft prompt ``P float32[n_tokens, prompt_dim]`` prepended to the input
  embeddings is trained, the model is frozen (Lester et al., 2021, "The Power of Scale for
  Parameter-Efficient Prompt Tuning"). Needs the model's optional ``prompt_dim``.
* ``lora``: each chosen 2-D kernel ``W`` becomes ``W + (alpha / r) A B`` with
  ``A float32[d_in, r]`` (Gaussian, std ``1/sqrt(d_in)``) and ``B float32[r, d_out]`` (zeros),
  only ``A, B`` trained (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language
  Models"). Works on any model whose parameters are a pytree; kernels are chosen by a regular
  expression searched in their ``/``-joined path.
* ``top_layers``: the top ``n_top`` layers and the head are trained; the lower layers are
  frozen, so their outputs are computed once per run set for the pool and the test set and
  cached. Needs the model's optional ``frozen_features``, ``per_example_loss_from_features``
  and ``top_param_filter``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.registry import Registry

TRAINING_METHODS: Registry = Registry("training method", packages=("simfluence_jax.training",))
"""Method classes by name: ``EXTENSIONS["training method"]`` of the modules of
``simfluence_jax.training`` (this one declares the four above)."""

Path = tuple[str, ...]


@flax.struct.dataclass
class MethodData:
    """What the per-step forward reads besides the trainable parameters.

    Attributes:
      frozen: frozen parameters (or ``None``), shared by all runs.
      pool: inputs of the N training examples, every leaf ``[N, ...]``.
      test: inputs of the M test examples, every leaf ``[M, ...]``.
    """

    frozen: Any
    pool: Any
    test: Any


# ---------------------------------------------------------------------------------------------
# Pytree paths: parameters are addressed by tuples of strings, ("encoder", "layer_0", "kernel").


def _key_str(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flatten_params(params) -> dict[Path, Any]:
    """``{path: leaf}`` with paths as tuples of strings, in tree order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return {tuple(_key_str(k) for k in path): leaf for path, leaf in leaves}


def nest(flat: dict[Path, Any]) -> dict:
    """Inverse of ``flatten_params`` for nested-dict trees."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return out


def replace_leaves(params, updates: dict[Path, Any]):
    """``params`` with the leaves at ``updates``' paths replaced (same tree structure)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    new = [updates.get(tuple(_key_str(k) for k in path), leaf) for path, leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, new)


def _map_in_chunks(fn, inputs, *, chunk: int):
    """Applies a jitted ``fn`` to ``inputs`` (leaves ``[n, ...]``) in row chunks, on the host."""
    n = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    parts = []
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        part = jax.tree_util.tree_map(lambda x, rows=rows: x[rows], inputs)
        parts.append(jax.device_get(fn(part)))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *parts)


def _as_arrays(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FullFineTuning:
    """Trains every parameter."""

    name: str = "full"

    def setup(self, model, params, pool, test) -> MethodData:
        return MethodData(frozen=None, pool=_as_arrays(pool), test=_as_arrays(test))

    def init(self, model, params):
        return params

    def loss(self, model, trainable, frozen, inputs, *, rng=None):
        return model.per_example_loss(trainable, inputs, rng=rng)

    def reference_loss(self, model, params, trainable, batch):
        return model.per_example_loss(trainable, batch)


@dataclasses.dataclass(frozen=True)
class PromptTuning:
    """Trains a soft prompt ``float32[n_tokens, prompt_dim]``; the model stays frozen.

    Attributes:
      n_tokens: prompt length ``P``.
      init_scale: the prompt starts uniform in ``[-init_scale, init_scale]`` (Lester et al.'s
        random-uniform initialisation).
      init_seed: seed of that draw (the same for every run).
      warmup_steps: updates of the prompt on the task's warm-up split before any run
        (``training.prompt_warmup``; the pipeline does them and sets ``init_from``); 0: none.
      warmup_batch_size: warm-up examples per update.
      init_from: a warmed-prompt ``.npz`` (``prompt_warmup.prompt_warmup``) every run starts
        from instead of the random draw.
    """

    n_tokens: int = 8
    init_scale: float = 0.5
    init_seed: int = 0
    warmup_steps: int = 0
    warmup_batch_size: int = 8
    init_from: str | None = None
    name: str = "prompt"

    def _check(self, model):
        if not hasattr(model, "prompt_dim"):
            raise ValueError(
                f"prompt tuning needs a model with `prompt_dim` and a `prompt=` argument to "
                f"per_example_loss; {getattr(model, 'name', model)!r} has none"
            )
        if self.n_tokens < 1:
            raise ValueError(f"prompt tuning needs n_tokens >= 1, got {self.n_tokens}")
        if self.warmup_steps < 0:
            raise ValueError(f"prompt tuning needs warmup_steps >= 0, got {self.warmup_steps}")

    def setup(self, model, params, pool, test) -> MethodData:
        self._check(model)
        return MethodData(frozen=params, pool=_as_arrays(pool), test=_as_arrays(test))

    def init(self, model, params):
        self._check(model)
        key = jax.random.PRNGKey(self.init_seed)
        shape = (self.n_tokens, model.prompt_dim)
        if self.init_from is not None:
            from simfluence_jax.training.prompt_warmup import load_prompt

            return {"prompt": jnp.asarray(load_prompt(self.init_from, shape))}
        if self.warmup_steps:
            raise ValueError(
                f"prompt tuning with warmup_steps={self.warmup_steps} starts from its warmed "
                "prompt: make runs through pipeline.prepare, or give init_from a file of "
                "training.prompt_warmup.prompt_warmup"
            )
        return {"prompt": jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) * self.init_scale}

    def loss(self, model, trainable, frozen, inputs, *, rng=None):
        return model.per_example_loss(frozen, inputs, rng=rng, prompt=trainable["prompt"])

    def reference_loss(self, model, params, trainable, batch):
        return model.per_example_loss(params, batch, prompt=trainable["prompt"])


@dataclasses.dataclass(frozen=True)
class LoRA:
    """Low-rank deltas ``W + (alpha / rank) A B`` on 2-D kernels whose path matches ``target``.

    Attributes:
      rank: ``r``.
      alpha: scale numerator; the delta is multiplied by ``alpha / rank``.
      target: regular expression searched in the ``/``-joined parameter path.
      init_seed: seed of the Gaussian ``A`` (the same for every run).
    """

    rank: int = 8
    alpha: float = 16.0
    target: str = r"kernel$"
    init_seed: int = 0
    name: str = "lora"

    def targets(self, params) -> dict[Path, Any]:
        pattern = re.compile(self.target)
        chosen = {
            path: leaf
            for path, leaf in flatten_params(params).items()
            if jnp.ndim(leaf) == 2 and pattern.search("/".join(path))
        }
        if not chosen:
            raise ValueError(f"LoRA target {self.target!r} matches no 2-D parameter")
        return chosen

    def setup(self, model, params, pool, test) -> MethodData:
        self.targets(params)
        return MethodData(frozen=params, pool=_as_arrays(pool), test=_as_arrays(test))

    def init(self, model, params):
        if self.rank < 1:
            raise ValueError(f"LoRA needs rank >= 1, got {self.rank}")
        chosen = self.targets(params)
        keys = jax.random.split(jax.random.PRNGKey(self.init_seed), len(chosen))
        flat = {}
        for key, (path, kernel) in zip(keys, chosen.items()):
            d_in, d_out = kernel.shape
            a = jax.random.normal(key, (d_in, self.rank), jnp.float32) / np.sqrt(d_in)
            flat[path] = {"lora_a": a, "lora_b": jnp.zeros((self.rank, d_out), jnp.float32)}
        return nest(flat)

    def merged(self, params, trainable):
        """The base parameters with every low-rank delta added."""
        scale = self.alpha / self.rank
        base = flatten_params(params)
        deltas = flatten_params(trainable)
        updates = {}
        for path, a in deltas.items():
            if path[-1] != "lora_a":
                continue
            kernel_path = path[:-1]
            b = deltas[kernel_path + ("lora_b",)]
            kernel = base[kernel_path]
            updates[kernel_path] = kernel + (scale * (a @ b)).astype(kernel.dtype)
        return replace_leaves(params, updates)

    def loss(self, model, trainable, frozen, inputs, *, rng=None):
        return model.per_example_loss(self.merged(frozen, trainable), inputs, rng=rng)

    def reference_loss(self, model, params, trainable, batch):
        return model.per_example_loss(self.merged(params, trainable), batch)


@dataclasses.dataclass(frozen=True)
class TopLayers:
    """Trains the top ``n_top`` layers and the head on cached lower-layer outputs.

    The cached features are computed without dropout (the lower layers are frozen and run in
    inference mode); dropout inside the top layers still follows the step rng.

    Attributes:
      n_top: number of top layers trained (0 trains the head alone).
      feature_batch_size: rows per call when computing the cached features.
    """

    n_top: int = 1
    feature_batch_size: int = 64
    name: str = "top_layers"

    def _check(self, model):
        needed = ("frozen_features", "per_example_loss_from_features", "top_param_filter")
        missing = [attr for attr in needed if not hasattr(model, attr)]
        if missing:
            raise ValueError(
                f"the top_layers method needs a model with {', '.join(needed)}; "
                f"{getattr(model, 'name', model)!r} lacks {', '.join(missing)}"
            )

    def split(self, model, params) -> dict[Path, Any]:
        top = {
            p: v for p, v in flatten_params(params).items() if model.top_param_filter(p, self.n_top)
        }
        if not top:
            raise ValueError(f"top_param_filter selects no parameter for n_top={self.n_top}")
        return top

    def setup(self, model, params, pool, test) -> MethodData:
        self._check(model)
        featurize = jax.jit(lambda batch: model.frozen_features(params, batch, n_top=self.n_top))

        def cached(arrays):
            arrays = _as_arrays(arrays)
            feats = _map_in_chunks(featurize, arrays, chunk=self.feature_batch_size)
            return {"features": _as_arrays(feats), "batch": arrays}

        return MethodData(frozen=params, pool=cached(pool), test=cached(test))

    def init(self, model, params):
        self._check(model)
        return nest(self.split(model, params))

    def merged(self, params, trainable):
        return replace_leaves(params, flatten_params(trainable))

    def loss(self, model, trainable, frozen, inputs, *, rng=None):
        return model.per_example_loss_from_features(
            self.merged(frozen, trainable),
            inputs["features"],
            inputs["batch"],
            n_top=self.n_top,
            rng=rng,
        )

    def reference_loss(self, model, params, trainable, batch):
        return model.per_example_loss(self.merged(params, trainable), batch)


def make_method(name: str, **kwargs):
    """A training method by name (``full``, ``prompt``, ``lora``, ``top_layers``)."""
    return TRAINING_METHODS.get(name)(**kwargs)


EXTENSIONS = {
    "training method": {
        "full": FullFineTuning,
        "prompt": PromptTuning,
        "lora": LoRA,
        "top_layers": TopLayers,
    }
}
