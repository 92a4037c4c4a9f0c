"""The T5.1.1 module and its protocol adapter on tiny configs (no fixtures needed)."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simfluence_jax.models import t5
from simfluence_jax.models.protocol import Model
from simfluence_jax.models.registry import MODELS
from simfluence_jax.models.t5_model import T5Model, encdec_arrays, per_example_cross_entropy
from simfluence_jax.models.vocab import train_sentencepiece

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park and barked",
    "good film with a great plot",
    "awful acting and a slow scene",
]
TARGETS = ["positive", "negative", "positive", "negative"]

# Narrow widths keep compiles and steps fast; two layers per stack keep the layer wiring honest.
MICRO = {"emb_dim": 32, "num_heads": 2, "head_dim": 16, "mlp_dim": 64, "vocab_size": 64}


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    corpus = (TEXTS + TARGETS) * 5
    return train_sentencepiece(corpus, vocab_size=60, cache_dir=tmp_path_factory.mktemp("spm"))


def _random_batch(rng, *, batch=3, input_length=12, target_length=6, vocab=64):
    """Token arrays with some padding in both encoder and decoder rows."""
    k1, k2 = jax.random.split(rng)
    inputs = np.array(jax.random.randint(k1, (batch, input_length), 3, vocab), np.int32)
    targets = np.array(jax.random.randint(k2, (batch, target_length), 3, vocab), np.int32)
    in_lens = np.linspace(2, input_length, batch).astype(int)
    tg_lens = np.linspace(2, target_length, batch).astype(int)
    for i in range(batch):
        inputs[i, in_lens[i] - 1] = 1
        inputs[i, in_lens[i] :] = 0
        targets[i, tg_lens[i] - 1] = 1
        targets[i, tg_lens[i] :] = 0
    decoder_inputs = np.zeros_like(targets)
    decoder_inputs[:, 1:] = targets[:, :-1]
    return {
        "encoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": decoder_inputs,
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }


@pytest.fixture(scope="module")
def tiny():
    model = T5Model(t5.t5_config("tiny", **MICRO), input_length=12, target_length=6)
    params = jax.jit(model.init)(jax.random.PRNGKey(0))
    return model, params


# ----------------------------------------------------------------------------- config


def test_named_sizes_parameter_counts():
    counts = {
        size: sum(int(np.prod(s)) for s in t5.param_shapes(t5.t5_config(size)).values())
        for size in ("tiny", "small", "base")
    }
    # small and base: the published T5.1.1 sizes (untied 32128-row embedding and head).
    assert counts == {"tiny": 1_214_208, "small": 76_961_152, "base": 247_577_856}


def test_config_errors():
    with pytest.raises(ValueError, match="known: base, small, tiny"):
        t5.t5_config("huge")
    with pytest.raises(ValueError, match="unknown T5Config fields"):
        t5.t5_config("tiny", hidden_size=3)
    with pytest.raises(ValueError, match="num_heads"):
        t5.t5_config("tiny", num_heads=0)
    with pytest.raises(ValueError, match="dropout_rate"):
        t5.t5_config("tiny", dropout_rate=1.5)
    with pytest.raises(ValueError, match="mlp_activations"):
        t5.t5_config("tiny", mlp_activations=("gelu", "swish2"))
    assert t5.t5_config("tiny", vocab_size=64).vocab_size == 64


def test_relpos_buckets_properties():
    enc = t5.relative_position_buckets(300, 300, bidirectional=True)
    dec = t5.relative_position_buckets(300, 300, bidirectional=False)
    n = np.arange(300)[:, None] - np.arange(300)[None, :]  # query - key
    # exact buckets for small distances, then log-spaced, never beyond the table
    np.testing.assert_array_equal(enc[n == 0], 0)
    np.testing.assert_array_equal(enc[(n > 0) & (n < 8)], n[(n > 0) & (n < 8)])
    np.testing.assert_array_equal(enc[(n < 0) & (n > -8)], 16 - n[(n < 0) & (n > -8)])
    assert enc.min() == 0 and enc.max() == 31 and dec.min() == 0 and dec.max() == 31
    np.testing.assert_array_equal(dec[n <= 0], 0)  # causal: future keys all share bucket 0
    np.testing.assert_array_equal(dec[(n > 0) & (n < 16)], n[(n > 0) & (n < 16)])
    assert (dec[n >= 128] == 31).all() and (enc[n >= 128] == 15).all()
    assert (np.diff(dec[-1, ::-1]) >= 0).all()  # monotone in distance


def test_query_kernel_carries_attention_scale():
    params = jax.jit(T5Model(t5.t5_config("tiny")).init_random)(jax.random.PRNGKey(0))
    attn = params["encoder"]["layers_0"]["attention"]
    ratio = np.std(attn["key"]["kernel"]) / np.std(attn["query"]["kernel"])
    assert abs(ratio / np.sqrt(32) - 1) < 0.1


def test_init_tree_matches_shapes(tiny):
    model, params = tiny
    assert t5.flat_shapes(params) == t5.param_shapes(model.config)


# ----------------------------------------------------------------------------- forward


def test_forward_backward_jit(tiny):
    model, params = tiny
    batch = _random_batch(jax.random.PRNGKey(1))
    loss_fn = jax.jit(model.per_example_loss)
    losses = loss_fn(params, batch)
    assert losses.shape == (3,) and losses.dtype == jnp.float32
    assert np.isfinite(np.asarray(losses)).all() and (np.asarray(losses) > 0).all()
    loss_fn(params, batch)
    assert loss_fn._cache_size() == 1  # no recompilation on the second call

    grad_fn = jax.jit(jax.value_and_grad(lambda p: model.per_example_loss(p, batch).sum()))
    value, grads = grad_fn(params)
    norms = jax.tree_util.tree_map(lambda g: float(jnp.linalg.norm(g)), grads)
    flat = t5.flat_shapes(grads)
    assert set(flat) == set(t5.flat_shapes(params))
    assert all(np.isfinite(v) and v > 0 for v in jax.tree_util.tree_leaves(norms)), norms
    new = jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads)
    assert float(model.per_example_loss(new, batch).sum()) < float(value)


def test_vmap_matches_batch(tiny):
    model, params = tiny
    batch = _random_batch(jax.random.PRNGKey(2))
    batched = jax.jit(model.per_example_loss)(params, batch)

    def one(row):
        return model.per_example_loss(params, jax.tree_util.tree_map(lambda a: a[None], row))[0]

    np.testing.assert_allclose(jax.jit(jax.vmap(one))(batch), batched, rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_loss(tiny):
    model, params = tiny
    batch = _random_batch(jax.random.PRNGKey(3))
    longer = {
        "encoder_input_tokens": np.pad(batch["encoder_input_tokens"], ((0, 0), (0, 7))),
        **{
            k: np.pad(batch[k], ((0, 0), (0, 5)))
            for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights")
        },
    }
    loss = jax.jit(model.per_example_loss)
    np.testing.assert_allclose(loss(params, longer), loss(params, batch), rtol=1e-5)


def test_loss_equals_manual_cross_entropy(tiny):
    model, params = tiny
    batch = _random_batch(jax.random.PRNGKey(4))
    logits = np.asarray(jax.jit(model.logits)(params, batch), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = batch["decoder_target_tokens"]
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    want = -(picked * batch["decoder_loss_weights"]).sum(-1)
    np.testing.assert_allclose(jax.jit(model.per_example_loss)(params, batch), want, rtol=1e-5)
    log_z = np.log(np.exp(logits).sum(-1))
    with_z = want + 1e-4 * (np.square(log_z) * batch["decoder_loss_weights"]).sum(-1)
    got = per_example_cross_entropy(
        jnp.asarray(logits, jnp.float32),
        targets,
        batch["decoder_loss_weights"],
        z_loss=1e-4,
    )
    np.testing.assert_allclose(got, with_z, rtol=1e-5)


def test_tied_logits_are_scaled_embedding_products():
    config = t5.t5_config("tiny", logits_via_embedding=True, **MICRO)
    module = t5.T5Transformer(config)
    batch = _random_batch(jax.random.PRNGKey(5))
    args = (
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
    )
    params = jax.jit(module.init)(jax.random.PRNGKey(6), *args)["params"]
    assert "logits_dense" not in params["decoder"]
    apply = jax.jit(
        lambda p: module.apply(
            {"params": p}, *args, capture_intermediates=True, mutable=["intermediates"]
        )
    )
    logits, state = apply(params)
    hidden = state["intermediates"]["decoder"]["decoder_norm"]["__call__"][0]
    want = hidden @ params["token_embedder"]["embedding"].T / np.sqrt(32.0)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- dropout


def test_dropout_on_and_off():
    model = T5Model(t5.t5_config("tiny", dropout_rate=0.3, **MICRO))
    params = jax.jit(model.init)(jax.random.PRNGKey(0))
    batch = _random_batch(jax.random.PRNGKey(7))
    loss = jax.jit(model.per_example_loss)
    off_a, off_b = loss(params, batch), loss(params, batch, rng=None)
    on_a = loss(params, batch, rng=jax.random.PRNGKey(1))
    on_a2 = loss(params, batch, rng=jax.random.PRNGKey(1))
    on_b = loss(params, batch, rng=jax.random.PRNGKey(2))
    np.testing.assert_array_equal(off_a, off_b)
    np.testing.assert_array_equal(on_a, on_a2)
    assert np.abs(np.asarray(on_a - off_a)).min() > 1e-4
    assert np.abs(np.asarray(on_a - on_b)).max() > 1e-4

    # with rate 0 an rng changes nothing
    no_dropout = T5Model(t5.t5_config("tiny", **MICRO))
    loss0 = jax.jit(no_dropout.per_example_loss)
    np.testing.assert_array_equal(loss0(params, batch, rng=jax.random.PRNGKey(1)), off_a)


def test_prompt_tuning(tiny):
    model, params = tiny
    assert model.prompt_dim == 32
    batch = _random_batch(jax.random.PRNGKey(8))
    prompt = 0.5 * jax.random.normal(jax.random.PRNGKey(9), (5, model.prompt_dim))
    loss = jax.jit(model.per_example_loss)
    with_prompt = loss(params, batch, prompt=prompt)
    assert with_prompt.shape == (3,)
    assert np.abs(np.asarray(with_prompt - loss(params, batch))).min() > 1e-5
    per_row = jnp.broadcast_to(prompt, (3, *prompt.shape))
    np.testing.assert_allclose(loss(params, batch, prompt=per_row), with_prompt, rtol=1e-6)

    module = model.module
    encode = jax.jit(
        lambda p, x, soft: module.apply({"params": p}, x, prompt=soft, method="encode")
    )
    encoded, mask = encode(params, batch["encoder_input_tokens"], prompt)
    assert encoded.shape == (3, 5 + 12, 32)
    np.testing.assert_array_equal(mask[:, :5], True)
    np.testing.assert_array_equal(mask[:, 5:], batch["encoder_input_tokens"] > 0)

    def frozen(p, soft):
        return model.per_example_loss(jax.lax.stop_gradient(p), batch, prompt=soft).sum()

    g_params, g_prompt = jax.jit(jax.grad(frozen, argnums=(0, 1)))(params, prompt)
    assert g_prompt.shape == prompt.shape
    assert float(jnp.linalg.norm(g_prompt)) > 0 and np.isfinite(np.asarray(g_prompt)).all()
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(g_params))
    trained = prompt - 1e-2 * g_prompt
    assert float(loss(params, batch, prompt=trained).sum()) < float(with_prompt.sum())


def test_prompt_shape_error(tiny):
    model, params = tiny
    batch = _random_batch(jax.random.PRNGKey(8))
    with pytest.raises(ValueError, match="prompt shape"):
        model.per_example_loss(params, batch, prompt=jnp.zeros((5, 31)))


# ----------------------------------------------------------------------------- data


def test_encdec_arrays_conventions():
    arrays = encdec_arrays(
        [[5, 6, 7], list(range(3, 20))], [[8], [9, 10, 11, 12]], input_length=6, target_length=4
    )
    np.testing.assert_array_equal(
        arrays["encoder_input_tokens"], [[5, 6, 7, 1, 0, 0], [3, 4, 5, 6, 7, 1]]
    )
    np.testing.assert_array_equal(arrays["decoder_target_tokens"], [[8, 1, 0, 0], [9, 10, 11, 1]])
    np.testing.assert_array_equal(arrays["decoder_input_tokens"], [[0, 8, 1, 0], [0, 9, 10, 11]])
    np.testing.assert_array_equal(arrays["decoder_loss_weights"], [[1, 1, 0, 0], [1, 1, 1, 1]])
    assert all(a.dtype == np.int32 for a in arrays.values())


def test_example_arrays_and_registry(vocab_path):
    factory = MODELS.get("t5")
    model = factory(vocab_path=vocab_path, size="tiny", input_length=16, target_length=8, **MICRO)
    assert isinstance(model, Model) and model.name == "t5"
    arrays = model.example_arrays(TEXTS, TARGETS)
    assert arrays["encoder_input_tokens"].shape == (4, 16)
    assert arrays["decoder_target_tokens"].shape == (4, 8)
    for row, text in zip(arrays["encoder_input_tokens"], TEXTS, strict=True):
        ids = [*model.tokenize([text])[0][:15], 1]  # trimmed to 15 pieces, then EOS
        np.testing.assert_array_equal(row[: len(ids)], ids)
        assert (row[len(ids) :] == 0).all()
    assert (arrays["encoder_input_tokens"][:, -1] == 1).any()  # some text was trimmed
    params = jax.jit(model.init)(jax.random.PRNGKey(0))
    assert jax.jit(model.per_example_loss)(params, arrays).shape == (4,)


def test_example_arrays_errors(vocab_path):
    model = T5Model(t5.t5_config("tiny"), vocab_path=vocab_path)
    with pytest.raises(ValueError, match="2 texts but 1 targets"):
        model.example_arrays(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="must be strings"):
        model.example_arrays(["a"], [1])
    with pytest.raises(ValueError, match="has no vocabulary"):
        T5Model(t5.t5_config("tiny")).example_arrays(["a"], ["b"])
    with pytest.raises(ValueError, match="embedding rows"):
        T5Model(t5.t5_config("tiny", vocab_size=16), vocab_path=vocab_path)
    with pytest.raises(ValueError, match="batch lacks"):
        model.per_example_loss({}, {"encoder_input_tokens": np.zeros((1, 4), np.int32)})


def test_factory_trains_vocab(tmp_path, monkeypatch):
    model = MODELS.get("t5")(
        vocab_texts=TEXTS * 5, vocab_pieces=40, vocab_cache_dir=tmp_path, **MICRO
    )
    assert model.vocab_path.parent == tmp_path
    assert 3 < model._vocab.get_piece_size() <= 40
    with pytest.raises(ValueError, match="not both"):
        MODELS.get("t5")(vocab_path=model.vocab_path, vocab_texts=TEXTS)

    if importlib.util.find_spec("gensim") is None:
        pytest.skip("the default vocabulary is trained on text from the gensim wheel")
    monkeypatch.setenv("SIMFLUENCE_CACHE", str(tmp_path / "cache"))
    default = MODELS.get("t5")(size="tiny")
    assert default.vocab_path.parent == tmp_path / "cache" / "spm"
    assert default._vocab.get_piece_size() == 128
    arrays = default.example_arrays(TEXTS, TARGETS)
    assert (arrays["decoder_target_tokens"][:, 0] > 2).all()  # targets are not <unk>


# ----------------------------------------------------------------------------- loss options


def test_loss_normalization_sum_is_t5x_and_mean_is_per_token(tiny, vocab_path):
    model, params = tiny
    batch = _random_batch(jax.random.PRNGKey(10))
    summed = jax.jit(model.per_example_loss)(params, batch)
    assert model.loss_normalization == "sum"
    per_token = T5Model(model.config, input_length=12, target_length=6, loss_normalization="mean")
    mean = jax.jit(per_token.per_example_loss)(params, batch)
    tokens = batch["decoder_loss_weights"].sum(-1)
    assert len(set(tokens.tolist())) > 1  # rows of different target lengths
    np.testing.assert_allclose(mean, summed / tokens, rtol=1e-6)
    # the default keeps the repr (run stores fingerprint it); the option shows in it
    assert "loss_normalization" not in repr(model)
    assert "loss_normalization='mean'" in repr(per_token)
    factory = MODELS.get("t5")(
        size="tiny", loss_normalization="mean", vocab_path=vocab_path, **MICRO
    )
    assert factory.loss_normalization == "mean"
    with pytest.raises(ValueError, match="loss_normalization must be one of"):
        T5Model(model.config, loss_normalization="token")
