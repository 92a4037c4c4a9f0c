"""Tasks: the polarity split, the bundled gensim text, and user tasks from JSONL/TSV files."""

import json
import subprocess
import sys

import numpy as np
import pytest

from simfluence_jax.data import gensim_text, task_files, tasks


@pytest.fixture(scope="module")
def polarity():
    return tasks.get_task("polarity")


def test_polarity_file_reads_as_latin1():
    texts, targets = gensim_text.read_polarity()
    assert len(texts) == 200
    assert targets.count("negative") == 100 and targets.count("positive") == 100
    assert "the action clichés just pile up ." in texts  # byte 0xe9 decoded as latin-1
    assert not any(t.startswith("__label__") for t in texts)
    raw = (gensim_text.gensim_data_dir() / gensim_text.POLARITY_FILE).read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")


def test_polarity_rejects_unknown_label(tmp_path):
    path = tmp_path / "bad.cor"
    path.write_text("__label__pos fine .\n__label__meh what ?\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"bad\.cor:2"):
        gensim_text.read_polarity(path)


def test_polarity_split_sizes_and_balance(polarity):
    assert polarity.num_train == 150 and polarity.num_test == 50
    assert polarity.label_names == ("negative", "positive")
    assert np.bincount(polarity.train_labels).tolist() == [75, 75]
    assert np.bincount(polarity.test_labels).tolist() == [25, 25]
    lines = set(polarity.train_lines) | set(polarity.test_lines)
    assert lines == set(range(1, 201))  # disjoint and complete
    texts, targets = gensim_text.read_polarity()
    for text, target, line in zip(
        polarity.train_texts, polarity.train_targets, polarity.train_lines, strict=True
    ):
        assert texts[line - 1] == text and targets[line - 1] == target
    # classes are interleaved, not in file order
    assert 0 < np.sum(polarity.train_labels[:20]) < 20


def test_polarity_split_is_deterministic(polarity):
    again = tasks.get_task("polarity")
    assert again == polarity
    other = tasks.get_task("polarity", seed=1)
    assert set(other.test_lines) != set(polarity.test_lines)
    small = tasks.get_task("polarity", num_test=20)
    assert small.num_test == 20 and np.bincount(small.test_labels).tolist() == [10, 10]
    with pytest.raises(ValueError, match="num_test must be even"):
        tasks.get_task("polarity", num_test=7)
    with pytest.raises(ValueError, match="num_test must be even"):
        tasks.get_task("polarity", num_test=200)


def test_lee_corpus():
    lee = tasks.get_task("lee_pretrain")
    assert lee.is_corpus and lee.num_train == 300 and lee.num_test == 0
    assert all(doc and doc == doc.strip() for doc in lee.train_texts)
    with pytest.raises(ValueError, match="no label names"):
        _ = lee.train_labels


def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; known: .*lee_pretrain.*polarity"):
        tasks.get_task("nope")


def test_tasks_are_declared_and_found_without_importing_them_first(tmp_path):
    """A fresh process: importing ``data.tasks`` imports no word task; the first lookup
    finds every declared task, and a file cannot take a built-in name."""
    path = tmp_path / "mine.jsonl"
    write_jsonl(path, ROWS)
    code = (
        "import json, sys\n"
        "from simfluence_jax.data import tasks\n"
        "before = 'simfluence_jax.data.word_tasks' in sys.modules\n"
        "names = tasks.TASKS.names()\n"
        "try:\n"
        f"    tasks.register_jsonl_task('similarity', path={str(path)!r})\n"
        "    error = ''\n"
        "except ValueError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps([before, names, tasks.TASKS.origin('analogy'), error]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, names, origin, error = json.loads(out.stdout.strip().splitlines()[-1])
    assert not before
    expected = ["analogy", "analogy_relation", "jsonl", "lee_pretrain", "polarity", "similarity"]
    assert names == sorted([*expected, "tsv"])
    assert origin == "simfluence_jax.data.word_tasks"
    assert "task 'similarity' is already registered" in error


def test_task_validation():
    with pytest.raises(ValueError, match="2 train texts but 1 targets"):
        tasks.Task("t", ("a", "b"), ("x",))
    with pytest.raises(ValueError, match="not among the label names"):
        tasks.Task("t", ("a",), ("x",), label_names=("y", "z"))
    with pytest.raises(ValueError, match="no training texts"):
        tasks.Task("t", (), ())


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


ROWS = [
    {"text": "great fun", "target": "positive", "split": "train"},
    {"text": "a bore", "target": "negative", "split": "train"},
    {"text": "lovely", "target": "positive", "split": "test"},
]


def test_jsonl_task_with_split_field(tmp_path):
    path = tmp_path / "mine.jsonl"
    write_jsonl(path, ROWS)
    path.write_text(path.read_text() + "\n")  # a trailing blank line is fine
    task = tasks.register_jsonl_task("test_jsonl_split", path=path)
    assert tasks.get_task("test_jsonl_split") is task
    assert task.train_texts == ("great fun", "a bore")
    assert task.test_targets == ("positive",)
    assert task.label_names == ("negative", "positive")
    np.testing.assert_array_equal(task.train_labels, [1, 0])
    assert task.train_lines == (1, 2) and task.test_lines == (3,)
    with pytest.raises(ValueError, match="already registered"):
        tasks.register_jsonl_task("test_jsonl_split", path=path)


def test_jsonl_task_from_two_files(tmp_path):
    write_jsonl(
        tmp_path / "train.jsonl", [{"text": "x y", "target": 3}, {"text": "z", "target": 4}]
    )
    write_jsonl(tmp_path / "test.jsonl", [{"text": "w", "target": 3}])
    task = tasks.load_task_file(
        "two",
        format="jsonl",
        train_path=tmp_path / "train.jsonl",
        test_path=tmp_path / "test.jsonl",
    )
    assert task.train_targets == ("3", "4") and task.test_targets == ("3",)


def test_tsv_task(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text(
        "split\ttext\ttarget\ntrain\tgreat fun\tpositive\ntrain\ta 'bore\"\tnegative\n"
        "test\tlovely\tpositive\n",
        encoding="utf-8",
    )
    task = tasks.register_tsv_task("test_tsv", path=path)
    assert task.train_texts == ("great fun", "a 'bore\"")  # no quoting rules
    assert task.test_texts == ("lovely",)
    assert task.train_lines == (2, 3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        (
            '{"text": "a", "target": "b", "split": "train"}\n{"text": "c", "split": "test"}\n',
            r"bad\.jsonl:2: row has no target",
        ),
        ('{"text": "a", "target": "", "split": "train"}\n', r"bad\.jsonl:1: row has no target"),
        ('{"text": "a", "target": null, "split": "train"}\n', r"bad\.jsonl:1: row has no target"),
        ('{"target": "b", "split": "train"}\n', r"bad\.jsonl:1: row has no text"),
        ('{"text": "a", "target": "b"\n', r"bad\.jsonl:1: not valid JSON"),
        ('["a", "b"]\n', r"bad\.jsonl:1: expected a JSON object"),
        ('{"text": "a", "target": "b"}\n', r"bad\.jsonl:1: row has no 'split' field"),
        ('{"text": "a", "target": "b", "split": "dev"}\n', r"bad\.jsonl:1: split 'dev'"),
        (
            '{"text": "a", "target": "b", "split": "train"}\n',
            r"bad\.jsonl has no rows with split 'test'",
        ),
    ],
)
def test_jsonl_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        tasks.load_task_file("bad", format="jsonl", path=path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("text\ttarget\tsplit\n", "is empty: it holds no examples"),
        ("text\tsplit\na\ttrain\n", r"bad\.tsv:1: the header row .* lacks .*'target'"),
        ("text\ttarget\tsplit\na\tb\ttrain\nc\n", r"bad\.tsv:3: row has no target"),
        ("text\ttarget\tsplit\na\t \ttrain\n", r"bad\.tsv:2: row has no target"),
        ("text\ttarget\tsplit\na\tb\n", r"bad\.tsv:2: 2 tab-separated fields"),
    ],
)
def test_tsv_errors(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        tasks.load_task_file("bad", format="tsv", path=path)


def test_task_file_argument_errors(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    with pytest.raises(ValueError, match="either path="):
        tasks.load_task_file("x", format="jsonl", train_path=tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="unknown task file format 'csv'"):
        tasks.load_task_file("x", format="csv", path=tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match=r"a\.jsonl:1: target 'positive' is not among"):
        tasks.load_task_file("x", format="jsonl", path=tmp_path / "a.jsonl", label_names=["neg"])


def test_rows_keep_line_numbers(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('\n{"text": " a ", "target": " b "}\n', encoding="utf-8")
    (row,) = task_files.read_jsonl(path)
    assert (row.line, row.text, row.target, row.split) == (2, "a", "b", None)


def test_file_tasks_by_name_for_gin_and_the_cli(tmp_path):
    import json

    from simfluence_jax.data.tasks import get_task

    path = tmp_path / "data.jsonl"
    rows = [{"text": f"sentence {i}", "target": "yes" if i % 2 else "no",
             "split": "test" if i < 2 else "train"} for i in range(6)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = get_task("jsonl", path=str(path))
    assert len(task.train_texts) == 4 and len(task.test_texts) == 2
    assert task.train_targets[0] == "no"
    with pytest.raises(ValueError, match="path="):
        get_task("tsv")


# ----------------------------------------------------------------------------- word tasks

WORD_TASKS = {
    # name: (number of labels, label names a few of which are checked)
    "analogy": (23, ("Greece", "Iraq")),
    "analogy_relation": (13, ("capital", "plural", "verb")),
    "similarity": (2, ("dissimilar", "similar")),
}


@pytest.mark.parametrize("name", sorted(WORD_TASKS))
def test_word_tasks_load_from_the_wheel_with_documented_sizes(name):
    task = tasks.get_task(name)
    num_labels, some = WORD_TASKS[name]
    assert (task.num_train, task.num_test, task.num_warmup) == (150, 50, 600)
    assert len(task.label_names) == num_labels and set(some) <= set(task.label_names)
    # disjoint splits (line numbers of one file)
    train, test, warm = set(task.train_lines), set(task.test_lines), set(task.warmup_lines)
    assert len(train) == 150 and len(test) == 50 and len(warm) == 600
    assert not train & test and not warm & (train | test)
    # balanced over the labels: every label gets n // k or n // k + 1
    for targets, n in ((task.train_targets, 150), (task.test_targets, 50)):
        counts = np.bincount(task._labels(targets), minlength=num_labels)
        assert counts.min() >= n // num_labels and counts.max() <= -(-n // num_labels)
    assert tasks.get_task(name) == task  # deterministic
    assert tasks.get_task(name, seed=1).test_lines != task.test_lines
    if name == "analogy":
        assert task.train_texts[0].endswith(" is to") and task.train_texts[0].count(" is to ") == 1
        lines = gensim_text.read_analogies()
        by_line = {q.line: q for q in lines}
        q = by_line[task.test_lines[0]]
        assert task.test_texts[0] == f"{q.a} is to {q.b} as {q.c} is to"
        assert task.test_targets[0] == q.d and q.group == "capital-common-countries"
        pool_words = {w for line in train | test for w in vars(by_line[line]).values()}
        for line in warm:  # warm-up inputs share no word with the pool group
            assert by_line[line].group == "capital-world"
            assert not {by_line[line].a, by_line[line].b, by_line[line].c} & pool_words
        assert set(task.warmup_targets) <= set(task.label_names)  # random answers
        own = tasks.get_task(name, warmup_answers="own")
        assert own.warmup_texts == task.warmup_texts
        assert not set(own.warmup_targets) & set(task.label_names)
    if name == "analogy_relation":
        assert task.train_texts[0].count(" is to ") == 2
    if name == "similarity":
        pairs = {p.line: p for p in gensim_text.read_word_pairs("simlex999")}
        median = np.median([p.score for p in pairs.values()])
        for line, target in zip(task.train_lines, task.train_targets, strict=True):
            assert (pairs[line].score > median) == (target == "similar")
        first = pairs[task.test_lines[0]]
        assert task.test_texts[0] == f"{first.word1} and {first.word2}"


def test_word_task_options():
    small = tasks.get_task("similarity", num_train=30, num_test=10, num_warmup=0)
    assert (small.num_train, small.num_test, small.num_warmup) == (30, 10, 0)
    # the test set does not depend on the pool or warm-up sizes
    assert small.test_lines == tasks.get_task("similarity", num_test=10).test_lines
    three = tasks.get_task("similarity", num_bins=3)
    assert three.label_names == ("low", "medium", "high")
    assert np.bincount(three.train_labels).tolist() == [50, 50, 50]
    ws = tasks.get_task("similarity", source="wordsim353", num_warmup=100)
    assert ws.num_train == 150 and "wordsim353" in ws.description
    both = tasks.get_task("similarity", source="both")
    assert "simlex999+wordsim353" in both.description
    with pytest.raises(ValueError, match="class 'similar' has 171 examples but .* need 175"):
        tasks.get_task("similarity", source="wordsim353", num_train=300, num_warmup=0)
    with pytest.raises(ValueError, match="unknown word-similarity source 'men'"):
        tasks.get_task("similarity", source="men")
    with pytest.raises(ValueError, match="num_bins must be one of"):
        tasks.get_task("similarity", num_bins=4)
    with pytest.raises(ValueError, match="'family-tree' is not in the file"):
        tasks.get_task("analogy", group="family-tree")
    with pytest.raises(ValueError, match="warmup_group must differ"):
        tasks.get_task("analogy", warmup_group="capital-common-countries")
    with pytest.raises(ValueError, match="warmup_answers must be"):
        tasks.get_task("analogy", warmup_answers="true")
    family = tasks.get_task("analogy", group="family", warmup_group="gram8-plural", num_warmup=50)
    assert "sister" in family.label_names
    with pytest.raises(ValueError, match="num_train >= 1"):
        tasks.get_task("analogy_relation", num_train=0)


def test_polarity_warmup_split_comes_out_of_the_pool(polarity):
    warm = tasks.get_task("polarity", num_warmup=20)
    assert (warm.num_train, warm.num_test, warm.num_warmup) == (130, 50, 20)
    assert set(warm.test_lines) == set(polarity.test_lines)  # the same sentences
    assert np.bincount(warm._labels(warm.warmup_targets)).tolist() == [10, 10]
    assert not set(warm.warmup_lines) & (set(warm.train_lines) | set(warm.test_lines))
    assert set(warm.warmup_lines) | set(warm.train_lines) == set(polarity.train_lines)
    assert polarity.num_warmup == 0
    with pytest.raises(ValueError, match="num_warmup must be even"):
        tasks.get_task("polarity", num_warmup=3)


def test_task_warmup_validation():
    with pytest.raises(ValueError, match="2 warm-up texts but 1 targets"):
        tasks.Task("t", ("a",), ("x",), warmup_texts=("b", "c"), warmup_targets=("y",))
    with pytest.raises(ValueError, match="warm-up texts need targets"):
        tasks.Task("t", ("a",), ("x",), warmup_texts=("b",))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("analogy", {}), ("analogy_relation", {}), ("similarity", {})],
)
def test_word_tasks_name_a_missing_file(tmp_path, name, kwargs):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(ValueError, match=r"nowhere\.txt does not exist"):
        tasks.get_task(name, path=missing, **kwargs)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"bad\.txt holds no analogies"),
        (": capital\nAthens Greece Rome\n", r"bad\.txt:2: expected four words"),
        ("Athens Greece Rome Italy\n", r"bad\.txt:1: analogy before the first"),
        (":\nAthens Greece Rome Italy\n", r"bad\.txt:1: group header without a name"),
    ],
)
def test_analogy_file_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        tasks.get_task("analogy_relation", path=path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("# header only\n", r"bad\.tsv holds no word pairs"),
        ("# c\nold\tnew\n", r"bad\.tsv:2: expected 'word1<TAB>word2<TAB>score'"),
        ("old new 1.5\n", r"bad\.tsv:1: expected"),
        ("old\tnew\thigh\n", r"bad\.tsv:1: score 'high' is not a number"),
        ("old\tnew\t11.0\n", r"bad\.tsv:1: score 11.0 is outside \[0, 10\]"),
        ("old\tnew\tnan\n", r"bad\.tsv:1: score nan is outside"),
    ],
)
def test_word_pair_file_errors(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        tasks.get_task("similarity", path=path)


def test_word_files_are_read_as_documented():
    lines = gensim_text.read_analogies()
    assert len(lines) == 19544 and len({q.group for q in lines}) == 14
    assert lines[0] == gensim_text.Analogy(2, "capital-common-countries", "Athens", "Greece",
                                           "Baghdad", "Iraq")  # fmt: skip
    simlex = gensim_text.read_word_pairs("simlex999")
    wordsim = gensim_text.read_word_pairs("wordsim353")
    assert len(simlex) == 999 and len(wordsim) == 353
    assert simlex[0] == gensim_text.WordPair(3, "old", "new", 1.58)
    path = gensim_text.gensim_data_dir() / gensim_text.ANALOGY_FILE
    assert not path.read_bytes().startswith(b"\x80")  # plain text, not a pickle
