"""Tasks: a training pool and test examples, in text-to-text and in label form.

A :class:`Task` holds the ``N`` training-pool examples the runs draw their curricula from
and the ``M`` test examples whose losses the runs record (docs/design.md, section 2). Every example
has a text and a string target (the text-to-text form a T5 model trains on, e.g.
``"positive"``); when ``label_names`` is set, ``train_labels``/``test_labels`` give the
class ids a classifier trains on (``label_names.index(target)``).

Built-in tasks (``get_task(name, **kw)``):

* ``polarity``: the 200 sentences of gensim's ``pang_lee_polarity.cor`` split into a pool of
  150 and a test set of 50, both balanced (75/75 and 25/25); see :func:`polarity`;
* ``analogy``, ``analogy_relation`` and ``similarity``: word tasks built from the analogy
  questions and the rated word pairs of the same wheel (pool 150, test 50 and a format
  warm-up split of 600 by default); see :mod:`simfluence_jax.data.word_tasks`;
* ``lee_pretrain``: the 300 news documents of ``lee_background.cor``, an unlabelled corpus
  (no targets, no test set) for pretraining and for fitting a vocabulary.

A task may also hold a *format warm-up* split (``warmup_texts``/``warmup_targets``),
disjoint from the pool and the test set: a T5 model is fine-tuned on it for a few hundred
steps before any run is logged (``training.format_warmup``), so that the runs measure
learning the task rather than learning to emit the target words. Its targets need not be
among ``label_names``.

User tasks come from JSONL or TSV files (:mod:`simfluence_jax.data.task_files`) through
:func:`register_jsonl_task` / :func:`register_tsv_task`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax.data import gensim_text, task_files
from simfluence_jax.registry import Registry

TASKS: Registry[Callable[..., Task]] = Registry("task", packages=("simfluence_jax.data",))
"""Task factories by name: the ``EXTENSIONS["task"]`` of the modules of ``simfluence_jax.data``
(this one and ``word_tasks``), and the files registered at run time."""


@dataclasses.dataclass(frozen=True)
class Task:
    """A training pool and test examples (see module docstring).

    ``train_lines``/``test_lines``/``warmup_lines`` are 1-based line numbers of each example
    in its source file (empty when not meaningful). A corpus (``lee_pretrain``) has texts
    only: its targets and test set are empty. ``warmup_texts``/``warmup_targets`` are the
    optional format warm-up split (see module docstring).
    """

    name: str
    train_texts: tuple[str, ...]
    train_targets: tuple[str, ...]
    test_texts: tuple[str, ...] = ()
    test_targets: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    train_lines: tuple[int, ...] = ()
    test_lines: tuple[int, ...] = ()
    description: str = ""
    warmup_texts: tuple[str, ...] = ()
    warmup_targets: tuple[str, ...] = ()
    warmup_lines: tuple[int, ...] = ()

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        if not self.train_texts:
            raise ValueError(f"task {self.name!r} has no training texts")
        pairs = [("train", self.train_texts, self.train_targets)]
        pairs.append(("test", self.test_texts, self.test_targets))
        pairs.append(("warm-up", self.warmup_texts, self.warmup_targets))
        for split, texts, targets in pairs:
            if targets and len(targets) != len(texts):
                raise ValueError(
                    f"task {self.name!r}: {len(texts)} {split} texts but {len(targets)} targets"
                )
        if self.test_texts and not self.test_targets:
            raise ValueError(f"task {self.name!r}: test texts need targets")
        if self.warmup_texts and not self.warmup_targets:
            raise ValueError(f"task {self.name!r}: warm-up texts need targets")
        if self.label_names:
            known = set(self.label_names)
            stray = sorted({t for t in self.train_targets + self.test_targets if t not in known})
            if stray:
                raise ValueError(
                    f"task {self.name!r}: targets {stray} are not among the label names "
                    f"{list(self.label_names)}"
                )

    @property
    def is_corpus(self) -> bool:
        """True for unlabelled text (no targets), usable only for pretraining."""
        return not self.train_targets

    @property
    def num_train(self) -> int:
        return len(self.train_texts)

    @property
    def num_test(self) -> int:
        return len(self.test_texts)

    @property
    def num_warmup(self) -> int:
        return len(self.warmup_texts)

    def _labels(self, targets: tuple[str, ...]) -> np.ndarray:
        if not self.label_names:
            raise ValueError(f"task {self.name!r} has no label names, so no class labels")
        index = {name: i for i, name in enumerate(self.label_names)}
        return np.array([index[t] for t in targets], np.int32)

    @property
    def train_labels(self) -> np.ndarray:
        """``int32[N]``: class id of each training-pool example."""
        return self._labels(self.train_targets)

    @property
    def test_labels(self) -> np.ndarray:
        """``int32[M]``: class id of each test example."""
        return self._labels(self.test_targets)


def get_task(name: str, **kwargs: Any) -> Task:
    """Builds the task registered as ``name``; ``kwargs`` go to its factory.

    Raises ``ValueError`` listing the known names for an unknown one.
    """
    return TASKS.get(name)(**kwargs)


def polarity(
    *,
    num_test: int = 50,
    num_warmup: int = 0,
    seed: int = 0,
    path: str | Path | None = None,
    encoding: str = "latin-1",
) -> Task:
    """Sentence polarity (Pang & Lee, 2005): 200 movie-review sentences, 100 per class.

    The split is a pure function of ``(seed, num_test)``: with
    ``rng = numpy.random.default_rng(seed)``, the lines of each class (negative first, then
    positive) are permuted by ``rng.permutation`` and the first ``num_test / 2`` of each go to
    the test set; the pool then holds the rest. Both sets are finally shuffled with the same
    ``rng`` so classes are interleaved. The defaults give the project's fixed split: a pool of
    150 (75 per class) and 50 test sentences (25 per class). Targets are
    ``"negative"``/``"positive"``, label ids 0/1.

    ``num_warmup`` (even, default 0) sentences, half per class, are taken out of the pool
    for a format warm-up split (the first ones of each class after the test sentences), so
    the pool shrinks to ``200 - num_test - num_warmup``; the test set holds the same
    sentences (in another order).
    """
    texts, targets = gensim_text.read_polarity(path, encoding=encoding)
    names = ("negative", "positive")
    by_class = [[i for i, t in enumerate(targets) if t == name] for name in names]
    smallest = min(len(ids) for ids in by_class)
    if num_test % 2 or not 0 < num_test < 2 * smallest:
        raise ValueError(
            f"num_test must be even and in (0, {2 * smallest}) so both sets stay balanced "
            f"and non-empty, got {num_test}"
        )
    if num_warmup % 2 or not 0 <= num_warmup < 2 * smallest - num_test:
        raise ValueError(
            f"num_warmup must be even and in [0, {2 * smallest - num_test}) so the pool keeps "
            f"sentences of both classes, got {num_warmup}"
        )
    rng = np.random.default_rng(seed)
    test_ids, train_ids, warmup_ids = [], [], []
    for ids in by_class:
        perm = [ids[j] for j in rng.permutation(len(ids))]
        cut = num_test // 2 + num_warmup // 2
        test_ids += perm[: num_test // 2]
        warmup_ids += perm[num_test // 2 : cut]
        train_ids += perm[cut:]
    train_ids = [train_ids[j] for j in rng.permutation(len(train_ids))]
    test_ids = [test_ids[j] for j in rng.permutation(len(test_ids))]
    if warmup_ids:  # drawn last, so the default split is unchanged
        warmup_ids = [warmup_ids[j] for j in rng.permutation(len(warmup_ids))]
    return Task(
        name="polarity",
        train_texts=tuple(texts[i] for i in train_ids),
        train_targets=tuple(targets[i] for i in train_ids),
        test_texts=tuple(texts[i] for i in test_ids),
        test_targets=tuple(targets[i] for i in test_ids),
        label_names=names,
        train_lines=tuple(i + 1 for i in train_ids),
        test_lines=tuple(i + 1 for i in test_ids),
        description=f"gensim pang_lee_polarity.cor, seed {seed}, {num_test} test sentences",
        warmup_texts=tuple(texts[i] for i in warmup_ids),
        warmup_targets=tuple(targets[i] for i in warmup_ids),
        warmup_lines=tuple(i + 1 for i in warmup_ids),
    )


def lee_pretrain(*, path: str | Path | None = None) -> Task:
    """The 300 documents of gensim's ``lee_background.cor`` as an unlabelled corpus."""
    docs = gensim_text.read_lee_background(path)
    return Task(
        name="lee_pretrain",
        train_texts=tuple(docs),
        train_targets=(),
        description="gensim lee_background.cor: news documents, one per line",
    )


