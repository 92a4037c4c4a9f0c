"""The polarity task through seqio gives the arrays that direct SentencePiece tokenization gives."""

import importlib.util
import io
import sys

import numpy as np
import pytest
import sentencepiece as spm

from simfluence_jax.data import seqio_tasks, tasks

needs_seqio = pytest.mark.skipif(
    importlib.util.find_spec("seqio") is None,
    reason="seqio is an optional extra (pip install seqio); it is not installed",
)

L_IN, L_OUT = 24, 4


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    """A small SentencePiece model with T5 ids (pad 0, EOS 1, UNK 2), trained on bundled text."""
    texts = list(tasks.get_task("lee_pretrain").train_texts)
    texts += list(tasks.get_task("polarity").train_texts)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=400,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("spm") / "polarity.model"
    path.write_bytes(model.getvalue())
    return path


def direct(sp, texts, length):
    """Pieces trimmed to ``length - 1``, EOS appended, zero-padded."""
    out = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        ids = sp.encode(text)[: length - 1] + [1]
        out[i, : len(ids)] = ids
    return out


@needs_seqio
@pytest.mark.parametrize("split", ["train", "test"])
def test_polarity_arrays_match_direct_tokenization(vocab_path, split):
    name = seqio_tasks.register_seqio_polarity(vocab_path)
    arrays = seqio_tasks.seqio_task_to_arrays(name, split, {"inputs": L_IN, "targets": L_OUT})
    task = tasks.get_task("polarity")
    texts = task.train_texts if split == "train" else task.test_texts
    targets = task.train_targets if split == "train" else task.test_targets
    sp = spm.SentencePieceProcessor(model_file=str(vocab_path))
    assert set(arrays) == set(seqio_tasks.T5_KEYS)
    assert all(a.dtype == np.int32 for a in arrays.values())
    np.testing.assert_array_equal(arrays["encoder_input_tokens"], direct(sp, texts, L_IN))
    target_tokens = direct(sp, targets, L_OUT)
    np.testing.assert_array_equal(arrays["decoder_target_tokens"], target_tokens)
    shifted = np.concatenate([np.zeros((len(targets), 1), np.int32), target_tokens[:, :-1]], 1)
    np.testing.assert_array_equal(arrays["decoder_input_tokens"], shifted)
    np.testing.assert_array_equal(arrays["decoder_loss_weights"], (target_tokens > 0).astype(int))


@needs_seqio
def test_register_twice_replaces_and_other_task(vocab_path, tmp_path):
    first = seqio_tasks.register_seqio_polarity(vocab_path, name="simfluence_polarity_small")
    again = seqio_tasks.register_seqio_polarity(
        vocab_path, name="simfluence_polarity_small", num_test=10
    )
    arrays = seqio_tasks.seqio_task_to_arrays(again, "test", {"inputs": 8, "targets": 4})
    assert first == again and arrays["encoder_input_tokens"].shape == (10, 8)


@needs_seqio
def test_errors(vocab_path, tmp_path):
    name = seqio_tasks.register_seqio_polarity(vocab_path)
    with pytest.raises(ValueError, match="no split 'validation'"):
        seqio_tasks.seqio_task_to_arrays(name, "validation", {"inputs": 8, "targets": 4})
    with pytest.raises(ValueError, match="exactly the keys"):
        seqio_tasks.seqio_task_to_arrays(name, "test", {"inputs": 8})
    with pytest.raises(ValueError, match="unlabelled corpus"):
        seqio_tasks.register_seqio_task(tasks.get_task("lee_pretrain"), vocab_path)
    with pytest.raises(FileNotFoundError):
        seqio_tasks.register_seqio_polarity(tmp_path / "missing.model")


def test_missing_seqio_names_the_extra(monkeypatch, vocab_path):
    monkeypatch.setitem(sys.modules, "seqio", None)
    with pytest.raises(ImportError, match="optional 'seqio' extra"):
        seqio_tasks.register_seqio_polarity(vocab_path)
