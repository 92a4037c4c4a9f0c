"""Beyond Simfluence-Linear on the quickstart data: featurized simulator, LDS, curriculum search.

    python -m experiments.beyond [--out DIR] [--seed 0] [--small] [--gin.NAME=VALUE ...]

Configured by ``gin_configs/experiments/beyond.gin`` (``--small``: ``beyond_small.gin``, the
smoke-test sizes): the runs are a ``RunsConfig`` (MiniLM on cached lower layers fine-tuned on
the bundled polarity task, 150 pool / 50 test sentences, plain SGD, batch 4, 48 steps, 96
examples a run: the quickstart's runs), the split a ``FitConfig``, the rest ``Beyond``. The
flags ``--out``, ``--seed``, ``--num-fit``, ... are shorthands for bindings (``--help``).
Steps:

1. Withhold ``Beyond.withheld`` pool examples from every fitting, validation and held-out run;
   make the runs (random ``subset_size`` of the remaining pool in random order), plus
   ``Beyond.unseen_runs`` runs that train on every withheld example and on random others.
2. Features: the frozen all-MiniLM-L6-v2 sentence embedding of each text, with the one-hot
   label appended (the loss depends on the target, as GPTfluence's features include it).
3. Fit ``FitConfig.simulators`` (the Linear family and the controls) through the registry,
   and the featurized simulator of each order in ``Beyond.featurized_orders``.
4. Score them on (a) held-out runs over seen examples, (b) the runs that use withheld
   examples (Linear has no parameters for those: it treats them as having no effect),
   (c) unseen test examples: fit on the runs' losses of ``M - Beyond.unseen_tests`` test
   examples, predict the others (Linear has no row for them; its baselines copy the row of
   the nearest seen test example or average all rows).
5. LDS (TRAK): ``Beyond.lds_subsets`` random subsets of half the seen pool, trained for real.
6. Curriculum search for the ``Beyond.targets`` test examples with the highest mean final
   loss in the fitting runs: greedy and gradient searches with Linear and the featurized
   simulator, each pick trained for real and compared with the logged runs (random
   curricula of the same shape, trained already).
7. The report (``report.md`` and the rest, ``simfluence_jax.reports``) with a section per
   step, ``beyond.json`` and the operative config, in ``Beyond.output_dir``.

Runs are trained through the pipeline (``pipeline.generate``) into run stores under the
output folder keyed by their curricula, so a re-run reuses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import simfluence_jax as sj
from experiments import beyond_report, common
from simfluence_jax import lds, search
from simfluence_jax.evaluation import score
from simfluence_jax.fitting import simulator_group
from simfluence_jax.rollouts import UnseenExampleWarning
from simfluence_jax.sampling import sample_curricula

GIN = "experiments/beyond.gin"
SMALL_GIN = "experiments/beyond_small.gin"
#: Flag -> (gin binding it sets, type).
FLAGS = {
    "--out": ("Beyond.output_dir", str),
    "--seed": ("RunsConfig.seed", int),
    "--num-fit": ("FitConfig.num_fit", int),
    "--num-val": ("FitConfig.num_val", int),
    "--num-heldout": ("FitConfig.num_heldout", int),
    "--unseen-runs": ("Beyond.unseen_runs", int),
    "--withheld": ("Beyond.withheld", int),
    "--unseen-tests": ("Beyond.unseen_tests", int),
    "--lds-subsets": ("Beyond.lds_subsets", int),
    "--targets": ("Beyond.targets", int),
}


@dataclasses.dataclass(frozen=True)
class Beyond:
    """What the experiment does besides making the runs (``RunsConfig``) and splitting them
    into fitting / validation / held-out runs (``FitConfig``; the seen runs are exactly the
    split, so ``RunsConfig.num_runs`` is not used).

    Attributes:
      output_dir: the report, ``beyond.json``, the operative config and the run stores.
      withheld: pool examples in no fitting, validation or held-out run.
      unseen_runs: runs that train on every withheld example and on random others.
      unseen_tests: test examples left out of the fit, predicted from their features.
      lds_subsets: random subsets of half the seen pool trained for the LDS.
      targets: test examples whose mean final loss the curriculum search lowers.
      featurized_orders: Markov orders of the featurized simulators fitted.
      featurized: options of those fits (``featurized_fit.fit_featurized``).
      unseen_test_grid: featurized options the unseen-test split chooses among, by the MSE
        on ``inner_folds`` inner splits of the seen test examples.
      featurized_budget: options of every featurized fit (``max_steps``, ``eval_every``).
    """

    output_dir: str
    withheld: int
    unseen_runs: int
    unseen_tests: int
    lds_subsets: int
    targets: int
    featurized_orders: tuple[int, ...]
    featurized: Mapping[str, Any]
    unseen_test_grid: tuple[Mapping[str, Any], ...]
    featurized_budget: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    inner_folds: int = 3


_log = common.logger("beyond")


def parse(argv):
    """``(Beyond, RunsConfig, FitConfig, operative config text)`` from the command line."""
    return common.parse(argv, Beyond, __doc__, GIN, FLAGS, ("--small", SMALL_GIN, "tiny sizes"))


# Runs ----------------------------------------------------------------------------------------
def _remap(batches: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Curricula over ``0..len(ids)-1`` -> curricula over the pool ids ``ids``."""
    return np.where(batches >= 0, ids[np.maximum(batches, 0)], -1).astype(np.int32)


