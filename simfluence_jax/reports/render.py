"""Rendering a report: the same content as Markdown, as JSON and as CSV.

``ReportContent`` is everything a report says, computed once (``reports.writer``); each
renderer here turns it into the text of one file and computes nothing new. JSON is strict
(non-finite numbers become ``null``); the CSV has one row per simulator.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simfluence_jax.metrics import METRICS
from simfluence_jax.reports import plots
from simfluence_jax.reports.attribution import SCORES_FILE, UNCHECKED, AttributionSection
from simfluence_jax.reports.counterfactual import Counterfactual
from simfluence_jax.reports.figures import (
    COUNTERFACTUAL_PNG,
    PER_STEP_PNG,
    TRAJECTORIES_PNG,
    TrajectoryFigure,
)
from simfluence_jax.reports.scoring import (
    DEFAULT_GROUP,
    Row,
    best_by_metric,
    is_diverged,
    is_finite,
    rankable,
)

REPORT_FILE = "report.md"
JSON_FILE = "results.json"
CSV_FILE = "results.csv"
CONFIG_FILE = "operative_config.gin"


@dataclasses.dataclass(frozen=True)
class ReportContent:
    """What a report says.

    Attributes:
      title, date, git_hash, git_dirty: heading and provenance.
      sizes: ``{"R", "T", "B", "N", "M"}`` of the held-out runs.
      setup: ``{label: value}`` lines of "What was run".
      rows: ``{simulator: row}`` in table order (grouped).
      groups: ``{simulator: group}`` for every row; ``show_groups``: whether the caller
        gave groups (the table then has a group column).
      best: ``scoring.best_by_metric`` of the rows; ``exclude_from_best``: rows not ranked.
      curves: ``{simulator: {"mse", "mae": float[T+1]}}`` of the non-diverged simulators.
      notes: sentences listed under the table.
      trajectory: what the trajectory figure shows; ``figures``: the PNG files written.
      attribution: the Attribution section (``reports.attribution``), or ``None``.
      counterfactual, unseen_tables, extra_sections, config_text: as given to
        ``write_report``.
    """

    title: str
    date: str
    git_hash: str
    git_dirty: bool | None
    sizes: Mapping[str, int]
    setup: Mapping[str, Any]
    rows: Mapping[str, Row]
    groups: Mapping[str, str]
    show_groups: bool
    best: Mapping[str, Sequence[str]]
    exclude_from_best: Sequence[str]
    curves: Mapping[str, Mapping[str, np.ndarray]]
    notes: Sequence[str]
    trajectory: TrajectoryFigure
    figures: Sequence[str]
    counterfactual: Counterfactual | None = None
    attribution: AttributionSection | None = None
    unseen_tables: Mapping[str, Mapping[str, Row]] = dataclasses.field(default_factory=dict)
    extra_sections: Sequence[tuple[str, str]] = ()
    config_text: str = ""


# JSON ------------------------------------------------------------------------------------------
def jsonable(x):
    """Plain JSON types; non-finite floats become ``None`` (strict JSON has no NaN)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def json_text(obj) -> str:
    """``obj`` as strict, indented JSON (``jsonable`` first)."""
    return json.dumps(jsonable(obj), indent=1, allow_nan=False)


def render_json(c: ReportContent) -> str:
    """``results.json``: every number of the report."""
    t = c.trajectory
    return json_text({
        "title": c.title,
        "date": c.date,
        "git_hash": c.git_hash,
        "git_dirty": c.git_dirty,
        "sizes": dict(c.sizes),
        "setup": dict(c.setup),
        "metrics": {k: {"label": label, "higher_is_better": h} for k, label, h in METRICS},
        "simulators": {
            n: {
                "group": c.groups[n],
                "metrics": r,
                "diverged": is_diverged(r),
                "per_step_error": dict(c.curves[n]) if n in c.curves else None,
            }
            for n, r in c.rows.items()
        },
        "best": c.best,
        "exclude_from_best": list(c.exclude_from_best),
        "trajectory_figure": {"run": t.run, "test_examples": t.examples,
                              "simulators": t.simulators},
        "counterfactual": c.counterfactual.to_json() if c.counterfactual is not None else None,
        "attribution": c.attribution.to_json() if c.attribution is not None else None,
        "unseen_tables": {h: dict(tab) for h, tab in c.unseen_tables.items()},
        "notes": list(c.notes),
        "figures": list(c.figures),
        "operative_config_file": CONFIG_FILE,
    })  # fmt: skip


