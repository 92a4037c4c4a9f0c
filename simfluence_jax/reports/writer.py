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
``attribution_scores.*``    only when simulators are given: ``.csv`` and ``.npz``
                            (``attribution.save_scores``), the simulated removal effect of
                            every training example of one held-out curriculum on the three
                            test examples of the Attribution section
==========================  ===============================================================

With ``simulators``, ``report.md`` has an Attribution section (``reports.attribution``): the
top helpful and harmful training examples of three test examples under the best fitted
simulator, and how far to trust them (``attribution_verdict``, else a sentence saying they
were not checked by retraining here).

It composes three steps, each in its own module: ``scoring`` (the rows, divergence, the best
of each metric; metrics as docs/design.md, section 6, defines them), ``figures`` (what the
figures show, and the PNG files) and ``render`` (the same content as Markdown, JSON and
CSV). A diverged simulator (``rollout.diverged``) is scored like ``evaluation.evaluate``
scores it, marked in the table, and left out of the plots and of the "best" ranking, with a
note.

Files are written one by one, each to a temporary name and renamed into place, and
``report.md`` last: a crash never leaves a half-written file under a final name, and a
``report.md`` is only ever next to the figures and data it refers to.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax.fileio import atomic_write, git_revision, make_dirs, split_revision
from simfluence_jax.reports import attribution, figures, plots, render, scoring
from simfluence_jax.reports.counterfactual import Counterfactual
from simfluence_jax.runs import RunSet


def _check_arguments(rows, preds, heldout, *, groups, plot_simulators, trajectory_run,
                     examples, example_ids, test_texts):  # fmt: skip
    """Raises ``ValueError`` naming the first bad argument; returns the test texts to use."""
    R, _, M = heldout.losses.shape
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
    if example_ids is not None and (not len(example_ids)
                                    or any(not 0 <= int(j) < M for j in example_ids)):  # fmt: skip
        raise ValueError(f"example_ids {list(example_ids)} must be non-empty, in 0..{M - 1}")
    if test_texts is None:
        meta = heldout.metadata.get("test_texts")
        test_texts = meta if isinstance(meta, list) and len(meta) == M else None
    if test_texts is not None and len(test_texts) != M:
        raise ValueError(f"test_texts has {len(test_texts)} entries for M = {M} test examples")
    return test_texts


def _sizes(heldout: RunSet) -> dict[str, int]:
    R, T1, M = heldout.losses.shape
    return {"R": R, "T": T1 - 1, "B": heldout.batch_size, "N": heldout.num_train, "M": M}


def _provenance() -> dict:
    """The date (UTC) and the code's commit, with whether it had uncommitted changes."""
    git_hash, dirty = split_revision(git_revision())
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {"date": date, "git_hash": git_hash, "git_dirty": dirty}


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
    simulators: Mapping[str, Any] | None = None,
    attribution_verdict: str | Mapping[str, Any] | None = None,
) -> Path:
    """Writes a report of simulators evaluated on held-out runs into ``out_dir`` (created;
    files of an earlier report there are replaced, other files left alone) and returns it.

    Args:
      heldout: the held-out runs, ``losses: float32[R, T+1, M]``.
      predictions: ``{simulator: float[R, T+1, M]}`` rollouts of the held-out curricula
        from their observed L_0 (``evaluation.predict``); NaN or inf marks divergence.
      table: ``{simulator: row}`` with ``metrics.summary`` keys (``evaluation.evaluate_all``),
        kept as given; rows may name simulators without predictions (not plotted).
      groups: ``{simulator: label}`` (``"fitted"``, ``"control"``, ...), the table's order.
      unseen_tables, extra_sections: ``{heading: {simulator: row}}`` further tables and
        ``[(heading, markdown)]`` sections. config_text: the operative gin config.
      test_texts: ``[M]`` texts (default: ``heldout.metadata["test_texts"]``). setup:
        ``{label: value}`` lines of "What was run". exclude_from_best: rows never ranked.
      examples, example_ids, trajectory_run, plot_simulators: the trajectory figure
        (``figures.choose_trajectory_figure``).
      simulators: ``{name: simulator}`` the fitted simulators of the rows; given, the report
        has an Attribution section on held-out run ``trajectory_run`` under the best of them
        (``reports.attribution``; one ``attribution.removal_effects`` call).
      attribution_verdict: what real retraining measured about such effects (the
        counterfactual benchmark's numbers), a text or ``{name: value}``, printed under the
        Attribution section.

    Raises:
      ValueError: naming the problem: predictions of the wrong shape, group labels for
        unknown simulators, nothing to report, out-of-range example or run indices.
    """
    preds = scoring.check_predictions(predictions, heldout)
    rows = scoring.score_rows(preds, heldout, table)
    test_texts = _check_arguments(
        rows, preds, heldout, groups=groups, plot_simulators=plot_simulators,
        trajectory_run=trajectory_run, examples=examples, example_ids=example_ids,
        test_texts=test_texts,
    )  # fmt: skip
    group_of = {n: str((groups or {}).get(n, scoring.DEFAULT_GROUP)) for n in rows}
    rows = {n: rows[n] for n in scoring.order_by_group(list(rows), group_of)}
    trajectory, figure_notes = figures.choose_trajectory_figure(
        rows, group_of, preds, heldout, run=trajectory_run, examples=examples,
        example_ids=example_ids, simulators=plot_simulators,
    )  # fmt: skip
    best = scoring.best_by_metric(rows, exclude=exclude_from_best)
    section, section_notes = None, []
    if simulators:
        section, section_notes = attribution.attribution_section(
            heldout, simulators, rows, group_of, run=trajectory_run, exclude=exclude_from_best,
            test_texts=test_texts, verdict=attribution_verdict,
        )  # fmt: skip
    out = make_dirs(out_dir)
    curves = scoring.error_curves(preds, heldout, rows)
    written = figures.write_figures(
        out, heldout=heldout, predictions=preds, trajectory=trajectory, curves=curves,
        styles=plots.simulator_styles(list(rows), group_of), counterfactual=counterfactual,
        test_texts=test_texts,
    )  # fmt: skip
    content = render.ReportContent(
        title=title, **_provenance(), sizes=_sizes(heldout), setup=dict(setup or {}), rows=rows,
        groups=group_of, show_groups=bool(groups), curves=curves, trajectory=trajectory,
        best=best, exclude_from_best=list(exclude_from_best), figures=written,
        notes=scoring.divergence_notes(rows) + figure_notes + section_notes,
        counterfactual=counterfactual, attribution=section,
        unseen_tables=dict(unseen_tables or {}), extra_sections=list(extra_sections or ()),
        config_text=config_text,
    )  # fmt: skip
    _write_files(out, content)
    return out


def _write_files(out: Path, content: render.ReportContent) -> None:
    """The data files, the config, then ``report.md``; figures of an earlier report that
    this one does not have are removed."""
    atomic_write(out / render.JSON_FILE, render.render_json(content))
    atomic_write(out / render.CSV_FILE, render.render_csv(content))
    if content.attribution is not None:
        attribution.save_section_scores(out, content.attribution)
    else:
        for suffix in (".npz", ".csv"):
            (out / f"{attribution.SCORES_FILE}{suffix}").unlink(missing_ok=True)
    no_config = "# No gin configuration was given for this report.\n"
    text = content.config_text
    atomic_write(out / render.CONFIG_FILE, text if text.strip() else no_config)
    atomic_write(out / render.REPORT_FILE, render.render_markdown(content))
    for stale in set(figures.FIGURES) - set(content.figures):
        (out / stale).unlink(missing_ok=True)
