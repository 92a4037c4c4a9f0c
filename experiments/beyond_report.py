"""The Markdown sections of the beyond experiment's report (``experiments/beyond.py``): the
featurized simulator's settings, the LDS table and the curriculum search against the logged
runs. Each returns the body of one ``write_report`` extra section."""

from __future__ import annotations

import numpy as np

from simfluence_jax import lds, search


def lds_section(res: lds.LDSResult, *, subset: int, pool: int) -> str:
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


def search_section(check: search.SearchCheck, task, targets) -> str:
    rows = check.rows()
    rnd = check.random_achieved
    first = next(iter(check.picks.values()))
    k, (T, Bsz) = len(first.subset), first.curriculum.shape
    labels = np.asarray(task.train_targets)
    share = {n: float(np.mean(labels[p.subset] == "positive")) for n, p in check.picks.items()}
    lines = [
        f"Targets: test examples {check.targets.tolist()} (highest mean final loss in the "
        f"fitting runs). Objective: their mean final loss. Every pick has the runs' shape "
        f"({k} distinct examples, {T} steps of {Bsz}). Linear searches only the seen pool (it "
        "has no parameters for withheld examples); the featurized simulator searches the "
        f"whole pool. Random baseline: the {len(rnd)} logged runs (random curricula of the "
        f"same shape, trained already): mean {rnd.mean():.4f}, std {rnd.std():.4f}, best "
        f"{rnd.min():.4f}.",
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
        "",
        f"Target labels: {', '.join(np.asarray(task.test_targets)[targets].tolist())}. Share "
        "of positive examples in each pick: " + ", ".join(f"{n} {v:.0%}" for n, v in share.items())
        + f" (pool: {np.mean(labels == 'positive'):.0%}).",
    ]  # fmt: skip
    return "\n".join(lines)


def featurized_section(exp, feat, *, held, N, M, unseen_runs, inner_mse, chosen):
    return "\n".join([
        "A_ij and B_ij are predicted from frozen all-MiniLM-L6-v2 embeddings of training "
        "example i and test example j (with the one-hot label appended) by a small learned "
        "pair map (`simfluence_jax.simulators.featurized`), trained with Adam on the "
        "teacher-forced objective with early stopping on the validation runs "
        "(`simfluence_jax.featurized_fit`). Update: L_t = (1 + sum A_ij) L_{t-1} + sum B_ij "
        "(order 1); order 2 adds sum A^(2)_ij L_{t-2}.",
        "",
        f"- withheld training examples: {len(held)} of {N} (in no fitting, validation or "
        f"held-out run); runs using them: {unseen_runs}, each training on all of them plus "
        "random others.",
        f"- unseen test examples: {exp.unseen_tests} of {M}, never in the fit.",
        f"- main fit: {dict(exp.featurized)} (tied: one projection for both sides); weight "
        f"decay {float(feat.l2):g} chosen on the validation runs; projections to "
        f"{feat.P.shape[1]}, hidden {feat.W_x.shape[1]}.",
        f"- unseen-test split: featurized settings chosen among {list(exp.unseen_test_grid)} "
        "by the all-steps MSE on the validation runs of inner folds of the seen test examples "
        f"(never the unseen ones); chosen: {exp.unseen_test_grid[chosen]}. Inner-fold MSE "
        "(mean over folds): " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in inner_mse.items())
        + ".",
    ])  # fmt: skip
