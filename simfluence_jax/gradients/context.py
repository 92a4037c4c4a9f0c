"""What the gradient baselines need besides a RunSet, and their cached scores.

A ``RunSet`` holds curricula and losses only; TracIn-CP, Grad-Dot and influence functions
also need the model's loss, the training and test inputs and the saved checkpoints. The
fitters registered by ``simfluence_jax.gradients.baselines`` take them as one keyword::

    ctx = GradientContext.from_store(store, model, params, method, pool=pool, test=test,
                                     runs=[0, 1])
    sim = fit_simulator("tracin_cp", fit_runs, gradients=ctx)

Anything with the members of :class:`GradientSource` works as ``gradients`` (a source needs
only the scores its simulators read):
:class:`GradientContext` computes the scores on first use and caches them;
:class:`PrecomputedGradients` holds them as arrays (saved to and loaded from ``.npz``
without pickle), so the expensive part is done once and the fitters run in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from simfluence_jax.gradients.ekfac import EKFACConfig, ekfac_scores
from simfluence_jax.gradients.influence import (
    InfluenceConfig,
    SolveInfo,
    SolverConfig,
    influence_scores,
)
from simfluence_jax.gradients.per_example import LossFn, Projection, Select, method_loss
from simfluence_jax.gradients.scores import SCORE_KINDS
from simfluence_jax.gradients.tracin import Checkpoint, checkpoint_dots, group_by_step, make_dots_fn
from simfluence_jax.gradients.trak import TRAKConfig, trak_scores


@runtime_checkable
class GradientSource(Protocol):
    """The interface the gradient fitters read (axes train x test, positive = helps)."""

    learning_rates: np.ndarray | None

    def checkpoint_dots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps int[K], checkpoint rates float32[K], dots float32[K, N, M])``."""
        ...

    def final_dots(self) -> np.ndarray:
        """``float32[N, M]`` gradient dot products at the final model."""
        ...

    def influence_scores(self) -> np.ndarray:
        """``float32[N, M]``: ``g_i^T (H + lambda I)^{-1} g_test_j`` at the final model."""
        ...

    def trak_scores(self) -> np.ndarray:
        """``float32[N, M]``: TRAK scores (``gradients.trak``), ensemble-averaged."""
        ...

    def ekfac_scores(self) -> np.ndarray:
        """``float32[N, M]``: EK-FAC influence scores (``gradients.ekfac``)."""
        ...


# ---------------------------------------------------------------------------------------------


