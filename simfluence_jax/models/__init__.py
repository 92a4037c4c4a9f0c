"""Models that the run factory and the gradient baselines can train and differentiate.

Importing this package registers the built-in models in ``MODELS``: ``"t5"`` (T5.1.1
encoder-decoder, loads T5X checkpoints) and ``"minilm"`` (the pretrained all-MiniLM-L6-v2
encoder with a classification head). Both follow ``protocol.Model``.
"""

from simfluence_jax.models import minilm, t5_model  # noqa: F401  (register the built-ins)
from simfluence_jax.models.protocol import Model
from simfluence_jax.models.registry import MODELS

__all__ = ["MODELS", "Model"]
