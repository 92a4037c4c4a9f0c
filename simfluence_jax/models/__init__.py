"""Models that the run factory and the gradient baselines can train and differentiate.

``MODELS.get(name)`` returns a model factory. The built-in ones, ``"t5"`` (T5.1.1
encoder-decoder, loads T5X checkpoints) and ``"minilm"`` (the pretrained all-MiniLM-L6-v2
encoder with a classification head), are declared in the ``EXTENSIONS`` of their modules
(``t5_model``, ``minilm``), which the registry reads on the first lookup; a new model is a
new module of this package with its own ``EXTENSIONS = {"model": {"name": factory}}``
(CONTRIBUTING.md, "Adding a model"). Every model follows ``protocol.Model``.
"""

from simfluence_jax.models.protocol import Model
from simfluence_jax.models.registry import MODELS

__all__ = ["MODELS", "Model"]
