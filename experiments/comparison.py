"""Simulating many runs against differentiating one: every attribution method on the same
retrained edits, by edit size and kind, with its cost.

    python -m experiments.comparison [--out DIR] [--tiny] [--gin_file F] [--gin.NAME=VALUE]

Configured by ``gin_configs/experiments/comparison.gin`` (``--tiny``: ``comparison_tiny.gin``),
on the counterfactual benchmark's runs (``experiments.counterfactuals``: the quickstart
protocol). Methods: the fitted simulators of ``FitConfig.simulators`` (Linear plain and with
the optimizer kernel, Additive, calibrated TracIn-CP, influence, TRAK and EK-FAC) and the exact
metagradients of each held-out run (``gradients.metagradient``, MAGIC's single-model setting:
edits of that run with its seed, first order in the slot weights). Steps:

1. The runs, their gradient scores (all five kinds, timed one by one) and the fits (timed).
2. For each of ``heldout_curricula`` held-out runs: the metagradients of its test losses
   averaged over the last ``horizon`` steps (one reverse pass, timed; the unit of cost is
   one replay of the run), their first-order removal effects; the edits: ``k``
   random removals for ``k`` in ``random_sizes``, the top-``k`` helpful and harmful removals
   for each of ``targets`` test examples by every method of ``edit_sources``, ``k`` in
   ``targeted_sizes``, and the reversed curriculum.
3. Retrain every edit for real (``counterfactuals.Retrainer``; its cache is
   ``retrained_dir``, shared with the counterfactual benchmark, so its edits cost nothing).
4. Predicted against achieved change of the loss over the last ``horizon`` steps, for every
   method, by edit kind and size: Pearson, Spearman, slope, sign agreement; the payoff of
   each source's top-k edits over random ones of the same size; LDS on the benchmark's
   random half-subsets (not for the metagradient: a subset is not an edit of its run);
   the cost table; a plot of accuracy against edit size; ``report.md`` and
   ``comparison.json``.

A reorder is outside the metagradient's domain (its prediction is NaN and the cell says so).
The metagradient's predicted change of a removal is ``sum (u - 1) dy/dw`` over the run's slots
(``metagradient_changes``), the change of the same readout the benchmark scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common
from experiments import counterfactuals as bench

GIN = "experiments/comparison.gin"
TINY_GIN = "experiments/comparison_tiny.gin"
FLAGS = {
    "--out": ("Comparison.output_dir", str),
    "--cache": ("Comparison.cache_dir", str),
    "--retrained": ("Comparison.retrained_dir", str),
    "--heldout-curricula": ("Comparison.heldout_curricula", int),
}
METAGRADIENT = "metagradient"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The comparison besides the runs (``RunsConfig``) and the fits (``FitConfig``).

    Attributes:
      output_dir: report, ``comparison.json``, figure, operative config.
      retrained_dir: the folder whose ``retrained/`` caches the retrainings (the counterfactual
        benchmark's output folder shares them).
      cache_dir: the shared run cache.
      heldout_curricula: held-out runs whose curricula are edited (the first ones).
      random_sizes: sizes of the random removals.
      random_draws: random removals of each size per curriculum.
      targeted_sizes: sizes ``k`` of the top-k helpful / harmful removals.
      targets: test examples per curriculum whose top-k edits are retrained (the first of
        the counterfactual benchmark's targets).
      edit_sources: methods whose top-k edits are retrained (``metagradient`` included).
      horizon: steps at the end over which the loss is averaged.
      lds_subsets: random half-subsets for the LDS (the benchmark's, cached there).
      metagradient_test_batch: test examples per vmapped reverse pass.
      remat_chunk: steps per rematerialised chunk of the reverse pass.
      retrain_group: runs the factory trains at once.
      retrain_chunk: curricula per run store.
    """

    output_dir: str
    retrained_dir: str = "outputs/counterfactuals"
    cache_dir: str = "outputs/runs_cache"
    heldout_curricula: int = 4
    random_sizes: tuple[int, ...] = (1, 4, 16, 48)
    random_draws: int = 2
    targeted_sizes: tuple[int, ...] = (1, 4, 16)
    targets: int = 1
    edit_sources: tuple[str, ...] = ("linear", METAGRADIENT)
    horizon: int = 8
    lds_subsets: int = 32
    metagradient_test_batch: int = 10
    remat_chunk: int = 8
    retrain_group: int = 16
    retrain_chunk: int = 32


