"""Span-corruption pretraining of the tiny T5 and its cache."""

import numpy as np
import pytest

from simfluence_jax.training.pretrain import (
    PretrainConfig,
    corrupt,
    noise_mask,
    pretrain_t5,
    raw_length_for,
)


def test_noise_mask_has_the_requested_density_and_spans():
    rng = np.random.default_rng(0)
    for length in (10, 57, 200):
        mask = noise_mask(length, noise_density=0.15, mean_noise_span_length=3.0, rng=rng)
        assert mask.shape == (length,) and not mask[0]  # kept span first
        assert mask.sum() == min(max(round(length * 0.15), 1), length - 1)
        starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
        assert len(starts) == max(round(mask.sum() / 3.0), 1)


def test_corrupt_round_trips_and_uses_sentinels_from_the_top():
    rng = np.random.default_rng(1)
    tokens = np.arange(3, 43)
    mask = noise_mask(len(tokens), noise_density=0.3, mean_noise_span_length=2.0, rng=rng)
    inputs, targets = corrupt(tokens, mask, vocab_size=100)
    assert 99 in inputs and 99 == targets[0]
    # fill the sentinels of the input with the spans of the target: the original text
    spans, current = {}, None
    for tok in targets:
        if tok >= 90:
            current = tok
            spans[current] = []
        else:
            spans[current].append(tok)
    rebuilt = [t for tok in inputs for t in (spans[tok] if tok >= 90 else [tok])]
    assert rebuilt == tokens.tolist()


def test_raw_length_fits_the_feature_lengths():
    raw = raw_length_for(input_length=64, target_length=16, noise_density=0.15, mean_span=3.0)
    noise = round(raw * 0.15)
    spans = round(noise / 3)
    assert raw - noise + spans + 1 <= 64 and noise + spans + 1 <= 16
    with pytest.raises(ValueError, match="too short"):
        raw_length_for(input_length=2, target_length=2, noise_density=0.5, mean_span=3.0)


def test_tiny_pretraining_lowers_the_loss_and_is_cached(tmp_path):
    texts = [
        f"the {a} market rose as {b} traders bought shares in the morning"
        for a in ("stock", "bond", "oil", "gold")
        for b in ("early", "late", "eager", "foreign")
    ] * 6
    config = PretrainConfig(
        spm_vocab_size=64, batch_size=4, num_steps=40, chunk_steps=10, warmup_steps=5,
        learning_rate=1e-2, input_length=24, target_length=8,
    )  # fmt: skip
    first = pretrain_t5(config, texts=texts, cache_dir=tmp_path, progress=False)
    assert first.losses.shape == (4,) and first.losses[-1] < first.losses[0]
    again = pretrain_t5(config, texts=texts, cache_dir=tmp_path, progress=False)
    assert again.directory == first.directory
    np.testing.assert_array_equal(
        again.params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"],
        first.params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"],
    )
    model = first.model(input_length=24, target_length=4)
    arrays = model.example_arrays(["the oil market rose"], ["good"])
    loss = model.per_example_loss(first.params, arrays)
    assert loss.shape == (1,) and np.isfinite(loss).all()
