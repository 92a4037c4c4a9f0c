"""Does a learned filter beat the momentum kernel's geometric one on real runs?

    python -m experiments.filter_kernel [--out DIR] [--tiny] [--gin_file F] [--gin.NAME=VALUE]

Configured by ``gin_configs/experiments/filter_kernel.gin`` (the optimizer study's AdamW
runs: MiniLM top layer on cached features, polarity, 64 runs of 48 steps at batch 4, split
48 fitting / 8 validation / 8 held-out; ``--tiny``: ``filter_kernel_tiny.gin``, the CI
sizes). Another optimizer is one more gin file, e.g. ``--gin_file
experiments/filter_kernel.gin --gin_file optimizers/sgd_momentum.gin``.

For each seed of ``FilterKernel.seeds`` (independent draws of the curricula: the runs of
``RunsConfig`` with that seed, made or read back through the shared run cache,
``pipeline.study.cached_runs``), on the held-out runs: plain Linear, the momentum kernel
(``linear_kernel``: mu and l2 chosen on the validation runs) and the filter kernel
(``linear_filter`` with ``filter_length`` K), each with its held-out all-steps MSE, MSE
skill against the ``mean`` control (1 - MSE / MSE of ``mean``), per-example Spearman across
held-out runs, and a learning curve over the first ``curve`` fitting runs. Writes
``results.json``, ``report.md`` and the operative config to ``FilterKernel.output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

import simfluence_jax as sj
from experiments import common
from simfluence_jax.runs import RunSet

GIN = "experiments/filter_kernel.gin"
TINY_GIN = "experiments/filter_kernel_tiny.gin"
#: Flag -> (gin binding it sets, type).
FLAGS = {"--out": ("FilterKernel.output_dir", str), "--cache": ("FilterKernel.cache_dir", str)}

_log = common.logger("filter_kernel")
#: Compared simulators: the report's name -> registry name.
COMPARED = {
    "linear": "linear",
    "momentum kernel": "linear_kernel",
    "filter kernel": "linear_filter",
}


@dataclasses.dataclass(frozen=True)
class FilterKernel:
    """The study besides the runs (``RunsConfig``) and the split (``FitConfig``).

    Attributes:
      output_dir: report, ``results.json``, operative config.
      cache_dir: the shared run cache.
      seeds: ``RunsConfig.seed`` of each independent draw of the curricula.
      filter_length: K of the filter kernel.
      curve: numbers of fitting runs of the learning curve (the first ones of the split).
    """

    output_dir: str
    cache_dir: str = "outputs/runs_cache"
    seeds: tuple[int, ...] = (0, 1)
    filter_length: int = 8
    curve: tuple[int, ...] = (16, 32, 48)


def fit_compared(fit: RunSet, val: RunSet, filter_length: int) -> dict[str, object]:
    """The compared simulators and the ``mean`` control, fitted on ``fit``."""
    K = min(filter_length, fit.num_steps - 1)
    sims = {
        label: sj.fit_simulator(
            name, fit, validation=val, **({"filter_length": K} if name == "linear_filter" else {})
        )
        for label, name in COMPARED.items()
    }
    sims["mean"] = sj.fit_simulator("mean", fit)
    return sims


def score(sims: dict, heldout: RunSet) -> dict[str, dict[str, float]]:
    """``{name: {mse, skill_vs_mean, per_example_spearman}}`` on the held-out runs."""
    from simfluence_jax.pipeline import study

    table = study.scores(sims, heldout)
    base = table["mean"]["mse_mean"]
    return {
        name: {
            "mse": row["mse_mean"],
            "skill_vs_mean": 1.0 - row["mse_mean"] / base,
            "per_example_spearman": row["per_example_spearman_mean"],
        }
        for name, row in table.items()
    }


def analyse(runs: RunSet, split: tuple[int, int, int], study_cfg: FilterKernel) -> dict:
    """The table, the learned filter and the learning curve of one draw of runs."""
    fit, val, heldout = runs.split(*split)
    too_many = [n for n in study_cfg.curve if n > fit.num_runs]
    if too_many:
        raise ValueError(f"curve point {too_many[0]} exceeds the {fit.num_runs} fitting runs")
    t0 = time.perf_counter()
    sims = fit_compared(fit, val, study_cfg.filter_length)
    fit_s = time.perf_counter() - t0
    curve = {}
    for n in study_cfg.curve:
        sub = fit_compared(fit.select(np.arange(n)), val, study_cfg.filter_length)
        curve[n] = score(sub, heldout)
    return {
        "table": score(sims, heldout),
        "filter": np.asarray(sims["filter kernel"].filter).tolist(),
        "momentum": float(sims["momentum kernel"].momentum),
        "l2": {n: float(sims[n].l2) for n in COMPARED},
        "learning_curve": curve,
        "fit_seconds": fit_s,
    }


def render(results: dict, runs_note: str) -> str:
    lines = ["# The filter kernel against plain Linear and the momentum kernel", "", runs_note, ""]
    for seed, res in results.items():
        lines += [
            f"## Curricula seed {seed}",
            "",
            f"Momentum kernel mu = {res['momentum']:.2f}; learned filter h = "
            f"[{', '.join(f'{x:.3f}' for x in res['filter'])}].",
            "",
            "| simulator | held-out MSE | MSE skill vs mean | per-example rho |",
            "|---|---|---|---|",
        ]
        for name, row in res["table"].items():
            lines.append(
                f"| {name} | {row['mse']:.4g} | {row['skill_vs_mean']:+.3f} | "
                f"{row['per_example_spearman']:.3f} |"
            )
        lines += ["", "Learning curve (held-out MSE / per-example rho):", ""]
        for name in COMPARED:
            cells = ", ".join(
                f"{n} runs: {pts[name]['mse']:.4g} / {pts[name]['per_example_spearman']:.3f}"
                for n, pts in res["learning_curve"].items()
            )
            lines.append(f"- {name}: {cells}")
        lines.append("")
    return "\n".join(lines)


def parse(argv):
    """``(FilterKernel, RunsConfig, FitConfig, operative config text)``."""
    return common.parse(argv, FilterKernel, __doc__, GIN, FLAGS, ("--tiny", TINY_GIN, "CI sizes"))


def main(argv=None) -> int:
    import sys

    from simfluence_jax.cli import gin_edge
    from simfluence_jax.pipeline import study

    study_cfg, runs_cfg, fit_cfg, operative = parse(sys.argv[1:] if argv is None else argv)
    split = (fit_cfg.num_fit, fit_cfg.num_val, fit_cfg.num_heldout)
    command = "python -m experiments.filter_kernel"
    with gin_edge.claim_output(study_cfg.output_dir, command=command, config_text=operative) as out:
        results = {}
        for seed in study_cfg.seeds:
            cfg = dataclasses.replace(runs_cfg, seed=seed)
            runs, _ = study.cached_runs(cfg, study_cfg.cache_dir,
                                        gradient_kwargs=fit_cfg.gradient_kwargs)  # fmt: skip
            results[seed] = analyse(runs, split, study_cfg)
            _log(f"seed {seed}: fitted in {results[seed]['fit_seconds']:.0f} s")
            text = json.dumps(results, indent=1, default=float)
            common.write_outputs(out, {"results.json": text})
        note = (
            f"{runs_cfg.optimizer} (lr {runs_cfg.learning_rate}, {runs_cfg.optimizer_kwargs}), "
            f"{runs_cfg.num_runs} runs of {runs_cfg.num_steps} steps per seed, split "
            f"{split[0]} / {split[1]} / {split[2]}; filter length {study_cfg.filter_length}."
        )
        common.write_outputs(out, {"report.md": render(results, note)})
        print(render(results, note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
