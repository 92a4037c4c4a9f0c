"""The model registry: ``MODELS.get("minilm")`` returns a model factory (see ``protocol``).

Its entries are the ``EXTENSIONS["model"]`` of the modules of ``simfluence_jax.models`` (and
of any extension module, ``simfluence_jax.registry.add_extension_module``).
"""

from simfluence_jax.registry import Registry

MODELS: Registry = Registry("model", packages=("simfluence_jax.models",))
