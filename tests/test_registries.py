"""Every registry of models, tasks, training, search and gradient scores is filled from
declarations (``EXTENSIONS``), found on lookup: no import kept for its side effect, the
same names as before, and a module outside the package joins them all at once."""

import json
import subprocess
import sys
import textwrap

import pytest

REGISTRIES = {
    # registry: (module, attribute, names, {name: declaring module})
    "model": ("simfluence_jax.models", "MODELS", ["minilm", "t5"], {"t5": "models.t5_model"}),
    "T5 size": ("simfluence_jax.models.t5", "T5_SIZES", ["base", "small", "tiny"], {}),
    "task": (
        "simfluence_jax.data.tasks",
        "TASKS",
        ["analogy", "analogy_relation", "jsonl", "lee_pretrain", "polarity", "similarity", "tsv"],
        {"analogy": "data.word_tasks", "polarity": "data.tasks"},
    ),
    "training method": (
        "simfluence_jax.training.methods",
        "TRAINING_METHODS",
        ["full", "lora", "prompt", "top_layers"],
        {"lora": "training.methods"},
    ),
    "optimizer": (
        "simfluence_jax.training.optim",
        "OPTIMIZERS",
        ["adafactor", "adam", "adamw", "lion", "sgd"],
        {},
    ),
    "learning-rate schedule": (
        "simfluence_jax.training.optim",
        "SCHEDULES",
        ["constant", "cosine", "linear", "rsqrt"],
        {},
    ),
    "search method": (
        "simfluence_jax.search.methods",
        "SEARCH_METHODS",
        ["gradient", "greedy"],
        {"greedy": "search.methods"},
    ),
    "influence solver": (
        "simfluence_jax.gradients.ihvp",
        "IHVP_SOLVERS",
        ["cg", "exact", "lanczos", "lissa"],
        {"cg": "gradients.ihvp.solvers"},
    ),
    "gradient score": (
        "simfluence_jax.gradients.scores",
        "SCORE_KINDS",
        ["checkpoints", "ekfac", "final", "influence", "trak"],
        {"final": "gradients.scores"},
    ),
}


def _run(code: str, env_modules: str = "", path: str = "") -> object:
    import os

    env = dict(os.environ)
    if env_modules:
        env["SIMFLUENCE_JAX_EXTENSIONS"] = env_modules
    if path:
        env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_each_registry_finds_its_declared_names(kind):
    import importlib

    module, attribute, names, origins = REGISTRIES[kind]
    registry = getattr(importlib.import_module(module), attribute)
    assert registry.kind == kind
    assert registry.names() == names
    for name, origin in origins.items():
        assert registry.origin(name) == f"simfluence_jax.{origin}"
    with pytest.raises(ValueError, match=f"unknown {kind} 'nope'; known: {names[0]}"):
        registry.get("nope")


def test_the_packages_import_no_module_for_its_registrations():
    code = (
        "import json, sys\n"
        "import simfluence_jax.models, simfluence_jax.data.tasks\n"
        "print(json.dumps(sorted(m for m in ('simfluence_jax.models.minilm', "
        "'simfluence_jax.models.t5_model', 'simfluence_jax.data.word_tasks') "
        "if m in sys.modules)))\n"
    )
    assert _run(code) == []


def test_one_module_outside_the_package_extends_every_registry(tmp_path):
    (tmp_path / "my_lab_extensions.py").write_text(
        textwrap.dedent(
            """
            import dataclasses

            from simfluence_jax.data.tasks import Task
            from simfluence_jax.training.methods import FullFineTuning


            def tiny_task(**kwargs):
                return Task("tiny", ("a b", "c d"), ("x", "y"), label_names=("x", "y"))


            @dataclasses.dataclass(frozen=True)
            class Everything(FullFineTuning):
                name: str = "everything"


            EXTENSIONS = {
                "model": {"my_model": lambda **kw: "a model"},
                "task": {"tiny": tiny_task},
                "training method": {"everything": Everything},
            }
            """
        )
    )
    code = (
        "import json\n"
        "from simfluence_jax.models import MODELS\n"
        "from simfluence_jax.data.tasks import get_task\n"
        "from simfluence_jax.training.methods import make_method\n"
        "print(json.dumps([MODELS.get('my_model')(), get_task('tiny').num_train, "
        "make_method('everything').name, MODELS.origin('my_model'), 'minilm' in MODELS]))\n"
    )
    out = _run(code, env_modules="my_lab_extensions", path=str(tmp_path))
    assert out == ["a model", 2, "everything", "my_lab_extensions", True]


def test_a_lookup_during_a_modules_import_does_not_lose_its_entries(tmp_path, monkeypatch):
    # The module looks its own registry up before its EXTENSIONS exists; the registry must
    # read it again at the next lookup instead of marking it read with nothing declared.
    pkg = tmp_path / "partial_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "early.py").write_text(
        "from simfluence_jax.registry import Registry\n"
        "REG = Registry('widget', packages=('partial_pkg',))\n"
        "BEFORE = REG.names()\n"
        "EXTENSIONS = {'widget': {'w': 42}}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    early = importlib.import_module("partial_pkg.early")
    assert early.BEFORE == []
    assert early.REG.get("w") == 42
    assert early.REG.names() == ["w"]