# CSV -------------------------------------------------------------------------------------------
def render_csv(c: ReportContent) -> str:
    """``results.csv``: one row per simulator, the metrics' columns then any others."""
    metric_cols = [f"{k}_{s}" for k, _, _ in METRICS for s in ("mean", "std")]
    extra_cols = sorted(
        {k for r in c.rows.values() for k in r} - set(metric_cols) - {"diverged_fraction"}
    )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["simulator", "group", "diverged_fraction", *metric_cols, *extra_cols])
    for n, r in c.rows.items():
        w.writerow([n, c.groups[n], r.get("diverged_fraction", "")]
                   + [r.get(col, "") for col in metric_cols + extra_cols])  # fmt: skip
    return buf.getvalue()


# Markdown --------------------------------------------------------------------------------------
def _cell(row: Row, key: str, *, bold: bool) -> str:
    m, s = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if m is None:
        return "–"
    if not is_finite(m):
        return "diverged" if is_diverged(row) else "n/a"
    text = f"{float(m):.4g} ± {float(s):.2g}" if is_finite(s) else f"{float(m):.4g}"
    return f"**{text}**" if bold else text


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(
    rows: Mapping[str, Row],
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


def _best_sentences(c: ReportContent) -> list[str]:
    """One line per metric: the best simulator(s) and the runner-up, with their means."""

    def who(n):
        g = c.groups.get(n, DEFAULT_GROUP)
        return f"{n} [{g}]" if g != DEFAULT_GROUP else n

    out = []
    for key, label, higher in METRICS:
        if key not in c.best:
            continue
        winners = c.best[key]
        value = float(c.rows[winners[0]][f"{key}_mean"])
        others = rankable(c.rows, key, exclude=[*winners, *c.exclude_from_best])
        names = " and ".join(f"**{who(n)}**" for n in winners)
        text = f"- {'Highest' if higher else 'Lowest'} {label}: {names} at {value:.4g}"
        if others:
            n2 = (max if higher else min)(others, key=others.get)
            text += f"; next: {who(n2)} at {others[n2]:.4g}"
        out.append(text + ".")
    return out


def counterfactual_section(cf: Counterfactual) -> list[str]:
    """The counterfactual in words: the edit, the predicted and the achieved change."""
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
    T, T_edit = len(cf.observed) - 1, len(cf.simulated_edited) - 1
    H = cf.window
    window_pred, window_real = cf.window_changes()
    lines += [
        "",
        f"Changes of this test example's loss: at the final step alone (step {T_edit} of the "
        f"edited run against step {T} of the original; one step, so noisy) and averaged over "
        f"the last {H} steps of each run. Predicted: both trajectories simulated; achieved: "
        "both real.",
        "",
    ]
    if cf.diverged:
        lines.append(f"- The simulated trajectories{sim} diverged; no predicted change is given.")
    else:
        lines.append(
            f"- Predicted change of the final-step loss{sim}: {cf.predicted_change:+.4f} "
            f"(simulated {cf.simulated_original[-1]:.4f} -> {cf.simulated_edited[-1]:.4f}); "
            f"averaged over the last {H} steps: {window_pred:+.4f}."
        )
    if cf.achieved_change is None:
        lines.append("- No real retraining was run on the edited curriculum.")
    else:
        lines.append(
            f"- Achieved change of the final-step loss after retraining for real: "
            f"{cf.achieved_change:+.4f} (observed {cf.observed[-1]:.4f} -> retrained "
            f"{cf.retrained[-1]:.4f}); averaged over the last {H} steps: {window_real:+.4f}."
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
                f"- At the final step the predicted direction "
                f"{'matches' if agree else 'does not match'} the achieved one{ratio}."
            )
    return lines + ["", f"![Counterfactual]({COUNTERFACTUAL_PNG})"]


def _ranked_table(entries, texts: bool) -> list[str]:
    head = "| rank | id | effect |" + (" text |" if texts else "")
    lines = [head, "|---|---|---|" + ("---|" if texts else "")]
    for n, e in enumerate(entries, 1):
        name = f"{e.id}" if str(e.train_id) == str(e.id) else f"{e.id} ({_md_escape(e.train_id)})"
        text = f" {_md_escape(plots.shorten(e.text, 90))} |" if texts else ""
        lines.append(f"| {n} | {name} | {e.effect:+.5f} |{text}")
    return lines


def _verdict_lines(verdict) -> list[str]:
    if verdict is None:
        return [UNCHECKED]
    if isinstance(verdict, Mapping):
        lines = ["Measured against real retraining (as given to this report):", ""]
        for key, value in verdict.items():
            shown = (
                f"{value:.4g}"
                if isinstance(value, float | np.floating) and is_finite(value)
                else value
            )
            lines.append(f"- {_md_escape(key)}: {_md_escape(shown)}")
        return lines
    return [str(verdict).strip()]


def attribution_section(a: AttributionSection) -> list[str]:
    """The Attribution section in words: how the examples and the simulator were chosen,
    two ranked tables per test example, and how far to trust them."""
    texts = any(e.text for t in a.tests for e in (*t.helpful, *t.harmful))
    lines = [
        f"Training examples of the curriculum of held-out run {a.run} (the run of the "
        f"trajectory figure) ranked by **{a.simulator}**, the simulator (controls never) "
        f"with the lowest all-steps MSE here ({a.metric_value:.4g}). Effect: the simulated change "
        f"of the test example's loss, averaged over the last {a.horizon} steps, when every "
        "occurrence of the training example is removed (its slots left empty, the step "
        "structure kept; `attribution.removal_effects`). **Effect > 0: removing it raises the "
        "loss, so it helps; effect < 0: it hurts.** The test examples are those of this run "
        "with the largest drop, the median and the largest rise of the observed loss "
        "L_T - L_0.",
        "",
    ]
    if a.num_unseen:
        lines += [
            f"{a.num_unseen} of the curriculum's {len(a.ids)} training examples never occurred "
            f"in the fitting runs; {a.simulator} has no effect for them and they are not ranked.",
            "",
        ]
    for t in a.tests:
        about = f': "{_md_escape(plots.shorten(t.text, 120))}"' if t.text else ""
        name = "" if str(t.test_id) == str(t.test_index) else f" ({_md_escape(t.test_id)})"
        lines += [
            f"### {', '.join(t.roles).capitalize()}: test example {t.test_index}{name}",
            "",
            f"Test example {t.test_index}{about}. Observed L_T - L_0 = {t.observed_change:+.4f}; "
            f"simulated loss over the last {a.horizon} steps {t.baseline:.4f}."
            + (" Every test loss of this run fell; this one fell least."
               if "largest rise" in t.roles and t.observed_change < 0 else ""),
            "",
        ]  # fmt: skip
        for label, sign, entries in (
            ("Most helpful", "positive", t.helpful),
            ("Most harmful", "negative", t.harmful),
        ):
            lines += [f"{label}:", ""]
            lines += _ranked_table(entries, texts) if entries else [f"(none with a {sign} effect)"]
            lines.append("")
    lines += [
        "### How far to trust this",
        "",
        *_verdict_lines(a.verdict),
        "",
        f"The effects of every training example of this curriculum on these test examples are "
        f'in `{SCORES_FILE}.csv` (read with `pandas.read_csv(path, comment="#")`) and '
        f"`{SCORES_FILE}.npz` (`attribution.load_scores`).",
    ]
    return lines


METRICS_TEXT = (
    "All-steps MSE and MAE: per (held-out run, test example) trajectory, the mean over "
    "steps 1..T of the squared (absolute) error, then mean ± std over trajectories. "
    "Final-step Spearman: per held-out run, Spearman's rho across test examples between "
    "simulated and true final losses, mean ± std over runs. Spearman of the change: the "
    "same for L_T - L_0. Per-example Spearman: per test example, rho across held-out runs "
    "of the final loss, mean ± std over test examples (needs R >= 3). Best values in bold."
)


def _figure_sections(c: ReportContent) -> list[str]:
    md, t, s = [], c.trajectory, c.sizes
    if TRAJECTORIES_PNG in c.figures:
        how = " (spread over the range of true loss change)" if t.spread else ""
        md += [
            "## True vs simulated trajectories",
            "",
            f"Held-out run {t.run}, test examples {t.examples}{how}; simulators "
            f"{', '.join(t.simulators)}.",
            "",
            f"![True vs simulated trajectories]({TRAJECTORIES_PNG})",
            "",
        ]
    if PER_STEP_PNG in c.figures:
        md += [
            "## Per-step error",
            "",
            f"MSE at each step, averaged over the {s['R']} held-out runs and {s['M']} test "
            "examples (log scale).",
            "",
            f"![Per-step MSE]({PER_STEP_PNG})",
            "",
        ]
    return md


def render_markdown(c: ReportContent) -> str:
    """``report.md``: what was run, the table, the best of each metric, the figures, the
    counterfactual, further tables and sections, the operative config and the files."""
    s = c.sizes
    md = [
        f"# {c.title}",
        "",
        f"Generated {c.date} from commit `{c.git_hash}`"
        + (" (with uncommitted changes)" if c.git_dirty else "")
        + ".",
        "",
        "## What was run",
        "",
        f"- held-out runs R = {s['R']}, steps per run T = {s['T']}, batch size B = {s['B']}",
        f"- training pool N = {s['N']}, test examples M = {s['M']}",
        *[f"- {k}: {v}" for k, v in c.setup.items()],
        f"- simulators: {', '.join(c.rows)}",
        "",
        "## Results on the held-out runs",
        "",
        METRICS_TEXT,
        "",
        markdown_table(c.rows, groups=c.groups if c.show_groups else None, best=c.best),
        "",
        *_best_sentences(c),
    ]
    if c.exclude_from_best:
        md.append(f"- Not ranked (reference rows): {', '.join(c.exclude_from_best)}.")
    if c.notes:
        md += ["", "Notes:", ""] + [f"- {n}" for n in c.notes]
    md += [""] + _figure_sections(c)
    if c.attribution is not None:
        md += ["## Attribution", "", *attribution_section(c.attribution), ""]
    if c.counterfactual is not None:
        md += ["## Counterfactual", "", *counterfactual_section(c.counterfactual), ""]
    for heading, t in c.unseen_tables.items():
        t_rows = {str(n): dict(r) for n, r in t.items()}
        md += [f"## {heading}", "", markdown_table(t_rows, best=best_by_metric(t_rows)), ""]
    for heading, body in c.extra_sections:
        md += [f"## {heading}", "", body.rstrip(), ""]
    md += ["## Operative config", ""]
    if c.config_text.strip():
        md += ["```gin", c.config_text.rstrip(), "```"]
    else:
        md.append("No gin configuration was given.")
    md += [
        "",
        "## Files",
        "",
        f"`{JSON_FILE}` (every number, with per-step error curves), `{CSV_FILE}` (one row per "
        f"simulator), `{CONFIG_FILE}`"
        + "".join(f", `{f}`" for f in c.figures)
        + (f", `{SCORES_FILE}.csv`, `{SCORES_FILE}.npz`" if c.attribution is not None else "")
        + ".",
        "",
    ]
    return "\n".join(md)
