"""Importers: GPTfluence run directories and long-form CSV/JSONL read back into RunSets.

Round trips from a known RunSet in both GPTfluence variants (L_0 logged at step 0, or at
step 1 as in the published runs), the same simulator fitted on the imported runs as on
the source, and one test per kind of malformed input asserting the ValueError's message.
"""

import csv
import dataclasses
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from simfluence_jax import cli, fit_simulator
from simfluence_jax import importers as importers_pkg
from simfluence_jax.importers import (
    GPTFLUENCE_BATCHES,
    GPTFLUENCE_LOSSES,
    GPTFLUENCE_MANIFEST,
    IMPORTERS,
    Importer,
    Input,
    find_run_dirs,
    read_gptfluence,
    read_ids,
    read_long,
    write_gptfluence,
)
from simfluence_jax.registry import Registry
from simfluence_jax.runs import RunSet
from simfluence_jax.synthetic import make_problem


@pytest.fixture(scope="module")
def source():
    """Ragged last batches (subset 30 of 36 at batch 4), every pool id used by some run."""
    runs = make_problem(num_train=36, num_test=5, num_runs=8, subset=30, seed=1).runs
    assert runs.used_ids().all() and (runs.batches == -1).any()
    return runs


def _assert_same(a: RunSet, b: RunSet):
    np.testing.assert_array_equal(a.batches, b.batches)
    assert a.losses.dtype == b.losses.dtype == np.float32
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.train_ids, b.train_ids)
    np.testing.assert_array_equal(a.test_ids, b.test_ids)
    assert a.num_train == b.num_train


@pytest.mark.parametrize("first_step", [0, 1])
def test_gptfluence_round_trip(tmp_path, source, first_step):
    dirs = write_gptfluence(source, tmp_path, first_step=first_step)
    assert [d.name for d in dirs] == [f"run_{r:03d}" for r in range(source.num_runs)]
    first = json.loads((dirs[0] / GPTFLUENCE_BATCHES).read_text().splitlines()[0])
    assert first["step"] == first_step + 1
    back = read_gptfluence(dirs)
    _assert_same(back, source)
    assert back.metadata["first_step"] == first_step
    assert back.metadata["runs"] == [str(d) for d in dirs]


def test_step_one_variant_drops_the_batch_before_the_first_logged_loss(tmp_path, source):
    """Published GPTfluence runs log the batch of step 1 but losses only from step 1 on."""
    run_dir = write_gptfluence(source.select([0]), tmp_path, first_step=1)[0]
    batches = run_dir / GPTFLUENCE_BATCHES
    step1 = json.dumps({"step": 1, "samples_id": [5, 6, 7, 8]})
    batches.write_text(step1 + "\n" + batches.read_text())
    _assert_same(read_gptfluence([run_dir], train_ids=source.train_ids), source.select([0]))


def test_fitting_the_imported_runs_gives_the_source_simulator(tmp_path, source):
    back = read_gptfluence(write_gptfluence(source, tmp_path, first_step=1))
    fit_a, val_a, _ = source.split(6, 1)
    fit_b, val_b, _ = back.split(6, 1)
    a = fit_simulator("linear", fit_a, validation=val_a)
    b = fit_simulator("linear", fit_b, validation=val_b)
    assert a.l2 == b.l2
    np.testing.assert_array_equal(np.asarray(a.A), np.asarray(b.A))
    np.testing.assert_array_equal(np.asarray(a.B), np.asarray(b.B))


def test_string_ids_and_learning_rates_round_trip(tmp_path, source):
    named = RunSet(
        batches=source.batches,
        losses=source.losses,
        train_ids=np.asarray([f"ex{i:02d}" for i in range(source.num_train)]),
        test_ids=np.asarray([f"q{j}" for j in range(source.num_test)]),
        learning_rates=np.linspace(0.1, 0.01, source.num_steps)[None].repeat(source.num_runs, 0),
    )
    back = read_gptfluence(write_gptfluence(named, tmp_path))
    _assert_same(back, named)
    np.testing.assert_array_equal(back.learning_rates, named.learning_rates)


def test_integer_ids_map_to_positions_unless_the_pool_is_given(tmp_path):
    """Without the manifest (as in runs logged elsewhere) the pool is the ids the runs use."""
    runs = RunSet(
        batches=np.array([[[10, 30]], [[20, 10]]]),
        losses=np.ones((2, 2, 2)),
        train_ids=None,
    )
    dirs = write_gptfluence(runs, tmp_path)
    _assert_same(read_gptfluence(dirs), runs)
    (tmp_path / GPTFLUENCE_MANIFEST).unlink()
    mapped = read_gptfluence(dirs)
    np.testing.assert_array_equal(mapped.train_ids, [10, 20, 30])
    np.testing.assert_array_equal(mapped.batches[:, 0], [[0, 2], [1, 0]])
    kept = read_gptfluence(dirs, train_ids=range(31))
    np.testing.assert_array_equal(kept.batches, runs.batches)
    with pytest.raises(ValueError, match=r"train_samples_id.json:1: training id 30 is not in"):
        read_gptfluence(dirs, train_ids=range(30))