def plan_curricula(N: int, *, runs: int, unseen_runs: int, withheld: int, subset: int,
                   batch_size: int, num_steps: int, seed: int):  # fmt: skip
    """``(withheld ids, curricula int32[runs, T, B] over the seen pool, curricula
    int32[unseen_runs, T, B] that use every withheld example)``."""
    rng = np.random.default_rng([seed, 17])
    held = np.sort(rng.permutation(N)[:withheld])
    kept = np.setdiff1d(np.arange(N), held)
    common = dict(batch_size=batch_size, subset_size=subset, num_steps=num_steps)
    seen = _remap(sample_curricula(num_runs=runs, pool_size=len(kept), seed=seed, **common), kept)
    unseen = np.empty((unseen_runs,) + seen.shape[1:], np.int32)
    for r in range(unseen_runs):
        others = rng.permutation(kept)[: subset - withheld]
        members = np.concatenate([held, others])
        layout = search.random_layout(subset, batch_size=batch_size, num_steps=num_steps,
                                      seed=seed * 1000 + r)  # fmt: skip
        unseen[r] = search.curriculum(rng.permutation(members), layout)
    return held, seen, unseen


class Trainer:
    """Trains curricula for real through the pipeline (``generate.retrain``), one run store
    per batch of curricula (keyed by their hash, so a re-run resumes or reuses)."""

    def __init__(self, setup, out: Path, seed: int):
        self.setup, self.out, self.seed = setup, out, seed
        self.seconds = 0.0

    def __call__(self, batches) -> np.ndarray:
        from simfluence_jax.pipeline.generate import retrain

        batches = np.asarray(batches, np.int32)
        key = hashlib.sha256(batches.tobytes() + str(batches.shape).encode()).hexdigest()[:12]
        seeds = self.seed * 100_003 + np.arange(len(batches))
        t0 = time.perf_counter()
        runs = retrain(self.setup, self.out / f"runs-{key}", batches, seeds)
        self.seconds += time.perf_counter() - t0
        return runs.losses