def task_from_rows(
    name: str,
    train: Sequence[task_files.Row],
    test: Sequence[task_files.Row],
    *,
    label_names: Sequence[str] | None = None,
) -> Task:
    """Builds a :class:`Task`; ``label_names=None`` uses the sorted distinct targets."""
    if label_names is None:
        label_names = sorted({r.target for r in (*train, *test)})
    known = set(label_names)
    for r in (*train, *test):
        if r.target not in known:
            raise ValueError(
                f"{r.path}:{r.line}: target {r.target!r} is not among the label names "
                f"{list(label_names)}"
            )
    return Task(
        name=name,
        train_texts=tuple(r.text for r in train),
        train_targets=tuple(r.target for r in train),
        test_texts=tuple(r.text for r in test),
        test_targets=tuple(r.target for r in test),
        label_names=tuple(label_names),
        train_lines=tuple(r.line for r in train),
        test_lines=tuple(r.line for r in test),
        description=f"read from {sorted({r.path for r in (*train, *test)})}",
    )


def _split_rows(
    rows: list[task_files.Row], path: str | Path, train_split: str, test_split: str
) -> tuple[list[task_files.Row], list[task_files.Row]]:
    for r in rows:
        if r.split not in (train_split, test_split):
            raise ValueError(
                f"{r.path}:{r.line}: split {r.split!r} is neither {train_split!r} nor "
                f"{test_split!r}"
            )
    train = [r for r in rows if r.split == train_split]
    test = [r for r in rows if r.split == test_split]
    for split, part in ((train_split, train), (test_split, test)):
        if not part:
            raise ValueError(f"{path} has no rows with split {split!r}")
    return train, test