def test_runs_in_the_order_given_and_found_by_parent_or_glob(tmp_path, source):
    parent = tmp_path / "rte"
    parent.mkdir()
    for r, name in [(0, "seed-2"), (1, "seed-10"), (2, "seed-1")]:
        write_gptfluence(source.select([r]), tmp_path / "tmp", overwrite=True)[0].rename(
            parent / name
        )
    natural = ["seed-1", "seed-2", "seed-10"]
    assert [p.name for p in find_run_dirs([parent])] == natural
    assert [p.name for p in find_run_dirs([str(parent / "seed-*")])] == natural
    order = [parent / "seed-10", parent / "seed-1"]
    assert find_run_dirs(order) == order
    assert read_gptfluence(parent).metadata["runs"] == [str(parent / n) for n in natural]
    _assert_same(read_gptfluence(order, train_ids=source.train_ids), source.select([1, 2]))
    with pytest.raises(ValueError, match="matches no GPTfluence run directory"):
        find_run_dirs([str(parent / "nothing-*")])
    with pytest.raises(ValueError, match="nor a directory of them"):
        find_run_dirs([tmp_path / "tmp"])


# ---------------------------------------------------------------------------------------------
# Long form.


def _write_long_csv(runs: RunSet, folder: Path, *, first_step=0, ids=None):
    losses, curricula = folder / "losses.csv", folder / "curricula.csv"
    names = runs.train_ids.tolist() if ids is None else ids
    with open(losses, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "test_id", "loss"])
        for r in range(runs.num_runs):
            for t in range(runs.num_steps + 1):
                for j, tid in enumerate(runs.test_ids.tolist()):
                    w.writerow([f"run{r}", first_step + t, tid, float(runs.losses[r, t, j])])
    with open(curricula, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "train_ids"])
        for r in range(runs.num_runs):
            for t in range(runs.num_steps):
                batch = ";".join(str(names[i]) for i in runs.batches[r, t] if i >= 0)
                w.writerow([f"run{r}", first_step + t + 1, batch])
    return losses, curricula


def _write_long_jsonl(runs: RunSet, folder: Path):
    losses, curricula = folder / "losses.jsonl", folder / "curricula.jsonl"
    rows = [
        {"run": r, "step": t, "test_id": tid, "loss": float(runs.losses[r, t, j])}
        for r in range(runs.num_runs)
        for t in range(runs.num_steps + 1)
        for j, tid in enumerate(runs.test_ids.tolist())
    ]
    losses.write_text("".join(json.dumps(x) + "\n" for x in rows[::-1]))  # any row order
    rows = [
        {
            "run": r,
            "step": t + 1,
            "train_ids": [int(i) for i in runs.batches[r, t] if i >= 0],
            "learning_rate": 0.5 / (t + 1),
        }
        for r in range(runs.num_runs)
        for t in range(runs.num_steps)
    ]
    curricula.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return losses, curricula


@pytest.mark.parametrize("first_step", [0, 1])
def test_long_csv_round_trip(tmp_path, source, first_step):
    back = read_long(*_write_long_csv(source, tmp_path, first_step=first_step))
    _assert_same(back, source)
    assert back.metadata["runs"] == [f"run{r}" for r in range(source.num_runs)]
    assert back.learning_rates is None


def test_long_jsonl_round_trip_with_learning_rates(tmp_path, source):
    back = read_long(*_write_long_jsonl(source, tmp_path))
    # Rows were written in reverse: runs come in order of first appearance, test ids too.
    _assert_same(back, source.select(range(source.num_runs)[::-1]).select_test([4, 3, 2, 1, 0]))
    expected = 0.5 / np.arange(1, source.num_steps + 1)
    np.testing.assert_allclose(back.learning_rates, np.tile(expected, (source.num_runs, 1)))


def test_long_string_ids_are_mapped(tmp_path, source):
    names = [f"doc-{i}" for i in range(source.num_train)]
    back = read_long(*_write_long_csv(source, tmp_path, ids=names))
    np.testing.assert_array_equal(back.train_ids, sorted(names))
    position = {n: i for i, n in enumerate(sorted(names))}
    expected = np.vectorize(lambda i: position[names[i]] if i >= 0 else -1)(source.batches)
    np.testing.assert_array_equal(back.batches, expected)


# ---------------------------------------------------------------------------------------------
# Malformed inputs: every one a ValueError naming the file, the line and the problem.


@pytest.fixture()
def run_dirs(tmp_path, source):
    return write_gptfluence(source.select([0, 1]), tmp_path)


