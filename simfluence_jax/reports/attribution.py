"""The report's Attribution section: which training examples help or hurt three test examples.

On the curriculum of one held-out run (the run of the trajectory figure), three test examples
are chosen from their *observed* change ``L_T - L_0``: the largest drop, the median (the
``(M-1)//2``-th in ascending order, the lower median) and the largest rise. For each, the
``TOP_K`` most helpful (largest positive effect) and most harmful (most negative) training
examples are ranked by one ``attribution.removal_effects`` call under the best fitted
simulator: the lowest all-steps MSE on the held-out runs (the report's first metric);
controls, reference rows (``exclude_from_best``), diverged rows and rows without a simulator
are never chosen.

An effect is the simulated change of the test loss, averaged over the last
``min(HORIZON, T)`` steps, when every occurrence of the training example is removed from the
curriculum with its step structure kept (``repack=False``). Sign: ``> 0`` means removing it
raises the loss, i.e. it helps; ``< 0``: it hurts. Ids the simulator never saw in its fit have
no effect (NaN) and are never ranked.

The effects are simulated, not retrained: how far to trust them is what the counterfactual
benchmark measures (``experiments/README.md``, "Counterfactual benchmark"). A caller that has
its numbers passes them as ``verdict`` (a text, or ``{name: value}``); the section prints them,
and otherwise says that nothing here was checked by retraining.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from simfluence_jax import attribution
from simfluence_jax.reports.scoring import Row, rankable
from simfluence_jax.rollouts import UnseenExampleWarning
from simfluence_jax.runs import RunSet

#: Training examples listed per direction and test example.
TOP_K = 5
#: Steps averaged at the end of the run (fewer when the run has fewer steps).
HORIZON = 8
#: The metric the simulator is chosen by (a key of ``metrics.METRICS``; lower is better).
METRIC = "mse"
#: Groups never chosen to attribute with.
EXCLUDED_GROUPS = ("control",)
#: Roles of the three test examples, in the section's order.
ROLES = ("largest drop", "median change", "largest rise")
#: ``save_scores`` base name of the three test examples' scores (``.npz`` and ``.csv``).
SCORES_FILE = "attribution_scores"

UNCHECKED = (
    "These are simulated effects: this report has not checked them by retraining (the "
    "Counterfactual section, when present, retrains one group edit of one test example). How "
    "well removal effects of this kind match real retraining (correlation and slope of "
    "achieved on predicted change, sign agreement, the payoff of removing the top-k helpful "
    "examples) is measured by the counterfactual benchmark: see `experiments/README.md`, "
    '"Counterfactual benchmark".'
)


@dataclasses.dataclass(frozen=True)
class Ranked:
    """One ranked training example: pool index ``id``, its name ``train_id``, its text ("" if
    unknown) and its simulated removal effect."""

    id: int
    train_id: Any
    text: str
    effect: float


@dataclasses.dataclass(frozen=True)
class TestAttribution:
    """One chosen test example and its ranked training examples.

    Attributes:
      roles: why it was chosen (``ROLES``; more than one when M < 3 makes choices coincide).
      test_index: column j of the held-out losses; ``test_id`` its name, ``text`` its text.
      observed_change: the observed ``L_T - L_0`` it was chosen by.
      baseline: the simulated loss of the unedited curriculum over the horizon window.
      helpful, harmful: the ranked examples with a positive (negative) effect, at most
        ``TOP_K``, largest (most negative) first.
    """

    roles: tuple[str, ...]
    test_index: int
    test_id: Any
    text: str
    observed_change: float
    baseline: float
    helpful: tuple[Ranked, ...]
    harmful: tuple[Ranked, ...]


@dataclasses.dataclass(frozen=True)
class AttributionSection:
    """What the Attribution section says.

    Attributes:
      simulator: the simulator attributed with; ``metric``: the metric it was chosen by and
        ``metric_value`` its mean.
      run: the held-out run whose curriculum is edited; ``horizon``: steps averaged.
      tests: the chosen test examples.
      ids: ``int32[K]`` the curriculum's distinct training ids; ``scores: float32[K, len(tests)]``
        their effects on the chosen test examples (NaN: never seen by the simulator).
      train_ids, test_ids, train_texts: the names (and texts, or ``None``) for the scores file.
      num_unseen: ids of the curriculum the simulator never saw (not ranked).
      verdict: what the caller measured about such effects (text or ``{name: value}``), or
        ``None``.
    """

    simulator: str
    metric: str
    metric_value: float
    run: int
    horizon: int
    tests: tuple[TestAttribution, ...]
    ids: np.ndarray
    scores: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    train_texts: list[str] | None
    num_unseen: int
    verdict: str | Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        def ranked(entries):
            return [dataclasses.asdict(e) for e in entries]

        return {
            "simulator": self.simulator,
            "chosen_by": {"metric": self.metric, "value": self.metric_value},
            "run": self.run,
            "horizon": self.horizon,
            "repack": False,
            "sign_convention": "effect > 0: removing the training example raises the test "
            "loss (it helps); effect < 0: it hurts",
            "test_examples": [
                {
                    "roles": list(t.roles),
                    "test_index": t.test_index,
                    "test_id": t.test_id,
                    "text": t.text,
                    "observed_change": t.observed_change,
                    "baseline": t.baseline,
                    "helpful": ranked(t.helpful),
                    "harmful": ranked(t.harmful),
                }  # fmt: skip
                for t in self.tests
            ],
            "num_candidates": len(self.ids),
            "num_unseen": self.num_unseen,
            "scores_files": [f"{SCORES_FILE}.npz", f"{SCORES_FILE}.csv"],
            "verdict": self.verdict,
        }


def choose_test_examples(observed: np.ndarray) -> list[tuple[tuple[str, ...], int]]:
    """``[(roles, j)]``: the test examples of one observed run (``float[T+1, M]``) with the
    largest drop, the median and the largest rise of ``L_T - L_0`` (ties: the lower index;
    the median is the ``(M-1)//2``-th in ascending order); one entry per distinct j."""
    change = observed[-1] - observed[0]
    order = np.argsort(change, kind="stable")
    picks = (order[0], order[(len(order) - 1) // 2], order[-1])
    out: dict[int, list[str]] = {}
    for role, j in zip(ROLES, picks):
        out.setdefault(int(j), []).append(role)
    return [(tuple(roles), j) for j, roles in out.items()]


def choose_simulator(
    rows: Mapping[str, Row],
    groups: Mapping[str, str],
    simulators: Mapping[str, Any],
    *,
    exclude: Sequence[str] = (),
) -> str | None:
    """The simulator with the lowest mean ``METRIC`` among the rows that may be ranked
    (``scoring.rankable``), have a simulator and are not in ``EXCLUDED_GROUPS``; the first in
    table order on a tie; ``None`` if there is none."""
    skip = [n for n in rows if n not in simulators or groups.get(n) in EXCLUDED_GROUPS]
    vals = rankable(rows, METRIC, exclude=[*exclude, *skip])
    return min(vals, key=vals.get) if vals else None


def _ranked(effects, j, direction, names, texts) -> tuple[Ranked, ...]:
    """``attribution.top`` of test example j, keeping only effects of the direction's sign
    (a "helpful" example with a negative effect would hurt), so possibly fewer than TOP_K."""
    k = min(TOP_K, int(np.isfinite(effects.delta[:, j]).sum()))
    if k == 0:
        return ()
    ids, delta = attribution.top(effects, j, k=k, direction=direction)
    keep = delta > 0 if direction == "helpful" else delta < 0
    return tuple(
        Ranked(int(i), names[i].item(), texts[i] if texts else "", float(d))
        for i, d in zip(ids[keep], delta[keep])
    )


def _num_unseen(sim, ids: np.ndarray) -> int:
    seen = sim.seen_ids()
    return 0 if seen is None else int((~np.asarray(seen)[ids]).sum())


def attribution_section(
    heldout: RunSet,
    simulators: Mapping[str, Any],
    rows: Mapping[str, Row],
    groups: Mapping[str, str],
    *,
    run: int,
    exclude: Sequence[str] = (),
    test_texts: Sequence[str] | None = None,
    verdict: str | Mapping[str, Any] | None = None,
) -> tuple[AttributionSection | None, list[str]]:
    """The section for held-out run ``run`` (one ``removal_effects`` call), and notes for the
    report; ``(None, [why])`` when no simulator may be chosen."""
    name = choose_simulator(rows, groups, simulators, exclude=exclude)
    if name is None:
        return None, [
            "No Attribution section: no fitted, non-diverged simulator with a finite "
            "all-steps MSE (controls are not used)."
        ]
    observed = np.asarray(heldout.losses[run])
    horizon = min(HORIZON, heldout.num_steps)
    rates = None if heldout.learning_rates is None else heldout.learning_rates[run]
    with warnings.catch_warnings():  # unseen ids are counted and said in the section
        warnings.simplefilter("ignore", UnseenExampleWarning)
        effects = attribution.removal_effects(
            simulators[name], heldout.batches[run], observed[0], learning_rates=rates,
            horizon=horizon,
        )  # fmt: skip
    meta = heldout.metadata.get("train_texts")
    train_texts = [str(t) for t in meta] if isinstance(meta, list) and meta else None
    if train_texts is not None and len(train_texts) != heldout.num_train:
        train_texts = None
    chosen = choose_test_examples(observed)
    tests = tuple(
        TestAttribution(
            roles=roles,
            test_index=j,
            test_id=heldout.test_ids[j].item(),
            text=str(test_texts[j]) if test_texts is not None else "",
            observed_change=float(observed[-1, j] - observed[0, j]),
            baseline=float(effects.baseline[j]),
            helpful=_ranked(effects, j, "helpful", heldout.train_ids, train_texts),
            harmful=_ranked(effects, j, "harmful", heldout.train_ids, train_texts),
        )  # fmt: skip
        for roles, j in chosen
    )
    cols = [j for _, j in chosen]
    section = AttributionSection(
        simulator=name, metric=METRIC, metric_value=float(rows[name][f"{METRIC}_mean"]),
        run=int(run), horizon=horizon, tests=tests, ids=effects.ids,
        scores=effects.delta[:, cols], train_ids=heldout.train_ids[effects.ids],
        test_ids=heldout.test_ids[cols],
        train_texts=[train_texts[i] for i in effects.ids] if train_texts else None,
        num_unseen=_num_unseen(simulators[name], effects.ids), verdict=verdict,
    )  # fmt: skip
    return section, []


def save_section_scores(out, section: AttributionSection):
    """Writes ``SCORES_FILE.npz`` / ``.csv`` in folder ``out`` (``attribution.save_scores``):
    the effects of every distinct id of the curriculum on the chosen test examples."""
    details = {
        "simulator": section.simulator, "heldout_run": section.run,
        "horizon": section.horizon, "repack": False,
        "test_roles": {str(t.test_id): list(t.roles) for t in section.tests},
    }  # fmt: skip
    return attribution.save_scores(
        out / SCORES_FILE, section.scores, train_ids=section.train_ids,
        test_ids=section.test_ids, texts=section.train_texts, details=details,
    )  # fmt: skip
