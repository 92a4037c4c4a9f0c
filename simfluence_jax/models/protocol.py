"""The model protocol: what the run factory and the gradient baselines need of a model.

A model plugs into simfluence_jax by providing four things and nothing more:

* ``init(rng) -> params``: a fresh parameter pytree (pretrained weights are loaded by
  the model's own constructor or loader, not here);
* ``per_example_loss(params, batch, *, rng=None) -> float32[B]``: the loss of every example
  in ``batch``; ``rng`` is ``None`` for a deterministic pass (no dropout) and a PRNG key
  otherwise;
* ``example_arrays(texts, targets) -> dict[str, int32[N, ...]]``: turns raw examples
  into fixed-shape arrays; a batch is these arrays gathered at some ids;
* ``name``: a short string used in run metadata.

Example::

    import jax, jax.numpy as jnp

    class LinearProbe:
        name = "linear_probe"

        def init(self, rng):
            return {"w": jax.random.normal(rng, (16, 2)) * 0.01}

        def per_example_loss(self, params, batch, *, rng=None):
            logits = batch["features"] @ params["w"]
            logp = jax.nn.log_softmax(logits)
            return -jnp.take_along_axis(logp, batch["label"][:, None], axis=-1)[:, 0]

        def example_arrays(self, texts, targets):
            ...

Batches never mix padding into the loss: the trainer passes a per-example weight
separately, so ``per_example_loss`` only has to be correct row by row.

Optional capabilities, detected with ``hasattr`` by the training methods that need them:

* prompt tuning: ``prompt_dim: int`` and ``per_example_loss(..., prompt=float32[P, prompt_dim])``,
  the soft prompt inserted into the (encoder) input embeddings (where is model-specific:
  MiniLM puts it after [CLS], T5 before the first input token);
* cached lower layers: ``frozen_features(params, batch, *, n_top) -> pytree of [B, ...]`` (the
  output of every layer below the top ``n_top``, computed once) and
  ``per_example_loss_from_features(params, features, batch, *, n_top, rng=None) -> float32[B]``,
  which runs only the top ``n_top`` layers and the head; ``top_param_filter(path, n_top) -> bool``
  (``path``: the tuple of dict keys leading to a parameter)
  tells which parameters those are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax

Params = Any
Batch = Mapping[str, jax.Array]


@runtime_checkable
class Model(Protocol):
    """Structural interface every trainable model follows (see module docstring)."""

    name: str

    def init(self, rng: jax.Array) -> Params:
        """Returns a fresh parameter pytree."""
        ...

    def per_example_loss(
        self, params: Params, batch: Batch, *, rng: jax.Array | None = None
    ) -> jax.Array:
        """Returns ``float32[B]``: the loss of each example in ``batch``."""
        ...

    def example_arrays(self, texts: Sequence[str], targets: Sequence[Any]) -> dict[str, Any]:
        """Returns fixed-shape arrays ``[N, ...]`` for N raw examples."""
        ...