def _edit_lines(path: Path, edit):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _join(lines):
    return "\n".join(lines) + "\n"


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_missing_file(run_dirs):
    (run_dirs[1] / GPTFLUENCE_LOSSES).unlink()
    msg = _raises("file not found", read_gptfluence, run_dirs)
    assert msg.startswith(str(run_dirs[1] / GPTFLUENCE_LOSSES))
    _raises(r"nothing: not a directory", read_gptfluence, [run_dirs[0].parent / "nothing"])
    _raises(r"losses\.csv: file not found", read_long, run_dirs[0] / "losses.csv", "c.csv")


def test_truncated_json_line(run_dirs):
    path = run_dirs[0] / GPTFLUENCE_LOSSES
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # a killed writer: the last line is cut
    last = len(text.splitlines())
    _raises(rf"{GPTFLUENCE_LOSSES}:{last}: not valid JSON .*truncated line\?", read_gptfluence,
            run_dirs)  # fmt: skip
    path = run_dirs[1] / GPTFLUENCE_BATCHES
    _edit_lines(path, lambda lines: [*lines[:2], lines[2][:-5], *lines[3:]])
    run_dirs[0].joinpath(GPTFLUENCE_LOSSES).write_text(text)
    _raises(rf"{GPTFLUENCE_BATCHES}:3: not valid JSON", read_gptfluence, run_dirs)


def test_step_missing_from_the_middle_of_a_run(run_dirs):
    path = run_dirs[0] / GPTFLUENCE_BATCHES
    _edit_lines(path, lambda lines: lines[:3] + lines[4:])  # drop step 4
    _raises(rf"{GPTFLUENCE_BATCHES}:4: step 4 is missing \(the batches jump to step 5\)",
            read_gptfluence, run_dirs)  # fmt: skip


def test_loss_step_missing_from_a_trajectory(run_dirs):
    def drop_step_3(lines):
        obj = json.loads(lines[1])
        obj["loss_trajectory"] = [p for p in obj["loss_trajectory"] if p["step"] != 3]
        return [lines[0], json.dumps(obj), *lines[2:]]

    _edit_lines(run_dirs[1] / GPTFLUENCE_LOSSES, drop_step_3)
    _raises(rf"run_001/{GPTFLUENCE_LOSSES}:2: test example 1: step 3 is missing "
            r"\(the steps jump from 2 to 4\)", read_gptfluence, run_dirs)  # fmt: skip


def test_test_example_missing_in_one_run(run_dirs):
    _edit_lines(run_dirs[1] / GPTFLUENCE_LOSSES, lambda lines: lines[:2] + lines[3:])
    msg = _raises(r"has no test example 2 \(run .*run_000' has it\)", read_gptfluence, run_dirs)
    assert msg.startswith(str(run_dirs[1] / GPTFLUENCE_LOSSES))


def test_duplicate_steps(run_dirs):
    path = run_dirs[0] / GPTFLUENCE_BATCHES
    _edit_lines(path, lambda lines: [*lines[:3], lines[2], *lines[3:]])
    _raises(rf"{GPTFLUENCE_BATCHES}:4: step 3 appears twice \(also on line 3\)", read_gptfluence,
            run_dirs)  # fmt: skip

    def twice(lines):
        obj = json.loads(lines[0])
        obj["loss_trajectory"].append(obj["loss_trajectory"][2])
        return [json.dumps(obj), *lines[1:]]

    _edit_lines(path, lambda lines: [*lines[:3], *lines[4:]])
    _edit_lines(run_dirs[0] / GPTFLUENCE_LOSSES, twice)
    _raises(rf"{GPTFLUENCE_LOSSES}:1: test example 0: step 2 appears twice", read_gptfluence,
            run_dirs)  # fmt: skip


def test_nan_and_infinite_losses(run_dirs):
    path = run_dirs[1] / GPTFLUENCE_LOSSES
    original = path.read_text()
    for bad in ("NaN", "Infinity"):
        obj = json.loads(original.splitlines()[3])
        obj["loss_trajectory"][5]["loss"] = float(bad.lower().replace("infinity", "inf"))
        lines = original.splitlines()
        lines[3] = json.dumps(obj)
        path.write_text("\n".join(lines) + "\n")
        assert bad in path.read_text()
        _raises(rf"{GPTFLUENCE_LOSSES}:4: the loss of test example 3 at step 5 is "
                rf"{float(bad)} \(NaN or infinite\)", read_gptfluence, run_dirs)  # fmt: skip


def test_runs_of_different_lengths_need_pad(tmp_path, source):
    dirs = write_gptfluence(source.select([0, 1]), tmp_path / "long")
    (tmp_path / "long" / GPTFLUENCE_MANIFEST).unlink()
    short = source.select([1])
    short = RunSet(batches=short.batches[:, :5], losses=short.losses[:, :6])
    write_gptfluence(short, tmp_path / "short")[0].rename(tmp_path / "b")
    dirs = [dirs[0], tmp_path / "b"]
    msg = _raises(r"the run has 5 steps but .*run_000.* has 8; runs must have the same length "
                  r"\(pass pad=True, or --pad", read_gptfluence, dirs)  # fmt: skip
    assert msg.startswith(str(tmp_path / "b" / GPTFLUENCE_LOSSES))
    cut = read_gptfluence(dirs, pad=True)
    assert cut.num_steps == 5
    np.testing.assert_array_equal(cut.losses[0], source.losses[0, :6])
    assert cut.metadata["logged_steps"] == {str(dirs[0]): 8, str(dirs[1]): 5}


