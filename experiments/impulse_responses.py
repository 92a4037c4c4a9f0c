"""Impulse responses under each optimizer: how one training example's effect unfolds over the
steps after its own, measured exactly, against the optimizer kernel's geometric decay.

    python -m experiments.impulse_responses [--settings A,B] [--gin_file F] [--gin.NAME=VALUE]

Configured by ``gin_configs/experiments/impulse_responses.gin`` (``ImpulseStudy``): each
setting is a run set made by its own layered gin files (model, runs protocol, optimizer),
with ``RunsConfig.num_runs = ImpulseStudy.runs`` and no checkpoints. For every setting:

1. Make (or read back) its logged runs (``pipeline.study.cached_runs``) and check that the
   differentiable replay reproduces them (``Replay.logged_run``).
2. For ``num_slots`` slots of each run, spread over the steps whose whole ``horizon`` lies in
   the run, the exact impulse response ``dL_t[j] / dw[slot]`` of every test example at
   every later step (``gradients.impulse``: one forward-mode pass per slot, ``chunk`` slots
   at once). Kept under ``output_dir/responses`` keyed by the runs config and the slots, so
   a re-run only summarises.
3. The summaries of ``impulse_shape.summarize``: the mean normalised increment shape and its
   spread, the share of the effect after the step, the peak lag, the dependence on the step
   (thirds) and on the test loss before the step (terciles), the best geometric ``mu``.

Writes ``impulse_responses.json`` (``{"optimizers": {setting: summary}}``, read by
``impulse_shape.load_shape``), ``shapes.json`` (the same without the per-step, per-loss and
per-slot breakdowns; a copy of the measured one is ``experiments/results/impulse_shapes.json``),
``impulse_responses.png`` (one column per setting: the mean
increment and level shapes with their 10-90% bands against the best geometric fits),
``report.md`` and ``operative_config.gin`` under ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common

GIN = "experiments/impulse_responses.gin"
#: Summary keys left out of ``shapes.json`` (the pooled shapes only).
PER_GROUP = ("by_step", "by_loss", "per_slot", "slots")


@dataclasses.dataclass(frozen=True)
class ImpulseStudy:
    """The study: ``settings`` maps a name to ``{"gin": [files], "bindings": [...],
    "label": str, "num_slots": int}`` (the setting's runs are the ``RunsConfig`` those files
    give; only ``"gin"`` is required).

    Attributes:
      output_dir: summaries, figure, report, operative config, cached responses.
      cache_dir: the shared run cache.
      runs: logged runs per setting.
      num_slots: slots per run (a setting's ``"num_slots"`` overrides it).
      horizon: the last lag ``K`` summarised (slots are placed where all ``K`` lags exist).
      chunk: slots differentiated together.
      slot_seed: seed of the slot positions.
    """

    settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    output_dir: str = "outputs/impulse_responses"
    cache_dir: str = "outputs/runs_cache"
    runs: int = 1
    num_slots: int = 16
    horizon: int = 16
    chunk: int = 4
    slot_seed: int = 0


_log = common.logger("impulse")


def parse(argv) -> tuple[ImpulseStudy, str, list[str] | None]:
    return common.parse_chosen(argv, ImpulseStudy, __doc__, GIN, "settings")


def setting_config(setting: Mapping[str, Any], runs: int):
    """The ``RunsConfig`` of one setting: its gin files, its bindings, then ``runs`` runs and
    no checkpoints (the replay needs none)."""
    from simfluence_jax.cli import gin_edge

    bindings = [*setting.get("bindings", ()), f"RunsConfig.num_runs = {runs}",
                "RunsConfig.checkpoint_steps = ()"]  # fmt: skip
    return gin_edge.runs_config(setting["gin"], bindings)


def _key(cfg, study: ImpulseStudy, num_slots: int) -> str:
    blob = json.dumps(
        {"runs": dataclasses.asdict(cfg), "num_slots": num_slots,
         "horizon": study.horizon, "slot_seed": study.slot_seed},
        sort_keys=True, default=str,
    ).encode()  # fmt: skip
    return hashlib.sha256(blob).hexdigest()[:12]


def measure(
    name: str, cfg, study: ImpulseStudy, out: Path, *, num_slots: int
) -> tuple[list[dict], dict]:
    """The impulse responses of ``num_slots`` slots of every run of one setting (cached),
    and its run metadata."""
    from simfluence_jax.fileio import atomic_write, make_dirs

    folder = make_dirs(out / "responses")
    files = [folder / f"{name}-{_key(cfg, study, num_slots)}-run{r}.npz" for r in range(study.runs)]
    meta_file = folder / f"{name}-{_key(cfg, study, num_slots)}.json"
    if all(f.exists() for f in files) and meta_file.exists():
        loaded = [dict(np.load(f, allow_pickle=False)) for f in files]
        return loaded, json.loads(meta_file.read_text())
    from simfluence_jax.gradients.impulse import impulse_responses, sample_slots
    from simfluence_jax.gradients.metagradient import Replay
    from simfluence_jax.pipeline import study as pstudy
    from simfluence_jax.pipeline.generate import prepare

    t0 = time.perf_counter()
    runs, _ = pstudy.cached_runs(cfg, study.cache_dir)
    setup = prepare(cfg)
    replay = Replay(setup.factory)
    meta = {"runs_config": runs.metadata.get("runs_config"), "setup_s": time.perf_counter() - t0}
    results = []
    for r, path in enumerate(files):
        t0 = time.perf_counter()
        batches, seed = replay.logged_run(runs, r)
        T = batches.shape[0]
        if study.horizon > T - 1:
            raise ValueError(f"horizon {study.horizon} leaves no slot in a run of {T} steps")
        slots = sample_slots(batches, num_slots, seed=study.slot_seed + r,
                             last_step=T - 1 - study.horizon)  # fmt: skip
        ir = impulse_responses(replay, batches, seed, slots, chunk=study.chunk,
                               horizon=study.horizon, progress=True)  # fmt: skip
        arrays = {f.name: np.asarray(getattr(ir, f.name)) for f in dataclasses.fields(ir)}
        arrays["seconds"] = np.asarray(time.perf_counter() - t0)
        with open(path.with_suffix(".tmp.npz"), "wb") as fh:
            np.savez(fh, **arrays)
        path.with_suffix(".tmp.npz").replace(path)
        _log(f"{name} run {r}: {len(slots)} slots in {float(arrays['seconds']):.0f} s")
        results.append(arrays)
    atomic_write(meta_file, json.dumps(meta, default=str))
    return results, meta


def summarize_setting(results: list[dict], meta: dict, horizon: int) -> dict:
    """``impulse_shape.summarize`` over the slots of every run of one setting."""
    from simfluence_jax.impulse_shape import summarize

    response = np.concatenate([r["response"] for r in results])
    steps = np.concatenate([r["slots"][:, 0] for r in results])
    losses = np.concatenate([np.repeat(r["losses"][None], len(r["slots"]), 0) for r in results])
    summary = summarize(response, steps, losses, results[0]["learning_rates"], horizon=horizon)
    rc = meta.get("runs_config") or {}
    first = np.stack([r["losses"] for r in results])
    summary.update(
        optimizer=rc.get("optimizer"),
        learning_rate=rc.get("learning_rate"),
        optimizer_kwargs=rc.get("optimizer_kwargs"),
        model=rc.get("model"),
        method=rc.get("method"),
        num_runs=len(results),
        loss_change=float(np.mean(first[:, -1] - first[:, 0])),
        measure_seconds=float(sum(float(r["seconds"]) for r in results)),
        seeds=[int(r["seed"]) for r in results],
        slots=[r["slots"].tolist() for r in results],
    )
    return summary


def figure(table: Mapping[str, dict], labels: Mapping[str, str], path: Path) -> None:
    """One column per setting: the mean increment shape (top) and level shape (bottom) with
    their 10-90% bands, against the best geometric fit (and the learning-rate-scaled one)."""
    from matplotlib.figure import Figure

    n = len(table)
    fig = Figure(figsize=(3.2 * n, 5.6))
    axes = fig.subplots(2, n, squeeze=False, sharex=True)
    for c, (name, s) in enumerate(table.items()):
        h = np.asarray(s["mean_shape"])
        k = np.arange(len(h))
        geo = s["mu"] ** k
        geo_lr = np.asarray(s["rate_ratio"]) * s["mu_lr"] ** k
        rows = (("mean_shape", "quantiles", geo, geo_lr), ("level_shape", "level_quantiles",
                np.cumsum(geo), np.cumsum(geo_lr)))  # fmt: skip
        for r, (key, qkey, fit, fit_lr) in enumerate(rows):
            ax = axes[r, c]
            y = np.asarray(s[key])
            ax.fill_between(k, s[qkey]["q10"], s[qkey]["q90"], color="C0", alpha=0.2,
                            label="10-90% of (slot, test)")  # fmt: skip
            ax.plot(k, y, "o-", color="C0", ms=3, label="measured mean")
            ax.plot(k, fit, "--", color="C3", label=f"geometric mu={s['mu']:.2f}")
            if not np.allclose(s["rate_ratio"], 1):
                ax.plot(k, fit_lr, ":", color="C2", label=f"lr-scaled mu={s['mu_lr']:.2f}")
            ax.axhline(0, color="k", lw=0.5)
            lo, hi = min(y.min(), fit.min(), 0), max(y.max(), fit.max())
            pad = 0.25 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
            if r == 0:
                ax.set_title(labels.get(name, name), fontsize=8)
            else:
                ax.set_xlabel("lag k (updates after the example's)")
            ax.legend(fontsize=6)
        axes[0, 0].set_ylabel("increment / lag-0 increment")
        axes[1, 0].set_ylabel("loss effect / lag-0 effect")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _f(x, digits=2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


SHAPE_HEADER = "level at K / lag 0 | level peak / lag 0 (lag) | abs. share after lag 0 | mu"


def _shape_cells(g: Mapping[str, Any]) -> str:
    """The columns of ``SHAPE_HEADER`` for one summary."""
    if g.get("mean_shape") is None or "mu" not in g:
        return "n/a | n/a | n/a | n/a"
    return (
        f"{_f(g['total_over_first'])} | {_f(g['level_peak'])} ({g['level_peak_lag']}) | "
        f"{_f(g['after_fraction_abs'])} | {_f(g['mu'])}"
    )


def render(table: Mapping[str, dict], labels: Mapping[str, str], study: ImpulseStudy) -> str:
    K = study.horizon
    lines = [
        "# Impulse responses under each optimizer",
        "",
        "Exact forward-mode derivatives of every test loss after every step with respect to "
        f"the weight of one training slot; {study.runs} run(s) per setting, lags K = 0..{K}. "
        "Shapes are normalised by the lag-0 increment per (slot, test), sign-aligned and "
        "weighted by |lag-0| (simfluence_jax/impulse_shape.py). Increment: the slot's effect "
        "on one update's loss change; level: its effect on the loss (the cumulative sum). "
        "mu: least-squares geometric fit of the increment shape (lr-scaled: times the mean "
        "learning-rate ratio, the kernel's lr_scaled form).",
        "",
        f"| setting | slots | loss change | {SHAPE_HEADER} | fit rel. rmse | mu (lr-scaled) | "
        "increment peak lag | negative share | lag 1 [q10, q90] | lag 8 [q10, q90] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in table.items():
        q, h = s["quantiles"], s["mean_shape"]
        at = [f"{h[k]:.2f} [{q['q10'][k]:.2f}, {q['q90'][k]:.2f}]" if k < len(h) else "n/a"
              for k in (1, 8)]  # fmt: skip
        lines.append(
            f"| {labels.get(name, name)} | {s['num_slots']} | {_f(s['loss_change'], 3)} | "
            f"{_shape_cells(s)} | {_f(s['mu_rel_rmse'])} | {_f(s['mu_lr'])} | "
            f"{s['peak_lag']} | {_f(s['negative_fraction_abs'])} | {at[0]} | {at[1]} |"
        )
    lines += ["", "## Dependence on the step (thirds of the slots' steps)", "",
              f"| setting | third | steps | {SHAPE_HEADER} |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in table.items():
        for third, g in s["by_step"].items():
            lines.append(
                f"| {labels.get(name, name)} | {third} | {g['steps'][0]}-{g['steps'][-1]} | "
                f"{_shape_cells(g)} |"
            )
    lines += ["", "## Dependence on the test loss before the step (terciles)", "",
              f"| setting | tercile | loss range | mean abs lag-0 | {SHAPE_HEADER} |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in table.items():
        for b, g in s["by_loss"].items():
            lo, hi = g["loss_range"]
            lines.append(
                f"| {labels.get(name, name)} | {b} | {lo:.2f}-{hi:.2f} | {g['lag0_abs']:.2e} | "
                f"{_shape_cells(g)} |"
            )
    lines += ["", "## Per slot: lag-0 size and the level at K against the step", "",
              "| setting | step: mean abs effect at lag 0, at lag K; level at K / lag 0 |",
              "|---|---|"]  # fmt: skip
    for name, s in table.items():
        cells = ", ".join(
            f"{p['step']}: {p['lag0_abs']:.1e}, {p['level_abs']:.1e}; "
            f"{_f(p.get('total_over_first'), 1)}"
            for p in s["per_slot"]
        )
        lines.append(f"| {labels.get(name, name)} | {cells} |")
    lines += ["", "![impulse responses](impulse_responses.png)", ""]
    return "\n".join(lines)


def main(argv=None) -> Path:
    from simfluence_jax.cli import gin_edge

    study, config_text, names = parse(sys.argv[1:] if argv is None else argv)
    chosen = {n: study.settings[n] for n in (names or study.settings)}
    command = "python -m experiments.impulse_responses"
    with gin_edge.claim_output(study.output_dir, command=command, config_text=config_text) as out:
        labels = {n: s.get("label", n) for n, s in chosen.items()}
        table = {}
        for name, setting in chosen.items():
            t0 = time.perf_counter()
            cfg = setting_config(setting, study.runs)
            n = int(setting.get("num_slots", study.num_slots))
            results, meta = measure(name, cfg, study, out, num_slots=n)
            table[name] = summarize_setting(results, meta, study.horizon)
            table[name]["label"] = labels[name]
            s = table[name]
            took = time.perf_counter() - t0
            _log(f"{name}: mu {s['mu']:.2f}, after lag 0 {s['after_fraction']:.2f} ({took:.0f} s)")
        summary = {"study": {k: v for k, v in dataclasses.asdict(study).items()
                             if k != "settings"}, "optimizers": table}  # fmt: skip
        pooled = {n: {k: v for k, v in t.items() if k not in PER_GROUP} for n, t in table.items()}
        common.write_outputs(out, {"impulse_responses.json": summary,
                                   "shapes.json": {**summary, "optimizers": pooled}})  # fmt: skip
        figure(table, labels, out / "impulse_responses.png")
        common.write_outputs(out, {"report.md": render(table, labels, study)})
        _log(f"report written to {out}/report.md")
    return out


if __name__ == "__main__":
    main()
