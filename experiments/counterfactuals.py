"""The counterfactual benchmark: how right are the simulators' answers, checked by retraining.

    python -m experiments.counterfactuals [--out DIR] [--tiny] [--gin_file F] [--gin.NAME=VALUE]

Configured by ``gin_configs/experiments/counterfactuals.gin`` (``--tiny``:
``counterfactuals_tiny.gin``, the CI sizes): the runs are a ``RunsConfig`` (the quickstart's:
MiniLM top layer on cached lower layers, polarity, plain SGD, 32 runs of 48 steps at batch 4,
each a random 96 of the 150-example pool), the split and the simulators a ``FitConfig``, the
benchmark a ``Counterfactuals`` record. Steps:

1. Make (or read back) the runs and the gradient scores of the first fitting run
   (``pipeline.study.cached_runs``); fit every simulator of ``FitConfig.simulators``.
2. On ``Counterfactuals.heldout_curricula`` held-out runs, plan the edits (docs/design.md,
   section 7): the replay of the run itself (same seed: the reference), removal of ``k`` random
   examples for every ``k`` in ``random_sizes`` (``random_draws`` draws each), removal of
   the ``top_k`` examples each simulator of ``edit_simulators`` says help (and hurt)
   each of ``targets`` test examples most (``attribution.removal_effects`` and ``top``),
   the reversed curriculum, and the ``top_k`` helpful examples of one test example moved
   to the end. Removal keeps the step structure
   (``repack=False``: the slot becomes padding, and the run factory averages a batch's loss
   over its real examples; the simulators weigh the rest of an edited batch the same way,
   ``attribution``'s ``batch_loss="mean"``).
3. Retrain every distinct edited curriculum for real with the held-out run's seed through
   the run factory (``pipeline.generate.retrain``, ``retrain_group`` runs vmapped at once);
   each curriculum's losses are kept under ``output_dir/retrained`` and the run stores next
   to them, so a re-run trains nothing.
4. For every simulator, predicted against achieved change of the loss averaged over the last
   ``horizon`` steps (edit minus replay): Pearson, Spearman, slope of achieved on predicted
   (1 = the right magnitude), sign agreement, and the all-steps MSE of the edited
   trajectory; the payoff of each simulator's top-k edits over random edits of the same
   size; LDS on ``lds_subsets`` random half-subsets of the pool.
5. The magnitude (item 5): why the slope is off and two fixes chosen on the validation runs
   only (random edits of them, retrained): one effect-size scale per simulator, and the
   Linear ridge strength chosen by the error of the predicted change instead of the
   trajectory MSE; plus the other padding semantics (``batch_loss="sum"``: the rest of an
   edited batch keeps weight 1) and the final-step horizon.
6. ``report.md``, ``counterfactuals.json``, ``scatter.png`` and the operative config in
   ``output_dir``.
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

GIN = "experiments/counterfactuals.gin"
TINY_GIN = "experiments/counterfactuals_tiny.gin"
#: Flag -> (gin binding it sets, type).
FLAGS = {
    "--out": ("Counterfactuals.output_dir", str),
    "--cache": ("Counterfactuals.cache_dir", str),
    "--heldout-curricula": ("Counterfactuals.heldout_curricula", int),
    "--targets": ("Counterfactuals.targets", int),
    "--lds-subsets": ("Counterfactuals.lds_subsets", int),
}
#: Simulators that say nothing about single training examples (no attribution to rank by).
NO_ATTRIBUTION = ("constant", "mean")


@dataclasses.dataclass(frozen=True)
class Counterfactuals:
    """The benchmark besides the runs (``RunsConfig``) and the fit (``FitConfig``).

    Attributes:
      output_dir: report, ``counterfactuals.json``, figure, operative config, retrainings.
      cache_dir: the shared run cache of the runs and their gradient scores.
      heldout_curricula: held-out runs whose curricula are edited (the first ones).
      random_sizes: sizes ``k`` of the random removals.
      random_draws: random removals of each size per held-out curriculum.
      targets: test examples per held-out curriculum whose top-k edits are retrained.
      top_k: examples removed (or moved) by a targeted edit.
      horizon: steps at the end over which the loss is averaged (the final step is noisy).
      edit_simulators: simulators whose top-k helpful and harmful removals are retrained.
      featurized: options of a featurized simulator (``featurized_fit.fit_featurized``) fitted
        besides ``FitConfig.simulators`` on MiniLM embeddings of the texts with the label
        appended (``experiments.beyond.make_features``); empty: none.
      lds_subsets: random half-subsets of the pool trained for the LDS (0: none).
      validation_draws: random removals of each size per validation run (the fixes of the
        magnitude are fitted on these only).
      l2_grid: ridge strengths the counterfactual l2 choice searches (empty: the fitter's).
      retrain_group: runs the factory trains at once.
      retrain_chunk: curricula per run store.
      retrain_order: ``"forward"``, or ``"reverse"`` for a second process sharing the
        retraining (it trains the LDS subsets first, then the edits from the end).
    """

    output_dir: str
    cache_dir: str = "outputs/runs_cache"
    heldout_curricula: int = 4
    random_sizes: tuple[int, ...] = (4, 8, 16, 32)
    random_draws: int = 4
    targets: int = 8
    top_k: int = 8
    horizon: int = 8
    edit_simulators: tuple[str, ...] = ()
    featurized: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lds_subsets: int = 32
    validation_draws: int = 2
    l2_grid: tuple[float, ...] = ()
    retrain_group: int = 8
    retrain_chunk: int = 32
    retrain_order: str = "forward"


_log = common.logger("counterfactuals")


def parse(argv):
    """``(Counterfactuals, RunsConfig, FitConfig, operative config text)``."""
    return common.parse(
        argv, Counterfactuals, __doc__, GIN, FLAGS, ("--tiny", TINY_GIN, "CI sizes")
    )


# Metrics (pure NumPy) --------------------------------------------------------------------------
def end_mean(losses, horizon: int) -> np.ndarray:
    """``float[..., M]``: the loss averaged over the last ``horizon`` steps of ``[..., T+1, M]``."""
    return np.asarray(losses, np.float64)[..., -horizon:, :].mean(axis=-2)


def agreement(predicted, achieved) -> dict[str, float]:
    """How predicted changes match achieved ones, over paired values ``float[n]``.

    Returns ``{"n", "pearson", "spearman", "slope", "intercept", "sign_agreement"}``:
    ``slope`` is the least-squares slope of achieved on predicted (with an intercept; 1 means
    the right magnitude), ``sign_agreement`` the fraction of pairs with a nonzero prediction
    whose achieved change has the same sign. Undefined values (a constant side) are NaN.
    """
    p = np.asarray(predicted, np.float64).reshape(-1)
    a = np.asarray(achieved, np.float64).reshape(-1)
    if p.shape != a.shape:
        raise ValueError(f"predicted and achieved differ in size: {p.size} vs {a.size}")
    keep = np.isfinite(p) & np.isfinite(a)
    p, a = p[keep], a[keep]
    out = {"n": int(p.size)}
    nan = float("nan")
    if p.size < 3 or np.ptp(p) == 0 or np.ptp(a) == 0:
        out.update(pearson=nan, spearman=nan, slope=nan, intercept=nan)
    else:
        dp, da = p - p.mean(), a - a.mean()
        out["pearson"] = float((dp @ da) / np.sqrt((dp @ dp) * (da @ da)))
        rp, ra = _ranks(p), _ranks(a)
        rp, ra = rp - rp.mean(), ra - ra.mean()
        out["spearman"] = float((rp @ ra) / np.sqrt((rp @ rp) * (ra @ ra)))
        out["slope"] = float((dp @ da) / (dp @ dp))
        out["intercept"] = float(a.mean() - out["slope"] * p.mean())
    nz = p != 0
    out["sign_agreement"] = float(np.mean(np.sign(p[nz]) == np.sign(a[nz]))) if nz.any() else nan
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def scale_through_origin(predicted, achieved) -> float:
    """The least-squares ``c`` of ``achieved ~ c * predicted`` (the effect-size calibration)."""
    p = np.asarray(predicted, np.float64).reshape(-1)
    a = np.asarray(achieved, np.float64).reshape(-1)
    keep = np.isfinite(p) & np.isfinite(a)
    pp = float(p[keep] @ p[keep])
    return float(p[keep] @ a[keep] / pp) if pp > 0 else float("nan")


def payoff(targeted: np.ndarray, random_same_size: np.ndarray) -> dict[str, float]:
    """What a top-k edit achieved over a random edit of the same size, per (curriculum,
    target) pair: ``float[n]`` each. Returns the mean of both, their mean difference, its
    standard error and the fraction of pairs where the targeted edit did more."""
    t = np.asarray(targeted, np.float64)
    r = np.asarray(random_same_size, np.float64)
    d = t - r
    n = d.size
    return {
        "n": int(n),
        "targeted": float(t.mean()) if n else float("nan"),
        "random": float(r.mean()) if n else float("nan"),
        "gain": float(d.mean()) if n else float("nan"),
        "gain_sem": float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "wins": float(np.mean(d > 0)) if n else float("nan"),
    }


# Simulating edits ------------------------------------------------------------------------------
def simulate_edits(sim, batches, L0, *, learning_rates=None, originals=None, chunk=256):
    """``float32[C, T+1, M]``: ``sim`` along curricula ``int32[C, T, B]`` from ``L0:
    float[C, M]``.

    ``originals`` (``int32[C, T, B]``, optional) are the curricula the edits removed examples
    from: every real example of an edited step then weighs ``n_t / n'_t`` (real examples
    before and after the edit), the run factory's batch mean (``attribution``,
    ``batch_loss="mean"``); without them every real slot weighs 1 (``batch_loss="sum"``).
    Chunked over curricula to bound memory.
    """
    import jax.numpy as jnp

    from simfluence_jax.rollouts import lr_scales, rollout_weighted
    from simfluence_jax.simulators.base import batch_mask

    batches = np.asarray(batches, np.int32)
    C, T, _ = batches.shape
    L0 = np.broadcast_to(np.asarray(L0, np.float32), (C, sim.num_test))
    lr = None
    if learning_rates is not None:
        lr = np.broadcast_to(np.asarray(learning_rates, np.float32), (C, T))
    out = []
    for lo in range(0, C, chunk):
        b = batches[lo : lo + chunk]
        ids, w = batch_mask(jnp.asarray(b))
        if originals is not None:
            before = (np.asarray(originals[lo : lo + chunk]) >= 0).sum(-1, keepdims=True)
            after = w.sum(-1, keepdims=True)
            w = w * jnp.asarray(before, jnp.float32) / jnp.maximum(after, 1.0)
        s = lr_scales(sim, None if lr is None else lr[lo : lo + chunk], (len(b),), T)
        out.append(np.asarray(rollout_weighted(sim, ids, w, L0[lo : lo + chunk], s)))
    return np.concatenate(out)


# Edits -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Edit:
    """One edited curriculum of held-out (or validation) run ``run``."""

    kind: str  # replay, random, helpful, harmful, reverse, move_to_end
    run: int
    batches: np.ndarray
    size: int = 0
    draw: int = -1
    source: str = ""  # the simulator whose attribution chose the examples
    target: int = -1  # the test example it was chosen for
    split: str = "heldout"

    @property
    def key(self) -> str:
        return curriculum_key(self.batches)


def curriculum_key(batches) -> str:
    b = np.ascontiguousarray(batches, np.int32)
    return hashlib.sha256(b.tobytes() + str(b.shape).encode()).hexdigest()[:16]


def empty_step(batches) -> bool:
    """Whether a curriculum has a step of padding only (the run factory refuses those)."""
    return bool(np.any(np.all(np.asarray(batches) < 0, axis=-1)))


def random_edits(runs, run_indices, sizes, draws, *, seed: int, split: str) -> list[Edit]:
    """``draws`` removals of ``k`` random distinct ids for every size and run; a draw that
    would leave a step of padding only is redrawn (the run factory cannot train it)."""
    from simfluence_jax import counterfactuals as cf

    out = []
    for r in run_indices:
        c = runs.batches[r]
        ids = np.unique(c[c >= 0])
        for k in sizes:
            for d in range(draws):
                rng = np.random.default_rng([seed, 41, r, k, d, split == "heldout"])
                for _ in range(1000):
                    edited = cf.remove(c, rng.choice(ids, size=min(k, len(ids)), replace=False),
                                       repack=False)  # fmt: skip
                    if not empty_step(edited):
                        break
                else:
                    raise ValueError(f"no removal of {k} ids keeps every step of run {r}")
                out.append(Edit("random", r, edited, size=k, draw=d, split=split))
    return out


def pick_targets(M: int, num: int, run: int, *, seed: int) -> np.ndarray:
    """``num`` test examples drawn for held-out run ``run`` (seeded)."""
    return np.sort(np.random.default_rng([seed, 43, run]).permutation(M)[: min(num, M)])


# Retraining ------------------------------------------------------------------------------------
class Retrainer:
    """Trains curricula for real with given seeds; each curriculum's losses are kept in
    ``out/retrained/<key>-<seed>.npz`` and its run store (``pipeline.generate.retrain``) in
    ``out/retrained/runs-<chunk key>``, so a re-run trains nothing."""

    def __init__(self, setup, out: Path, *, group: int, chunk: int, reverse: bool = False):
        cfg = dataclasses.replace(setup.config, group_size=group)
        self.setup = dataclasses.replace(setup, config=cfg)
        self.dir = Path(out) / "retrained"
        self.chunk = chunk
        self.reverse = reverse
        self.seconds = 0.0
        self.trained = 0

    def _file(self, batches, seed) -> Path:
        return self.dir / f"{curriculum_key(batches)}-{int(seed)}.npz"

    def __call__(self, batches, seeds):
        """``(losses float32[C, T+1, M], learning_rates float32[C, T])``.

        What is missing is looked up again before every chunk, so a second process with
        ``reverse=True`` (``Counterfactuals.retrain_order = 'reverse'``) can share the work:
        it takes the chunks from the end, and a chunk the other process holds is waited for.
        """
        import io as _io

        from simfluence_jax.fileio import atomic_write, make_dirs
        from simfluence_jax.locks import StoreBusyError
        from simfluence_jax.pipeline.generate import retrain

        batches = np.asarray(batches, np.int32)
        seeds = np.asarray(seeds, np.int64)
        make_dirs(self.dir)
        t0 = time.perf_counter()
        while True:
            todo = [i for i in range(len(batches))
                    if not self._file(batches[i], seeds[i]).exists()]  # fmt: skip
            if not todo:
                break
            part = todo[-self.chunk :] if self.reverse else todo[: self.chunk]
            b, s = batches[part], seeds[part]
            key = hashlib.sha256(b.tobytes() + s.tobytes()).hexdigest()[:12]
            try:
                runs = retrain(self.setup, self.dir / f"runs-{key}", b, s)
            except StoreBusyError:  # the other process trains this chunk
                time.sleep(10)
                continue
            for n, i in enumerate(part):
                lr = runs.learning_rates[n] if runs.learning_rates is not None else None
                lr = np.full(b.shape[1], np.nan) if lr is None else lr
                buf = _io.BytesIO()
                np.savez(buf, losses=runs.losses[n], learning_rates=lr)
                atomic_write(self._file(batches[i], seeds[i]), buf.getvalue())
            self.trained += len(part)
            _log(f"retrained {len(part)} curricula, {len(todo) - len(part)} left "
                 f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        self.seconds += time.perf_counter() - t0
        loaded = [np.load(self._file(batches[i], seeds[i])) for i in range(len(batches))]
        return (
            np.stack([x["losses"] for x in loaded]).astype(np.float32),
            np.stack([x["learning_rates"] for x in loaded]).astype(np.float32),
        )


def train_edits(retrainer, edits: Sequence[Edit], seeds: Mapping[tuple[str, int], int]):
    """``{edit key + seed: (losses, learning_rates)}`` for every edit (grouped by shape)."""
    out = {}
    by_shape: dict[tuple, list[Edit]] = {}
    for e in edits:
        by_shape.setdefault(e.batches.shape, []).append(e)
    for group in by_shape.values():
        unique = {}
        for e in group:
            unique.setdefault((e.key, seeds[(e.split, e.run)]), e)
        keys = list(unique)
        losses, rates = retrainer(np.stack([unique[k].batches for k in keys]),
                                  [s for _, s in keys])  # fmt: skip
        out.update({k: (losses[i], rates[i]) for i, k in enumerate(keys)})
    return out


# Scoring -------------------------------------------------------------------------------------
#: Edits that remove examples (their slots become padding).
REMOVALS = ("random", "helpful", "harmful")


def predicted_trajectories(sims, edits, runs_by_split, *, batch_loss="mean"):
    """``{name: float32[E, T+1, M]}`` simulated along every edit from its run's L_0; a
    removal's padded slots are weighted by ``batch_loss`` (``simulate_edits``)."""
    batches = np.stack([e.batches for e in edits])
    originals = None
    if batch_loss == "mean":
        originals = np.stack([runs_by_split[e.split].batches[e.run] if e.kind in REMOVALS
                              else e.batches for e in edits])  # fmt: skip
    L0 = np.stack([runs_by_split[e.split].L0[e.run] for e in edits])
    lr = None
    if all(runs_by_split[e.split].learning_rates is not None for e in edits):
        lr = np.stack([runs_by_split[e.split].learning_rates[e.run] for e in edits])
    return {n: simulate_edits(s, batches, L0, learning_rates=lr, originals=originals)
            for n, s in sims.items()}  # fmt: skip


