"""The Flax BERT encoder on a tiny random config: forward, backward, jit, vmap, splits, prompts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simfluence_jax.models import bert

CFG = bert.BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=3,
    num_heads=2,
    intermediate_size=32,
    max_position=32,
)
B, L = 4, 10


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([10, 7, 4, 2])
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(3, CFG.vocab_size, size=(B, L)).astype(np.int32) * mask
    ids[:, 0] = 1
    return {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.asarray(mask),
        "token_type_ids": jnp.zeros((B, L), jnp.int32),
        "label": jnp.array([0, 1, 2, 1], jnp.int32),
    }


@pytest.fixture(scope="module")
def model_params():
    model = bert.BertClassifier(CFG, num_labels=3)
    batch = make_batch()
    variables = model.init(
        jax.random.key(0), batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    return model, variables["params"]


def test_config_validation():
    with pytest.raises(ValueError, match="not divisible"):
        bert.BertConfig(hidden_size=10, num_heads=3)
    with pytest.raises(ValueError, match="num_layers"):
        bert.BertConfig(num_layers=0)


def test_param_tree_layout(model_params):
    _, params = model_params
    assert set(params) == {"encoder", "head"}
    enc = params["encoder"]
    assert set(enc) == {"embeddings", "layer_0", "layer_1", "layer_2"}
    assert set(enc["embeddings"]) == {"word", "position", "token_type", "norm"}
    layer = enc["layer_0"]
    assert set(layer) == {"attention", "attention_norm", "intermediate", "output", "output_norm"}
    assert set(layer["attention"]) == {"query", "key", "value", "output"}
    assert layer["intermediate"]["kernel"].shape == (16, 32)
    assert params["head"]["kernel"].shape == (16, 3)


def test_forward_deterministic_and_dropout(model_params):
    model, params = model_params
    batch = make_batch()
    logits = bert.classifier_logits(model, params, batch)
    assert logits.shape == (B, 3) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(logits, bert.classifier_logits(model, params, batch))
    d1 = bert.classifier_logits(model, params, batch, rng=jax.random.key(1))
    d1_again = bert.classifier_logits(model, params, batch, rng=jax.random.key(1))
    d2 = bert.classifier_logits(model, params, batch, rng=jax.random.key(2))
    np.testing.assert_array_equal(d1, d1_again)
    assert not np.allclose(d1, logits, atol=1e-4)
    assert not np.allclose(d1, d2, atol=1e-4)


def test_padding_does_not_leak(model_params):
    """Changing the ids at padded positions leaves the real rows' logits unchanged."""
    model, params = model_params
    batch = make_batch()
    noisy = dict(batch)
    noise = jnp.asarray(np.random.default_rng(5).integers(3, CFG.vocab_size, size=(B, L)))
    noisy["input_ids"] = jnp.where(batch["attention_mask"] > 0, batch["input_ids"], noise)
    np.testing.assert_allclose(
        bert.classifier_logits(model, params, noisy),
        bert.classifier_logits(model, params, batch),
        atol=1e-6,
    )


def _loss(model, params, batch, rng=None, prompt=None):
    logits = bert.classifier_logits(model, params, batch, rng=rng, prompt=prompt)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=-1))


def test_backward_under_jit(model_params):
    model, params = model_params
    batch = make_batch()
    grad_fn = jax.jit(jax.grad(lambda p, r: _loss(model, p, batch, rng=r)))
    grads = grad_fn(params, jax.random.key(3))
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) == len(jax.tree.leaves(params))
    for path, g in leaves:
        assert np.all(np.isfinite(g)), path
        name = jax.tree_util.keystr(path)
        if "token_type" in name or "position" in name or "word" in name:
            continue  # embedding rows of unused ids/positions get zero gradient
        assert np.abs(g).max() > 0, f"zero gradient for {name}"


def test_vmap_matches_batch(model_params):
    model, params = model_params
    batch = make_batch()

    def one(ids, mask, types):
        row = {"input_ids": ids[None], "attention_mask": mask[None], "token_type_ids": types[None]}
        return bert.classifier_logits(model, params, row)[0]

    per_row = jax.jit(jax.vmap(one))(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    np.testing.assert_allclose(per_row, bert.classifier_logits(model, params, batch), atol=1e-5)


@pytest.mark.parametrize("n_top", [0, 1, 2, 3])
def test_split_forward_equals_full(model_params, n_top):
    model, params = model_params
    batch = make_batch()
    full = bert.classifier_logits(model, params, batch)
    feats = jax.jit(lambda p, b: bert.frozen_features(model, p, b, n_top=n_top))(params, batch)
    if n_top == 0:
        assert set(feats) == {"pooled"} and feats["pooled"].shape == (B, CFG.hidden_size)
    else:
        assert feats["hidden"].shape == (B, L, CFG.hidden_size)
        np.testing.assert_array_equal(feats["mask"], batch["attention_mask"])
    top = jax.jit(lambda p, f: bert.logits_from_features(model, p, f, n_top=n_top))(params, feats)
    np.testing.assert_allclose(top, full, atol=1e-5)


def test_split_gradients_touch_only_top(model_params):
    """Gradients from cached features equal the full gradients on the top parameters."""
    model, params = model_params
    batch = make_batch()
    n_top = 1
    feats = bert.frozen_features(model, params, batch, n_top=n_top)

    def loss_from_features(p):
        logits = bert.logits_from_features(model, p, feats, n_top=n_top)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=-1))

    g_split = jax.grad(loss_from_features)(params)
    g_full = jax.grad(lambda p: _loss(model, p, batch))(params)
    for (path, gs), gf in zip(
        jax.tree_util.tree_leaves_with_path(g_split), jax.tree.leaves(g_full), strict=True
    ):
        if bert.is_top_param(path, n_top, num_layers=CFG.num_layers):
            np.testing.assert_allclose(gs, gf, atol=1e-5, err_msg=jax.tree_util.keystr(path))
        else:
            assert np.all(gs == 0), jax.tree_util.keystr(path)


