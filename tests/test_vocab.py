"""Locally trained T5-style SentencePiece vocabularies and their cache."""

from __future__ import annotations

import os

import pytest
from fixtures_path import shared_fixture

from simfluence_jax.models import vocab

CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the film had a great plot",
    "an awful movie with a slow scene",
] * 10


def test_special_ids_and_roundtrip(tmp_path):
    path = vocab.train_sentencepiece(CORPUS, vocab_size=48, cache_dir=tmp_path)
    assert path.parent == tmp_path and path.suffix == ".model"
    sp = vocab.load_sentencepiece(path)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert 3 < sp.get_piece_size() <= 48
    ids = sp.encode("the cat ran in the park")
    assert ids and min(ids) >= 3 and 1 not in ids  # no EOS or BOS added by the tokenizer
    assert sp.decode(ids) == "the cat ran in the park"


def test_cache_hit_and_key(tmp_path):
    first = vocab.train_sentencepiece(CORPUS, vocab_size=48, cache_dir=tmp_path)
    stamp = first.stat().st_mtime_ns
    os.utime(first, ns=(stamp - 10**9, stamp - 10**9))
    again = vocab.train_sentencepiece(list(CORPUS), vocab_size=48, cache_dir=tmp_path)
    assert again == first and first.stat().st_mtime_ns == stamp - 10**9  # not retrained
    other_size = vocab.train_sentencepiece(CORPUS, vocab_size=40, cache_dir=tmp_path)
    other_text = vocab.train_sentencepiece(
        CORPUS + ["one more line"], vocab_size=48, cache_dir=tmp_path
    )
    assert len({first, other_size, other_text}) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (first, other_size, other_text)
    )  # no temporary files left behind


def test_default_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMFLUENCE_CACHE", str(tmp_path))
    assert vocab.default_cache_dir() == tmp_path / "spm"
    path = vocab.train_sentencepiece(CORPUS, vocab_size=40)
    assert path.parent == tmp_path / "spm"


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty text"):
        vocab.train_sentencepiece([], vocab_size=40, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        vocab.train_sentencepiece(CORPUS, vocab_size=2, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        vocab.load_sentencepiece(tmp_path / "missing.model")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        vocab.load_sentencepiece(garbage)


def test_fixture_vocab_loads():
    sp = vocab.load_sentencepiece(shared_fixture("t5x_tiny", "spm.model"))
    assert sp.get_piece_size() == 46
    assert sp.encode("positive") == [44, 27, 41, 37, 36, 42, 36, 23, 40]


def test_rejects_non_t5_ids(tmp_path):
    import sentencepiece as spm

    prefix = tmp_path / "plain"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_prefix=str(prefix),
        vocab_size=40,
        hard_vocab_limit=False,
        minloglevel=2,
    )  # sentencepiece's own defaults: unk 0, bos 1, eos 2, no pad
    with pytest.raises(ValueError, match=r"T5 needs \(0, 1, 2, -1\)"):
        vocab.load_sentencepiece(prefix.with_suffix(".model"))
