"""Tasks: the polarity split, the bundled gensim text, and user tasks from JSONL/TSV files."""

import json

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
