"""Word tasks from the gensim wheel: analogy questions and rated word pairs.

Three registered tasks, each with a training pool, a test set and a *format warm-up* split
(disjoint from both; see :mod:`simfluence_jax.data.tasks`), of fixed sizes (defaults: pool
150, test 50, warm-up 600). Every split is a pure function of the file and the arguments:
with ``rng = numpy.random.default_rng(seed)``, each class's candidate examples (in file
order) are permuted by ``rng.permutation`` and dealt out test first, then pool, then
warm-up, each split taking its share of every class (``n // k`` per class, one more for the
first ``n % k`` classes in label order); each split is then shuffled with the same ``rng``.
The test set therefore does not depend on the pool or warm-up sizes. (``analogy`` draws its
warm-up lines, which come from another group, uniformly with ``default_rng([seed, 1])``,
and their random answers with ``default_rng([seed, 2])``.)

* ``analogy`` (text-to-text knowledge): the lines ``a b c d`` of one group of
  ``questions-words.txt`` (default ``capital-common-countries``: 506 lines over 23
  capital/country pairs) as ``"Athens is to Greece as Baghdad is to"`` -> ``"Iraq"``. Pool
  and test lines share pairs, so a run that trains on lines asking for Iraq lowers the test
  loss of the lines that do. The classes of the split are the answers (23 countries), which
  are also the ``label_names`` a classifier uses. The warm-up inputs come from another group
  (default ``capital-world``) and use none of the pool group's words; with
  ``warmup_answers="random"`` (default) each is given an answer of the pool group drawn
  uniformly at random, so the warm-up teaches which words answer and the format (a country
  name, then end of sequence) but not which answer goes with which capital;
  ``warmup_answers="own"`` keeps each line's true answer, a country that is never a test
  answer, so the model still has to learn to emit the test answers during the runs
  (measured on the pretrained tiny T5 after the 300-step warm-up of
  ``gin_configs/models/t5_tiny_t5x.gin``: mean test loss 3.42 with ``random``, near the 3.13
  of guessing by the pool's answer frequencies; 20.1 with ``own``; 32.3 before).
* ``analogy_relation`` (classification): the full line
  ``"Athens is to Greece as Baghdad is to Iraq"`` labelled with its relation, one of 13
  one-word names (:data:`RELATIONS`; the two capital groups are merged into ``capital``).
  One word each keeps the T5 targets short (at most a few pieces). All three splits are
  balanced over the relations.
* ``similarity`` (classification): a rated pair ``"old and new"`` labelled ``dissimilar``
  or ``similar`` by a median split of the human scores of its source file (``simlex999``,
  default, 999 pairs; ``wordsim353``, 353 pairs; or ``both``, each file split at its own
  median); ``num_bins=3`` gives ``low``/``medium``/``high`` by tertiles. Pairs scored
  exactly at a cut point are dropped, and so is every unordered pair listed more than once
  (SimLex lists ``sly``/``strange`` twice, WordSim ``bank``/``money`` and ``cash``/``money``).
  All three splits are balanced over the labels. With ``both``, line numbers refer to each
  pair's own file.

A missing or malformed file raises ``ValueError`` naming it (and the line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simfluence_jax.data import gensim_text
from simfluence_jax.data.tasks import Task

ANALOGY_TEMPLATE = "{a} is to {b} as {c} is to"
"""Input text of an ``analogy`` line; ``analogy_relation`` appends the answer ``d``."""

SIMILARITY_TEMPLATE = "{word1} and {word2}"

SIMILARITY_LABELS = {2: ("dissimilar", "similar"), 3: ("low", "medium", "high")}


RELATIONS = {
    "capital-common-countries": "capital",
    "capital-world": "capital",
    "currency": "currency",
    "city-in-state": "state",
    "family": "family",
    "gram1-adjective-to-adverb": "adverb",
    "gram2-opposite": "opposite",
    "gram3-comparative": "comparative",
    "gram4-superlative": "superlative",
    "gram5-present-participle": "participle",
    "gram6-nationality-adjective": "nationality",
    "gram7-past-tense": "past",
    "gram8-plural": "plural",
    "gram9-plural-verbs": "verb",
}
"""The ``analogy_relation`` label of each group of ``questions-words.txt``."""


def relation_name(group: str) -> str:
    """The label of an analogy group (:data:`RELATIONS`); an unknown group keeps its name."""
    return RELATIONS.get(group, group)


def _shares(n: int, k: int) -> list[int]:
    """``n`` split over ``k`` classes as evenly as possible, the first classes getting more."""
    return [n // k + (i < n % k) for i in range(k)]


def stratified_split(
    classes: Sequence[Sequence[int]],
    sizes: Sequence[int],
    *,
    seed: int,
    what: str,
    names: Sequence[str],
) -> list[list[int]]:
    """Deals each class's candidates to splits of the given ``sizes`` (see module docstring).

    Args:
      classes: per class, the candidate example indices in file order.
      sizes: total size of each split, in dealing order (test, pool, warm-up).
      seed: the ``numpy.random.default_rng`` seed.
      what: names the task in errors.
      names: the class names, for errors.

    Returns:
      per split, the chosen indices, shuffled.
    """
    k = len(classes)
    shares = [_shares(n, k) for n in sizes]
    for c, candidates in enumerate(classes):
        need = sum(share[c] for share in shares)
        if need > len(candidates):
            raise ValueError(
                f"{what}: class {names[c]!r} has {len(candidates)} examples but splits of sizes "
                f"{list(sizes)} need {need} of it; ask for fewer examples"
            )
    rng = np.random.default_rng(seed)
    splits: list[list[int]] = [[] for _ in sizes]
    for c, candidates in enumerate(classes):
        perm = [candidates[j] for j in rng.permutation(len(candidates))]
        start = 0
        for split, share in zip(splits, shares):
            split += perm[start : start + share[c]]
            start += share[c]
    return [[ids[j] for j in rng.permutation(len(ids))] for ids in splits]


def _check_sizes(num_train: int, num_test: int, num_warmup: int) -> None:
    if num_train < 1 or num_test < 1 or num_warmup < 0:
        raise ValueError(
            "need num_train >= 1, num_test >= 1 and num_warmup >= 0, got "
            f"{num_train}, {num_test}, {num_warmup}"
        )


def _task(name, texts, targets, lines, splits, label_names, description) -> Task:
    test, train, warmup = splits
    return Task(
        name=name,
        train_texts=tuple(texts[i] for i in train),
        train_targets=tuple(targets[i] for i in train),
        test_texts=tuple(texts[i] for i in test),
        test_targets=tuple(targets[i] for i in test),
        label_names=tuple(label_names),
        train_lines=tuple(lines[i] for i in train),
        test_lines=tuple(lines[i] for i in test),
        description=description,
        warmup_texts=tuple(texts[i] for i in warmup),
        warmup_targets=tuple(targets[i] for i in warmup),
        warmup_lines=tuple(lines[i] for i in warmup),
    )


def analogy(
    *,
    group: str = "capital-common-countries",
    warmup_group: str = "capital-world",
    warmup_answers: str = "random",
    num_train: int = 150,
    num_test: int = 50,
    num_warmup: int = 600,
    seed: int = 0,
    path: str | Path | None = None,
) -> Task:
    """Analogy completion, text-to-text: ``"a is to b as c is to"`` -> ``"d"``.

    Pool and test lines come from ``group``, balanced over the answers ``d``; warm-up lines
    from ``warmup_group`` without any word of ``group``, answered by a random answer of
    ``group`` (``warmup_answers="random"``) or their own (``"own"``); see module docstring.
    """
    _check_sizes(num_train, num_test, num_warmup)
    if warmup_answers not in ("random", "own"):
        raise ValueError(f"warmup_answers must be 'random' or 'own', got {warmup_answers!r}")
    lines = gensim_text.read_analogies(path)
    groups = sorted({q.group for q in lines})
    for g in (group, warmup_group):
        if g not in groups:
            raise ValueError(f"analogy group {g!r} is not in the file; known: {groups}")
    if warmup_group == group and num_warmup:
        raise ValueError("warmup_group must differ from group, or the warm-up leaks the answers")
    main = [q for q in lines if q.group == group]
    words = {w for q in main for w in (q.a, q.b, q.c, q.d)}
    other = [q for q in lines if q.group == warmup_group and not words & {q.a, q.b, q.c, q.d}]
    if len(other) < num_warmup:
        raise ValueError(
            f"analogy: group {warmup_group!r} has {len(other)} lines without words of "
            f"{group!r}, fewer than num_warmup={num_warmup}"
        )
    examples = main + other
    texts = [ANALOGY_TEMPLATE.format(a=q.a, b=q.b, c=q.c) for q in examples]
    targets = [q.d for q in examples]
    answers = sorted({q.d for q in main})
    classes = [[i for i, q in enumerate(main) if q.d == answer] for answer in answers]
    test, train, _ = stratified_split(
        classes,
        (num_test, num_train, 0),
        seed=seed,
        what=f"analogy group {group!r}",
        names=answers,
    )
    rng = np.random.default_rng([seed, 1])
    warmup = [len(main) + j for j in rng.permutation(len(other))[:num_warmup]]
    if warmup_answers == "random":
        drawn = np.random.default_rng([seed, 2]).integers(0, len(answers), len(warmup))
        for i, a in zip(warmup, drawn, strict=True):
            targets[i] = answers[a]
    return _task(
        "analogy",
        texts,
        targets,
        [q.line for q in examples],
        (test, train, warmup),
        answers,
        f"gensim questions-words.txt, group {group!r} (warm-up: {warmup_group!r} with "
        f"{warmup_answers} answers), seed {seed}",
    )


def analogy_relation(
    *,
    num_train: int = 150,
    num_test: int = 50,
    num_warmup: int = 600,
    seed: int = 0,
    path: str | Path | None = None,
) -> Task:
    """Which relation an analogy line uses: ``"a is to b as c is to d"`` -> 13 relations."""
    _check_sizes(num_train, num_test, num_warmup)
    lines = gensim_text.read_analogies(path)
    relations = [relation_name(q.group) for q in lines]
    names = sorted(set(relations))
    if len(names) < 2:
        raise ValueError(f"analogy_relation needs at least two relations, the file has {names}")
    classes = [[i for i, r in enumerate(relations) if r == name] for name in names]
    splits = stratified_split(
        classes, (num_test, num_train, num_warmup), seed=seed, what="analogy_relation", names=names
    )
    texts = [ANALOGY_TEMPLATE.format(a=q.a, b=q.b, c=q.c) + f" {q.d}" for q in lines]
    return _task(
        "analogy_relation",
        texts,
        relations,
        [q.line for q in lines],
        splits,
        names,
        f"gensim questions-words.txt, {len(names)} relations, seed {seed}",
    )


def _similarity_labels(scores: np.ndarray, num_bins: int) -> np.ndarray:
    """``int[n]`` bin of each score by quantile cuts; ``-1`` for a score exactly at a cut."""
    cuts = np.quantile(scores, np.arange(1, num_bins) / num_bins)
    bins = np.searchsorted(cuts, scores, side="left")
    return np.where(np.isin(scores, cuts), -1, bins)


def similarity(
    *,
    source: str = "simlex999",
    num_bins: int = 2,
    num_train: int = 150,
    num_test: int = 50,
    num_warmup: int = 600,
    seed: int = 0,
    path: str | Path | None = None,
) -> Task:
    """Word-pair similarity: ``"old and new"`` -> ``"dissimilar"`` (module docstring).

    ``path`` reads another file of the same format instead of the bundled ``source``.
    """
    _check_sizes(num_train, num_test, num_warmup)
    if num_bins not in SIMILARITY_LABELS:
        raise ValueError(f"num_bins must be one of {sorted(SIMILARITY_LABELS)}, got {num_bins}")
    sources = ["simlex999", "wordsim353"] if source == "both" and path is None else [source]
    pairs, bins = [], []
    for name in sources:
        rows = gensim_text.read_word_pairs(name, path=path)
        pairs += rows
        bins += _similarity_labels(np.array([r.score for r in rows]), num_bins).tolist()
    keys = [frozenset((p.word1.lower(), p.word2.lower())) for p in pairs]
    counts: dict = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    keep = [i for i, key in enumerate(keys) if counts[key] == 1 and bins[i] >= 0]
    names = SIMILARITY_LABELS[num_bins]
    classes = [[i for i in keep if bins[i] == b] for b in range(num_bins)]
    splits = stratified_split(
        classes,
        (num_test, num_train, num_warmup),
        seed=seed,
        what=f"similarity ({source})",
        names=names,
    )
    return _task(
        "similarity",
        [SIMILARITY_TEMPLATE.format(word1=p.word1, word2=p.word2) for p in pairs],
        [names[b] if b >= 0 else "" for b in bins],
        [p.line for p in pairs],
        splits,
        names,
        f"gensim {'+'.join(sources)}, {num_bins} bins by quantile, seed {seed}",
    )


EXTENSIONS = {
    "task": {"analogy": analogy, "analogy_relation": analogy_relation, "similarity": similarity}
}
