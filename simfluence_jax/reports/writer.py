"""Writing a report: the paper's table, plots, a counterfactual, and every number on disk.

``write_report`` turns held-out runs and each simulator's predicted trajectories into a
folder that a reader can open without running anything:

==========================  ===============================================================
``report.md``               Markdown: what was run, the results table, which simulator is
                            best on each metric (computed), figures, the counterfactual,
                            the operative config and the git hash
``results.json``            every number: the table, per-step error curves, the
                            counterfactual's trajectories; non-finite numbers as ``null``
``results.csv``             one row per simulator
``operative_config.gin``    the gin config the numbers came from
``trajectories.png``        true vs simulated trajectories of a few test examples
``per_step_error.png``      per-step MSE of every simulator (log scale)
``counterfactual.png``      only when a counterfactual is given
==========================  ===============================================================

Metrics are those of ``simfluence_jax.metrics`` (DESIGN.md section 6, the GPTfluence
definitions). A simulator whose rollout diverges (non-finite, or beyond
``rollout.DIVERGENCE_FACTOR`` times the largest |L_0|) is scored like ``evaluation.evaluate``
scores it (non-finite values count as +inf, so its errors are infinite), marked diverged in
the table, left out of the plots and of the "best" ranking, with a note.

Files are written one by one, each to a temporary name and renamed into place, and
``report.md`` last: a crash never leaves a half-written file under a final name, and a
``report.md`` is only ever next to the figures and data it refers to.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax import evaluation, metrics
from simfluence_jax.io import atomic_write, git_revision, split_revision
from simfluence_jax.reports import plots
from simfluence_jax.reports.counterfactual import Counterfactual
from simfluence_jax.rollout import DIVERGENCE_FACTOR, diverged
from simfluence_jax.runs import RunSet

#: (key in ``metrics.summary``, label in the paper's terms, higher is better).
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("mse", "all-steps MSE", False),
    ("mae", "all-steps MAE", False),
    ("final_spearman", "final-step Spearman", True),
    ("change_spearman", "Spearman of the change", True),
    ("per_example_spearman", "per-example Spearman", True),
)

REPORT_FILE = "report.md"
JSON_FILE = "results.json"
CSV_FILE = "results.csv"
CONFIG_FILE = "operative_config.gin"
TRAJECTORIES_PNG = "trajectories.png"
PER_STEP_PNG = "per_step_error.png"
COUNTERFACTUAL_PNG = "counterfactual.png"
FIGURES = (TRAJECTORIES_PNG, PER_STEP_PNG, COUNTERFACTUAL_PNG)

#: At most this many simulators are drawn in the trajectory figure by default.
MAX_TRAJECTORY_LINES = 6
DEFAULT_GROUP = "other"


# Scoring -------------------------------------------------------------------------------
def score_predictions(pred, heldout: RunSet) -> dict[str, float]:
    """``metrics.summary`` of ``pred: float[R, T+1, M]`` against the held-out losses, plus
    ``diverged_fraction`` (share of (run, test example) trajectories that diverged).

    Non-finite predictions count as +inf (``evaluation.score``, which this is).
    """
    return evaluation.score(pred, heldout)


def _check_predictions(predictions, heldout: RunSet) -> dict[str, np.ndarray]:
    if not isinstance(heldout, RunSet):
        raise ValueError(f"heldout must be a RunSet, got {type(heldout).__name__}")
    out = {}
    for name, p in (predictions or {}).items():
        arr = np.asarray(p)
        if arr.shape != heldout.losses.shape:
            raise ValueError(
                f"predictions[{name!r}] has shape {arr.shape} but the held-out losses have "
                f"shape {heldout.losses.shape} ([R, T+1, M])"
            )
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"predictions[{name!r}] must be numeric, got dtype {arr.dtype}")
        out[str(name)] = arr
    return out


def _order_by_group(names: Sequence[str], groups: Mapping[str, str]) -> list[str]:
    """Names grouped by their group, groups in order of first appearance, stable within."""
    order: list[str] = []
    for n in names:
        if groups[n] not in order:
            order.append(groups[n])
    return sorted(names, key=lambda n: order.index(groups[n]))


def _is_finite(x) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def best_by_metric(
    rows: Mapping[str, Mapping[str, float]], *, exclude: Sequence[str] = ()
) -> dict[str, list[str]]:
    """``{metric: [names]}``, the simulator(s) with the best mean on each metric (lowest
    error, highest Spearman), all names in case of a tie. Rows with a positive
    ``diverged_fraction``, rows named in ``exclude`` and non-finite values are skipped; a
    metric no row has is left out."""
    best = {}
    for key, _, higher in METRICS:
        vals = {
            n: float(r[f"{key}_mean"])
            for n, r in rows.items()
            if n not in exclude
            and not r.get("diverged_fraction", 0.0) > 0
            and _is_finite(r.get(f"{key}_mean"))
        }
        if not vals:
            continue
        top = max(vals.values()) if higher else min(vals.values())
        best[key] = [n for n, v in vals.items() if v == top]
    return best


# Writing -----------------------------------------------------------------------------------
def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())


def _jsonable(x):
    """Plain JSON types; non-finite floats become ``None`` (strict JSON has no NaN)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _cell(row: Mapping[str, float], key: str, *, bold: bool) -> str:
    m, s = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if m is None:
        return "–"
    if not _is_finite(m):
        return "diverged" if row.get("diverged_fraction", 0.0) > 0 else "n/a"
    text = f"{float(m):.4g} ± {float(s):.2g}" if _is_finite(s) else f"{float(m):.4g}"
    return f"**{text}**" if bold else text


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(
    rows: Mapping[str, Mapping[str, float]],
    *,
    groups: Mapping[str, str] | None = None,
    best: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """A Markdown table of the paper's metrics (mean ± std) with a group column when groups
    are given; the best value of each column (``best``) in bold, diverged rows marked."""
    keys = [(k, label) for k, label, _ in METRICS if any(f"{k}_mean" in r for r in rows.values())]
    head = ["simulator"] + (["group"] if groups else []) + [label for _, label in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        frac = row.get("diverged_fraction", 0.0)
        label = _md_escape(name) + (f" (diverged: {frac:.1%})" if frac > 0 else "")
        cells = [label] + ([_md_escape(groups.get(name, DEFAULT_GROUP))] if groups else [])
        cells += [_cell(row, k, bold=name in (best or {}).get(k, ())) for k, _ in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best_sentences(rows, best, groups, exclude) -> list[str]:
    """One line per metric: the best simulator(s) and the runner-up, with their means."""

    def who(n):
        g = groups.get(n, DEFAULT_GROUP)
        return f"{n} [{g}]" if g != DEFAULT_GROUP else n

    out = []
    for key, label, higher in METRICS:
        if key not in best:
            continue
        winners = best[key]
        value = float(rows[winners[0]][f"{key}_mean"])
        others = {
            n: float(r[f"{key}_mean"])
            for n, r in rows.items()
            if n not in winners
            and n not in exclude
            and not r.get("diverged_fraction", 0.0) > 0
            and _is_finite(r.get(f"{key}_mean"))
        }
        names = " and ".join(f"**{who(n)}**" for n in winners)
        text = f"- {'Highest' if higher else 'Lowest'} {label}: {names} at {value:.4g}"
        if others:
            n2 = (max if higher else min)(others, key=others.get)
            text += f"; next: {who(n2)} at {others[n2]:.4g}"
        out.append(text + ".")
    return out


def _choose_examples(true_run: np.ndarray, k: int) -> list[int]:
    """``k`` test examples spanning the range of the true loss change L_T - L_0."""
    change = true_run[-1] - true_run[0]
    order = np.argsort(change, kind="stable")
    k = min(k, order.size)
    picks = np.unique(np.round(np.linspace(0, order.size - 1, k)).astype(int))
    return [int(order[i]) for i in picks]


def _choose_plotted(names, rows, groups, limit) -> list[str]:
    """All names if at most ``limit``; else the lowest-MSE simulator of each group, then the
    rest by MSE, up to ``limit``, shown in their table order."""
    if len(names) <= limit:
        return list(names)

    def mse(n):
        v = rows[n].get("mse_mean")
        return float(v) if _is_finite(v) else math.inf

    chosen: list[str] = []
    for g in dict.fromkeys(groups[n] for n in names):
        members = [n for n in names if groups[n] == g]
        chosen.append(min(members, key=mse))
    for n in sorted(names, key=mse):
        if n not in chosen:
            chosen.append(n)
    chosen = chosen[:limit]
    return [n for n in names if n in chosen]


def _counterfactual_section(cf: Counterfactual) -> list[str]:
    sim = f" by **{cf.simulator}**" if cf.simulator else ""
    run = f" of held-out run {cf.run_index}" if cf.run_index is not None else ""
    lines = [
        f"Test example {cf.test_index}"
        + (f': "{plots.shorten(cf.test_text, 120)}"' if cf.test_text else "")
        + ".",
        "",
        f"Edit: the curriculum{run} without the {len(cf.removed_ids)} training example(s) "
        f"{list(cf.removed_ids)}" + (f" ({cf.description})" if cf.description else "") + ".",
    ]
    if cf.removed_texts:
        lines += [""] + [
            f'- id {i}: "{plots.shorten(t, 100)}"' for i, t in zip(cf.removed_ids, cf.removed_texts)
        ]
    lines.append("")
    if cf.diverged:
        lines.append(f"- The simulated trajectories{sim} diverged; no predicted change is given.")
    else:
        lines.append(
            f"- Predicted change of the final loss{sim}: {cf.predicted_change:+.4f} (simulated "
            f"{cf.simulated_original[-1]:.4f} -> {cf.simulated_edited[-1]:.4f})."
        )
    if cf.achieved_change is not None:
        lines.append(
            f"- Achieved change after retraining for real: {cf.achieved_change:+.4f} (observed "
            f"{cf.observed[-1]:.4f} -> retrained {cf.retrained[-1]:.4f})."
        )
        if not cf.diverged:
            agree = np.sign(cf.predicted_change) == np.sign(cf.achieved_change)
            ratio = (
                f"; the prediction is {cf.predicted_change / cf.achieved_change:.2f} times the "
                "achieved change"
                if cf.achieved_change != 0
                else ""
            )
            lines.append(
                f"- The predicted direction {'matches' if agree else 'does not match'} the "
                f"achieved one{ratio}."
            )
    else:
        lines.append("- No real retraining was run on the edited curriculum.")
    lines += ["", f"![Counterfactual]({COUNTERFACTUAL_PNG})"]
    return lines


def write_report(
    out_dir: str | os.PathLike,
    *,
    heldout: RunSet,
    predictions: Mapping[str, np.ndarray],
    table: Mapping[str, Mapping[str, float]] | None = None,
    groups: Mapping[str, str] | None = None,
    counterfactual: Counterfactual | None = None,
    unseen_tables: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    extra_sections: Sequence[tuple[str, str]] | None = None,
    config_text: str = "",
    title: str = "simfluence_jax report",
    test_texts: Sequence[str] | None = None,
    examples: int = 4,
    example_ids: Sequence[int] | None = None,
    trajectory_run: int = 0,
    plot_simulators: Sequence[str] | None = None,
    setup: Mapping[str, Any] | None = None,
    exclude_from_best: Sequence[str] = (),
) -> Path:
    """Writes a report of simulators evaluated on held-out runs into ``out_dir``.

    Args:
      out_dir: output folder (created). Files of an earlier report there are replaced one
        by one; other files are left alone.
      heldout: the held-out runs, ``losses: float32[R, T+1, M]``.
      predictions: ``{simulator: float[R, T+1, M]}`` rollouts of the held-out curricula
        from their observed L_0 (``evaluation.predict``). NaN or inf marks divergence.
      table: ``{simulator: row}`` with ``metrics.summary`` keys (``mse_mean``, ...,
        optionally ``diverged_fraction``), e.g. from ``evaluation.evaluate_all``; rows may
        name simulators without predictions (they get no plot). Simulators of
        ``predictions`` missing from it are scored with ``score_predictions``.
      groups: ``{simulator: label}``, e.g. ``"fitted"``, ``"control"``, ``"gradient
        baseline (raw)"``; rows are ordered by group. Unknown names raise.
      counterfactual: one counterfactual to plot and quantify.
      unseen_tables: ``{heading: {simulator: row}}`` further tables (e.g. scores on
        training examples never seen in the fitting runs), each under its own heading.
      extra_sections: ``[(heading, markdown)]`` appended before the config.
      config_text: the operative gin config (saved as ``operative_config.gin``).
      title: the report's title.
      test_texts: ``[M]`` test texts (default: ``heldout.metadata["test_texts"]`` if there).
      examples: number of test examples in the trajectory figure (default picks spread
        over the range of true loss change on ``trajectory_run``).
      example_ids: explicit test examples for the trajectory figure.
      trajectory_run: which held-out run the trajectory figure shows.
      plot_simulators: simulators drawn in the trajectory figure (default: all, or at most
        6 chosen as the best of each group by MSE, then the best overall).
      setup: ``{label: value}`` lines added to "What was run" (fitting runs, model, ...).
      exclude_from_best: rows (e.g. a known-truth reference) not ranked as best.

    Returns:
      the output folder, holding ``report.md``, ``results.json``, ``results.csv``,
      ``operative_config.gin``, ``trajectories.png``, ``per_step_error.png`` and, with a
      counterfactual, ``counterfactual.png``.

    Raises:
      ValueError: naming the problem, for predictions of the wrong shape, group labels for
        unknown simulators, nothing to report, or out-of-range example or run indices.
    """
    preds = _check_predictions(predictions, heldout)
    R, T1, M = heldout.losses.shape
    rows: dict[str, dict[str, float]] = {str(n): dict(r) for n, r in (table or {}).items()}
    for name, p in preds.items():
        if name not in rows:
            rows[name] = score_predictions(p, heldout)
        else:
            # A given row keeps its numbers; divergence is always read off the predictions.
            frac = float(diverged(p, heldout.L0).mean())
            rows[name]["diverged_fraction"] = max(frac, rows[name].get("diverged_fraction", 0.0))
    if not rows:
        raise ValueError("nothing to report: predictions and table are both empty")
    unknown = sorted(set(groups or {}) - set(rows))
    if unknown:
        raise ValueError(f"groups names simulators not in the report: {unknown}")
    unknown = sorted(set(plot_simulators or ()) - set(preds))
    if unknown:
        raise ValueError(f"plot_simulators names simulators without predictions: {unknown}")
    if not 0 <= trajectory_run < R:
        raise ValueError(f"trajectory_run {trajectory_run} out of range for {R} held-out runs")
    if example_ids is None and examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    if example_ids is not None:
        bad = [j for j in example_ids if not 0 <= int(j) < M]
        if bad or not len(example_ids):
            raise ValueError(f"example_ids {list(example_ids)} must be non-empty, in 0..{M - 1}")
    group_of = {n: str((groups or {}).get(n, DEFAULT_GROUP)) for n in rows}
    names = _order_by_group(list(rows), group_of)
    rows = {n: rows[n] for n in names}
    if test_texts is None:
        meta_texts = heldout.metadata.get("test_texts")
        if isinstance(meta_texts, list) and len(meta_texts) == M:
            test_texts = meta_texts
    if test_texts is not None and len(test_texts) != M:
        raise ValueError(f"test_texts has {len(test_texts)} entries for M = {M} test examples")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_diverged = {n: rows[n].get("diverged_fraction", 0.0) > 0 for n in names}
    best = best_by_metric(rows, exclude=exclude_from_best)
    curves = {
        n: metrics.per_step_error(preds[n], heldout.losses)
        for n in names
        if n in preds and not is_diverged[n]
    }
    styles = plots.simulator_styles(names, group_of)
    notes: list[str] = []
    for n in names:
        if is_diverged[n]:
            frac = rows[n]["diverged_fraction"]
            notes.append(
                f"{n} diverged on {frac:.1%} of the held-out trajectories (non-finite, or above "
                f'{DIVERGENCE_FACTOR:g} x max |L_0|): its non-finite errors read "diverged", '
                "and it is left out of the figures and of the ranking."
            )

    # Figures -------------------------------------------------------------------------------
    written: list[str] = []
    plottable = [n for n in names if n in preds and not is_diverged[n]]
    if plot_simulators is not None:
        dropped = [n for n in plot_simulators if is_diverged[n]]
        plottable = [n for n in plottable if n in plot_simulators]
        notes += [f"{n} was asked for in the trajectory figure but diverged." for n in dropped]
    else:
        plottable = _choose_plotted(plottable, rows, group_of, MAX_TRAJECTORY_LINES)
    true_run = heldout.losses[trajectory_run]
    if example_ids is None:
        shown = _choose_examples(true_run, examples)
    else:
        shown = [int(j) for j in example_ids]
    if plottable:
        fig = plots.plot_trajectories(
            true_run,
            {n: preds[n][trajectory_run] for n in plottable},
            examples=shown,
            texts=test_texts,
            title=f"True vs simulated test-loss trajectories (held-out run {trajectory_run})",
            styles=styles,
        )
        _save_figure(fig, out / TRAJECTORIES_PNG)
        written.append(TRAJECTORIES_PNG)
    if curves:
        fig = plots.plot_per_step_error(
            {n: c["mse"] for n, c in curves.items()},
            title=f"Per-step MSE on {R} held-out runs x {M} test examples",
            styles=styles,
        )
        _save_figure(fig, out / PER_STEP_PNG)
        written.append(PER_STEP_PNG)
    if counterfactual is not None:
        _save_figure(plots.plot_counterfactual(counterfactual), out / COUNTERFACTUAL_PNG)
        written.append(COUNTERFACTUAL_PNG)

    # Data files ----------------------------------------------------------------------------
    git_hash, dirty = split_revision(git_revision())
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    sizes = {
        "R": R,
        "T": T1 - 1,
        "B": heldout.batch_size,
        "N": heldout.num_train,
        "M": M,
    }
    results = {
        "title": title,
        "date": date,
        "git_hash": git_hash,
        "git_dirty": dirty,
        "sizes": sizes,
        "setup": dict(setup or {}),
        "metrics": {k: {"label": label, "higher_is_better": h} for k, label, h in METRICS},
        "simulators": {
            n: {
                "group": group_of[n],
                "metrics": rows[n],
                "diverged": is_diverged[n],
                "per_step_error": ({k: v for k, v in curves[n].items()} if n in curves else None),
            }
            for n in names
        },
        "best": best,
        "exclude_from_best": list(exclude_from_best),
        "trajectory_figure": {
            "run": trajectory_run,
            "test_examples": shown,
            "simulators": plottable,
        },
        "counterfactual": counterfactual.to_json() if counterfactual is not None else None,
        "unseen_tables": {h: dict(t) for h, t in (unseen_tables or {}).items()},
        "notes": notes,
        "figures": written,
        "operative_config_file": CONFIG_FILE,
    }
    atomic_write(out / JSON_FILE, json.dumps(_jsonable(results), indent=1, allow_nan=False))

    metric_cols = [f"{k}_{s}" for k, _, _ in METRICS for s in ("mean", "std")]
    extra_cols = sorted(
        {k for r in rows.values() for k in r} - set(metric_cols) - {"diverged_fraction"}
    )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["simulator", "group", "diverged_fraction", *metric_cols, *extra_cols])
    for n in names:
        r = rows[n]
        w.writerow([n, group_of[n], r.get("diverged_fraction", "")]
                   + [r.get(c, "") for c in metric_cols + extra_cols])  # fmt: skip
    atomic_write(out / CSV_FILE, buf.getvalue())
    atomic_write(
        out / CONFIG_FILE,
        config_text
        if config_text.strip()
        else "# No gin configuration was given for this report.\n",
    )

    # Markdown ------------------------------------------------------------------------------
    show_groups = bool(groups)
    md = [f"# {title}", ""]
    md += [
        f"Generated {date} from commit `{git_hash}`"
        + (" (with uncommitted changes)" if dirty else "")
        + ".",
        "",
        "## What was run",
        "",
        f"- held-out runs R = {R}, steps per run T = {T1 - 1}, batch size B = {heldout.batch_size}",
        f"- training pool N = {heldout.num_train}, test examples M = {M}",
    ]
    md += [f"- {k}: {v}" for k, v in (setup or {}).items()]
    md += [f"- simulators: {', '.join(names)}", ""]
    md += [
        "## Results on the held-out runs",
        "",
        "All-steps MSE and MAE: per (held-out run, test example) trajectory, the mean over "
        "steps 1..T of the squared (absolute) error, then mean ± std over trajectories. "
        "Final-step Spearman: per held-out run, Spearman's rho across test examples between "
        "simulated and true final losses, mean ± std over runs. Spearman of the change: the "
        "same for L_T - L_0. Per-example Spearman: per test example, rho across held-out runs "
        "of the final loss, mean ± std over test examples (needs R >= 3). Best values in bold.",
        "",
        markdown_table(rows, groups=group_of if show_groups else None, best=best),
        "",
    ]
    md += _best_sentences(rows, best, group_of, exclude_from_best)
    if exclude_from_best:
        md.append(f"- Not ranked (reference rows): {', '.join(exclude_from_best)}.")
    if notes:
        md += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    md.append("")
    if TRAJECTORIES_PNG in written:
        md += [
            "## True vs simulated trajectories",
            "",
            f"Held-out run {trajectory_run}, test examples {shown}"
            + ("" if example_ids is not None else " (spread over the range of true loss change)")
            + f"; simulators {', '.join(plottable)}.",
            "",
            f"![True vs simulated trajectories]({TRAJECTORIES_PNG})",
            "",
        ]
    if PER_STEP_PNG in written:
        md += [
            "## Per-step error",
            "",
            f"MSE at each step, averaged over the {R} held-out runs and {M} test examples "
            "(log scale).",
            "",
            f"![Per-step MSE]({PER_STEP_PNG})",
            "",
        ]
    if counterfactual is not None:
        md += ["## Counterfactual", ""]
        md += _counterfactual_section(counterfactual) + [""]
    for heading, t in (unseen_tables or {}).items():
        t_rows = {str(n): dict(r) for n, r in t.items()}
        md += [f"## {heading}", "", markdown_table(t_rows, best=best_by_metric(t_rows)), ""]
    for heading, body in extra_sections or ():
        md += [f"## {heading}", "", body.rstrip(), ""]
    md += ["## Operative config", ""]
    if config_text.strip():
        md += ["```gin", config_text.rstrip(), "```"]
    else:
        md.append("No gin configuration was given.")
    md += [
        "",
        "## Files",
        "",
        f"`{JSON_FILE}` (every number, with per-step error curves), `{CSV_FILE}` (one row per "
        f"simulator), `{CONFIG_FILE}`" + "".join(f", `{f}`" for f in written) + ".",
        "",
    ]
    atomic_write(out / REPORT_FILE, "\n".join(md))
    for stale in set(FIGURES) - set(written):
        (out / stale).unlink(missing_ok=True)
    return out