def load_task_file(
    name: str,
    *,
    format: str,
    path: str | Path | None = None,
    train_path: str | Path | None = None,
    test_path: str | Path | None = None,
    split_field: str = "split",
    train_split: str = "train",
    test_split: str = "test",
    text_field: str = "text",
    target_field: str = "target",
    label_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> Task:
    """Reads a task from one file with a split column (``path``) or two files.

    ``format`` is ``"jsonl"`` or ``"tsv"``. Raises ``ValueError`` naming the file and line
    for an empty file, a row without text or target, or an unknown split value.
    """
    readers = {"jsonl": task_files.read_jsonl, "tsv": task_files.read_tsv}
    if format not in readers:
        raise ValueError(f"unknown task file format {format!r}; known: {sorted(readers)}")
    read = readers[format]
    fields = {"text_field": text_field, "target_field": target_field, "encoding": encoding}
    if path is not None and (train_path is None and test_path is None):
        rows = read(path, split_field=split_field, **fields)
        train, test = _split_rows(rows, path, train_split, test_split)
    elif path is None and train_path is not None and test_path is not None:
        train = read(train_path, split_field=None, **fields)
        test = read(test_path, split_field=None, **fields)
    else:
        raise ValueError(
            "give either path= (one file with a split column) or both train_path= and test_path="
        )
    return task_from_rows(name, train, test, label_names=label_names)


def register_task_file(name: str, **kwargs: Any) -> Task:
    """Reads a task file now (errors surface at once) and registers it under ``name``.

    ``kwargs`` are those of :func:`load_task_file`; the registered factory takes none and
    returns the task read here. A name already taken (a built-in task, or a file registered
    before) raises ``ValueError``.
    """
    if name in TASKS:
        raise ValueError(f"task {name!r} is already registered; choose another name")
    task = load_task_file(name, **kwargs)

    def factory() -> Task:
        return task

    TASKS.register(name)(factory)
    return task


def register_jsonl_task(name: str, **kwargs: Any) -> Task:
    """``register_task_file(name, format="jsonl", ...)``; rows ``{"text", "target"[, "split"]}``."""
    return register_task_file(name, format="jsonl", **kwargs)


def register_tsv_task(name: str, **kwargs: Any) -> Task:
    """``register_task_file(name, format="tsv", ...)``; a header row names the columns."""
    return register_task_file(name, format="tsv", **kwargs)


def jsonl_file(**kwargs: Any) -> Task:
    """A task read from JSONL at run time: ``get_task("jsonl", path="data.jsonl")`` (or
    ``train_path=`` and ``test_path=``); the other options are :func:`load_task_file`'s.

    This is how a gin file or the command line names a user's task:
    ``RunsConfig.task = 'jsonl'`` with ``RunsConfig.task_kwargs = {'path': 'data.jsonl'}``.
    """
    name = kwargs.pop("name", "jsonl")
    return load_task_file(name, format="jsonl", **kwargs)


def tsv_file(**kwargs: Any) -> Task:
    """Like :func:`jsonl_file`, for a TSV file with a header row."""
    name = kwargs.pop("name", "tsv")
    return load_task_file(name, format="tsv", **kwargs)


EXTENSIONS = {
    "task": {
        "polarity": polarity,
        "lee_pretrain": lee_pretrain,
        "jsonl": jsonl_file,
        "tsv": tsv_file,
    }
}