def changes(traj: np.ndarray, edits: Sequence[Edit], horizon: int) -> np.ndarray:
    """``float64[E, M]``: end-of-run loss of each edit minus that of its run's replay (the
    replay edit of the same split and run)."""
    end = end_mean(traj, horizon)
    ref = {(e.split, e.run): i for i, e in enumerate(edits) if e.kind == "replay"}
    return end - end[[ref[(e.split, e.run)] for e in edits]]


def pairs(edits: Sequence[Edit], M: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{edit family: (edit index int[n], test index int[n])}`` of the scored pairs:
    random and structural edits with every test example, targeted edits with their target
    (held-out edits only)."""
    fam: dict[str, list[tuple[int, int]]] = {"random": [], "targeted": [], "structural": []}
    for i, e in enumerate(edits):
        if e.split != "heldout" or e.kind == "replay":
            continue
        if e.kind in ("helpful", "harmful"):
            fam["targeted"].append((i, e.target))
        elif e.kind == "random":
            fam["random"] += [(i, j) for j in range(M)]
        else:
            fam["structural"] += [(i, j) for j in range(M)] if e.target < 0 else [(i, e.target)]
    fam["all"] = fam["random"] + fam["targeted"] + fam["structural"]
    return {k: (np.array([p[0] for p in v], int), np.array([p[1] for p in v], int))
            for k, v in fam.items() if v}  # fmt: skip


def agreement_table(pred_change, true_change, pair_sets, *, pred_traj=None, true_traj=None):
    """``{family: {simulator: agreement + mse}}`` over the pairs of each family."""
    table: dict[str, dict[str, dict]] = {}
    for fam, (e, j) in pair_sets.items():
        for name, dp in pred_change.items():
            row = agreement(dp[e, j], true_change[e, j])
            if pred_traj is not None:
                diff = pred_traj[name][e, 1:, j] - true_traj[e, 1:, j]
                row["trajectory_mse"] = float(np.mean(diff**2))
            table.setdefault(fam, {})[name] = row
    return table


def payoff_table(edits, true_change, *, top_k: int) -> dict[str, dict[str, dict]]:
    """``{source: {"helpful": payoff, "harmful": payoff}}``: the achieved change of the
    target after removing the source's top-k helpful (harmful) examples, against the mean
    achieved change of the random removals of the same size on the same curriculum (harmful:
    sign flipped, so a positive gain is good in both)."""
    rand: dict[int, list[int]] = {}
    for i, e in enumerate(edits):
        if e.split == "heldout" and e.kind == "random" and e.size == top_k:
            rand.setdefault(e.run, []).append(i)
    out: dict[str, dict[str, dict]] = {}
    for direction, sign in (("helpful", 1.0), ("harmful", -1.0)):
        got: dict[str, tuple[list, list]] = {}
        for i, e in enumerate(edits):
            if e.kind != direction or e.run not in rand:
                continue
            t, r = got.setdefault(e.source, ([], []))
            t.append(sign * true_change[i, e.target])
            r.append(sign * true_change[rand[e.run], e.target].mean())
        for source, (t, r) in got.items():
            out.setdefault(source, {})[direction] = payoff(np.array(t), np.array(r))
    return out


# Report ----------------------------------------------------------------------------------------
def scatter_figure(pred_change, true_change, edits, pair_sets, path: Path, names) -> None:
    """Predicted vs achieved change, one panel per simulator, coloured by edit family."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    colors = {"random": "tab:gray", "targeted": "tab:red", "structural": "tab:blue"}
    lim = float(np.nanmax(np.abs(true_change[pair_sets["all"]]))) if "all" in pair_sets else 1
    for n, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, n + 1)
        for fam in ("random", "structural", "targeted"):
            if fam not in pair_sets:
                continue
            e, j = pair_sets[fam]
            ax.scatter(pred_change[name][e, j], true_change[e, j], s=4 if fam == "random" else 9,
                       alpha=0.35 if fam == "random" else 0.8, c=colors[fam], label=fam,
                       linewidths=0)  # fmt: skip
        ax.axline((0, 0), slope=1, color="k", lw=0.7, ls="--")
        ax.axhline(0, color="k", lw=0.3)
        ax.axvline(0, color="k", lw=0.3)
        ax.set_ylim(-1.1 * lim, 1.1 * lim)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if n % cols == 0:
            ax.set_ylabel("achieved change", fontsize=8)
        if n >= (rows - 1) * cols:
            ax.set_xlabel("predicted change", fontsize=8)
        if n == 0:
            ax.legend(fontsize=6, markerscale=2)
    fig.savefig(path)


