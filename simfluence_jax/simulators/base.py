"""The simulator interface: one stateful step, one rollout for every simulator.

A simulator predicts, for every test example, a loss trajectory from a curriculum, the
observed starting losses L_0 and (for simulators that follow the learning-rate schedule) the
schedule of the simulated run (docs/design.md, "Simulators"). Every simulator is a step
function over a per-test-example state:

    (state_t, L^_t) = step(p, state_{t-1}, ids_t, w_t, t, s_t, L^_{t-1})
    state_0 = init_state(p, L_0)

with ``p`` the parameters of one test example, ``ids_t, w_t`` the training ids of step t and
their weights (``1`` per occurrence, ``0`` for padding), and ``s_t`` the learning-rate scale of
the step (``1`` for simulators that ignore the schedule). The state is any pytree: empty for
plain Simfluence-Linear, the filtered batch effects for the optimizer kernel, the last n
losses for an order-n featurized simulator. ``rollout.rollout`` is the only rollout: a
``lax.scan`` of ``step`` over the steps, ``vmap``-ed over test examples and curricula.

Simulators whose update is affine in the previous loss with coefficients that do not depend
on it, ``L^_t = alpha_t L^_{t-1} + beta_t``, implement ``affine_step`` instead of ``step``
(``AffineSimulator``); they get ``step`` for free and the closed form of the final loss
(``rollout.closed_form_final``).

Concrete simulators are registered dataclasses (pytrees; ``jax.tree_util.register_dataclass``
through ``simulator_dataclass``) whose array fields carry a leading test-example axis ``M``
where ``per_test`` says so. They are final: wrap them, do not subclass them.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

PyTree = Any

#: Marks a dataclass field as static (part of the tree structure, not a leaf).
STATIC = {"static": True}


def static_field(default):
    """A dataclass field that is part of the pytree structure (hashable, not traced)."""
    return dataclasses.field(default=default, metadata=STATIC)


def simulator_dataclass(cls):
    """Makes ``cls`` a frozen dataclass registered as a pytree (``static_field`` = static)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    data, meta = [], []
    for f in dataclasses.fields(cls):
        (meta if f.metadata.get("static") else data).append(f.name)
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


class Simulator(abc.ABC):
    """Abstract simulator; see the module docstring for the contract."""

    name: str
    #: The save format of the class's arrays (``simulators.io``): ``field -> (dtype kinds,
    #: shape)``, kinds as ``numpy.dtype.kind`` letters (``"f"``, ``"iu"``, ``"b"``) and the
    #: shape in named sizes shared across the class's arrays (``("M", "N")``; ``None`` any
    #: size, a shape of ``None`` any shape). Listed arrays must also be finite; others are
    #: checked for a plain numeric dtype and against the shapes recorded at save time.
    ARRAY_SHAPES: ClassVar[dict[str, tuple]] = {}
    #: Whether ``step`` is called on a step whose weights are all 0 (every example removed).
    #: By default such a step is no update (state and loss carry over); the metagradient
    #: simulator predicts each step from the whole edit and needs every step.
    steps_when_empty = False

    @abc.abstractmethod
    def per_test(self) -> PyTree:
        """The per-test-example parameters: a pytree whose leaves have leading axis ``M``."""

    def init_state(self, p: PyTree, L0: jax.Array) -> PyTree:
        """The state before step 1 of one test example (default: no state)."""
        del p, L0
        return ()

    @abc.abstractmethod
    def step(
        self,
        p: PyTree,
        state: PyTree,
        ids: jax.Array,
        w: jax.Array,
        t: jax.Array,
        s: jax.Array,
        L: jax.Array,
    ) -> tuple[PyTree, jax.Array]:
        """One simulated step of one test example.

        Args:
          p: ``per_test()`` with the leading ``M`` axis removed (one test example).
          state: the state after step ``t - 1``.
          ids: ``int32[B]`` training ids of step ``t`` (padding clipped to 0).
          w: ``float32[B]`` their weights (1 per occurrence, 0 for padding).
          t: the step number, 1-based.
          s: the step's learning-rate scale ``eta_t / eta_ref`` (1 when not ``lr_scaled``).
          L: the simulated loss after step ``t - 1``.

        Returns:
          ``(state after step t, L^_t)``.
        """

    @classmethod
    def check_saved(cls, arrays: dict, arrays_file) -> None:
        """Checks of saved arrays beyond ``ARRAY_SHAPES`` (called by ``io.load_simulator``
        once the shapes passed); raises ``ValueError`` naming ``arrays_file``. Default: none."""
        del arrays, arrays_file

    def replace(self, **changes) -> Simulator:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    @property
    def lr_reference(self) -> float | None:
        """``eta_ref`` of ``s_t = eta_t / eta_ref``, or ``None`` if the simulator ignores the
        schedule (then ``s_t = 1`` and learning rates given to a rollout are ignored)."""
        return None

    @property
    def num_test(self) -> int:
        return jax.tree_util.tree_leaves(self.per_test())[0].shape[0]

    @property
    def num_train(self) -> int | None:
        """The pool size N the simulator has parameters for, if it has a fixed one."""
        seen = self.seen_ids()
        return None if seen is None else int(seen.shape[0])

    def seen_ids(self) -> jax.Array | None:
        """``bool[N]`` ids that had data in the fit, or ``None`` if every id is valid."""
        return None

    def check_curricula(self, batches) -> None:
        """Raises ``ValueError`` for curricula ``[..., T, B]`` outside the simulator's domain.

        Default: none (every curriculum of known ids). The metagradient simulator predicts
        only slot removals of its own run. Called by ``rollout.check_ids``, so every checked
        entry point (``simulate``, ``evaluate``, the attribution API) asks it."""
        del batches

    def restrict(self, tests) -> Simulator:
        """The simulator on a subset of its test examples (``int[M']`` indices)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be restricted to test examples")

    def count_effects(self):
        """``(alpha0, A [M, N], B [M, N])`` if the simulator's step is plain Simfluence-Linear
        in the batch count vector (what gradient curriculum search needs), else ``None``."""
        return None


class AffineSimulator(Simulator):
    """A simulator whose step is ``L^_t = alpha_t L^_{t-1} + beta_t`` with ``(alpha_t,
    beta_t)`` independent of the loss; it has a closed form for the final loss."""

    @abc.abstractmethod
    def affine_step(self, p, state, ids, w, t, s) -> tuple[PyTree, jax.Array, jax.Array]:
        """``(state after step t, alpha_t, beta_t)`` for one test example."""

    def step(self, p, state, ids, w, t, s, L):
        state, alpha, beta = self.affine_step(p, state, ids, w, t, s)
        return state, (alpha * L + beta).astype(L.dtype)


def batch_mask(batch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(safe_ids, weight)``: padding ids clipped to 0 with weight 0."""
    valid = batch >= 0
    return jnp.where(valid, batch, 0), valid.astype(jnp.float32)