class GradientContext:
    """Computes gradient scores of one model on one pool and test set, with caching.

    Args:
      loss_fn: ``loss_fn(theta, frozen, inputs) -> float32[B]`` (``per_example.method_loss``).
      frozen: passed to ``loss_fn`` (``MethodData.frozen``).
      pool: the N training inputs (leaves ``[N, ...]``), as ``loss_fn`` reads them.
      test: the M test inputs.
      checkpoints: saved parameters with their learning rates (one or several runs; those
        at the same step are averaged).
      final: the final model for Grad-Dot and influence functions; default: the
        checkpoints at the largest step (averaged over runs).
      learning_rates: ``float32[T]``, the rate of steps ``1..T``; default: read from the
        runs' metadata by the fitters.
      select: parameters entering the TracIn / Grad-Dot gradients (``param_mask``).
      chunk_size: gradients alive at once.
      projection: optional random projection of the TracIn / Grad-Dot gradients: a
        ``Projection``, an ``int`` (Gaussian of that dimension) or a dict of ``Projection``
        fields (``{"dim": 1024, "kind": "countsketch"}``, as a config file would give it).
      influence: a solver's config (``gradients.ihvp``: ``CGConfig``, ``ExactConfig``, ...)
        or a dict for ``InfluenceConfig`` (``{"solver": "exact", "damping": 0.01,
        "select": "head/"}``); default ``InfluenceConfig()`` (CG).
      hessian_inputs: examples defining the Hessian (default: the pool).
      trak: a ``TRAKConfig`` or a dict of its fields (``{"dim": 1024, "ensemble_size":
        4}``); default ``TRAKConfig()``. Its ensemble is ``final`` (when given) and then
        the checkpoints, the latest first.
      ekfac: an ``EKFACConfig`` or a dict of its fields (``{"damping": 0.1, "layers":
        "kernel$", "fisher": "true", "num_classes": 2}``); default ``EKFACConfig()``. It
        uses ``hessian_inputs`` like influence functions.
    """

    def __init__(
        self,
        loss_fn: LossFn,
        *,
        frozen: Any,
        pool: Any,
        test: Any,
        checkpoints: Sequence[Checkpoint],
        final: Any | None = None,
        learning_rates: Sequence[float] | None = None,
        select: Select = None,
        chunk_size: int | None = 32,
        projection: Projection | int | Mapping | None = None,
        influence: SolverConfig | Mapping | None = None,
        hessian_inputs: Any | None = None,
        trak: TRAKConfig | Mapping | None = None,
        ekfac: EKFACConfig | Mapping | None = None,
    ):
        if isinstance(projection, int):
            projection = Projection(dim=projection)
        elif isinstance(projection, Mapping):
            projection = Projection(**projection)
        if isinstance(influence, Mapping):
            influence = InfluenceConfig(**influence)
        self.groups = group_by_step(checkpoints)
        self.loss_fn = loss_fn
        self.frozen = frozen
        self.pool = pool
        self.test = test
        self.final = final
        self.learning_rates = None if learning_rates is None else np.asarray(learning_rates)
        self.select = select
        self.chunk_size = chunk_size
        self.projection = projection
        self.influence = influence if influence is not None else InfluenceConfig()
        self.hessian_inputs = hessian_inputs
        self.trak = TRAKConfig(**trak) if isinstance(trak, Mapping) else trak or TRAKConfig()
        self.trak_info: dict = {}
        self.ekfac = EKFACConfig(**ekfac) if isinstance(ekfac, Mapping) else ekfac or EKFACConfig()
        self.ekfac_info: list[dict] = []
        self.influence_info: list[SolveInfo] = []
        self._cache: dict[str, Any] = {}
        self._dots_fn = make_dots_fn(
            loss_fn, pool, test, select=select, chunk_size=chunk_size, projection=projection
        )

    @classmethod
    def from_method(
        cls,
        model,
        params,
        method,
        *,
        pool: dict,
        test: dict,
        checkpoints: Sequence[Checkpoint],
        **kwargs,
    ) -> GradientContext:
        """A context for a training method (``simfluence_jax.training.methods``).

        ``pool`` and ``test`` are ``model.example_arrays`` outputs; checkpoints hold the
        method's trainable pytrees (what the run store saves).
        """
        data = method.setup(model, params, pool, test)
        return cls(
            method_loss(model, method),
            frozen=data.frozen,
            pool=data.pool,
            test=data.test,
            checkpoints=checkpoints,
            **kwargs,
        )

    @classmethod
    def from_store(
        cls,
        store,
        model,
        params,
        method,
        *,
        pool: dict,
        test: dict,
        runs: int | Sequence[int],
        **kwargs,
    ) -> GradientContext:
        """A context from the checkpoints and learning-rate schedule a run store kept.

        Args:
          store: a ``RunStore`` or its directory.
          model, params, method: as given to the ``RunFactory`` that made the runs.
          pool, test: the same example arrays.
          runs: the runs whose checkpoints are used (usually some fitting runs).
          **kwargs: the remaining ``GradientContext`` arguments.
        """
        from simfluence_jax import store as store_lib
        from simfluence_jax.gradients.tracin import load_checkpoints

        store = store if isinstance(store, store_lib.RunStore) else store_lib.open_store(store)
        checkpoints = load_checkpoints(store, runs)
        run0 = runs if isinstance(runs, (int, np.integer)) else list(runs)[0]
        kwargs.setdefault("learning_rates", store.run_meta(int(run0)).get("learning_rates"))
        return cls.from_method(
            model, params, method, pool=pool, test=test, checkpoints=checkpoints, **kwargs
        )

    # -- scores -----------------------------------------------------------------------------
    def checkpoint_dots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps int[K], rates float32[K], dots float32[K, N, M])``; computed once."""
        if "checkpoints" not in self._cache:
            checkpoints = [ck for cks in self.groups.values() for ck in cks]
            self._cache["checkpoints"] = checkpoint_dots(
                self.loss_fn,
                checkpoints,
                self.frozen,
                self.pool,
                self.test,
                dots_fn=self._dots_fn,
            )
        return self._cache["checkpoints"]

    def _final_params(self) -> list[Any]:
        if self.final is not None:
            return [self.final]
        return [ck.theta for ck in self.groups[max(self.groups)]]

    def final_dots(self) -> np.ndarray:
        """``float32[N, M]`` at the final model; computed once."""
        if "final" not in self._cache:
            if self.final is None and "checkpoints" in self._cache:
                self._cache["final"] = self._cache["checkpoints"][2][-1]
            else:
                per = [np.asarray(self._dots_fn(th, self.frozen)) for th in self._final_params()]
                self._cache["final"] = np.mean(per, axis=0).astype(np.float32)
        return self._cache["final"]

    def influence_scores(self) -> np.ndarray:
        """``float32[N, M]`` at the final model (averaged over runs); computed once."""
        if "influence" not in self._cache:
            per = []
            for theta in self._final_params():
                scores, info = influence_scores(
                    self.loss_fn,
                    theta,
                    self.frozen,
                    self.pool,
                    self.test,
                    hessian_inputs=self.hessian_inputs,
                    config=self.influence,
                )
                self.influence_info.append(info)
                per.append(scores)
            self._cache["influence"] = np.mean(per, axis=0).astype(np.float32)
        return self._cache["influence"]

    def ensemble(self) -> list[Any]:
        """The models TRAK averages over: ``final`` (when given), then every checkpoint,
        the latest step first (runs in the order given)."""
        models = [] if self.final is None else [self.final]
        for step in sorted(self.groups, reverse=True):
            models.extend(ck.theta for ck in self.groups[step])
        return models

    def trak_scores(self) -> np.ndarray:
        """``float32[N, M]``: TRAK (``gradients.trak``) over :meth:`ensemble`; computed once."""
        if "trak" not in self._cache:
            scores, self.trak_info = trak_scores(
                self.loss_fn, self.ensemble(), self.frozen, self.pool, self.test,
                config=self.trak,
            )  # fmt: skip
            self._cache["trak"] = scores
        return self._cache["trak"]

    def ekfac_scores(self) -> np.ndarray:
        """``float32[N, M]`` EK-FAC influence at the final model (averaged over runs);
        computed once."""
        if "ekfac" not in self._cache:
            per = []
            for theta in self._final_params():
                scores, info = ekfac_scores(
                    self.loss_fn, theta, self.frozen, self.pool, self.test,
                    hessian_inputs=self.hessian_inputs, config=self.ekfac,
                )  # fmt: skip
                self.ekfac_info.append(info)
                per.append(scores)
            self._cache["ekfac"] = np.mean(per, axis=0).astype(np.float32)
        return self._cache["ekfac"]

    def precompute(
        self, which: Sequence[str] = ("checkpoints", "final", "influence")
    ) -> PrecomputedGradients:
        """The requested scores as arrays (computing what is not cached yet); ``which`` names
        kinds of ``gradients.scores.SCORE_KINDS`` (also ``trak`` and ``ekfac``)."""
        kinds = {name: SCORE_KINDS.get(name) for name in which}  # every name checked first
        fields: dict[str, np.ndarray] = {}
        for name in sorted(kinds):  # "checkpoints" first: "final" then reuses its last dots
            fields.update(kinds[name].compute(self))
        return PrecomputedGradients(**fields, learning_rates=self.learning_rates)


# ---------------------------------------------------------------------------------------------


#: The array fields of :class:`PrecomputedGradients`, as saved.
ARRAY_FIELDS = (
    "steps", "checkpoint_rates", "dots", "final", "influence", "learning_rates", "trak", "ekfac",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PrecomputedGradients:
    """Gradient scores as plain arrays (train x test, positive lowers the test loss).

    Attributes:
      steps: ``int[K]`` checkpoint steps, increasing.
      checkpoint_rates: ``float32[K]`` the learning rate of the update from each checkpoint.
      dots: ``float32[K, N, M]`` gradient dot products at each checkpoint.
      final: ``float32[N, M]`` dot products at the final model (Grad-Dot).
      influence: ``float32[N, M]`` influence-function scores.
      trak: ``float32[N, M]`` TRAK scores.
      ekfac: ``float32[N, M]`` EK-FAC influence scores.
      learning_rates: ``float32[T]`` the rate of steps ``1..T`` (or ``None``).
      metadata: JSON-serialisable notes (model, selection, projection, damping).
    """

    steps: np.ndarray | None = None
    checkpoint_rates: np.ndarray | None = None
    dots: np.ndarray | None = None
    final: np.ndarray | None = None
    influence: np.ndarray | None = None
    learning_rates: np.ndarray | None = None
    trak: np.ndarray | None = None
    ekfac: np.ndarray | None = None
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.dots is not None:
            dots = np.asarray(self.dots)
            K = dots.shape[0] if dots.ndim == 3 else -1
            if (
                dots.ndim != 3
                or np.shape(self.steps) != (K,)
                or np.shape(self.checkpoint_rates) != (K,)
            ):
                raise ValueError(
                    f"dots must be [K, N, M] with K steps and K rates, got {dots.shape}, "
                    f"{np.shape(self.steps)}, {np.shape(self.checkpoint_rates)}"
                )
        for name in ("final", "influence", "trak", "ekfac"):
            value = getattr(self, name)
            if value is not None and np.ndim(value) != 2:
                raise ValueError(f"{name} must be [N, M], got shape {np.shape(value)}")

    def _need(self, name: str, what: str):
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"these precomputed gradients hold no {what}")
        return value

    def checkpoint_dots(self):
        return (
            self._need("steps", "checkpoint dot products"),
            np.asarray(self.checkpoint_rates, np.float32),
            np.asarray(self.dots, np.float32),
        )

    def final_dots(self) -> np.ndarray:
        if self.final is None and self.dots is not None:
            return np.asarray(self.dots[-1], np.float32)
        return np.asarray(self._need("final", "final-model dot products"), np.float32)

    def influence_scores(self) -> np.ndarray:
        return np.asarray(self._need("influence", "influence scores"), np.float32)

    def trak_scores(self) -> np.ndarray:
        return np.asarray(self._need("trak", "TRAK scores"), np.float32)

    def ekfac_scores(self) -> np.ndarray:
        return np.asarray(self._need("ekfac", "EK-FAC scores"), np.float32)

    def save(self, path: str | Path) -> Path:
        """Writes ``path`` (``.npz``; metadata as a JSON string)."""
        path = Path(path)
        arrays = {
            k: np.asarray(getattr(self, k)) for k in ARRAY_FIELDS if getattr(self, k) is not None
        }
        arrays["metadata"] = np.asarray(json.dumps(self.metadata))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        return path

    @staticmethod
    def load(path: str | Path) -> PrecomputedGradients:
        """Reads a file written by :meth:`save` (no pickle)."""
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("metadata", np.asarray("{}"))))
        return PrecomputedGradients(**arrays, metadata=meta)
