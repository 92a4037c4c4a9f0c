"""simfluence_jax: training data attribution by simulating training runs, in JAX."""

from setuptools import find_packages, setup

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "numpy>=1.26",
    "tqdm>=4.60",
]
PIPELINE = [
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "gin-config==0.5.0",
    "safetensors>=0.4",
    "tokenizers>=0.15",
    "sentencepiece>=0.2",
    "gensim==4.4.0",
    "matplotlib>=3.7",
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
    packages=find_packages(include=["simfluence_jax", "simfluence_jax.*"]),
    install_requires=CORE,
    extras_require={
        "pipeline": PIPELINE,
        "seqio": ["seqio==0.0.20"],
        "test": PIPELINE + TEST,
    },
    entry_points={"console_scripts": ["simfluence=simfluence_jax.cli:main"]},
)
