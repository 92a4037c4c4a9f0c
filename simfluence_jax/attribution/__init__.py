"""Attribution: which training examples help or hurt each test example, by simulated removal.

The attribution of training example i to test example j under curriculum c is the simulated
change of j's loss when every occurrence of i is removed (docs/design.md, "Attribution"):

    delta_ij(c) = mean_{h < H} L^_j,T'-h(c without i)  -  mean_{h < H} L^_j,T-h(c)

with ``H`` the ``horizon`` (the final step alone is noisy) and ``T'`` the length of the edited
curriculum (``T`` unless it is re-packed). ``delta > 0``: removing i raises j's loss, so i
helps j; ``delta < 0``: i hurts j. A group of examples is removed as a group
(``group_effect``), never summed from single effects: a simulator is not additive.

Every edit goes through the one rollout (``rollout.rollout_weighted``): the K edited
curricula of ``removal_effects`` are K weighted curricula of one vmapped rollout, chunked
over K to bound memory, so attribution works for every registered simulator.

**What a removed slot means.** The run factory (``training.train_step``) normalises a batch
loss by the number of real examples, ``J = sum_b w_b l_b / max(1, sum_b w_b)``: an example's
share of an update is ``eta_t / n_t`` with ``n_t`` the real examples of step t. Retraining a
curriculum whose slot became padding (``-1``) therefore gives each remaining example of that
step the larger share ``eta_t / (n_t - 1)``; a step left with no example has a zero gradient.
The simulators are fitted on (nearly always) full batches, so their per-example parameters
stand for a share ``1 / n_t``. With ``batch_loss="mean"`` (the default) an edit means the same
for the simulator as for retraining: every remaining example of an edited step gets the weight
``n_t / n'_t`` (``n'_t`` real examples after the edit), which scales its effect by the change
of its share; the unedited curriculum keeps weight 1 everywhere, so the baseline is exactly
``rollout.simulate`` of it. ``batch_loss="sum"`` keeps weight 1 for what remains, i.e. simulates
``counterfactuals.remove(..., repack=False)`` as ``rollout`` does; under the plain-sum form
(alpha = sum A_i) that reads every removal as a loss drop, since a batch missing an example
has a smaller alpha. Simulators that already divide by the real count (``SegmentedSimulator``,
the gradient baselines) give the same numbers either way.

Where the two still differ: a step left with no example is no update in the simulator
(state and loss carry over), whereas a stateful optimizer would still advance (SGD with
momentum keeps moving along its buffer, Adam's moments decay, weight decay applies); the run
factory therefore refuses such curricula (``sampling.validate_curricula``), so an edit that
empties a whole step (an id filling its batch, a group removal of a batch) has no retraining
counterpart with ``repack=False``: re-pack it.

**Re-packing** (``repack=True``) drops the removed examples and packs the rest into full
batches in the same order, as ``counterfactuals.remove`` does; the ragged last batch gets
weight ``B / n'_T'`` under ``batch_loss="mean"`` (retraining's mean over its real examples,
relative to a full batch). The edited run is shorter when a whole batch's worth of examples
goes; it trains under the first ``T'`` rates of the logged schedule (``learning_rates``), as
the run factory does, whose schedule is fixed by the configured number of steps, and as
``counterfactuals.keep_schedule`` gives. Its horizon window ends at its own last step ``T'``.

Ids the simulator never saw in its fit (``Simulator.seen_ids``) get a NaN effect and an
``UnseenExampleWarning``, never a silent 0.

Modules: :mod:`.deltas` (the one jitted rollout of edited curricula, chunked), :mod:`.checks`
(inputs, warnings), :mod:`.effects` (``removal_effects``, ``top``, ``group_effect``),
:mod:`.matrix` (``score_matrix``, ``sample_like``), :mod:`.scores` (``save_scores``,
``load_scores``); every public name is imported here.

Example::

    import simfluence_jax as sj
    effects = sj.removal_effects(sim, heldout.batches[0], heldout.L0[0],
                                 learning_rates=heldout.learning_rates[0], horizon=8)
    ids, delta = sj.top(effects, test=12, k=10)               # most helpful first
    both = sj.group_effect(sim, heldout.batches[0], heldout.L0[0], ids[:8])
    S = sj.score_matrix(sim, heldout, heldout.L0[0], num_curricula=1000)   # [N, M]
    sj.save_scores("scores", S, train_ids=heldout.train_ids, test_ids=heldout.test_ids)
"""

from simfluence_jax.attribution.deltas import (
    BATCH_LOSSES,
    CHUNK_BYTES,
    CHUNK_MULTIPLE,
    NO_ID,
    _chunk_size,  # noqa: F401  (benchmarks/bench_attribution.py sizes its chunks with it)
    _edited_windows_jit,  # noqa: F401  (tests/test_simulators.py counts its compilations)
    removal_deltas,
)
from simfluence_jax.attribution.effects import Effects, group_effect, removal_effects, top
from simfluence_jax.attribution.matrix import occurrences, sample_like, score_matrix
from simfluence_jax.attribution.scores import (
    SCORES_FORMAT,
    SCORES_VERSION,
    SIGN_CONVENTION,
    Scores,
    load_scores,
    save_scores,
)

__all__ = [
    "BATCH_LOSSES",
    "CHUNK_BYTES",
    "CHUNK_MULTIPLE",
    "NO_ID",
    "SCORES_FORMAT",
    "SCORES_VERSION",
    "SIGN_CONVENTION",
    "Effects",
    "Scores",
    "group_effect",
    "load_scores",
    "occurrences",
    "removal_deltas",
    "removal_effects",
    "sample_like",
    "save_scores",
    "score_matrix",
    "top",
]
