"""Entry point: `python -m experiments.optimizers [--optimizers sgd,adamw] [--out DIR]`.

Does Simfluence-Linear hold under optimizers with state and schedules, and does the
optimizer kernel (docs/design.md, section 3.2) help? For each of four optimizers, 64 runs of the
quickstart protocol (MiniLM top layer on cached features, `polarity`, each run a random 96
of the 150 pool sentences, batch 4, 48 steps), split 52 fitting / 4 validation / 8 held-out
runs (8 held-out runs so that the per-example skill across runs means something). Fitted:
plain Linear, the kernel form (mu and l2 chosen on validation, effects scaled by the
learning rate), two attempts to make the kernel generalize (shrunk toward the calibrated
TracIn-CP scores instead of toward zero; mu and l2 chosen on 8 validation runs, 4 of them
taken from the fitting runs), the fitted Additive form, the controls and the calibrated
gradient baselines; a learning curve over 16, 32 and 48 fitting runs; and the in-sample
(fitting runs) against held-out skill.

Runs and gradient scores are cached in ``outputs/runs_cache`` (shared with the fidelity
matrix, whose MiniLM/polarity rows are these settings): a re-run only redoes what is
missing. Writes ``results.json``, ``report.md`` and ``operative_config.gin`` (the gin config of
every setting) under ``--out`` (default ``outputs/optimizers``; created, locked while the
experiment runs, refused if it holds files we did not write).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import simfluence_jax as sj
from experiments import common
from simfluence_jax.pipeline import study
from simfluence_jax.runs import RunSet

#: setting -> (optimizer gin file, extra bindings). The rates in gin_configs/optimizers/ were
#: calibrated to loss drops like plain SGD's (0.131; measured in each file). ``sgd_momentum``
#: runs at 0.005 (a drop of 0.108) rather than the file's 0.007 (0.132): its 64 runs were
#: made before the calibration finished. ``adamw_low`` is AdamW at the rate of an earlier
#: measurement (1.5e-4), whose loss drop (0.041) is a third of SGD's.
SETTINGS = {
    "sgd": ("optimizers/sgd.gin", ()),
    "adamw": ("optimizers/adamw.gin", ()),
    "sgd_momentum": ("optimizers/sgd_momentum.gin", ("RunsConfig.learning_rate = 0.005",)),
    "adafactor": ("optimizers/adafactor.gin", ()),
    "adamw_low": ("optimizers/adamw.gin", ("RunsConfig.learning_rate = 1.5e-4",)),
}
#: The protocol: the quickstart's runs (MiniLM top layer, polarity, 96 of 150, batch 4, 48
#: steps, checkpoints at 0, 16, 32), 64 of them.
BASE_GIN = ("models/minilm.gin", "runs/quickstart.gin")
NUM_RUNS, NUM_FIT, NUM_VAL, NUM_HELDOUT = 64, 52, 4, 8
CURVE = (16, 32, 48)
INFLUENCE = {"influence": {"solver": "exact", "select": "head", "damping": 0.01}}

_log = common.logger("optimizers")


def runs_config(name: str):
    """The ``RunsConfig`` of one setting, read from the layered gin files."""
    from simfluence_jax.cli import gin_edge

    gin_file, extra = SETTINGS[name]
    bindings = [f"RunsConfig.num_runs = {NUM_RUNS}", *extra]
    return gin_edge.runs_config([*BASE_GIN, gin_file], bindings)


def make_runs(name: str, cache: Path):
    """The runs and the gradient scores of one optimizer (cached)."""
    return study.cached_runs(runs_config(name), cache, gradient_kwargs=INFLUENCE)


def fit_study(fit: RunSet, val: RunSet, grads) -> dict[str, object]:
    sims = {
        "linear": sj.fit_simulator("linear", fit, validation=val),
        "linear_kernel": sj.fit_simulator("linear_kernel", fit, validation=val),
        "additive": sj.fit_simulator("additive", fit, validation=val),
        "mean": sj.fit_simulator("mean", fit),
        "constant": sj.fit_simulator("constant", fit),
        "shuffled": sj.fit_simulator("shuffled", fit, validation=val),
        "tracin_cp_calibrated": sj.fit_simulator("tracin_cp_calibrated", fit, gradients=grads),
        "influence_calibrated": sj.fit_simulator("influence_calibrated", fit, gradients=grads),
    }
    base = sj.fit_simulator(
        "linear", fit, validation=val, momentum="auto", lr_scaled=True, alpha="one_plus_sum"
    )
    prior = study.tracin_prior(sims["tracin_cp_calibrated"], fit, base)
    sims["linear_kernel_tracin_prior"] = sj.fit_simulator(
        "linear", fit, validation=val, momentum="auto", lr_scaled=True, alpha="one_plus_sum",
        prior=prior,
    ).replace(name="linear_kernel_tracin_prior")  # fmt: skip
    # Choosing mu and l2 on twice as many validation runs (taken from the fitting runs).
    more_val = RunSet.concatenate([fit.select(np.arange(fit.num_runs - NUM_VAL, fit.num_runs)),
                                   val])  # fmt: skip
    sims["linear_kernel_val8"] = sj.fit_simulator(
        "linear_kernel", fit.select(np.arange(fit.num_runs - NUM_VAL)), validation=more_val
    ).replace(name="linear_kernel_val8")
    return sims


def analyse(name: str, runs: RunSet, grads) -> dict:
    fit_all_runs, val, heldout = runs.split(NUM_FIT, NUM_VAL, NUM_HELDOUT)
    t0 = time.perf_counter()
    sims = fit_study(fit_all_runs, val, grads)
    fit_s = time.perf_counter() - t0
    table = study.scores(sims, heldout)
    in_sample = study.scores({n: sims[n] for n in ("linear", "linear_kernel")}, fit_all_runs)
    curve = {}
    for n_fit in CURVE:
        sub = fit_all_runs.select(np.arange(n_fit))
        for sim_name in ("linear", "linear_kernel"):
            sim = sj.fit_simulator(sim_name, sub, validation=val)
            curve.setdefault(sim_name, {})[n_fit] = study.scores({"s": sim}, heldout)["s"]
    drop = float(np.mean(runs.losses[:, -1] - runs.losses[:, 0]))
    kernel = sims["linear_kernel"]
    return {
        "optimizer": runs.metadata["runs_config"]["optimizer"],
        "learning_rate": runs.metadata["runs_config"]["learning_rate"],
        "optimizer_kwargs": runs.metadata["runs_config"]["optimizer_kwargs"],
        "mean_loss_change": drop,
        "mean_abs_step_change": float(np.mean(np.abs(np.diff(runs.losses, axis=1)))),
        "chosen": {
            n: {"l2": float(s.l2), "momentum": float(s.momentum)}
            for n, s in sims.items()
            if hasattr(s, "momentum")
        },
        "kernel_momentum": float(kernel.momentum),
        "table": table,
        "in_sample": in_sample,
        "learning_curve": curve,
        "fit_seconds": fit_s,
    }


def render(results: dict) -> str:
    lines = [
        "# Linear under four optimizers (MiniLM top layer, polarity)",
        "",
        f"{NUM_RUNS} runs per optimizer, {NUM_FIT} fitting / {NUM_VAL} validation / "
        f"{NUM_HELDOUT} held-out. Held-out all-steps MSE, Spearman of the change across test "
        "examples, per-example Spearman of the final loss across held-out runs.",
        "",
    ]
    for name, res in results.items():
        lines += [
            f"## {name} ({res['optimizer']}, lr {res['learning_rate']}, "
            f"{res['optimizer_kwargs']}); mean test-loss change {res['mean_loss_change']:+.3f}, "
            f"kernel mu = {res['kernel_momentum']:.2f}",
            "",
            "| simulator | MSE | change rho | per-example rho | final rho |",
            "|---|---|---|---|---|",
        ]
        for sim, row in res["table"].items():
            lines.append(
                f"| {sim} | {row['mse_mean']:.4g} | {row['change_spearman_mean']:.3f} | "
                f"{row['per_example_spearman_mean']:.3f} | {row['final_spearman_mean']:.3f} |"
            )
        lines += ["", "Learning curve (held-out MSE / per-example rho):", ""]
        for sim, pts in res["learning_curve"].items():
            cells = ", ".join(
                f"{n} runs: {v['mse_mean']:.4g} / {v['per_example_spearman_mean']:.3f}"
                for n, v in pts.items()
            )
            lines.append(f"- {sim}: {cells}")
        lines += ["", "In-sample (fitting runs) MSE / per-example rho:", ""]
        for sim, row in res["in_sample"].items():
            lines.append(f"- {sim}: {row['mse_mean']:.4g} / {row['per_example_spearman_mean']:.3f}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from simfluence_jax.cli import gin_edge

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", default=",".join(SETTINGS))
    parser.add_argument("--out", default="outputs/optimizers")
    parser.add_argument("--cache", default="outputs/runs_cache")
    parser.add_argument("--runs_only", action="store_true", help="make the runs, fit nothing")
    args = parser.parse_args(argv)
    names = common.chosen(args.optimizers, SETTINGS, "settings") or []
    # One writer for --out, refused if it holds files we did not write; written atomically.
    with gin_edge.claim_output(args.out, command="python -m experiments.optimizers") as out:
        results, configs = {}, []
        for name in names:
            t0 = time.perf_counter()
            runs, grads = make_runs(name, Path(args.cache))
            configs.append(f"# setting {name!r}\n{gin_edge.operative_config()}")
            _log(f"{name}: runs and gradients ready ({time.perf_counter() - t0:.0f} s)")
            if args.runs_only:
                continue
            results[name] = analyse(name, runs, grads)
            _log(f"{name}: fitted and scored in {results[name]['fit_seconds']:.0f} s")
        gin_edge.write_operative_config(out, "\n".join(configs))
        if results:
            common.write_outputs(out, {"results.json": json.dumps(results, indent=1),
                                       "report.md": render(results)})  # fmt: skip
            print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