def test_split_errors(model_params):
    model, params = model_params
    batch = make_batch()
    with pytest.raises(ValueError, match="n_top must be in"):
        bert.frozen_features(model, params, batch, n_top=4)
    feats = bert.frozen_features(model, params, batch, n_top=0)
    with pytest.raises(ValueError, match="'hidden' and 'mask'"):
        bert.logits_from_features(model, params, feats, n_top=1)


def test_is_top_param():
    def paths(tree):
        return [p for p, _ in jax.tree_util.tree_leaves_with_path(tree)]

    tree = {
        "encoder": {f"layer_{i}": {"output": {"kernel": 0}} for i in range(3)}
        | {"embeddings": {"word": {"embedding": 0}}},
        "head": {"kernel": 0, "bias": 0},
    }
    top = {
        jax.tree_util.keystr(p)
        for p in paths(tree)
        if bert.is_top_param(p, 1, num_layers=CFG.num_layers)
    }
    assert top == {
        "['encoder']['layer_2']['output']['kernel']",
        "['head']['bias']",
        "['head']['kernel']",
    }
    assert bert.is_top_param(("encoder", "layer_1", "output", "kernel"), 2, num_layers=3)
    assert not bert.is_top_param(("encoder", "embeddings", "word"), 3, num_layers=3)
    assert not bert.is_top_param(("encoder", "layer_2", "output"), 0, num_layers=3)


@pytest.mark.parametrize("position", ["after_cls", "prepend"])
def test_prompt_shapes_and_gradient(position):
    model = bert.BertClassifier(CFG, num_labels=3, prompt_position=position)
    batch = make_batch()
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    params = model.init(jax.random.key(0), *args)["params"]
    P = 5
    prompt = 0.1 * jax.random.normal(jax.random.key(1), (P, CFG.hidden_size))
    encoder = bert.BertEncoder(CFG, prompt_position=position)
    h, mask = encoder.apply({"params": params["encoder"]}, *args, prompt=prompt)
    assert h.shape == (B, L + P, CFG.hidden_size)
    assert mask.shape == (B, L + P)
    cut = 1 if position == "after_cls" else 0
    np.testing.assert_array_equal(mask[:, cut : cut + P], 1)
    np.testing.assert_array_equal(
        np.delete(np.asarray(mask), np.arange(cut, cut + P), axis=1), batch["attention_mask"]
    )
    g = jax.jit(jax.grad(lambda pr: _loss(model, params, batch, prompt=pr)))(prompt)
    assert g.shape == prompt.shape and np.abs(g).max() > 0
    with_prompt = bert.classifier_logits(model, params, batch, prompt=prompt)
    assert not np.allclose(with_prompt, bert.classifier_logits(model, params, batch), atol=1e-5)


def test_prompt_insertion_places_rows():
    e = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
    prompt = -jnp.ones((2, 4))
    types = jnp.zeros((2, 3), jnp.int32)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    out, t, m = bert.insert_prompt(e, types, mask, prompt, position="after_cls")
    np.testing.assert_array_equal(out[:, 0], e[:, 0])
    np.testing.assert_array_equal(out[:, 1:3], -1.0)
    np.testing.assert_array_equal(out[:, 3:], e[:, 1:])
    np.testing.assert_array_equal(m, [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    out, _, m = bert.insert_prompt(e, types, mask, prompt, position="prepend")
    np.testing.assert_array_equal(out[:, :2], -1.0)
    np.testing.assert_array_equal(m, [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])


def test_prompt_errors(model_params):
    model, params = model_params
    batch = make_batch()
    with pytest.raises(ValueError, match="prompt must be"):
        bert.classifier_logits(model, params, batch, prompt=jnp.zeros((3, 7)))
    with pytest.raises(ValueError, match="exceeds max_position"):
        bert.classifier_logits(model, params, batch, prompt=jnp.zeros((30, CFG.hidden_size)))


def test_mean_pool_and_normalize():
    h = jnp.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    pooled = bert.mean_pool(h, jnp.array([[1, 1, 0]]))
    np.testing.assert_allclose(pooled, [[2.0, 3.0]])
    np.testing.assert_allclose(bert.l2_normalize(pooled), [[2 / 13**0.5, 3 / 13**0.5]], rtol=1e-6)
    np.testing.assert_array_equal(bert.l2_normalize(jnp.zeros((1, 3))), 0.0)