def test_other_malformed_gptfluence_inputs(run_dirs):
    batches = run_dirs[0] / GPTFLUENCE_BATCHES
    original = batches.read_text()
    batches.write_text(original + json.dumps({"step": 99, "samples_id": [1]}) + "\n")
    _raises(r":9: step 99 has a batch but the loss trajectories end at step 8", read_gptfluence,
            run_dirs)  # fmt: skip
    batches.write_text(original.replace('"samples_id": [', '"samples_id": [[0], ', 1))
    _raises(r":1: training id \[0\] is not an integer or a string", read_gptfluence, run_dirs)
    batches.write_text(
        json.dumps({"step": 1, "samples_id": []}) + "\n" + original.split("\n", 1)[1]
    )
    _raises(r":1: step 1 has an empty batch", read_gptfluence, run_dirs)
    batches.write_text("")
    _raises(r"train_samples_id.json: no batches \(the file is empty\)", read_gptfluence, run_dirs)
    batches.write_text(original.replace('"step"', '"stp"', 1))
    _raises(r":1: missing key 'step'", read_gptfluence, run_dirs)


# Long form: the same problems in CSV and JSONL.


def test_long_form_malformed_inputs(tmp_path, source):
    losses, curricula = _write_long_csv(source.select([0, 1]), tmp_path)
    good_losses, good_curricula = losses.read_text(), curricula.read_text()
    lines = good_losses.splitlines()

    def check(match, losses_text=good_losses, curricula_text=good_curricula, **kwargs):
        losses.write_text(losses_text)
        curricula.write_text(curricula_text)
        return _raises(match, read_long, losses, curricula, **kwargs)

    # NaN loss (line 3 is run0, step 0, test 1).
    bad = lines[:2] + [lines[2].rsplit(",", 1)[0] + ",nan"] + lines[3:]
    check(r"losses.csv:3: the loss of test example '1' is nan \(NaN or infinite\)", _join(bad))
    # Truncated last line.
    check(r"losses.csv:\d+: the last line does not end with a newline; truncated line\?",
          good_losses.rstrip()[:-12])  # fmt: skip
    check(r"losses.csv:\d+: expected 4 fields; truncated line\?", good_losses[:-25] + "\n")
    # Duplicate row.
    check(r"losses.csv:3: run 'run0', step 0, test example '0' appears twice \(also on line 2\)",
          _join(lines[:2] + lines[1:]))  # fmt: skip
    # A test example missing at one step of a run (run1, step 2, test 3).
    row = next(i for i, x in enumerate(lines) if x.startswith("run1,2,3,"))
    check(r"losses.csv: run 'run1' has no loss for test example '3' at step 2",
          _join(lines[:row] + lines[row + 1 :]))  # fmt: skip
    # A test example missing in one run altogether.
    kept = [x for x in lines if not x.startswith("run1,") or x.split(",")[2] != "4"]
    check(r"losses.csv: run 'run1' has no test example 4 \(run 'run0' has it\)", _join(kept))
    # A step missing from the middle of a run: losses, then batches.
    kept = [x for x in lines if not x.startswith("run0,3,")]
    first_step4 = next(i for i, x in enumerate(kept) if x.startswith("run0,4,")) + 1
    check(rf"losses.csv:{first_step4}: run 'run0': step 3 is missing \(the steps jump from 2 "
          r"to 4\)", _join(kept))  # fmt: skip
    c_lines = good_curricula.splitlines()
    check(r"curricula.csv:4: run 'run0': the batch of step 3 is missing",
          curricula_text=_join(c_lines[:3] + c_lines[4:]))  # fmt: skip
    check(r"curricula.csv:5: run 'run0', step 3 appears twice \(also on line 4\)",
          curricula_text=_join(c_lines[:4] + c_lines[3:]))  # fmt: skip
    # Missing columns, an empty file, runs of different lengths.
    check(r"losses.csv:1: the header row lacks columns \['loss'\]",
          good_losses.replace("test_id,loss", "test_id,value"))  # fmt: skip
    check(r"curricula.csv: no rows \(the file is empty\)", curricula_text="run,step,train_ids\n")
    short = [x for x in lines if not x.startswith("run1,8,")]
    c_short = [x for x in c_lines if not x.startswith("run1,8,")]
    check(r"losses.csv \(run 'run1'\): the run has 7 steps but .*\(run 'run0'\) has 8",
          _join(short), _join(c_short))  # fmt: skip
    cut = read_long(losses, curricula, pad=True)
    assert cut.num_steps == 7