_log = common.logger("comparison")


def parse(argv):
    """``(Comparison, RunsConfig, FitConfig, operative config text)``."""
    return common.parse(argv, Comparison, __doc__, GIN, FLAGS, ("--tiny", TINY_GIN, "CI sizes"))


class Meter:
    """Seconds and peak resident memory (MB above the level at entry) of a block."""

    def __enter__(self):
        from benchmarks.common import reset_peak_rss, status_kb

        self._reset = reset_peak_rss()
        self._before = status_kb("VmRSS") if self._reset else None
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        from benchmarks.common import status_kb

        self.seconds = time.perf_counter() - self._t0
        self.peak_mb = (status_kb("VmHWM") - self._before) / 1024 if self._reset else float("nan")
        return False


# Edits ---------------------------------------------------------------------------------------
def targeted_edits(effects, c, run: int, targets, sizes, source: str) -> list[bench.Edit]:
    """The top-k helpful and harmful removals of ``source``'s ``effects`` for each target
    and size (an edit that would leave a step of padding only cannot be trained: skipped)."""
    from simfluence_jax import attribution
    from simfluence_jax import counterfactuals as cf

    out = []
    for j in targets:
        for k in sizes:
            for direction in ("helpful", "harmful"):
                k_ok = min(k, int(np.isfinite(effects.delta[:, j]).sum()))
                drop, _ = attribution.top(effects, int(j), k_ok, direction)
                edited = cf.remove(c, drop, repack=False)
                if not bench.empty_step(edited):
                    out.append(bench.Edit(direction, run, edited, size=k, source=source,
                                          target=int(j)))  # fmt: skip
    return out


# Scoring -------------------------------------------------------------------------------------
def metagradient_changes(meta, edits, M: int) -> np.ndarray:
    """``float64[E, M]``: the first-order change of the loss averaged over the last
    ``horizon`` steps predicted by each held-out run's metagradients ``meta[run]`` (one
    readout, ``Replay.metagradients(..., horizon=h)``) for that run's removals:
    ``sum_{t, b} dy/dw[t, b] (u[t, b] - 1)`` over the run's real slots, ``u = 0`` where the
    edit made the slot padding (the batch-mean loss of the replay weighs the rest of the
    batch as the run factory does). NaN outside its domain (reorders, other runs)."""
    out = np.full((len(edits), M), np.nan)
    for i, e in enumerate(edits):
        mg = meta.get(e.run)
        if mg is None or e.kind == "reverse":
            continue
        real = mg.batches >= 0
        if e.batches.shape != mg.batches.shape or np.any(
            (e.batches >= 0) & (e.batches != mg.batches)
        ):
            continue  # not a removal of this run's slots
        removed = (real & (e.batches < 0)).astype(np.float64)
        out[i] = -np.einsum("jtb,tb->j", np.asarray(mg.slot, np.float64)[:, 0], removed)
    return out


def by_size_table(pred_change, true_change, edits) -> dict[str, dict[str, dict[str, dict]]]:
    """``{kind: {size: {method: agreement}}}`` for kind ``random`` (every test example),
    ``targeted`` (helpful and harmful edits with their target) and ``reverse``."""
    M = true_change.shape[1]
    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for i, e in enumerate(edits):
        if e.kind == "random":
            groups.setdefault(("random", e.size), []).extend((i, j) for j in range(M))
        elif e.kind in ("helpful", "harmful"):
            groups.setdefault(("targeted", e.size), []).append((i, e.target))
        elif e.kind == "reverse":
            groups.setdefault(("reverse", 0), []).extend((i, j) for j in range(M))
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for (kind, size), pairs in sorted(groups.items()):
        e_idx = np.array([p[0] for p in pairs])
        j_idx = np.array([p[1] for p in pairs])
        out.setdefault(kind, {})[str(size)] = {
            n: bench.agreement(dp[e_idx, j_idx], true_change[e_idx, j_idx])
            for n, dp in pred_change.items()
        }
    return out


