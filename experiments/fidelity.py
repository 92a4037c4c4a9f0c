"""Entry point: `python -m experiments.fidelity [--rows A,B] [--gin.NAME=VALUE ...]`.

The paper's claim across settings: rows are task x model x training method x optimizer
(`gin_configs/experiments/fidelity.gin`), each a run set of at least 48 runs split 36
fitting / 4 validation / 8 held-out, scored on two splits (split 0 takes the runs in order,
split 1 a seeded permutation of them). Per row and split: held-out all-steps MSE, Spearman
of the change and per-example Spearman across held-out runs for the Linear form chosen on
validation runs (plain or kernel), the best control, calibrated TracIn-CP and calibrated
influence functions; the paper's two ratios against the best gradient baseline and the MSE
skill against the `mean` control (`simfluence_jax.pipeline.study.fidelity_row`).

Runs and gradient scores are cached in the shared run cache (resumed after a kill; rows
that share a setting with the optimizer study reuse its runs). Writes `report.md` (the
table, a heat map of the two ratios, one trajectory figure per row), `results.json` and the
operative config into `Fidelity.output_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import simfluence_jax as sj
from experiments import common
from simfluence_jax.pipeline import study

GIN = Path(__file__).resolve().parents[1] / "gin_configs" / "experiments" / "fidelity.gin"

_log = common.logger("fidelity")


@dataclasses.dataclass(frozen=True)
class Fidelity:
    """The matrix: ``rows`` maps a row name to ``{"gin": [files], "bindings": [...],
    "gradient_kwargs": {...}}`` (the row's runs are the ``RunsConfig`` those files give)."""

    rows: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    split: tuple[int, int, int] = (36, 4, 8)
    split_seeds: tuple[int, ...] = (0, 1)
    output_dir: str = "outputs/fidelity"
    cache_dir: str = "outputs/runs_cache"


def parse(argv) -> tuple[Fidelity, str, list[str] | None]:
    return common.parse_chosen(argv, Fidelity, __doc__, GIN, "rows")


def row_config(row: Mapping[str, Any]):
    """The ``RunsConfig`` of one row (its gin files, then its bindings)."""
    from simfluence_jax.cli import gin_edge

    return gin_edge.runs_config(row["gin"], list(row.get("bindings", ())))


def run_row(name: str, row: Mapping[str, Any], fid: Fidelity, out: Path) -> dict:
    cfg = row_config(row)
    t0 = time.perf_counter()
    runs, grads = study.cached_runs(cfg, fid.cache_dir, gradient_kwargs=row.get("gradient_kwargs"))
    runs_s = time.perf_counter() - t0
    num_fit, num_val, num_held = fid.split
    splits = []
    for seed in fid.split_seeds:
        fit, val, held = runs.split(num_fit, num_val, num_held, seed=None if seed == 0 else seed)
        sims = sj.fit_all(study.ROW_SIMULATORS, fit, validation=val, gradients=grads)
        result = study.fidelity_row(sims, val, held)
        result["seed"] = seed
        splits.append(result)
        if seed == fid.split_seeds[0]:
            _trajectory_figure(name, sims, result, held, out)
    verdicts = {(s["beats_best_control_mse"], s["meets_paper"]) for s in splits}
    return {
        "runs_config": runs.metadata.get("runs_config"),
        "num_runs": runs.num_runs,
        "runs_seconds": runs_s,
        "splits": splits,
        "verdict_flips": len(verdicts) > 1,
    }


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def _trajectory_figure(name, sims, result, held, out: Path) -> None:
    """Observed and simulated trajectories of three test examples on held-out run 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [result["linear"], result["control"], result["gradient_for_mse"]]
    preds = {n: sj.predict(sims[n], held.select([0]))[0] for n in shown}
    obs = held.losses[0]
    change = obs[-1] - obs[0]
    tests = [int(np.argmin(change)), int(np.argsort(change)[len(change) // 2]),
             int(np.argmax(change))]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharex=True)
    for ax, j in zip(axes, tests):
        ax.plot(obs[:, j], "k-", lw=2, label="observed")
        for n in shown:
            ax.plot(preds[n][:, j], lw=1.2, label=n)
        ax.set_title(f"test example {j}")
        ax.set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=7)
    fig.suptitle(name, fontsize=9)
    fig.tight_layout()
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figures" / f"{_slug(name)}.png", dpi=90)
    plt.close(fig)


def _heatmap(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if "splits" in r]
    if not names:
        return
    cols = ["Spearman ratio", "MSE reduction"]
    vals = np.array([[np.mean([s["spearman_ratio"] for s in results[n]["splits"]]),
                      np.mean([s["mse_reduction"] for s in results[n]["splits"]])]
                     for n in names])  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.5))
    shown = np.clip(np.nan_to_num(vals / [2.0, 0.75], nan=0.0, posinf=2.0), -1, 2)
    im = ax.imshow(shown, cmap="RdYlGn", vmin=0, vmax=1.5, aspect="auto")
    for i in range(len(names)):
        for k in range(2):
            ax.text(k, i, f"{vals[i, k]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(2), [f"{c}\n(paper: {t})" for c, t in zip(cols, ("2.0", "0.75"))])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(im, ax=ax, label="fraction of the paper's figure")
    fig.tight_layout()
    fig.savefig(out / "ratios.png", dpi=90)
    plt.close(fig)


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def render(results: dict, fid: Fidelity) -> str:
    lines = [
        "# Fidelity matrix",
        "",
        f"Each row: a run set split {fid.split[0]} fitting / {fid.split[1]} validation / "
        f"{fid.split[2]} held-out runs, scored on splits {list(fid.split_seeds)}. Cells are "
        "held-out all-steps MSE / Spearman of the change / per-example Spearman across "
        "held-out runs. Linear is the plain or kernel form chosen on the validation runs; the "
        "control and the gradient baseline are the best on the held-out runs. The paper: "
        "Spearman ratio >= 2 and MSE reduction >= 0.75 against the best gradient baseline.",
        "",
        "| row | split | Linear (form, mu) | best control | TracIn-CP cal. | influence cal. | "
        "Spearman ratio | MSE reduction | MSE skill vs mean | beats control | paper met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(row):
        return (f"{_fmt(row['mse_mean'])} / {_fmt(row['change_spearman_mean'], 2)} / "
                f"{_fmt(row['per_example_spearman_mean'], 2)}")  # fmt: skip

    for name, res in results.items():
        if "error" in res:
            lines.append(f"| {name} | - | failed: {res['error']} | | | | | | | | |")
            continue
        for s in res["splits"]:
            t = s["table"]
            lin = f"{cell(t[s['linear']])} ({s['linear']}, mu {s['kernel_momentum']:.2f})"
            lines.append(
                f"| {name} | {s['seed']} | {lin} | {cell(t[s['control']])} ({s['control']}) | "
                f"{cell(t['tracin_cp_calibrated'])} | {cell(t['influence_calibrated'])} | "
                f"{_fmt(s['spearman_ratio'])} | {_fmt(s['mse_reduction'])} | "
                f"{_fmt(s['mse_skill_vs_mean'])} | {'yes' if s['beats_best_control_mse'] else 'NO'}"
                f" | {'yes' if s['meets_paper'] else 'no'} |"
            )
    flips = [n for n, r in results.items() if r.get("verdict_flips")]
    lines += ["", f"Rows whose verdict flips between splits: {', '.join(flips) or 'none'}.", ""]
    lines += ["![ratios](ratios.png)", ""]
    for name in results:
        if "splits" in results[name]:
            lines += [f"### {name}", "", f"![{name}](figures/{_slug(name)}.png)", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    import sys

    from tqdm import tqdm

    from simfluence_jax.cli.gin_edge import claim_output

    fid, config_text, names = parse(sys.argv[1:] if argv is None else argv)
    # One writer for the folder, refused if it holds files we did not write.
    command = "python -m experiments.fidelity"
    with claim_output(fid.output_dir, command=command, config_text=config_text) as out:
        rows = {n: fid.rows[n] for n in (names or fid.rows)}
        results_file = out / "results.json"
        results = json.loads(results_file.read_text()) if results_file.exists() else {}
        t_all = time.perf_counter()
        for name, row in tqdm(rows.items(), desc="rows", unit="row"):
            t0 = time.perf_counter()
            try:
                results[name] = run_row(name, row, fid, out)
            except Exception as e:  # a row that cannot be made is reported, not hidden
                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            results[name]["seconds"] = time.perf_counter() - t0
            text = json.dumps(results, indent=1, default=float)
            common.write_outputs(out, {"results.json": text})
            _log(f"{name}: {results[name]['seconds']:.0f} s")
        ordered = {n: results[n] for n in fid.rows if n in results}
        _heatmap(ordered, out)
        common.write_outputs(out, {"report.md": render(ordered, fid)})
        print(render(ordered, fid))
        _log(f"{len(rows)} rows in {time.perf_counter() - t_all:.0f} s; {out}/report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