def _f(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def agreement_markdown(table: Mapping[str, Mapping[str, Mapping]], family: str) -> list[str]:
    lines = [
        "| simulator | pairs | Pearson | Spearman | slope | sign agreement | trajectory MSE |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in table[family].items():
        lines.append(
            f"| {name} | {r['n']} | {_f(r['pearson'], 2)} | {_f(r['spearman'], 2)} | "
            f"{_f(r['slope'], 2)} | {_f(r['sign_agreement'], 2)} | "
            f"{_f(r.get('trajectory_mse'))} |"
        )
    return lines


def payoff_markdown(pay: Mapping[str, Mapping[str, Mapping]], top_k: int) -> list[str]:
    lines = [
        f"| edit source | helpful top-{top_k}: achieved | random {top_k}: achieved | gain "
        f"(± sem) | wins | harmful top-{top_k}: achieved | gain (± sem) | wins |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for src, d in pay.items():
        h, m = d.get("helpful", {}), d.get("harmful", {})
        lines.append(
            f"| {src} | {_f(h.get('targeted'))} | {_f(h.get('random'))} | "
            f"{_f(h.get('gain'))} ± {_f(h.get('gain_sem'), 2)} | {_wins(h)} | "
            f"{_f(-m['targeted'] if m else None)} | {_f(m.get('gain'))} ± "
            f"{_f(m.get('gain_sem'), 2)} | {_wins(m)} |"
        )
    return lines


def _wins(d: Mapping[str, Any]) -> str:
    """``"k/n"``: the targeted edits that beat random ones, of ``n``."""
    if not d or d.get("wins") is None:
        return "n/a"
    return f"{round(d['wins'] * d['n'])}/{d['n']}"


def lds_markdown(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    lines = ["| simulator | LDS (mean ± sem over test examples) |", "|---|---|"]
    for name, r in table.items():
        lines.append(f"| {name} | {_f(r['lds_mean'], 3)} ± {_f(r['lds_sem'], 2)} |")
    return lines


# Main ------------------------------------------------------------------------------------------
def main(argv=None) -> Path:
    from simfluence_jax.cli import gin_edge

    exp, cfg, fit_cfg, config_text = parse(sys.argv[1:] if argv is None else argv)
    # A shared claim: a second process of the benchmark (``retrain_order = 'reverse'``) and
    # the comparison (``Comparison.retrained_dir``) share the ``retrained/`` cache in this
    # folder; every file is written atomically. A writer that claims it alone is refused.
    command = "python -m experiments.counterfactuals"
    with gin_edge.claim_output(exp.output_dir, command=command, config_text=config_text,
                               shared=True) as out:  # fmt: skip
        return run(exp, cfg, fit_cfg, config_text, out)


def run(exp, cfg, fit_cfg, config_text: str, out: Path) -> Path:
    """The benchmark (steps 1-6 of the module docstring) into the claimed folder ``out``."""
    import simfluence_jax as sj
    from simfluence_jax import attribution, lds
    from simfluence_jax import counterfactuals as cf
    from simfluence_jax.fitting import DEFAULT_L2_GRID, fit_simulator
    from simfluence_jax.pipeline import study
    from simfluence_jax.pipeline.experiment import fit_simulators
    from simfluence_jax.pipeline.generate import prepare

    timings: dict[str, float] = {}

    # 1. Runs and fits.
    t0 = time.perf_counter()
    runs, grads = study.cached_runs(cfg, exp.cache_dir, gradient_kwargs=fit_cfg.gradient_kwargs)
    fit, val, held = runs.split(fit_cfg.num_fit, fit_cfg.num_val, fit_cfg.num_heldout)
    if val is None:
        raise ValueError("the benchmark needs validation runs (FitConfig.num_val >= 1)")
    H = min(exp.heldout_curricula, held.num_runs)
    M, B = runs.num_test, runs.batch_size
    setup = prepare(cfg)
    timings["runs_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sims = fit_simulators(fit_cfg, fit, val, gradients=grads)
    if exp.featurized:
        from experiments.beyond import make_features

        features = make_features(setup.task)
        sim = sj.fit_simulator("featurized", fit, validation=val, features=features,
                               **exp.featurized)  # fmt: skip
        sims[sim.name] = sim
    timings["fit_s"] = time.perf_counter() - t0
    _log(f"{runs}: fitted {', '.join(sims)}")
    sources = [n for n in (exp.edit_simulators or sims) if n in sims and n not in NO_ATTRIBUTION]
    seeds = {("heldout", r): int(held.metadata["seeds"][r]) for r in range(held.num_runs)}
    seeds.update({("validation", r): int(val.metadata["seeds"][r]) for r in range(val.num_runs)})
    by_split = {"heldout": held, "validation": val}

    # 2. Plan the edits.
    t0 = time.perf_counter()
    hz = exp.horizon
    edits = [Edit("replay", r, held.batches[r]) for r in range(H)]
    edits += [Edit("replay", r, val.batches[r], split="validation") for r in range(val.num_runs)]
    edits += random_edits(held, range(H), exp.random_sizes, exp.random_draws, seed=cfg.seed,
                          split="heldout")  # fmt: skip
    edits += random_edits(val, range(val.num_runs), exp.random_sizes, exp.validation_draws,
                          seed=cfg.seed, split="validation")  # fmt: skip
    tops = {}
    skipped: list[tuple] = []
    for r in range(H):
        c = held.batches[r]
        lr = None if held.learning_rates is None else held.learning_rates[r]
        for name in sources:
            tops[(name, r)] = attribution.removal_effects(
                sims[name], c, held.L0[r], learning_rates=lr, horizon=hz
            )
        for j in pick_targets(M, exp.targets, r, seed=cfg.seed):
            for name in sources:
                for direction in ("helpful", "harmful"):
                    drop, _ = attribution.top(tops[(name, r)], int(j), exp.top_k, direction)
                    edited = cf.remove(c, drop, repack=False)
                    if empty_step(edited):  # cannot be trained; counted in the report
                        skipped.append((name, r, int(j), direction))
                        continue
                    edits.append(Edit(direction, r, edited, size=exp.top_k, source=name,
                                      target=int(j)))  # fmt: skip
        edits.append(Edit("reverse", r, cf.reverse(c)))
        # The top-k helpful examples (by the first source) of the first target, moved last.
        j = int(pick_targets(M, exp.targets, r, seed=cfg.seed)[0])
        moved = c
        for i in attribution.top(tops[(sources[0], r)], j, exp.top_k, "helpful")[0][::-1]:
            moved = cf.move_to_end(moved, int(i))
        edits.append(Edit("move_to_end", r, moved, size=exp.top_k, source=sources[0], target=j))
    timings["plan_s"] = time.perf_counter() - t0
    n_unique = len({(e.key, seeds[(e.split, e.run)]) for e in edits})
    _log(f"{len(edits)} edits, {n_unique} distinct curricula to retrain (cached ones are read)")

    # 3. Retrain.
    reverse = exp.retrain_order == "reverse"
    retrainer = Retrainer(setup, out, group=exp.retrain_group, chunk=exp.retrain_chunk,
                          reverse=reverse)  # fmt: skip
    N = runs.num_train
    lds_size = N // 2 // B * B
    lds_seeds = cfg.seed * 100_003 + 50_000 + np.arange(exp.lds_subsets)
    # As many passes over the subset as the runs make over theirs (TRAK: half the pool).
    lds_epochs = max(1, round(runs.num_steps * B / (cfg.subset_size or N)))
    lds_args = dict(pool_size=N, num_subsets=exp.lds_subsets, subset_size=lds_size,
                    batch_size=B, epochs=lds_epochs, seed=cfg.seed + 7)  # fmt: skip
    if reverse and exp.lds_subsets:
        lds_batches = lds.subset_curricula(lds_args.pop("pool_size"), **lds_args)
        lds_args["pool_size"] = N
        retrainer(lds_batches, lds_seeds)
    trained = train_edits(retrainer, edits, seeds)
    true_traj = np.stack([trained[(e.key, seeds[(e.split, e.run)])][0] for e in edits])
    timings["retrain_s"] = retrainer.seconds
    replay_gap = [
        float(np.abs(true_traj[i] - held.losses[e.run]).max())
        for i, e in enumerate(edits)
        if e.kind == "replay" and e.split == "heldout"
    ]

    # 4. Score.
    t0 = time.perf_counter()
    pred_traj = predicted_trajectories(sims, edits, by_split)
    true_change = changes(true_traj, edits, hz)
    pred_change = {n: changes(p, edits, hz) for n, p in pred_traj.items()}
    pair_sets = pairs(edits, M)
    table = agreement_table(pred_change, true_change, pair_sets, pred_traj=pred_traj,
                            true_traj=true_traj)  # fmt: skip
    pay = payoff_table(edits, true_change, top_k=exp.top_k)
    timings["score_s"] = time.perf_counter() - t0

    # 5. The magnitude.
    t0 = time.perf_counter()
    magnitude = magnitude_study(exp, sims, edits, by_split, true_traj, true_change, pair_sets,
                                fit, val, l2_grid=exp.l2_grid or DEFAULT_L2_GRID,
                                fit_simulator=fit_simulator)  # fmt: skip
    timings["magnitude_s"] = time.perf_counter() - t0

    # LDS.
    lds_res = None
    if exp.lds_subsets:
        t0 = time.perf_counter()
        _log(f"LDS: {exp.lds_subsets} subsets of {lds_size} of the {N} pool examples")
        lds_sims = dict(sims)
        lds_sims.update(magnitude["refit_sims"])

        def train(b):
            losses, rates = retrainer(b, lds_seeds[: len(b)])
            return sj.RunSet(batches=b, losses=losses, num_train=N, learning_rates=rates)

        lds_res = lds.run_lds(lds_sims, train, **lds_args)
        timings["lds_s"] = time.perf_counter() - t0
    timings["retrain_s"] = retrainer.seconds

    # 6. Report.
    names = list(sims)
    scatter_figure(pred_change, true_change, edits, pair_sets, out / "scatter.png", names)
    summary = {
        "setup": {
            "runs_config": runs.metadata.get("runs_config"),
            "split": [fit.num_runs, val.num_runs, held.num_runs],
            "heldout_curricula": H,
            "edits": len(edits),
            "retrained_curricula": n_unique,
            "trained_this_time": retrainer.trained,
            "replay_max_abs_gap": replay_gap,
            "horizon": hz,
            "edit_simulators": sources,
            "skipped_targeted_edits": skipped,
        },
        "agreement": table,
        "payoff": pay,
        "lds": None if lds_res is None else lds_res.table,
        "magnitude": {k: v for k, v in magnitude.items() if k != "refit_sims"},
        "timings": timings,
    }
    common.write_outputs(out, {"counterfactuals.json": summary,
                               "report.md": render(summary, exp, config_text)})  # fmt: skip
    took = json.dumps({k: round(v) for k, v in timings.items()})
    _log(f"report written to {out}/report.md ({took})")
    return out


def magnitude_study(exp, sims, edits, by_split, true_traj, true_change, pair_sets, fit, val, *,
                    l2_grid, fit_simulator) -> dict[str, Any]:  # fmt: skip
    """Why the slope is off, and two fixes fitted on the validation edits only.

    * ``horizon``: the held-out slope with the loss averaged over the last 1, ``horizon``
      and ``2 * horizon`` steps (final-step noise attenuates Pearson, not the slope of
      achieved on predicted; a change of slope with the horizon is the simulator's drift);
    * ``batch_loss_sum``: every simulator with a padded slot simply dropped (weight 1 for
      the rest, ``attribution``'s ``batch_loss="sum"``) instead of the run factory's mean;
    * ``calibrated``: each simulator's predicted change times one scale ``c``, the
      least-squares fit of achieved on predicted change over the validation runs' random
      edits (all test examples);
    * ``l2``: the Linear family refitted at every ridge strength of ``l2_grid``; the
      counterfactual choice minimises the squared error of the predicted change on the
      validation edits (the trajectory-MSE choice is the fitted simulator's ``l2``); the
      slope at each strength on the held-out edits is shown as a diagnostic, not chosen on.
    """
    hz = exp.horizon
    val_idx = np.array([i for i, e in enumerate(edits) if e.split == "validation"
                        and e.kind == "random"])  # fmt: skip
    M = true_change.shape[1]
    ve = np.repeat(val_idx, M)
    vj = np.tile(np.arange(M), len(val_idx))
    pred_traj = predicted_trajectories(sims, edits, by_split)
    out: dict[str, Any] = {"horizon": {}, "batch_loss_sum": {}, "calibrated": {}, "scale": {},
                           "l2": {}, "refit_sims": {}}  # fmt: skip
    e_all, j_all = pair_sets["all"]
    for h in sorted({1, hz, 2 * hz}):
        tc = changes(true_traj, edits, h)
        out["horizon"][h] = {n: agreement(changes(p, edits, h)[e_all, j_all], tc[e_all, j_all])
                             for n, p in pred_traj.items()}  # fmt: skip
    sum_traj = predicted_trajectories(sims, edits, by_split, batch_loss="sum")
    plain = {n: changes(p, edits, hz) for n, p in sum_traj.items()}
    out["batch_loss_sum"] = agreement_table(plain, true_change, pair_sets, pred_traj=sum_traj,
                                            true_traj=true_traj)  # fmt: skip
    for n, p in pred_traj.items():
        dp = changes(p, edits, hz)
        c = scale_through_origin(dp[ve, vj], true_change[ve, vj])
        out["scale"][n] = {"validation_pairs": int(ve.size), "c": c,
                           "validation": agreement(dp[ve, vj], true_change[ve, vj])}  # fmt: skip
        out["calibrated"][n] = {fam: agreement(c * dp[e, j], true_change[e, j])
                                for fam, (e, j) in pair_sets.items()}  # fmt: skip
    for base in ("linear", "linear_one_plus_sum"):
        if base not in sims:
            continue
        rows = []
        for l2 in l2_grid:
            s = fit_simulator(base, fit, validation=None, l2=float(l2))
            tr = predicted_trajectories({base: s}, edits, by_split)[base]
            dp = changes(tr, edits, hz)
            v_err = float(np.mean((dp[ve, vj] - true_change[ve, vj]) ** 2))
            held = agreement(dp[e_all, j_all], true_change[e_all, j_all])
            rows.append({"l2": float(l2), "validation_change_mse": v_err,
                         "heldout": held, "sim": s})  # fmt: skip
        best = min(rows, key=lambda r: r["validation_change_mse"])
        name = f"{base} (l2 by change)"
        out["refit_sims"][name] = best["sim"]
        tr = predicted_trajectories({name: best["sim"]}, edits, by_split)[name]
        dp = changes(tr, edits, hz)
        out["l2"][base] = {
            "trajectory_choice": float(sims[base].l2),
            "counterfactual_choice": best["l2"],
            "grid": [{k: v for k, v in r.items() if k != "sim"} for r in rows],
            "heldout": {
                fam: agreement(dp[e, j], true_change[e, j]) for fam, (e, j) in pair_sets.items()
            },  # fmt: skip
        }
    return out


def render(summary: Mapping[str, Any], exp: Counterfactuals, config_text: str) -> str:
    s = summary["setup"]
    hz, k = s["horizon"], exp.top_k
    lines = [
        "# Counterfactual benchmark: predicted vs retrained",
        "",
        f"Runs: {s['split'][0]} fitting / {s['split'][1]} validation / {s['split'][2]} "
        f"held-out; {s['heldout_curricula']} held-out curricula edited. {s['edits']} edits, "
        f"{s['retrained_curricula']} distinct curricula retrained for real with the run's "
        f"seed ({s['trained_this_time']} trained in this invocation, the rest read from the "
        f"cache). Change = loss averaged over the last {hz} steps of the edit minus that of "
        f"the replay of the unedited curriculum (largest gap between replay and logged run: "
        f"{max(s['replay_max_abs_gap'] or [0]):.2g}). Removal keeps the step structure (the "
        "slot becomes padding; the real step averages over the real examples).",
        "",
        f"Edit sources (top-{k} helpful / harmful for each target): "
        f"{', '.join(s['edit_simulators'])}. Targeted edits that would leave a step of "
        f"padding only (the run factory refuses them) are skipped: "
        f"{len(s['skipped_targeted_edits'])}. Random draws that would are redrawn.",
        "",
        "![predicted vs achieved](scatter.png)",
        "",
    ]
    for fam, title in (
        ("all", "All edits"),
        ("random", "Random removals (every test example)"),
        ("targeted", "Targeted removals (each edit's own target)"),
        ("structural", "Reverse and move-to-end"),
    ):
        if fam in summary["agreement"]:
            lines += [f"## {title}", ""] + agreement_markdown(summary["agreement"], fam) + [""]
    lines += (
        [
            "## Payoff of the top-k edits",
            "",
            f"Achieved change of the target's loss after removing the top-{k} helpful (harmful) "
            f"examples, against the mean of the random removals of {k} on the same curriculum. "
            "Gain > 0 is good in both directions (harmful: the loss fell more than at random).",
            "",
        ]
        + payoff_markdown(summary["payoff"], k)
        + [""]
    )
    if summary["lds"]:
        lines += ["## LDS", ""] + lds_markdown(summary["lds"]) + [""]
    mag = summary["magnitude"]
    lines += ["## The magnitude", "", "Slope of achieved on predicted change (all held-out "
              "pairs) by the horizon the loss is averaged over:", "",
              "| simulator | " + " | ".join(f"h={h}" for h in mag["horizon"]) + " |",
              "|---|" + "---|" * len(mag["horizon"])]  # fmt: skip
    for n in summary["agreement"]["all"]:
        lines.append(f"| {n} | " + " | ".join(
            f"{_f(mag['horizon'][h][n]['slope'], 2)} (r {_f(mag['horizon'][h][n]['pearson'], 2)})"
            for h in mag["horizon"]) + " |")  # fmt: skip
    lines += [
        "",
        'Padding semantics `batch_loss="sum"` (a removed slot is dropped and the rest of its '
        "batch keeps weight 1, unlike the real step, which averages over the real examples), "
        "all held-out pairs:",
        "",
    ]
    lines += agreement_markdown(mag["batch_loss_sum"], "all") + [""]
    lines += ["Effect-size calibration: one scale c per simulator fitted on the validation "
              "runs' random removals, applied to the held-out predictions:", "",
              "| simulator | c | validation slope | held-out slope (all / random / targeted) "
              "| held-out Pearson (all) |", "|---|---|---|---|---|"]  # fmt: skip
    for n, sc in mag["scale"].items():
        cal = mag["calibrated"][n]
        fams = " / ".join(_f(cal[f]["slope"], 2) for f in ("all", "random", "targeted") if f in cal)
        lines.append(f"| {n} | {_f(sc['c'], 3)} | {_f(sc['validation']['slope'], 2)} | "
                     f"{fams} | {_f(cal['all']['pearson'], 2)} |")  # fmt: skip
    for base, r in mag["l2"].items():
        lines += ["", f"Ridge strength of {base}: chosen by trajectory MSE "
                  f"{r['trajectory_choice']:g}, by the error of the change on the validation "
                  f"edits {r['counterfactual_choice']:g}.", "",
                  "| l2 | validation change MSE | held-out slope | held-out Pearson |",
                  "|---|---|---|---|"]  # fmt: skip
        for g in r["grid"]:
            lines.append(
                f"| {g['l2']:g} | {_f(g['validation_change_mse'])} | "
                f"{_f(g['heldout']['slope'], 2)} | {_f(g['heldout']['pearson'], 2)} |"
            )
    lines += ["", "## Timings (s)", "", json.dumps({k: round(v, 1) for k, v in
              summary["timings"].items()}), "", "## Operative config", "", "```",
              config_text.strip(), "```", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