def test_long_form_jsonl_truncation_and_mixed_ids(tmp_path, source):
    losses, curricula = _write_long_jsonl(source.select([0]), tmp_path)
    text = losses.read_text()
    losses.write_text(text[:-30])
    n = len(text.splitlines())
    _raises(rf"losses.jsonl:{n}: not valid JSON .*truncated line\?", read_long, losses, curricula)
    losses.write_text(text.replace('"test_id": 0', '"test_id": "0"'))
    _raises(r"losses.jsonl:5: test ids mix integers and strings \('0' here, 4 at .*"
            r"losses.jsonl:1\)", read_long, losses, curricula)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Ids are never guessed: spellings of one integer, duplicates, one directory twice.


def _tiny_long(folder: Path, test_ids=("1", "2"), batches=("1;2", "3;4"), suffix="csv", bom=""):
    """One run of two steps in long-form CSV; test and training ids spelled as given."""
    losses, curricula = folder / f"losses.{suffix}", folder / f"curricula.{suffix}"
    rows = [f"r,{t},{tid},{1.0 / (t + 1 + j)}" for t in range(3) for j, tid in enumerate(test_ids)]
    losses.write_text(bom + "run,step,test_id,loss\n" + _join(rows))
    rows = [f"r,{t + 1},{batch}" for t, batch in enumerate(batches)]
    curricula.write_text(bom + "run,step,train_ids\n" + _join(rows))
    return losses, curricula


@pytest.mark.parametrize(("one", "other"), [("1", "01"), ("7", "+7"), ("0", "-0")])
def test_long_form_ids_that_spell_one_integer_are_an_error(tmp_path, one, other):
    files = _tiny_long(tmp_path, batches=(f"{one};2", f"{other};4"))
    _raises(rf"curricula.csv:3: training id '{re.escape(other)}' and training id '{one}' \(at "
            r".*curricula.csv:2\) spell the same integer", read_long, *files)  # fmt: skip
    files = _tiny_long(tmp_path, test_ids=(one, other))
    _raises(rf"losses.csv:3: test id '{re.escape(other)}' and test id '{one}' \(at "
            r".*losses.csv:2\) spell the same integer", read_long, *files)  # fmt: skip


def test_json_strings_with_spaces_spell_the_same_integer(tmp_path):
    _, curricula = _tiny_long(tmp_path)
    losses = tmp_path / "losses.jsonl"
    rows = [{"run": "r", "step": t, "test_id": tid, "loss": 1.0} for t in range(3)
            for tid in ("3", " 3")]  # fmt: skip
    losses.write_text("".join(json.dumps(x) + "\n" for x in rows))
    _raises(r"losses.jsonl:2: test id ' 3' and test id '3' \(at .*losses.jsonl:1\)", read_long,
            losses, curricula)  # fmt: skip


def test_long_form_ids_become_integers_only_when_all_are_canonical(tmp_path):
    runs = read_long(*_tiny_long(tmp_path, batches=("10;2", "3;-4")))
    assert runs.train_ids.tolist() == [-4, 2, 3, 10] and runs.test_ids.tolist() == [1, 2]
    runs = read_long(*_tiny_long(tmp_path, test_ids=("01", "2"), batches=("10;02", "3;4")))
    assert runs.train_ids.tolist() == ["02", "10", "3", "4"]  # strings, sorted as strings
    assert runs.test_ids.tolist() == ["01", "2"]
    # A pool of strings keeps canonical spellings as strings.
    runs = read_long(*_tiny_long(tmp_path), train_ids=["4", "3", "2", "1"])
    assert runs.train_ids.tolist() == ["4", "3", "2", "1"]
    np.testing.assert_array_equal(runs.batches[0], [[3, 2], [1, 0]])


def test_duplicate_and_all_duplicate_ids_are_an_error(tmp_path, source):
    files = _tiny_long(tmp_path)
    _raises(r"train_ids holds 1 twice \(entries 0 and 3\)", read_long, *files,
            train_ids=[1, 2, 3, 1, 4])  # fmt: skip
    _raises(r"train_ids holds 5 twice \(entries 0 and 1\)", read_long, *files,
            train_ids=[5, 5, 5])  # fmt: skip
    _raises(r"test_ids holds 2 twice", read_long, *files, test_ids=[2, 2])
    files = _tiny_long(tmp_path, test_ids=("9", "9"))
    _raises(r"losses.csv:3: run 'r', step 0, test example '9' appears twice \(also on line 2\)",
            read_long, *files)  # fmt: skip
    run_dir = write_gptfluence(source.select([0]), tmp_path / "g")[0]
    _edit_lines(run_dir / GPTFLUENCE_LOSSES, lambda lines: [lines[0].replace('"id": 0', '"id": 1'),
                *lines[1:]])  # fmt: skip
    _raises(rf"{GPTFLUENCE_LOSSES}:2: test example 1 appears twice \(also on line 1\)",
            read_gptfluence, [run_dir])  # fmt: skip


