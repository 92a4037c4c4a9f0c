"""Beyond Simfluence-Linear on the quickstart data: featurized simulator, LDS, curriculum search.

    python -m experiments.beyond [--out outputs/beyond] [--seed 0] [--small]

MiniLM fine-tuned on the bundled polarity task (150 pool / 50 test sentences; top layer on
cached lower layers, plain SGD, batch 4, 48 steps, 96 examples a run: the quickstart's
runs). Steps:

1. Withhold ``--withheld`` pool examples from every fitting, validation and held-out run;
   make the runs (random 96 of the remaining pool in random order, two epochs), plus
   ``--unseen-runs`` runs that train on every withheld example and on random others.
2. Features: the frozen all-MiniLM-L6-v2 sentence embedding of each text, with the one-hot
   label appended (the loss depends on the target, as GPTfluence's features include it).
3. Fit the Linear family, the controls and the featurized simulator (order 1 and 2).
4. Score them on (a) held-out runs over seen examples, (b) the runs that use withheld
   examples (Linear has no parameters for those: it treats them as having no effect),
   (c) unseen test examples: fit on the runs' losses of ``M - --unseen-tests`` test
   examples, predict the others (Linear has no row for them; its baselines copy the row of
   the nearest seen test example or average all rows).
5. LDS (TRAK): ``--lds-subsets`` random subsets of half the seen pool, trained for real.
6. Curriculum search for the ``--targets`` test examples with the highest mean final loss
   in the fitting runs: greedy and gradient searches with Linear and the featurized
   simulator, each pick trained for real and compared with the logged runs (random
   curricula of the same shape, trained already).
7. The report (``report.md`` and the rest, ``reports.writer``) with a section per step.

Runs are kept in run stores under ``--out`` keyed by their curricula, so a re-run reuses
them. ``--small`` shrinks everything (for a smoke test).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np

import simfluence_jax as sj
import simfluence_jax.featurized_fit  # noqa: F401  (registers the featurized simulator)
from simfluence_jax import lds, search
from simfluence_jax.pipeline.config import RunsConfig
from simfluence_jax.reports.writer import score_predictions
from simfluence_jax.rollout import UnseenExampleWarning
from simfluence_jax.sampling import sample_curricula

RIDGE = ("linear", "linear_one_plus_sum", "additive", "multiplicative", "shuffled")
CONTROLS = ("constant", "mean")


def _log(msg: str) -> None:
    print(f"[beyond] {msg}", flush=True)


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
    """Trains curricula for real through the run factory, one run store per batch of
    curricula (keyed by their hash, so a re-run resumes or reuses)."""

    def __init__(self, setup, out: Path, seed: int):
        self.setup, self.out, self.seed = setup, out, seed
        self.seconds = 0.0

    def __call__(self, batches) -> np.ndarray:
        from simfluence_jax.pipeline.generate import produce

        batches = np.asarray(batches, np.int32)
        key = hashlib.sha256(batches.tobytes() + str(batches.shape).encode()).hexdigest()[:12]
        seeds = self.seed * 100_003 + np.arange(len(batches))
        t0 = time.perf_counter()
        runs = produce(self.setup, self.out / f"runs-{key}", batches, seeds, progress=False)
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


# Fitting and scoring --------------------------------------------------------------------------
def fit_all(fit, val, features, *, featurized_kwargs) -> dict:
    sims = {}
    for name in RIDGE:
        if name == "linear_one_plus_sum":
            sims[name] = sj.fit_simulator("linear", fit, validation=val, alpha="one_plus_sum")
        else:
            sims[name] = sj.fit_simulator(name, fit, validation=val)
    for name in CONTROLS:
        sims[name] = sj.fit_simulator(name, fit, validation=val)
    for order in (1, 2):
        sim = sj.fit_simulator("featurized", fit, validation=val, features=features,
                               order=order, **FEATURIZED, **featurized_kwargs)  # fmt: skip
        sims[sim.name] = sim
    return sims


def group_of(name: str) -> str:
    if name in CONTROLS or name == "shuffled":
        return "control"
    if name.startswith("featurized"):
        return "featurized"
    return "fitted"


def predictions(sims, runs) -> dict[str, np.ndarray]:
    return {n: sj.predict(s, runs) for n, s in sims.items()}


def score(sims, runs) -> dict[str, dict[str, float]]:
    return {n: score_predictions(p, runs) for n, p in predictions(sims, runs).items()}


#: Featurized settings for the main fit: one projection for both sides, weight decay chosen
#: on the validation runs.
FEATURIZED = {"tied": True, "l2": (1e-4, 1e-3, 1e-2)}
#: Candidates for the unseen-test split, chosen on inner folds of the seen test examples.
NEW_TEST_GRID = (
    {"tied": False, "l2": 1e-4},
    {"tied": True, "l2": 1e-3},
    {"tied": True, "l2": 1e-2},
)


def _new_test_sims(fit, val, features, old, new, grid_kwargs, featurized_kwargs):
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
    for i, kw in enumerate(grid_kwargs):
        feat = sj.fit_simulator("featurized", f, validation=v, features=(x, z[old]),
                                **kw, **featurized_kwargs)  # fmt: skip
        sims[f"featurized #{i}"] = feat.with_features(test=z[new])
    return sims


def unseen_test_split(runs_fit, runs_val, heldout, features, *, num_new: int, seed: int,
                      featurized_kwargs, folds: int = 3):  # fmt: skip
    """Fits on the losses of M - num_new test examples and scores the predictions of the
    other ``num_new`` on the held-out runs.

    The featurized settings (``NEW_TEST_GRID``) are chosen by the mean all-steps MSE over
    ``folds`` inner splits of the seen test examples (fit on the rest, predict ``num_new //
    2`` of them on the validation runs), never on the unseen ones.

    Returns:
      ``(table on the unseen test examples, inner-fold MSE {name: [folds]}, chosen index)``.
    """
    M = runs_fit.num_test
    new = np.sort(np.random.default_rng([seed, 23]).permutation(M)[:num_new])
    old = np.setdiff1d(np.arange(M), new)
    inner: dict[str, list[float]] = {}
    for k in range(folds):
        iv = np.sort(np.random.default_rng([seed, 31, k]).permutation(old)[: max(2, num_new // 2)])
        it = np.setdiff1d(old, iv)
        sims = _new_test_sims(runs_fit, runs_val, features, it, iv, NEW_TEST_GRID,
                              featurized_kwargs)  # fmt: skip
        sims["constant"] = sj.fit_simulator("constant", runs_val.select_test(iv))
        for name, row in score(sims, runs_val.select_test(iv)).items():
            inner.setdefault(name, []).append(row["mse_mean"])
    chosen = int(np.argmin([np.mean(inner[f"featurized #{i}"]) for i in range(len(NEW_TEST_GRID))]))
    sims = _new_test_sims(runs_fit, runs_val, features, old, new, [NEW_TEST_GRID[chosen]],
                          featurized_kwargs)  # fmt: skip
    sims["featurized"] = sims.pop("featurized #0")
    target = heldout.select_test(new)
    sims["constant"] = sj.fit_simulator("constant", target)
    return score(sims, target), inner, chosen


# Sections --------------------------------------------------------------------------------------
def _lds_section(res: lds.LDSResult, *, subset: int, pool: int) -> str:
    C, T = res.batches.shape[:2]
    lines = [
        f"{C} random subsets of {subset} of the {pool} seen pool examples (TRAK's half), each "
        f"trained for real for {T} steps (two epochs in random order). LDS_j = Spearman "
        "across subsets of the true and the simulated final loss of test example j; the "
        "table gives the mean over test examples, its std and standard error. Simulators "
        "that ignore the curriculum score 0 by definition.",
        "",
        "| simulator | LDS | std over tests | s.e.m. |",
        "|---|---|---|---|",
    ]
    for name, row in sorted(res.table.items(), key=lambda kv: -kv[1]["lds_mean"]):
        lines.append(f"| {name} | {row['lds_mean']:.3f} | {row['lds_std']:.3f} | "
                     f"{row['lds_sem']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def _search_section(check: search.SearchCheck, candidates_note: str) -> str:
    rows = check.rows()
    rnd = check.random_achieved
    first = next(iter(check.picks.values()))
    k, (T, Bsz) = len(first.subset), first.curriculum.shape
    lines = [
        f"Targets: test examples {check.targets.tolist()} (highest mean final loss in the "
        f"fitting runs). Objective: their mean final loss. Every pick has the runs' shape "
        f"({k} distinct examples, {T} steps of {Bsz}). {candidates_note} Random baseline: the "
        f"{len(rnd)} logged runs (random curricula of the same shape, trained already): "
        f"mean {rnd.mean():.4f}, std {rnd.std():.4f}, best {rnd.min():.4f}.",
        "",
        "| pick | predicted | achieved (real) | simulator on random runs | predicted gain | "
        "achieved gain | beats random runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {r['predicted']:.4f} | {r['achieved']:.4f} | "
            f"{r['random_predicted_mean']:.4f} | {r['predicted_gain']:+.4f} | "
            f"{r['achieved_gain']:+.4f} | {r['beats_random_fraction']:.0%} |"
        )
    lines += [
        "",
        "Gains are the random mean minus the pick (positive = lower loss). Predicted gain: "
        "the pick's simulator on its pick against the same simulator on the random runs.",
    ]
    return "\n".join(lines)


# Main ------------------------------------------------------------------------------------------
def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/beyond")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-fit", type=int, default=16)
    ap.add_argument("--num-val", type=int, default=2)
    ap.add_argument("--num-heldout", type=int, default=3)
    ap.add_argument("--unseen-runs", type=int, default=3)
    ap.add_argument("--withheld", type=int, default=30)
    ap.add_argument("--unseen-tests", type=int, default=15)
    ap.add_argument("--lds-subsets", type=int, default=12)
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--small", action="store_true", help="tiny sizes, for a smoke test")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps, subset, bsz = 48, 96, 4
    feat_kw: dict = {}
    if args.small:
        steps, subset = 8, 16
        args.num_fit, args.num_val, args.num_heldout, args.unseen_runs = 4, 1, 1, 1
        args.withheld, args.unseen_tests, args.lds_subsets, args.targets = 8, 10, 3, 3
        feat_kw = {"max_steps": 100, "eval_every": 50}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    from simfluence_jax.pipeline.generate import prepare

    cfg = RunsConfig(num_steps=steps, subset_size=subset, batch_size=bsz, seed=args.seed,
                     checkpoint_steps=())  # fmt: skip
    setup = prepare(cfg)
    task = setup.task
    N, M = len(task.train_texts), len(task.test_texts)
    train = Trainer(setup, out, args.seed)
    _log(f"task {task.name}: {N} pool / {M} test examples; computing MiniLM features")
    features = make_features(task)
    timings["prepare_s"] = time.perf_counter() - t0

    # 1. Runs.
    n_seen = args.num_fit + args.num_val + args.num_heldout
    held, seen_b, unseen_b = plan_curricula(
        N, runs=n_seen, unseen_runs=args.unseen_runs, withheld=args.withheld, subset=subset,
        batch_size=bsz, num_steps=steps, seed=args.seed,
    )  # fmt: skip
    _log(f"training {n_seen} runs without the {len(held)} withheld examples and "
         f"{len(unseen_b)} runs that use them")  # fmt: skip
    t0 = time.perf_counter()
    seen_L = train(seen_b)
    unseen_L = train(unseen_b)
    timings["runs_s"] = time.perf_counter() - t0
    meta = {"test_texts": list(task.test_texts), "train_texts": list(task.train_texts)}
    all_seen = sj.RunSet(batches=seen_b, losses=seen_L, num_train=N, metadata=meta)
    fit, val, heldout = all_seen.split(args.num_fit, args.num_val, args.num_heldout)
    unseen_runs = sj.RunSet(batches=unseen_b, losses=unseen_L, num_train=N, metadata=meta)

    # 2-3. Fit.
    t0 = time.perf_counter()
    _log("fitting simulators")
    sims = fit_all(fit, val, features, featurized_kwargs=feat_kw)
    timings["fit_s"] = time.perf_counter() - t0

    # 4. Score.
    t0 = time.perf_counter()
    preds = predictions(sims, heldout)
    table = {n: score_predictions(p, heldout) for n, p in preds.items()}
    unseen_train_table = score(sims, unseen_runs)
    _log("unseen-test split: refitting on the other test examples")
    unseen_test_table, inner_mse, chosen = unseen_test_split(
        fit, val, heldout, features, num_new=args.unseen_tests, seed=args.seed,
        featurized_kwargs=feat_kw,
    )  # fmt: skip
    timings["evaluate_s"] = time.perf_counter() - t0

    # 5. LDS.
    t0 = time.perf_counter()
    kept = np.setdiff1d(np.arange(N), held)
    lds_size = len(kept) // 2 // bsz * bsz
    _log(f"LDS: training {args.lds_subsets} subsets of {lds_size} examples")
    lds_res = lds.run_lds(
        sims, train, pool_size=len(kept), num_subsets=args.lds_subsets, subset_size=lds_size,
        batch_size=bsz, epochs=2, seed=args.seed + 1, pool_ids=kept,
    )  # fmt: skip
    timings["lds_s"] = time.perf_counter() - t0

    # 6. Curriculum search.
    t0 = time.perf_counter()
    targets = np.argsort(-fit.losses[:, -1].mean(0))[: args.targets]
    L0 = fit.L0[0]
    layout = search.random_layout(subset, batch_size=bsz, num_steps=steps, seed=args.seed + 2)
    seen_mask = np.zeros(N, bool)
    seen_mask[kept] = True
    init = np.random.default_rng([args.seed, 29]).permutation(kept)[:subset].astype(np.int32)
    picks = {}
    for name, cand in (("linear", seen_mask), ("featurized", None)):
        picks.update(search.search_all(
            {name: sims[name]}, L0, targets, layout=layout, init_subset=init,
            candidates=cand,
        ))  # fmt: skip
    _log(f"search: training {len(picks)} picks")
    all_random = sj.RunSet.concatenate([all_seen, unseen_runs])
    check = search.check_by_retraining(
        picks, train, targets=targets, L0=L0, random_curricula=all_random.batches,
        random_losses=all_random.losses,
    )  # fmt: skip
    timings["search_s"] = time.perf_counter() - t0

    # 7. Report.
    from simfluence_jax.reports import write_report

    labels = np.asarray(task.train_targets)
    pos_share = {k: float(np.mean(labels[p.subset] == "positive")) for k, p in check.picks.items()}
    tgt_labels = np.asarray(task.test_targets)[targets]
    search_md = _search_section(
        check,
        "Linear searches only the seen pool (it has no parameters for withheld examples); "
        "the featurized simulator searches the whole pool.",
    ) + (
        f"\n\nTarget labels: {', '.join(tgt_labels.tolist())}. Share of positive examples "
        "in each pick: " + ", ".join(f"{k} {v:.0%}" for k, v in pos_share.items())
        + f" (pool: {np.mean(labels == 'positive'):.0%})."
    )  # fmt: skip
    feat = sims["featurized"]
    feat_md = "\n".join([
        "A_ij and B_ij are predicted from frozen all-MiniLM-L6-v2 embeddings of training "
        "example i and test example j (with the one-hot label appended) by a small learned "
        "pair map (`simfluence_jax.simulators.featurized`), trained with Adam on the "
        "teacher-forced objective with early stopping on the validation runs "
        "(`simfluence_jax.featurized_fit`). Update: L_t = (1 + sum A_ij) L_{t-1} + sum B_ij "
        "(order 1); order 2 adds sum A^(2)_ij L_{t-2}.",
        "",
        f"- withheld training examples: {len(held)} of {N} (in no fitting, validation or "
        f"held-out run); runs using them: {unseen_runs.num_runs}, each training on all of "
        "them plus random others.",
        f"- unseen test examples: {args.unseen_tests} of {M}, never in the fit.",
        f"- main fit: tied projections (one encoder for both sides), weight decay "
        f"{float(feat.l2):g} chosen from {list(FEATURIZED['l2'])} on the validation runs; "
        f"projections to {feat.P.shape[1]}, hidden {feat.W_x.shape[1]}.",
        f"- unseen-test split: featurized settings chosen among {list(NEW_TEST_GRID)} by the "
        "all-steps MSE on the validation runs of inner folds of the seen test examples "
        f"(never the unseen ones); chosen: {NEW_TEST_GRID[chosen]}. Inner-fold MSE (mean over "
        "folds): " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in inner_mse.items()) + ".",
    ])  # fmt: skip
    groups = {n: group_of(n) for n in table}
    setup_lines = {
        "task": f"{task.name} ({N} pool / {M} test examples)",
        "model": "minilm, top layer on cached lower layers, SGD lr 0.05",
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
            f"Unseen test examples ({args.unseen_tests} test examples outside the fit)":
                unseen_test_table,
        },
        extra_sections=[("Featurized simulator", feat_md), ("LDS", _lds_section(
            lds_res, subset=lds_size, pool=len(kept))), ("Curriculum search", search_md)],
        title="simfluence_jax beyond Linear: featurized simulator, LDS, curriculum search",
        setup=setup_lines,
    )  # fmt: skip
    summary = {
        "heldout": table, "unseen_train": unseen_train_table, "unseen_test": unseen_test_table,
        "lds": lds_res.table, "search": check.rows(), "search_targets": targets.tolist(),
        "unseen_test_inner_mse": inner_mse, "unseen_test_choice": NEW_TEST_GRID[chosen],
        "timings": timings, "withheld": held.tolist(),
    }  # fmt: skip
    (out / "beyond.json").write_text(json.dumps(_jsonable(summary), indent=1))
    _log(f"report written to {out}/report.md")
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("default", UnseenExampleWarning)
        main()