def payoff_by_size(edits, true_change) -> dict[str, dict[str, dict[str, dict]]]:
    """``{source: {size: {direction: payoff}}}``: the achieved change of the target after the
    source's top-k removal against random removals of the same size of the same curriculum
    (harmful: sign flipped, so a positive gain is good in both)."""
    rand: dict[tuple[int, int], list[int]] = {}
    for i, e in enumerate(edits):
        if e.kind == "random":
            rand.setdefault((e.run, e.size), []).append(i)
    got: dict[tuple[str, int, str], tuple[list, list]] = {}
    for i, e in enumerate(edits):
        if e.kind not in ("helpful", "harmful") or (e.run, e.size) not in rand:
            continue
        sign = 1.0 if e.kind == "helpful" else -1.0
        t, r = got.setdefault((e.source, e.size, e.kind), ([], []))
        t.append(sign * true_change[i, e.target])
        r.append(sign * true_change[rand[(e.run, e.size)], e.target].mean())
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for (source, size, kind), (t, r) in sorted(got.items()):
        out.setdefault(source, {}).setdefault(str(size), {})[kind] = bench.payoff(
            np.array(t), np.array(r)
        )
    return out


def accuracy_figure(table, path: Path, methods: Sequence[str]) -> None:
    """Pearson of predicted vs achieved change against the edit size, random and targeted
    removals side by side, one line per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    for ax, kind in zip(fig.subplots(1, 2), ("random", "targeted")):
        rows = table.get(kind, {})
        sizes = sorted(int(s) for s in rows)
        for name in methods:
            y = [rows[str(s)].get(name, {}).get("pearson", np.nan) for s in sizes]
            ax.plot(sizes, y, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("examples removed")
        ax.set_ylabel("Pearson, predicted vs achieved change")
        ax.set_title(f"{kind} removals")
        ax.axhline(0, color="grey", lw=0.5)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# Main ----------------------------------------------------------------------------------------
def main(argv=None) -> Path:
    exp, cfg, fit_cfg, config_text = parse(sys.argv[1:] if argv is None else argv)
    command = "python -m experiments.comparison"
    # The retrainings are cached in the counterfactual benchmark's folder.
    with common.claim_with_retrained(exp.output_dir, exp.retrained_dir, command=command,
                                     config_text=config_text) as out:  # fmt: skip
        return run(exp, cfg, fit_cfg, out)


def run(exp, cfg, fit_cfg, out: Path) -> Path:
    """The comparison (steps 1-5 of the module docstring) into the claimed folder ``out``."""
    import simfluence_jax as sj
    from simfluence_jax import attribution, lds
    from simfluence_jax import counterfactuals as cf
    from simfluence_jax.fileio import atomic_write
    from simfluence_jax.gradients.context import PrecomputedGradients
    from simfluence_jax.gradients.metagradient import Replay
    from simfluence_jax.gradients.scores import SCORE_KINDS, kinds_read_by
    from simfluence_jax.pipeline import study
    from simfluence_jax.pipeline.experiment import fit_simulators, gradient_context
    from simfluence_jax.pipeline.generate import prepare, store_name
    from simfluence_jax.reports.render import json_text

    cost: dict[str, dict[str, Any]] = {}

    # 1. Runs, scores, fits.
    # The run cache keys its scores by the gradient options; the influence options alone are
    # the counterfactual benchmark's key, so its cached scores are read, not recomputed.
    kwargs = dict(fit_cfg.gradient_kwargs or {})
    shared = {k: v for k, v in kwargs.items() if k == "influence"}
    runs, _ = study.cached_runs(cfg, exp.cache_dir, gradient_kwargs=shared)
    fit, val, held = runs.split(fit_cfg.num_fit, fit_cfg.num_val, fit_cfg.num_heldout)
    H = min(exp.heldout_curricula, held.num_runs)
    M, N, B = runs.num_test, runs.num_train, runs.batch_size
    setup = prepare(cfg)
    replay = Replay(setup.factory)
    held_seeds = [int(s) for s in held.metadata["seeds"]]
    # The unit of cost: one replay of a run (its test losses after every step), compiled.
    replay.losses(held.batches[0], held_seeds[0])
    with Meter() as m:
        replay.losses(held.batches[0], held_seeds[0])
    run_s = m.seconds
    _log(f"{runs}: one run replays in {run_s:.2f} s")

    key = json.dumps([kwargs, sorted(map(str, fit_cfg.simulators))], sort_keys=True, default=str)
    key = hashlib.sha256(key.encode()).hexdigest()
    grads_file = Path(exp.cache_dir) / store_name(cfg) / f"gradients-all-{key[:8]}.npz"
    score_cost = {}
    if grads_file.exists():
        grads = PrecomputedGradients.load(grads_file)
        meta_file = grads_file.with_suffix(".json")
        if meta_file.exists():
            score_cost = json.loads(meta_file.read_text())
    else:
        ctx = gradient_context(setup, runs.select([0]), Path(exp.cache_dir) / store_name(cfg)
                               / "store", **kwargs)  # fmt: skip
        kinds = kinds_read_by(fit_cfg.simulators)
        for kind in kinds:
            with Meter() as m:
                SCORE_KINDS.get(kind).compute(ctx)
            score_cost[kind] = {"seconds": m.seconds, "peak_mb": m.peak_mb}
            _log(f"{kind} scores: {m.seconds:.1f} s")
        grads = ctx.precompute(kinds)  # cached: no recomputation
        grads.save(grads_file)
        atomic_write(grads_file.with_suffix(".json"), json_text(score_cost))
    sims = {}
    for name in fit_cfg.simulators:
        one = dataclasses.replace(fit_cfg, simulators=(name,))
        with Meter() as m:
            sims.update(fit_simulators(one, fit, val, gradients=grads))
        cost[name] = {"fit_s": m.seconds, "fit_peak_mb": m.peak_mb}
    _log(f"fitted {', '.join(sims)}")

    # 2. Metagradients and edits.
    meta, meta_s, meta_mb = {}, [], []
    want_meta = METAGRADIENT in exp.edit_sources or METAGRADIENT in fit_cfg.simulators
    edits: list[bench.Edit] = []
    for r in range(H):
        c = held.batches[r]
        lr = None if held.learning_rates is None else held.learning_rates[r]
        edits.append(bench.Edit("replay", r, c))
        effects = {}
        if want_meta:
            with Meter() as m:
                meta[r] = replay.metagradients(
                    c,
                    held_seeds[r],
                    horizon=exp.horizon,
                    remat_chunk=exp.remat_chunk,
                    test_batch_size=exp.metagradient_test_batch,
                )
            meta_s.append(m.seconds)
            meta_mb.append(m.peak_mb)
            _log(f"metagradients of held-out run {r}: {m.seconds:.1f} s")
        every = dict(sims)
        for name in exp.edit_sources:
            if name == METAGRADIENT:
                effects[name] = meta[r].effects()
                continue
            effects[name] = attribution.removal_effects(
                every[name], c, held.L0[r], learning_rates=lr, horizon=exp.horizon
            )
        if r == 0:  # per attributed test example, compiled: a second call of each method
            for name, sim in every.items():
                if name in bench.NO_ATTRIBUTION:
                    continue
                for _ in range(2):
                    t0 = time.perf_counter()
                    attribution.removal_effects(
                        sim, c, held.L0[r], learning_rates=lr, horizon=exp.horizon
                    )
                cost.setdefault(name, {})["effects_s"] = time.perf_counter() - t0
        targets = bench.pick_targets(M, 8, r, seed=cfg.seed)[: exp.targets]
        for name in exp.edit_sources:
            edits += targeted_edits(effects[name], c, r, targets, exp.targeted_sizes, name)
        edits.append(bench.Edit("reverse", r, cf.reverse(c)))
    edits += bench.random_edits(
        held, range(H), exp.random_sizes, exp.random_draws, seed=cfg.seed, split="heldout"
    )
    if want_meta:
        # The first reverse pass compiles; the later ones (same shapes) are the cost per run.
        later = meta_s[1:] or meta_s
        cost[METAGRADIENT] = {
            "fit_s": float(np.median(later)),
            "fit_peak_mb": float(np.max(meta_mb)),
            "compile_s": meta_s[0] - float(np.median(later)),
            "effects_s": float(np.median(later)),
        }

    # 3. Retrain.
    seeds = {("heldout", r): held_seeds[r] for r in range(held.num_runs)}
    retrainer = bench.Retrainer(
        setup, Path(exp.retrained_dir), group=exp.retrain_group, chunk=exp.retrain_chunk
    )
    n_unique = len({(e.key, seeds[(e.split, e.run)]) for e in edits})
    _log(f"{len(edits)} edits, {n_unique} distinct curricula (cached ones are read)")
    trained = bench.train_edits(retrainer, edits, seeds)
    true_traj = np.stack([trained[(e.key, seeds[(e.split, e.run)])][0] for e in edits])

    # 4. Score.
    pred_traj = bench.predicted_trajectories(sims, edits, {"heldout": held})
    true_change = bench.changes(true_traj, edits, exp.horizon)
    pred_change = {n: bench.changes(p, edits, exp.horizon) for n, p in pred_traj.items()}
    if meta:
        pred_change[METAGRADIENT] = metagradient_changes(meta, edits, M)
    table = by_size_table(pred_change, true_change, edits)
    pay = payoff_by_size(edits, true_change)
    lds_res = None
    if exp.lds_subsets:
        lds_size = N // 2 // B * B
        lds_seeds = cfg.seed * 100_003 + 50_000 + np.arange(exp.lds_subsets)
        lds_epochs = max(1, round(runs.num_steps * B / (cfg.subset_size or N)))

        def train(b):
            losses, rates = retrainer(b, lds_seeds[: len(b)])
            return sj.RunSet(batches=b, losses=losses, num_train=N, learning_rates=rates)

        lds_res = lds.run_lds(sims, train, pool_size=N, num_subsets=exp.lds_subsets,
                              subset_size=lds_size, batch_size=B, epochs=lds_epochs,
                              seed=cfg.seed + 7).table  # fmt: skip
    methods = list(pred_change)
    for name in methods:
        c = cost.setdefault(name, {})
        c["per_test_s"] = c.pop("effects_s", float("nan")) / M
        # Raw gradient scores need one run with checkpoints; a calibrated baseline and every
        # fitted simulator also read the fitting (and validation) runs.
        kind = _score_kind(name)
        raw = kind is not None and not name.endswith("_calibrated")
        c["runs"] = 1 if name == METAGRADIENT or raw else fit.num_runs + val.num_runs
        if kind is not None:
            c["scores_s"] = score_cost.get(kind, {}).get("seconds", float("nan"))
            c["scores_peak_mb"] = score_cost.get(kind, {}).get("peak_mb", float("nan"))
    accuracy_figure(table, out / "accuracy_by_size.png", methods)
    summary = {
        "setup": {
            "runs_config": runs.metadata.get("runs_config"),
            "split": [fit.num_runs, val.num_runs, held.num_runs],
            "heldout_curricula": H,
            "edits": len(edits),
            "retrained_curricula": n_unique,
            "trained_this_time": retrainer.trained,
            "horizon": exp.horizon,
            "edit_sources": list(exp.edit_sources),
            "one_run_s": run_s,
            "retrain_s": retrainer.seconds,
        },
        "by_size": table,
        "payoff": pay,
        "lds": lds_res,
        "cost": cost,
    }
    common.write_outputs(out, {"comparison.json": summary, "report.md": render(summary, methods)})
    _log(f"report written to {out}/report.md")
    return out


def _score_kind(name: str) -> str | None:
    """The gradient score kind a gradient baseline reads (None for a fitted simulator)."""
    from simfluence_jax.gradients.scores import kinds_read_by

    kinds = kinds_read_by([name])
    return kinds[0] if kinds else None


# Report --------------------------------------------------------------------------------------
def _f(x, digits: int = 2) -> str:
    return bench._f(x, digits)


def _num(x, spec: str) -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)


def render(summary: Mapping[str, Any], methods: Sequence[str]) -> str:
    s = summary["setup"]
    lines = [
        "# Simulating many runs against differentiating one",
        "",
        f"Runs: {s['runs_config']}; split {s['split']}; {s['heldout_curricula']} held-out "
        f"curricula, {s['edits']} edits ({s['retrained_curricula']} distinct curricula "
        f"retrained, {s['trained_this_time']} this time). Change = loss averaged over the last "
        f"{s['horizon']} steps, edit minus the replay of the run with its seed. Top-k edits "
        f"chosen by {', '.join(s['edit_sources'])}.",
        "",
    ]
    tab = summary["by_size"]
    for kind, title in (("random", "Random removals (every test example)"),
                        ("targeted", "Top-k helpful and harmful removals (their target)"),
                        ("reverse", "Reversed curriculum (every test example)")):  # fmt: skip
        if kind not in tab:
            continue
        sizes = sorted(tab[kind], key=int)
        head = " | ".join(f"k={k} r / slope" if kind != "reverse" else "r / slope / sign"
                          for k in sizes)  # fmt: skip
        lines += [f"## {title}", "", f"| method | {head} |",
                  "|---|" + "---|" * len(sizes)]  # fmt: skip
        for name in methods:
            cells = []
            for k in sizes:
                a = tab[kind][k].get(name, {})
                if not a or a.get("n", 0) == 0:
                    cells.append("outside its domain" if name == METAGRADIENT else "n/a")
                elif kind == "reverse":
                    cells.append(f"{_f(a['pearson'])} / {_f(a['slope'])} / "
                                 f"{_f(a['sign_agreement'])}")  # fmt: skip
                else:
                    cells.append(f"{_f(a['pearson'])} / {_f(a['slope'])}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Payoff of top-k removals over random removals of the same size", "",
              "Achieved change of the target (harmful: sign flipped), targeted minus random "
              "(mean ± s.e.).", "", "| source | k | helpful gain | harmful gain |",
              "|---|---|---|---|"]  # fmt: skip
    for source, rows in summary["payoff"].items():
        for k, d in sorted(rows.items(), key=lambda kv: int(kv[0])):
            cell = [f"{_f(d[x]['gain'], 3)} ± {_f(d[x]['gain_sem'], 3)}" if x in d else "n/a"
                    for x in ("helpful", "harmful")]  # fmt: skip
            lines.append(f"| {source} | {k} | {cell[0]} | {cell[1]} |")
    lines.append("")
    if summary["lds"]:
        lines += [
            "## LDS on random half-subsets",
            "",
            "| method | LDS (mean ± sem over test examples) |",
            "|---|---|",
        ]
        for name, row in summary["lds"].items():
            lines.append(f"| {name} | {_f(row['lds_mean'], 3)} ± {_f(row['lds_sem'], 2)} |")
        lines += [f"| {METAGRADIENT} | outside its domain (a subset is not an edit of one "
                  "run) |", ""]  # fmt: skip
    run_s = s["one_run_s"]
    lines += ["## Cost", "",
              f"Unit: one replay of a run (its test losses after every step), {run_s:.2f} s. "
              "Setup: the fit (simulators; the fitting runs are made once and serve every "
              "curriculum), plus the scores from run 0's checkpoints (gradient methods), or the "
              f"reverse pass over the last {s['horizon']} steps of each attributed run "
              "(metagradient: once per curriculum, compilation excluded). Per attributed test "
              "example: one `removal_effects` call over every id of a curriculum, compiled, "
              "divided by M; for the metagradient, its reverse pass divided by M. Peak: the "
              "resident memory the setup added.", "",
              "| method | runs needed | setup s | setup x one run | per attributed test "
              "example s | peak MB |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name in methods:
        c = summary["cost"].get(name, {})
        setup = c.get("fit_s", 0.0) + c.get("scores_s", 0.0)
        peak = max(c.get("fit_peak_mb", float("nan")), c.get("scores_peak_mb", float("nan")))
        if name == METAGRADIENT:
            runs_txt = "1 (the attributed run), per curriculum"
        elif "scores_s" in c and c.get("runs") == 1:
            runs_txt = "1 with checkpoints"
        elif "scores_s" in c:
            runs_txt = f"{c.get('runs')} (1 with checkpoints)"
        else:
            runs_txt = f"{c.get('runs')} logged"
        lines.append(f"| {name} | {runs_txt} | {setup:.1f} | {setup / run_s:.1f} | "
                     f"{_num(c.get('per_test_s'), '.4f')} | {_num(peak, '.0f')} |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
