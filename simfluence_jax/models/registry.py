"""The model registry: ``MODELS.get("minilm")`` returns a model factory (see ``protocol``)."""

from simfluence_jax.registry import Registry

MODELS: Registry = Registry("model")
