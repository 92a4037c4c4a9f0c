"""The prompt warm-up: training the soft prompt alone, caching it, starting runs from it."""

import numpy as np
import pytest
from small_t5 import WARM_TARGETS, WARM_TEXTS, pretrained

from simfluence_jax.data.tasks import get_task
from simfluence_jax.pipeline import generate
from simfluence_jax.pipeline.config import RunsConfig
from simfluence_jax.training import make_method, make_optimizer
from simfluence_jax.training import prompt_warmup as pw

OPT = {"name": "adafactor", "learning_rate": 0.1}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("pretrain")
    pre = pretrained(cache)
    return pre.model(input_length=24, target_length=4), pre.params, cache


def _warm(small, method, **kw):
    model, params, cache = small
    opt = make_optimizer("adafactor", learning_rate=0.1)
    kwargs = {"optimizer_settings": OPT, "batch_size": 4, "chunk_steps": 10, "progress": False}
    return pw.prompt_warmup(method, model, params, WARM_TEXTS, WARM_TARGETS, opt,
                            cache_dir=cache, **{**kwargs, **kw})  # fmt: skip


def test_the_warmed_prompt_lowers_the_warmup_loss_and_is_cached(small, monkeypatch):
    model, params, cache = small
    method = make_method("prompt", n_tokens=4, warmup_steps=30)
    path = _warm(small, method)
    assert path.parent == cache and path.name.startswith("prompt-") and path.suffix == ".npz"
    arrays = model.example_arrays(WARM_TEXTS, WARM_TARGETS)
    start = make_method("prompt", n_tokens=4).init(model, params)  # the random draw
    warmed = make_method("prompt", n_tokens=4, init_from=str(path)).init(model, params)
    assert warmed["prompt"].shape == start["prompt"].shape == (4, model.prompt_dim)
    before = np.mean(method.loss(model, start, params, arrays))
    after = np.mean(method.loss(model, warmed, params, arrays))
    # A barely pretrained model: the prompt alone moves the loss a little (15.6 -> 15.1).
    assert after < before - 0.1, (before, after)
    with np.load(path) as f:
        assert f["losses"].shape == (3,) and f["losses"][-1] < f["losses"][0]

    # The same settings read the file back without training.
    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(pw, "train_in_chunks", no_training)
    assert _warm(small, method) == path
    # Steps, batch, examples, optimizer and the frozen parameters enter the key.
    monkeypatch.undo()
    assert _warm(small, make_method("prompt", n_tokens=4, warmup_steps=20)) != path
    assert _warm(small, method, batch_size=2) != path
    assert _warm(small, method, optimizer_settings={**OPT, "learning_rate": 0.05}) != path
    assert pw.params_digest(params) != pw.params_digest({"other": np.zeros(2)})
    # So do the lengths the model encodes the examples with.
    shorter = pretrained(cache).model(input_length=24, target_length=3)  # cached: a load
    assert _warm((shorter, params, cache), method) != path


def test_bad_prompt_files_and_settings_are_named(small, tmp_path):
    model, params, _ = small
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, prompt=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"shape \(3, 5\), the method needs \(4, "):
        make_method("prompt", n_tokens=4, init_from=str(wrong)).init(model, params)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(2))
    with pytest.raises(ValueError, match="holds no 'prompt' array"):
        pw.load_prompt(other, (4, 8))
    with pytest.raises(ValueError, match="does not exist"):
        pw.load_prompt(tmp_path / "missing.npz", (4, 8))
    with pytest.raises(ValueError, match="warmup_steps >= 0"):
        make_method("prompt", warmup_steps=-1).init(model, params)
    with pytest.raises(ValueError, match="starts from its warmed prompt"):
        make_method("prompt", n_tokens=4, warmup_steps=5).init(model, params)
    with pytest.raises(ValueError, match="warmup_steps >= 1"):
        _warm(small, make_method("prompt", n_tokens=4))
    opt = make_optimizer("adafactor", learning_rate=0.1)
    method = make_method("prompt", n_tokens=4, warmup_steps=5)
    with pytest.raises(ValueError, match="needs warm-up examples"):
        pw.prompt_warmup(method, model, params, [], [], opt, optimizer_settings=OPT)
    with pytest.raises(ValueError, match="2 warm-up texts but 1 targets"):
        pw.prompt_warmup(method, model, params, ["a", "b"], ["c"], opt, optimizer_settings=OPT)


def test_the_pipeline_starts_every_run_from_the_warmed_prompt(small, monkeypatch):
    model, params, cache = small
    monkeypatch.setattr(pw, "default_cache_dir", lambda: cache)
    task = get_task("similarity")
    kwargs = {"n_tokens": 4, "warmup_steps": 10}
    cfg = RunsConfig(task="similarity", method="prompt", optimizer="adafactor",
                     learning_rate=0.1, method_kwargs=kwargs)  # fmt: skip
    method = make_method("prompt", n_tokens=4, warmup_steps=10)
    opt = make_optimizer("adafactor", learning_rate=0.1)
    # The task's warm-up texts are longer than this model's inputs: they are truncated alike.
    warmed = generate._prompt_warmup(cfg, task, model, params, method, opt, {})
    assert warmed.init_from is not None and warmed.init_from.startswith(str(cache))
    saved = pw.load_prompt(warmed.init_from, (4, model.prompt_dim))
    np.testing.assert_array_equal(warmed.init(model, params)["prompt"], saved)
    with pytest.raises(ValueError, match="task 'polarity' has no warm-up split"):
        generate._prompt_warmup(cfg, get_task("polarity"), model, params, method, opt, {})
