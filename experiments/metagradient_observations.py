"""Do the metagradients of the fitting runs help Simfluence-Linear, as extra observations?

    python -m experiments.metagradient_observations [--out DIR] [--tiny] [--gin_file F]
        [--gin.NAME=VALUE]

Configured by ``gin_configs/experiments/metagradient_observations.gin`` (the quickstart
protocol: MiniLM top layer on cached features, polarity, SGD, 32 runs of 48 steps, split
24 / 2 / 6; ``--tiny``: ``metagradient_observations_tiny.gin``, the CI sizes).

1. The runs (``pipeline.study.cached_runs``, shared with the counterfactual benchmark) and,
   for every fitting run, the exact metagradients of the mean loss of the last ``horizon``
   steps of the ``num_tests`` first test examples with respect to every slot
   (``Replay.metagradients``), each cached in the run cache (``metagradients/``).
2. For each number of fitting runs of ``curve`` (the first ones): plain Linear and
   ``linear_metagradient`` at every ``weights`` entry, l2 chosen on the validation runs for
   each; "chosen" is the weight (0 included) with the lowest validation rollout MSE.
3. Scored on those test examples: held-out all-steps MSE; on the counterfactual benchmark's
   random removals and reverses of the first ``heldout_curricula`` held-out curricula
   (retrained for real, read from ``retrained_dir``), Pearson / slope / sign of the
   predicted against the achieved change of the last-``horizon`` mean; LDS on
   ``lds_subsets`` random half-subsets (the benchmark's, also cached).

Writes ``results.json``, ``report.md`` and the operative config to ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from experiments import common
from experiments import counterfactuals as bench

GIN = "experiments/metagradient_observations.gin"
TINY_GIN = "experiments/metagradient_observations_tiny.gin"
#: Flag -> (gin binding it sets, type).
FLAGS = {
    "--out": ("MetagradientObservations.output_dir", str),
    "--cache": ("MetagradientObservations.cache_dir", str),
}

_log = common.logger("metagradient_observations")


@dataclasses.dataclass(frozen=True)
class MetagradientObservations:
    """The study besides the runs (``RunsConfig``) and the split (``FitConfig``).

    Attributes:
      output_dir: report, ``results.json``, operative config.
      cache_dir: the shared run cache (runs, gradient scores, metagradients).
      retrained_dir: the folder whose ``retrained/`` caches real retrainings (the
        counterfactual benchmark's, so its edits cost nothing here).
      num_tests: the first test examples differentiated and scored (0: all).
      curve: numbers of fitting runs (the first ones of the split).
      weights: the metagradient rows' shares tried (``metagradient_fit``).
      horizon: the readout: mean loss of the last ``horizon`` steps.
      remat_chunk: steps per rematerialised chunk of the reverse pass.
      test_batch: test examples per vmapped reverse pass.
      heldout_curricula: held-out runs whose edits are scored.
      random_sizes: sizes of the random removals.
      random_draws: random removals of each size per held-out curriculum.
      lds_subsets: random half-subsets of the pool for the LDS (0: none).
      retrain_group: runs the factory trains at once when a retraining is missing.
      retrain_chunk: curricula per run store of the retrainings.
    """

    output_dir: str
    cache_dir: str = "outputs/runs_cache"
    retrained_dir: str = "outputs/counterfactuals"
    num_tests: int = 20
    curve: tuple[int, ...] = (8, 16, 24)
    weights: tuple[float, ...] = (0.1, 1.0, 10.0)
    horizon: int = 8
    remat_chunk: int = 8
    test_batch: int = 10
    heldout_curricula: int = 4
    random_sizes: tuple[int, ...] = (4, 8, 16, 32)
    random_draws: int = 4
    lds_subsets: int = 32
    retrain_group: int = 16
    retrain_chunk: int = 32


def fit_metagradients(replay, fit, tests, exp, folder: Path) -> tuple[list, list[float]]:
    """One ``Metagradients`` per fitting run (cached in ``folder``) and the seconds of those
    computed now."""
    from simfluence_jax.fileio import atomic_npz, make_dirs
    from simfluence_jax.gradients.metagradient import Metagradients

    make_dirs(folder)
    out, seconds = [], []
    for r in range(fit.num_runs):
        seed = int(fit.metadata["seeds"][r])
        key = hashlib.sha256(
            fit.batches[r].tobytes() + np.asarray([seed, exp.horizon]).tobytes()
            + np.asarray(tests, np.int64).tobytes()
        ).hexdigest()[:16]  # fmt: skip
        path = folder / f"metagradients-{key}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("batches", "readout", "values", "slot", "test_index")}
            out.append(Metagradients(seed=seed, num_train=fit.num_train, **arrays))
            continue
        t0 = time.perf_counter()
        meta = replay.metagradients(
            fit.batches[r], seed, horizon=exp.horizon, tests=tests,
            remat_chunk=exp.remat_chunk, test_batch_size=exp.test_batch,
        )  # fmt: skip
        seconds.append(time.perf_counter() - t0)
        atomic_npz(path, {"batches": meta.batches, "readout": meta.readout,
                          "values": meta.values, "slot": meta.slot,
                          "test_index": meta.test_index})  # fmt: skip
        _log(f"metagradients of fitting run {r}: {seconds[-1]:.0f} s")
        out.append(meta)
    return out, seconds


def with_tests(meta, tests) -> object:
    """``meta`` renumbered as test examples ``0..len(tests)-1`` (the selected runs' order)."""
    if not np.array_equal(np.asarray(meta.test_index), np.asarray(tests)):
        raise ValueError("metagradients cover other test examples than the study's")
    return dataclasses.replace(meta, test_index=np.arange(len(tests), dtype=np.int32))


def fit_curve_point(n, fit, val, obs, weights):
    """``({name: simulator}, {name: validation rollout MSE})`` with ``n`` fitting runs."""
    import simfluence_jax as sj
    from simfluence_jax.fitting import rollout_mse

    sub = fit.select(np.arange(n))
    sims = {"linear": sj.fit_simulator("linear", sub, validation=val)}
    for w in weights:
        sims[f"metagradient w={w:g}"] = sj.fit_simulator(
            "linear_metagradient", sub, metagradients=obs[:n], weight=float(w), validation=val
        )
    val_mse = {name: rollout_mse(sim, val) for name, sim in sims.items()}
    best = min(val_mse, key=val_mse.get)
    sims["chosen on validation"] = sims[best]
    val_mse["chosen on validation"] = val_mse[best]
    return sims, val_mse, best


def main(argv=None) -> Path:
    exp, cfg, fit_cfg, config_text = common.parse(
        sys.argv[1:] if argv is None else argv, MetagradientObservations, __doc__, GIN, FLAGS,
        ("--tiny", TINY_GIN, "CI sizes"),
    )  # fmt: skip
    command = "python -m experiments.metagradient_observations"
    with common.claim_with_retrained(exp.output_dir, exp.retrained_dir, command=command,
                                     config_text=config_text) as out:  # fmt: skip
        return run(exp, cfg, fit_cfg, config_text, out)


def run(exp, cfg, fit_cfg, config_text: str, out: Path) -> Path:
    import simfluence_jax as sj
    from simfluence_jax import counterfactuals as cf
    from simfluence_jax import lds
    from simfluence_jax.fitting import rollout_mse
    from simfluence_jax.gradients.metagradient import Replay
    from simfluence_jax.pipeline import study
    from simfluence_jax.pipeline.generate import prepare, store_name

    timings: dict[str, float] = {}
    runs, _ = study.cached_runs(cfg, exp.cache_dir, gradient_kwargs=fit_cfg.gradient_kwargs)
    fit, val, held = runs.split(fit_cfg.num_fit, fit_cfg.num_val, fit_cfg.num_heldout)
    if val is None or held is None:
        raise ValueError("the study needs validation and held-out runs (FitConfig)")
    too_many = [n for n in exp.curve if n > fit.num_runs]
    if too_many:
        raise ValueError(f"curve point {too_many[0]} exceeds the {fit.num_runs} fitting runs")
    M = runs.num_test
    tests = np.arange(M if exp.num_tests <= 0 else min(exp.num_tests, M))
    setup = prepare(cfg)

    # 1. Metagradients of the fitting runs.
    replay = Replay(setup.factory)
    folder = Path(exp.cache_dir) / store_name(cfg) / "metagradients"
    meta, meta_s = fit_metagradients(replay, fit.select(np.arange(max(exp.curve))), tests, exp,
                                     folder)  # fmt: skip
    obs = [with_tests(m, tests) for m in meta]
    replay.losses(held.batches[0], int(held.metadata["seeds"][0]))  # compiled
    t0 = time.perf_counter()
    replay.losses(held.batches[0], int(held.metadata["seeds"][0]))
    timings["one_run_s"] = time.perf_counter() - t0
    timings["metagradient_s_per_run"] = float(np.median(meta_s)) if meta_s else float("nan")

    # 2. The edits (the benchmark's random removals and reverses) and their real retrainings.
    H = min(exp.heldout_curricula, held.num_runs)
    edits = [bench.Edit("replay", r, held.batches[r]) for r in range(H)]
    edits += bench.random_edits(held, range(H), exp.random_sizes, exp.random_draws,
                                seed=cfg.seed, split="heldout")  # fmt: skip
    edits += [bench.Edit("reverse", r, cf.reverse(held.batches[r])) for r in range(H)]
    seeds = {("heldout", r): int(held.metadata["seeds"][r]) for r in range(held.num_runs)}
    retrainer = bench.Retrainer(setup, Path(exp.retrained_dir), group=exp.retrain_group,
                                chunk=exp.retrain_chunk)  # fmt: skip
    trained = bench.train_edits(retrainer, edits, seeds)
    true_traj = np.stack([trained[(e.key, seeds[(e.split, e.run)])][0] for e in edits])
    true_traj = true_traj[..., tests]
    true_change = bench.changes(true_traj, edits, exp.horizon)
    pair_sets = bench.pairs(edits, len(tests))
    N, B = runs.num_train, runs.batch_size
    lds_args = None
    if exp.lds_subsets:
        lds_seeds = cfg.seed * 100_003 + 50_000 + np.arange(exp.lds_subsets)
        epochs = max(1, round(runs.num_steps * B / (cfg.subset_size or N)))
        lds_args = dict(pool_size=N, num_subsets=exp.lds_subsets, subset_size=N // 2 // B * B,
                        batch_size=B, seed=cfg.seed + 7, epochs=epochs)  # fmt: skip

        def train(b):
            losses, rates = retrainer(b, lds_seeds[: len(b)])
            return sj.RunSet(batches=b, losses=losses[..., tests], num_train=N,
                             learning_rates=rates)  # fmt: skip

    # 3. The curve.
    fit_t, val_t, held_t = (x.select_test(tests) for x in (fit, val, held))
    results = {}
    for n in exp.curve:
        t0 = time.perf_counter()
        sims, val_mse, best = fit_curve_point(n, fit_t, val_t, obs, exp.weights)
        fit_s = time.perf_counter() - t0
        pred = bench.predicted_trajectories(sims, edits, {"heldout": held_t})
        pred_change = {k: bench.changes(p, edits, exp.horizon) for k, p in pred.items()}
        table = bench.agreement_table(pred_change, true_change, pair_sets)
        lds_table = lds.run_lds(sims, train, **lds_args).table if lds_args else {}
        results[n] = {
            "chosen_weight": best,
            "fit_s": fit_s,
            "rows": {
                name: {
                    "heldout_mse": rollout_mse(sim, held_t),
                    "validation_mse": val_mse[name],
                    "random": table.get("random", {}).get(name, {}),
                    "all": table.get("all", {}).get(name, {}),
                    "lds": lds_table.get(name, {}),
                    "l2": float(sim.l2),
                }
                for name, sim in sims.items()
            },
        }
        _log(f"{n} fitting runs: fitted in {fit_s:.0f} s; chosen on validation: {best}")
    summary = {
        "setup": {
            "runs_config": runs.metadata.get("runs_config"),
            "split": [fit.num_runs, val.num_runs, held.num_runs],
            "tests": tests.tolist(),
            "edits": len(edits),
            "horizon": exp.horizon,
        },
        "curve": results,
        "timings": timings,
    }
    common.write_outputs(out, {"results.json": summary, "report.md": render(summary, exp)})
    print(render(summary, exp))
    return out


def _f(x, digits=3) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def render(summary, exp) -> str:
    s = summary["setup"]
    t = summary["timings"]
    lines = [
        "# Metagradients of the fitting runs as extra observations for Simfluence-Linear",
        "",
        f"Runs: split {s['split']}; test examples {s['tests'][0]}..{s['tests'][-1]} "
        f"({len(s['tests'])}); {s['edits']} edits of {exp.heldout_curricula} held-out curricula "
        f"(random removals of {list(exp.random_sizes)} and reverses); change = mean loss of the "
        f"last {s['horizon']} steps, edit minus replay. One run replays in "
        f"{t['one_run_s']:.2f} s; a metagradient pass of one fitting run took "
        f"{t['metagradient_s_per_run']:.0f} s (median of those computed this time).",
        "",
        "| fitting runs | simulator | held-out MSE | validation MSE | random r | random slope "
        "| random sign | all r | LDS | l2 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, res in summary["curve"].items():
        for name, row in res["rows"].items():
            label = name if name != "chosen on validation" else f"chosen ({res['chosen_weight']})"
            rnd, al, ld = row["random"], row["all"], row["lds"]
            lines.append(
                f"| {n} | {label} | {row['heldout_mse']:.4g} | {row['validation_mse']:.4g} | "
                f"{_f(rnd.get('pearson'))} | {_f(rnd.get('slope'), 2)} | "
                f"{_f(rnd.get('sign_agreement'), 2)} | {_f(al.get('pearson'))} | "
                f"{_f(ld.get('lds_mean'))} | {row['l2']:g} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
