"""An additive simulator whose per-example decrements change with the training segment.

For one test example, with per-training-example similarities ``S[k, i]`` for segments
``k = 0..K-1`` (e.g. gradient dot products at K checkpoints), step learning rates
``eta_t`` and the segment ``k(t)`` of each step:

    L_t = L_{t-1} + beta_t,      beta_t = -s * (eta_t / |c_t|) * sum_{i in c_t} S[k(t), i]

with ``|c_t|`` the number of real (non-padding) ids in the batch, an id repeated in the
batch counted twice, and ``s`` a global scale (1 for raw scores). This is the first-order
(TracIn) change of the test loss for one SGD step on the batch's *mean* loss (Pruthi et
al., 2020; Guu et al., 2023, section 4.3, which shows TracIn to be this additive special
case of Simfluence-Linear): ``S`` positive means the example lowers the test loss.
``K = 1`` gives a single set of decrements (Grad-Dot, summed TracIn-CP, influence
functions) that still follows the learning-rate schedule and the batch size.

Steps past the end of the stored schedule use its last rate and segment.

This module also declares the gradient baselines' fitters (``GRADIENT_BASELINES``, raw and
calibrated), which return this simulator; they live in ``gradients.baselines`` (the
training stack) and are imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.simulators.base import AffineSimulator, simulator_dataclass, static_field
from simfluence_jax.simulators.fitter import Fitter

#: The gradient baselines (``simfluence_jax.gradients.baselines``), each registered raw and
#: calibrated (``<name>_calibrated``); their fitters return a ``SegmentedSimulator``.
GRADIENT_BASELINES = ("tracin_cp", "tracin_cp_summed", "grad_dot", "influence", "trak", "ekfac")
CALIBRATED_SUFFIX = "_calibrated"


@simulator_dataclass
class SegmentedSimulator(AffineSimulator):
    """Additive simulator with segment-dependent, learning-rate-scaled decrements.

    Attributes:
      S: ``float32[M, K, N]`` similarity of training example i to test example j in
        segment k (positive lowers the test loss).
      eta: ``float32[T]`` learning rate of steps ``1..T``.
      segment: ``int32[T]`` segment ``k(t)`` of steps ``1..T``.
      seen: ``bool[N]`` ids with a score (all of them for gradient scores).
      scale: the global scale ``s`` (1 for raw scores, fitted for calibrated ones).
      name: registry name of the simulator that produced it.
    """

    S: jax.Array
    eta: jax.Array
    segment: jax.Array
    seen: jax.Array
    scale: jax.Array = 1.0
    name: str = static_field("segmented")

    ARRAY_SHAPES: ClassVar[dict[str, tuple]] = {
        "S": ("f", ("M", "K", "N")),
        "eta": ("f", ("T",)),
        "segment": ("iu", ("T",)),
        "seen": ("b", ("N",)),
        "scale": ("f", None),
    }

    @classmethod
    def check_saved(cls, arrays: dict, arrays_file: Path) -> None:
        """Every step's segment is one of the K segments of ``S``."""
        if {"S", "segment"} <= set(arrays):
            k, seg = np.shape(arrays["S"])[1], np.asarray(arrays["segment"])
            if seg.size and (seg.min() < 0 or seg.max() >= k):
                raise ValueError(
                    f"{arrays_file}: array 'segment' holds segments outside 0..{k - 1}; the "
                    "file is damaged"
                )

    def per_test(self):
        M = self.S.shape[0]
        T = self.eta.shape[0]
        return (
            self.S,
            jnp.broadcast_to(jnp.asarray(self.eta, jnp.float32), (M, T)),
            jnp.broadcast_to(jnp.asarray(self.segment, jnp.int32), (M, T)),
            jnp.broadcast_to(jnp.asarray(self.scale, jnp.float32), (M,)),
        )

    def affine_step(self, p, state, ids, w, t, s):
        S, eta, segment, scale = p
        step = jnp.clip(t - 1, 0, eta.shape[0] - 1)
        count = jnp.maximum(w.sum(), 1.0)
        decrement = jnp.sum(S[segment[step], ids] * w)
        return state, jnp.float32(1.0), -scale * eta[step] / count * decrement

    def seen_ids(self):
        return self.seen

    def restrict(self, tests):
        return self.replace(S=jnp.asarray(self.S)[tests])

    @property
    def num_segments(self) -> int:
        return self.S.shape[1]


def _gradient_fitter(name: str, calibrated: bool) -> Fitter:
    kind = "calibrated" if calibrated else "raw"
    return Fitter(
        "simfluence_jax.gradients.baselines:make_fitter", args=(name, calibrated),
        inputs=("gradients",), group=f"gradient baseline ({kind})",
        doc=f"{name} ({kind}); needs gradients=",
    )  # fmt: skip


EXTENSIONS = {
    "simulator class": {"SegmentedSimulator": SegmentedSimulator},
    # The gradient baselines need the training stack: referenced by name.
    "simulator": {
        name + (CALIBRATED_SUFFIX if calibrated else ""): _gradient_fitter(name, calibrated)
        for name in GRADIENT_BASELINES
        for calibrated in (False, True)
    },
}