def test_test_ids_order_and_batch_size_can_be_given(tmp_path):
    files = _tiny_long(tmp_path)
    runs = read_long(*files, test_ids=[2, 1], batch_size=5)
    assert runs.test_ids.tolist() == [2, 1] and runs.batch_size == 5
    np.testing.assert_array_equal(runs.losses, read_long(*files).losses[:, :, ::-1])
    _raises(r"losses.csv: test example 2 is logged but not in test_ids", read_long, *files,
            test_ids=[1])  # fmt: skip
    _raises(r"losses.csv: test_ids holds 3, which run 'r' does not log", read_long, *files,
            test_ids=[1, 2, 3])  # fmt: skip
    _raises(r"curricula.csv:2: the batch has 2 ids, more than batch_size = 1", read_long, *files,
            batch_size=1)  # fmt: skip


def test_one_run_directory_twice_is_an_error(tmp_path, source):
    dirs = write_gptfluence(source.select([0, 1]), tmp_path / "g")
    _raises(rf"run_000: the same run directory as {dirs[0]}, given twice", read_gptfluence,
            [dirs[0], dirs[1], dirs[0]])  # fmt: skip
    (tmp_path / "link").symlink_to(dirs[1])
    _raises(rf"link: the same run directory as {dirs[1]}, reached twice", read_gptfluence,
            [*dirs, tmp_path / "link"])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Text as other tools write it: a byte-order mark, very long fields, huge numbers.


def test_a_byte_order_mark_is_accepted_in_both_formats(tmp_path, source):
    plain = read_long(*_tiny_long(tmp_path))
    _assert_same(read_long(*_tiny_long(tmp_path, bom="\ufeff")), plain)
    losses, curricula = _write_long_jsonl(source.select([0]), tmp_path)
    expected = read_long(losses, curricula)
    for path in (losses, curricula):
        path.write_text("\ufeff" + path.read_text())
    _assert_same(read_long(losses, curricula), expected)
    dirs = write_gptfluence(source.select([0, 1]), tmp_path / "g")
    for name in (GPTFLUENCE_BATCHES, GPTFLUENCE_LOSSES):
        path = dirs[1] / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    _assert_same(read_gptfluence(dirs, train_ids=source.train_ids), source.select([0, 1]))


def test_a_batch_of_200k_ids_in_csv(tmp_path):
    ids = ";".join(str(i) for i in range(200_000))
    runs = read_long(*_tiny_long(tmp_path, batches=(ids, "3")))
    assert runs.batches.shape == (1, 2, 200_000) and runs.num_train == 200_000
    np.testing.assert_array_equal(runs.batches[0, 0], np.arange(200_000))


def test_a_loss_float32_cannot_hold_names_the_file_and_line(tmp_path, source):
    losses, curricula = _tiny_long(tmp_path)
    _edit_lines(losses, lambda lines: [*lines[:3], "r,1,2,1e300", *lines[4:]])
    _raises(r"losses.csv:4: the loss of test example '2' is 1e\+300, beyond float32's range",
            read_long, losses, curricula)  # fmt: skip
    run_dir = write_gptfluence(source.select([0]), tmp_path / "g")[0]
    path = run_dir / GPTFLUENCE_LOSSES
    path.write_text(re.sub(r'"loss": [^,}]+', '"loss": -1e300', path.read_text(), count=1))
    _raises(rf"run_000/{GPTFLUENCE_LOSSES}:1: the loss of test example 0 at step 0 is -1e\+300",
            read_gptfluence, [run_dir])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# write_gptfluence: exact round trips, replacing only its own folders, the umask.

IMPORTER_KEYS = ("source", "runs", "first_step")


def _assert_exact(back: RunSet, runs: RunSet):
    """Every field of the run set, the importer's own metadata keys aside."""
    _assert_same(back, runs)
    assert back.batch_size == runs.batch_size
    assert back.train_ids.dtype.kind == runs.train_ids.dtype.kind
    assert back.test_ids.dtype.kind == runs.test_ids.dtype.kind
    if runs.learning_rates is None:
        assert back.learning_rates is None
    else:
        assert back.learning_rates.dtype == np.float32
        np.testing.assert_array_equal(back.learning_rates, runs.learning_rates)
    assert {k: v for k, v in back.metadata.items() if k not in IMPORTER_KEYS} == runs.metadata


@pytest.fixture(scope="module")
def sparse():
    """A generated run set that leaves 43 of 150 pool ids unused, with learning rates."""
    runs = make_problem(num_train=150, num_test=4, num_runs=4, subset=40, seed=2).runs
    assert runs.num_train - runs.used_ids().sum() == 43
    lr = np.linspace(0.3, 0.01, runs.num_steps, dtype=np.float32)[None].repeat(4, 0)
    return dataclasses.replace(runs, learning_rates=lr)


