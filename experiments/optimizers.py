"""Entry point: `python -m experiments.optimizers [--optimizers sgd,adamw] [--out DIR]`.

Does Simfluence-Linear hold under optimizers with state and schedules, and does the
optimizer kernel (docs/design.md) help? For each of four optimizers, 64 runs of the
quickstart protocol (MiniLM top layer on cached features, `polarity`, each run a random 96
of the 150 pool sentences, batch 4, 48 steps), split 52 fitting / 4 validation / 8 held-out
runs (8 held-out runs so that the per-example skill across runs means something). Fitted:
plain Linear, the kernel form (mu and l2 chosen on validation, effects scaled by the
learning rate), the kernel form shrunk toward the calibrated TracIn-CP scores, the fitted
Additive form, the controls and the calibrated gradient baselines; a learning curve over 16,
32 and 48 fitting runs; and the in-sample (fitting runs) against held-out skill.

Runs, gradient scores and fitted tables are cached under ``--out`` (default
``outputs/optimizers``): a re-run only redoes what is missing. Writes ``results.json`` and
``report.md`` there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import simfluence_jax as sj
from simfluence_jax.evaluation import predict, score
from simfluence_jax.runs import RunSet

#: optimizer settings: (optax name, peak learning rate, keyword arguments).
OPTIMIZERS = {
    # The quickstart's plain SGD.
    "sgd": ("sgd", 0.05, {}),
    # AdamW with b1 = 0.9, linear warm-up over 5 steps and linear decay to 0 at step 48.
    "adamw": ("adamw", 1.5e-4, {"b1": 0.9, "schedule": "linear", "warmup_steps": 5}),
    # SGD with heavy-ball momentum 0.9 (its effective step is 10x the rate).
    "sgd_momentum": ("sgd", 0.005, {"momentum": 0.9}),
    # Adafactor as T5X fine-tunes: no momentum, factored second moments, constant rate.
    "adafactor": ("adafactor", 0.01, {}),
}

NUM_RUNS, NUM_FIT, NUM_VAL, NUM_HELDOUT = 64, 52, 4, 8
CURVE = (16, 32, 48)
INFLUENCE = {"influence": {"solver": "exact", "select": "head", "damping": 0.01}}


def runs_config(name: str):
    from simfluence_jax.pipeline.config import RunsConfig

    optimizer, lr, kwargs = OPTIMIZERS[name]
    return RunsConfig(
        task="polarity", model="minilm", model_kwargs={"max_length": 48},
        method="top_layers", method_kwargs={"n_top": 1}, optimizer=optimizer,
        learning_rate=lr, optimizer_kwargs=kwargs, num_runs=NUM_RUNS, subset_size=96,
        batch_size=4, num_steps=48, seed=0, checkpoint_steps=(0, 16, 32),
    )  # fmt: skip


def make_runs(name: str, out: Path) -> tuple[RunSet, object]:
    """The runs and the gradient scores of one optimizer (cached)."""
    from simfluence_jax.gradients.context import PrecomputedGradients

    folder = out / name
    runs_dir, grads_dir = folder / "runs", folder / "gradients"
    if runs_dir.exists() and grads_dir.exists():
        return RunSet.load(runs_dir), PrecomputedGradients.load(grads_dir)
    from simfluence_jax.pipeline.experiment import gradient_context
    from simfluence_jax.pipeline.generate import generate_runs, prepare, store_name

    cfg = runs_config(name)
    setup = prepare(cfg)
    store = folder / store_name(cfg)
    runs = generate_runs(cfg, store, setup=setup)
    fit = runs.select(np.arange(NUM_FIT))
    grads = gradient_context(setup, fit, store, **INFLUENCE).precompute()
    grads.save(grads_dir)
    runs.save(runs_dir, overwrite=True)
    return runs, grads


def tracin_prior(tracin, fit: RunSet, kernel) -> sj.LinearSimulator:
    """Calibrated TracIn-CP as a prior mean for the kernel form (``one_plus_sum``):
    ``A = 0`` and ``B_i = -scale * eta_ref / B * mean_k S[k, i]``, so that with ``mu = 0``
    and ``s_t = eta_t / eta_ref`` the prior's step is TracIn's first-order decrement."""
    S = np.asarray(tracin.S).mean(axis=1)  # [M, N]
    eta_ref = float(np.max(fit.learning_rates))
    B = -float(np.asarray(tracin.scale)) * eta_ref / fit.batch_size * S
    return kernel.replace(A=np.zeros_like(B, np.float32), B=B.astype(np.float32))


def fit_all(fit: RunSet, val: RunSet, grads) -> dict[str, object]:
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
    prior = tracin_prior(sims["tracin_cp_calibrated"], fit, base)
    sims["linear_kernel_tracin_prior"] = sj.fit_simulator(
        "linear", fit, validation=val, momentum="auto", lr_scaled=True, alpha="one_plus_sum",
        prior=prior,
    ).replace(name="linear_kernel_tracin_prior")  # fmt: skip
    return sims


KEYS = ("mse_mean", "change_spearman_mean", "per_example_spearman_mean", "final_spearman_mean")


def analyse(name: str, runs: RunSet, grads) -> dict:
    fit_all_runs, val, heldout = runs.split(NUM_FIT, NUM_VAL, NUM_HELDOUT)
    t0 = time.perf_counter()
    sims = fit_all(fit_all_runs, val, grads)
    fit_s = time.perf_counter() - t0
    table = {n: {k: score(predict(s, heldout), heldout)[k] for k in KEYS} for n, s in sims.items()}
    in_sample = {
        n: {k: score(predict(sims[n], fit_all_runs), fit_all_runs)[k] for k in KEYS}
        for n in ("linear", "linear_kernel")
    }
    curve = {}
    for n_fit in CURVE:
        sub = fit_all_runs.select(np.arange(n_fit))
        for sim_name in ("linear", "linear_kernel"):
            sim = sj.fit_simulator(sim_name, sub, validation=val)
            row = score(predict(sim, heldout), heldout)
            curve.setdefault(sim_name, {})[n_fit] = {k: row[k] for k in KEYS}
    drop = float(np.mean(runs.losses[:, -1] - runs.losses[:, 0]))
    kernel = sims["linear_kernel"]
    return {
        "optimizer": OPTIMIZERS[name][0],
        "learning_rate": OPTIMIZERS[name][1],
        "optimizer_kwargs": OPTIMIZERS[name][2],
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--out", default="outputs/optimizers")
    parser.add_argument("--runs_only", action="store_true", help="make the runs, fit nothing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = [n for n in args.optimizers.split(",") if n]
    unknown = sorted(set(names) - set(OPTIMIZERS))
    if unknown:
        raise SystemExit(f"unknown optimizers {unknown}; known: {', '.join(OPTIMIZERS)}")
    results = {}
    for name in names:
        t0 = time.perf_counter()
        runs, grads = make_runs(name, out)
        print(f"[optimizers] {name}: runs and gradients ready ({time.perf_counter() - t0:.0f} s)")
        if args.runs_only:
            continue
        results[name] = analyse(name, runs, grads)
        print(f"[optimizers] {name}: fitted and scored in {results[name]['fit_seconds']:.0f} s")
    if results:
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "report.md").write_text(render(results))
        print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