def make_features(task) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM sentence embeddings with the one-hot label appended: ``(float32[N, 384 + K],
    float32[M, 384 + K])``."""
    from simfluence_jax.models.minilm import sentence_embeddings

    labels = list(task.label_names)

    def one(texts, targets):
        emb = sentence_embeddings(list(texts))
        onehot = np.eye(len(labels), dtype=np.float32)[[labels.index(t) for t in targets]]
        return np.concatenate([emb, onehot], axis=1).astype(np.float32)

    return one(task.train_texts, task.train_targets), one(task.test_texts, task.test_targets)


# Fitting ---------------------------------------------------------------------------------------
def fit_with_featurized(exp: Beyond, fit_cfg, fit, val, features) -> tuple[dict, dict]:
    """``(simulators, report groups)``: ``FitConfig.simulators`` through the registry, and
    the featurized simulator of each order."""
    from simfluence_jax.pipeline.experiment import fit_simulators

    sims = fit_simulators(fit_cfg, fit, val)
    groups = {n: simulator_group(n) for n in sims}
    for order in exp.featurized_orders:
        sim = sj.fit_simulator("featurized", fit, validation=val, features=features,
                               order=order, **exp.featurized, **exp.featurized_budget)  # fmt: skip
        sims[sim.name], groups[sim.name] = sim, simulator_group("featurized")
    return sims, groups


def _new_test_sims(fit, val, features, old, new, grid, budget):
    """Simulators for test examples ``new`` fitted on test examples ``old`` only."""
    x, z = features
    f, v = fit.select_test(old), val.select_test(old)
    lin = sj.fit_simulator("linear", f, validation=v)
    # Nearest seen test example by cosine similarity of the features.
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    row = np.argmax(zn[new] @ zn[old].T, axis=1)
    A, B = np.asarray(lin.A), np.asarray(lin.B)
    sims = {
        "linear (nearest seen test)": lin.replace(A=A[row], B=B[row]),
        "linear (mean of seen tests)": lin.replace(
            A=np.repeat(A.mean(0, keepdims=True), len(new), 0),
            B=np.repeat(B.mean(0, keepdims=True), len(new), 0),
        ),
    }
    for i, kw in enumerate(grid):
        feat = sj.fit_simulator("featurized", f, validation=v, features=(x, z[old]),
                                **kw, **budget)  # fmt: skip
        sims[f"featurized #{i}"] = feat.with_features(test=z[new])
    return sims


def unseen_test_split(exp: Beyond, runs_fit, runs_val, heldout, features, *, seed: int):
    """Fits on the losses of M - ``exp.unseen_tests`` test examples and scores the
    predictions of the others on the held-out runs.

    The featurized options (``exp.unseen_test_grid``) are chosen by the mean all-steps MSE
    over ``exp.inner_folds`` inner splits of the seen test examples (fit on the rest,
    predict ``unseen_tests // 2`` of them on the validation runs), never on the unseen ones.

    Returns:
      ``(table on the unseen test examples, inner-fold MSE {name: [folds]}, chosen index)``.
    """
    M, num_new, grid = runs_fit.num_test, exp.unseen_tests, exp.unseen_test_grid
    new = np.sort(np.random.default_rng([seed, 23]).permutation(M)[:num_new])
    old = np.setdiff1d(np.arange(M), new)
    inner: dict[str, list[float]] = {}
    for k in range(exp.inner_folds):
        iv = np.sort(np.random.default_rng([seed, 31, k]).permutation(old)[: max(2, num_new // 2)])
        it = np.setdiff1d(old, iv)
        sims = _new_test_sims(runs_fit, runs_val, features, it, iv, grid, exp.featurized_budget)
        sims["constant"] = sj.fit_simulator("constant", runs_val.select_test(iv))
        for name, row in sj.evaluate_all(sims, runs_val.select_test(iv)).items():
            inner.setdefault(name, []).append(row["mse_mean"])
    chosen = int(np.argmin([np.mean(inner[f"featurized #{i}"]) for i in range(len(grid))]))
    sims = _new_test_sims(runs_fit, runs_val, features, old, new, [grid[chosen]],
                          exp.featurized_budget)  # fmt: skip
    sims["featurized"] = sims.pop("featurized #0")
    target = heldout.select_test(new)
    sims["constant"] = sj.fit_simulator("constant", target)
    return sj.evaluate_all(sims, target), inner, chosen


# Main ------------------------------------------------------------------------------------------
def main(argv=None) -> Path:
    from simfluence_jax.cli.gin_edge import claim_output
    from simfluence_jax.pipeline.generate import prepare
    from simfluence_jax.reports import write_report

    exp, cfg, fit_cfg, config_text = parse(sys.argv[1:] if argv is None else argv)
    # One writer for the folder, refused if it holds files we did not write.
    command = "python -m experiments.beyond"
    with claim_output(exp.output_dir, command=command, config_text=config_text) as out:
        if cfg.subset_size is None:
            raise ValueError("beyond needs RunsConfig.subset_size (each run a random subset)")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        setup = prepare(cfg)
        task, steps, seed = setup.task, setup.num_steps, cfg.seed
        subset, bsz = cfg.subset_size, cfg.batch_size
        N, M = len(task.train_texts), len(task.test_texts)
        train = Trainer(setup, out, seed)
        _log(f"task {task.name}: {N} pool / {M} test examples; computing MiniLM features")
        features = make_features(task)
        timings["prepare_s"] = time.perf_counter() - t0

        # 1. Runs.
        n_seen = fit_cfg.num_fit + fit_cfg.num_val + fit_cfg.num_heldout
        held, seen_b, unseen_b = plan_curricula(
            N, runs=n_seen, unseen_runs=exp.unseen_runs, withheld=exp.withheld, subset=subset,
            batch_size=bsz, num_steps=steps, seed=seed,
        )  # fmt: skip
        _log(f"training {n_seen} runs without the {len(held)} withheld examples and "
             f"{len(unseen_b)} runs that use them")  # fmt: skip
        t0 = time.perf_counter()
        meta = {"test_texts": list(task.test_texts), "train_texts": list(task.train_texts)}
        all_seen = sj.RunSet(batches=seen_b, losses=train(seen_b), num_train=N, metadata=meta)
        unseen_runs = sj.RunSet(
            batches=unseen_b, losses=train(unseen_b), num_train=N, metadata=meta
        )
        fit, val, heldout = all_seen.split(fit_cfg.num_fit, fit_cfg.num_val, fit_cfg.num_heldout)
        timings["runs_s"] = time.perf_counter() - t0

        # 2-3. Fit.
        t0 = time.perf_counter()
        _log("fitting simulators")
        sims, groups = fit_with_featurized(exp, fit_cfg, fit, val, features)
        timings["fit_s"] = time.perf_counter() - t0

        # 4. Score.
        t0 = time.perf_counter()
        preds = {n: sj.predict(s, heldout) for n, s in sims.items()}
        table = {n: score(p, heldout) for n, p in preds.items()}
        unseen_train_table = sj.evaluate_all(sims, unseen_runs)
        _log("unseen-test split: refitting on the other test examples")
        unseen_test_table, inner_mse, chosen = unseen_test_split(exp, fit, val, heldout, features,
                                                                 seed=seed)  # fmt: skip
        timings["evaluate_s"] = time.perf_counter() - t0

        # 5. LDS.
        t0 = time.perf_counter()
        kept = np.setdiff1d(np.arange(N), held)
        lds_size = len(kept) // 2 // bsz * bsz
        _log(f"LDS: training {exp.lds_subsets} subsets of {lds_size} examples")
        lds_res = lds.run_lds(
            sims, train, pool_size=len(kept), num_subsets=exp.lds_subsets, subset_size=lds_size,
            batch_size=bsz, epochs=2, seed=seed + 1, pool_ids=kept,
        )  # fmt: skip
        timings["lds_s"] = time.perf_counter() - t0

        # 6. Curriculum search.
        t0 = time.perf_counter()
        targets = np.argsort(-fit.losses[:, -1].mean(0))[: exp.targets]
        L0 = fit.L0[0]
        layout = search.random_layout(subset, batch_size=bsz, num_steps=steps, seed=seed + 2)
        seen_mask = np.zeros(N, bool)
        seen_mask[kept] = True
        init = np.random.default_rng([seed, 29]).permutation(kept)[:subset].astype(np.int32)
        picks = {}
        for name, cand in (("linear", seen_mask), ("featurized", None)):
            picks.update(search.search_all({name: sims[name]}, L0, targets, layout=layout,
                                           init_subset=init, candidates=cand))  # fmt: skip
        _log(f"search: training {len(picks)} picks")
        all_random = sj.RunSet.concatenate([all_seen, unseen_runs])
        check = search.check_by_retraining(
            picks, train, targets=targets, L0=L0, random_curricula=all_random.batches,
            random_losses=all_random.losses,
        )  # fmt: skip
        timings["search_s"] = time.perf_counter() - t0

        # 7. Report.
        feat_md = beyond_report.featurized_section(exp, sims["featurized"], held=held, N=N, M=M,
                                      unseen_runs=unseen_runs.num_runs, inner_mse=inner_mse,
                                      chosen=chosen)  # fmt: skip
        setup_lines = {
            "task": f"{task.name} ({N} pool / {M} test examples)",
            "model": f"{cfg.model}, method {cfg.method} {dict(cfg.method_kwargs)}, "
            f"{cfg.optimizer} lr {cfg.learning_rate:g} {dict(cfg.optimizer_kwargs)}",
            "runs": f"{fit.num_runs} fit / {val.num_runs} validation / {heldout.num_runs} "
            f"held-out over the seen pool; {unseen_runs.num_runs} with withheld examples; "
            f"{steps} steps of {bsz}, {subset} examples a run",
            "timings (s)": json.dumps({k: round(v, 1) for k, v in timings.items()}),
        }
        write_report(
            out, heldout=heldout, predictions=preds, table=table, groups=groups,
            unseen_tables={
                "Unseen training examples (runs that use the withheld examples)":
                    unseen_train_table,
                f"Unseen test examples ({exp.unseen_tests} test examples outside the fit)":
                    unseen_test_table,
            },
            extra_sections=[("Featurized simulator", feat_md), ("LDS", beyond_report.lds_section(
                lds_res, subset=lds_size, pool=len(kept))), ("Curriculum search",
                beyond_report.search_section(check, task, targets))],
            title="simfluence_jax beyond Linear: featurized simulator, LDS, curriculum search",
            setup=setup_lines, config_text=config_text,
        )  # fmt: skip
        summary = {
            "heldout": table, "unseen_train": unseen_train_table, "unseen_test": unseen_test_table,
            "lds": lds_res.table, "search": check.rows(), "search_targets": targets.tolist(),
            "unseen_test_inner_mse": inner_mse, "unseen_test_choice": exp.unseen_test_grid[chosen],
            "timings": timings, "withheld": held.tolist(),
        }  # fmt: skip
        common.write_outputs(out, {"beyond.json": summary})
        _log(f"report written to {out}/report.md")
        return out


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("default", UnseenExampleWarning)
        main()