def test_write_then_read_is_exact_with_unused_pool_ids(tmp_path, sparse):
    back = read_gptfluence(write_gptfluence(sparse, tmp_path / "g"))
    _assert_exact(back, sparse)
    assert back.num_train == 150
    _assert_exact(read_gptfluence(tmp_path / "g"), sparse)  # the folder itself
    subset = read_gptfluence([tmp_path / "g" / "run_003", tmp_path / "g" / "run_001"])
    _assert_exact(subset, sparse.select([3, 1]))


def test_write_then_import_through_the_cli_is_exact(tmp_path, sparse):
    write_gptfluence(sparse, tmp_path / "g", first_step=1)
    out = tmp_path / "imported"
    assert cli.main(["import", "gptfluence", str(tmp_path / "g"), "--out", str(out)]) == 0
    _assert_exact(RunSet.load(out), sparse)


def test_string_ids_keep_their_order_and_a_batch_never_full_keeps_b(tmp_path, source):
    names = [f"doc-{i}" for i in range(source.num_train)][::-1]  # not sorted
    padded = np.concatenate([source.batches, np.full((*source.batches.shape[:2], 2), -1)], 2)
    runs = RunSet(
        batches=padded, losses=source.losses, train_ids=names,
        test_ids=["q9", "q10", "q1", "a", "b"], metadata={"seeds": list(range(8))},
    )  # fmt: skip
    assert runs.batch_size == 6 and (padded[:, :, 4:] == -1).all()
    back = read_gptfluence(write_gptfluence(runs, tmp_path / "g"))
    _assert_exact(back, runs)
    assert back.train_ids.tolist() == names and back.test_ids.tolist()[:3] == ["q9", "q10", "q1"]
    picked = read_gptfluence([tmp_path / "g" / "run_005", tmp_path / "g" / "run_002"])
    assert picked.metadata["seeds"] == [5, 2]


def test_write_refuses_a_folder_it_holds_runs_in_unless_asked_then_replaces_it(tmp_path, source):
    folder = tmp_path / "g"
    write_gptfluence(source.select(range(5)), folder)
    three = source.select([5, 6, 7])
    _raises(r"g already holds runs written by write_gptfluence; pass overwrite=True",
            write_gptfluence, three, folder)  # fmt: skip
    assert len(read_gptfluence(folder).batches) == 5  # untouched
    dirs = write_gptfluence(three, folder, overwrite=True)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [*(d.name for d in dirs), GPTFLUENCE_MANIFEST]
    back = read_gptfluence(folder)
    assert back.num_runs == 3
    _assert_exact(back, three)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_write_never_replaces_a_folder_holding_files_it_did_not_write(tmp_path, source):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    _raises(r"mine is not empty and was not written by write_gptfluence", write_gptfluence,
            source, mine, overwrite=True)  # fmt: skip
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    folder = tmp_path / "g"
    dirs = write_gptfluence(source.select([0, 1]), folder)
    for user_file in (folder / "notes.txt", dirs[1] / "plot.png"):
        user_file.write_text("keep me")
        _raises(rf"g holds {user_file}, which write_gptfluence did not write", write_gptfluence,
                source, folder, overwrite=True)  # fmt: skip
        assert user_file.read_text() == "keep me"
        _assert_exact(read_gptfluence(folder), source.select([0, 1]))
        user_file.unlink()
    (folder / "extra").mkdir()
    _raises(r"holds .*extra, which write_gptfluence did not write", write_gptfluence, source,
            folder, overwrite=True)  # fmt: skip
    (tmp_path / "file").write_text("")
    _raises(r"file is a file, not a folder", write_gptfluence, source, tmp_path / "file")


def test_a_run_set_with_repeated_ids_cannot_even_be_made(tmp_path, source):
    # write_gptfluence also checks, but RunSet itself refuses repeated ids first.
    with pytest.raises(ValueError, match=r"train_ids name example 7 twice"):
        RunSet(batches=source.batches, losses=source.losses, train_ids=[7] * 36)
    with pytest.raises(ValueError, match=r"test_ids name example 'q' twice"):
        RunSet(batches=source.batches, losses=source.losses, test_ids=["q"] * 5)


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755),
                                                              (0o077, 0o600, 0o700)])  # fmt: skip
def test_written_files_follow_the_umask(tmp_path, source, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        dirs = write_gptfluence(source.select([0]), tmp_path / "g")
    finally:
        os.umask(old)
    files = [tmp_path / "g" / GPTFLUENCE_MANIFEST, *(dirs[0] / n for n in (GPTFLUENCE_BATCHES,
             GPTFLUENCE_LOSSES))]  # fmt: skip
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(file_mode)}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / "g", dirs[0])} == {
        oct(dir_mode)
    }


