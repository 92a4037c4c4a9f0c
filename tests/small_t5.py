"""A T5 pretrained here in seconds (20 steps on a few dozen sentences) and its warm-up
examples, shared by the format and prompt warm-up tests."""

from simfluence_jax.training.pretrain import PretrainConfig, pretrain_t5

TEXTS = [
    f"the {a} market rose as {b} traders bought shares in the morning"
    for a in ("stock", "bond", "oil", "gold")
    for b in ("early", "late", "eager", "foreign")
] * 6
WARM_TEXTS = [f"is the {w} market up" for w in ("stock", "bond", "oil", "gold")] * 2
WARM_TARGETS = ["rose", "fell"] * 4


def pretrained(cache):
    """The small pretrained T5 (``PretrainedT5``), cached under ``cache``."""
    config = PretrainConfig(
        spm_vocab_size=64, batch_size=4, num_steps=20, chunk_steps=10, warmup_steps=5,
        learning_rate=1e-2, input_length=24, target_length=8,
    )  # fmt: skip
    return pretrain_t5(config, texts=TEXTS, cache_dir=cache, progress=False)