def test_a_damaged_manifest_names_itself(tmp_path, source):
    write_gptfluence(source.select([0]), tmp_path / "g")
    manifest = tmp_path / "g" / GPTFLUENCE_MANIFEST
    meta = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**meta, "train_ids": [1, 1]}))
    _raises(rf"{GPTFLUENCE_MANIFEST}: train_ids holds 1 twice", read_gptfluence, tmp_path / "g")
    manifest.write_text(json.dumps({**meta, "version": 99}))
    _raises(r"format version 99", read_gptfluence, tmp_path / "g")
    manifest.write_text(json.dumps({**meta, "runs": ["run_001"]}))
    _raises(r"the manifest does not list the run .*run_000", read_gptfluence, tmp_path / "g")


# ---------------------------------------------------------------------------------------------
# The pool from files, for runs that do not carry it (``--train_ids``, ``--test_ids``).


def test_id_files(tmp_path):
    path = tmp_path / "ids.txt"
    for text, ids in [("3\n\n10\n-1\n", [3, 10, -1]), ("\ufeffb\na\n", ["b", "a"]),
                      ("07\n10\n", ["07", "10"]), ('["1", 2]', None), ('["x", "1"]', ["x", "1"]),
                      ("[3, 1]", [3, 1])]:  # fmt: skip
        path.write_text(text)
        if ids is None:
            _raises(r"ids.txt: ids mix integers and strings", read_ids, path)
        else:
            assert read_ids(path) == ids
    for text, match in [("1\n2\n1\n", r"ids.txt:3: id '1' appears twice \(also on line 1\)"),
                        ("5\n5\n5\n", r"ids.txt:2: id '5' appears twice"),
                        ("1\n01\n", r"ids.txt:2: id '01' and id '1' \(at .*ids.txt:1\) spell"),
                        ('["a", "a"]', r"ids.txt: the list holds 'a' twice"),
                        ("\n\n", r"ids.txt: no ids"),
                        ("[true]", r"id True is not an integer")]:  # fmt: skip
        path.write_text(text)
        _raises(match, read_ids, path)


def test_cli_import_takes_the_pool_from_files(tmp_path, sparse):
    """Long-form files do not carry the pool, the test order or B; the options give them."""
    losses, curricula = _write_long_csv(sparse, tmp_path)
    pool, tests = tmp_path / "pool.txt", tmp_path / "tests.json"
    pool.write_text("".join(f"{i}\n" for i in sparse.train_ids.tolist()))
    tests.write_text(json.dumps(sparse.test_ids.tolist()[::-1]))
    argv = ["import", "long", "--losses", str(losses), "--curricula", str(curricula)]
    assert cli.main([*argv, "--out", str(tmp_path / "bare")]) == 0
    assert RunSet.load(tmp_path / "bare").num_train == 107  # only the ids the runs use
    argv += ["--train_ids", str(pool), "--test_ids", str(tests), "--batch_size", "6"]
    assert cli.main([*argv, "--out", str(tmp_path / "full")]) == 0
    back = RunSet.load(tmp_path / "full")
    assert (back.num_train, back.batch_size) == (150, 6)
    np.testing.assert_array_equal(back.batches[:, :, :4], sparse.batches)
    np.testing.assert_array_equal(back.losses, sparse.losses[:, :, ::-1])
    dirs = write_gptfluence(sparse, tmp_path / "g")
    (tmp_path / "g" / GPTFLUENCE_MANIFEST).unlink()  # as runs logged elsewhere
    argv = ["import", "gptfluence", *map(str, dirs), "--train_ids", str(pool)]
    assert cli.main([*argv, "--out", str(tmp_path / "g_imported")]) == 0
    _assert_exact(RunSet.load(tmp_path / "g_imported"), dataclasses.replace(sparse, metadata={}))


def test_the_cli_offers_every_registered_importer_and_calls_it(tmp_path, source, monkeypatch):
    """``simfluence import`` reads its formats from ``IMPORTERS``: a format registered there
    (here a toy one reading a saved run set) is a subcommand with its inputs and the pool
    options, and its reader gets the files and options given."""
    assert IMPORTERS.names() == ["gptfluence", "long"]
    assert IMPORTERS.get("long").read is read_long
    calls = []

    def read_saved(folder, *, pad, train_ids, test_ids, batch_size):
        calls.append((folder, pad, train_ids, test_ids, batch_size))
        return RunSet.load(folder)

    registry = Registry("importer")
    for name in IMPORTERS:
        registry.register(name)(IMPORTERS.get(name))
    registry.register("saved")(
        Importer(read=read_saved, help="a saved run set", inputs=(Input("--folder", "its path"),))
    )
    monkeypatch.setattr(importers_pkg, "IMPORTERS", registry)
    source.save(tmp_path / "src")
    argv = ["import", "saved", "--folder", str(tmp_path / "src"), "--batch_size", "9"]
    assert cli.main([*argv, "--pad", "--out", str(tmp_path / "out")]) == 0
    assert calls == [(str(tmp_path / "src"), True, None, None, 9)]
    _assert_same(RunSet.load(tmp_path / "out"), source)
    with pytest.raises(SystemExit):  # the option is required, as its Input says
        cli.main(["import", "saved", "--out", str(tmp_path / "x")])
