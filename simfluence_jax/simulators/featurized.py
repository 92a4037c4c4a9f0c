"""A featurized simulator: per-example parameters predicted from frozen text embeddings.

Simfluence-Linear (docs/design.md, section 3.1) learns one free pair (A_ij, B_ij) per
(training example i, test example j), so it knows nothing about an example no logged run
used. Following the featurized simulator of GPTfluence (Chai, Liu et al., EMNLP 2024), here
A and B are a learned function of frozen embeddings ``x_i`` (training example) and ``z_j``
(test example), so any example with an embedding can be simulated:

    u_i = P x~_i,   v_j = Q z~_j     (x~, z~: standardised embeddings; Q = P if tied)
    h_ij = gelu(W_x^T u_i + W_z^T v_j + W_xz^T (u_i * v_j) + b_h)
    [A^(1)_ij, ..., A^(n)_ij, B_ij] = s * (W_out^T h_ij + b_out)

with ``*`` the elementwise product (so the map sees the interaction of the two examples,
not only each on its own) and ``s = out_scale`` a fixed scale that keeps the outputs in
loss units while the weights stay O(1). The simulated update of test example j is the
``one_plus_sum`` form of Simfluence-Linear, of Markov order ``n``:

    L_t = (1 + sum_{i in c_t} A^(1)_ij) L_{t-1}
          + sum_{k=2..n} (sum_{i in c_t} A^(k)_ij) L_{t-k}  +  sum_{i in c_t} B_ij

(``L_{t-k}`` for ``t - k < 0`` is ``L_0``). ``one_plus_sum`` makes zero outputs mean "no
change": a freshly initialised map (``W_out = 0``) is the constant simulator, and weight
decay pulls towards it; it is also insensitive to ragged batches. An id repeated in a
batch counts twice; ``-1`` padding counts zero times.

Every order is a ``Simulator``: its state is the history ``(L_{t-1}, ..., L_{t-n})``, so
``rollout``, the counterfactuals, LDS and the searches use it like any other simulator.
``as_linear()`` returns the equivalent ``LinearSimulator`` of order 1 (which has a closed
form).
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp

from simfluence_jax.simulators.base import Simulator, simulator_dataclass, static_field
from simfluence_jax.simulators.fitter import Fitter
from simfluence_jax.simulators.linear import LinearSimulator

#: The learned fields of ``FeaturizedSimulator`` (the rest are data or fixed).
TRAINABLE = ("P", "Q", "W_x", "W_z", "W_xz", "b_h", "W_out", "b_out")


@simulator_dataclass
class FeaturizedSimulator(Simulator):
    """Simfluence with (A, B) predicted from embeddings; see the module docstring.

    Attributes:
      train_features: ``float32[N, Dx]`` embeddings of the training pool (may include
        examples that no fitting run used).
      test_features: ``float32[M, Dz]`` embeddings of the test examples.
      x_shift, x_scale: ``float32[Dx]`` standardisation of training features.
      z_shift, z_scale: ``float32[Dz]`` standardisation of test features.
      P: ``float32[Dx, d]``; Q: ``float32[Dz, d]`` projections.
      W_x, W_z, W_xz: ``float32[d, H]``; b_h: ``float32[H]`` hidden layer.
      W_out: ``float32[H, n+1]``; b_out: ``float32[n+1]`` output layer (A^(1..n), B).
      l2: the weight decay it was fitted with (``nan`` if not fitted).
      order: Markov order n.
      out_scale: the fixed output scale s.
      tied: ``v_j = P z~_j`` (one projection for both sides; ``Q`` is then unused).
      name: registry name.
    """

    train_features: jax.Array
    test_features: jax.Array
    x_shift: jax.Array
    x_scale: jax.Array
    z_shift: jax.Array
    z_scale: jax.Array
    P: jax.Array
    Q: jax.Array
    W_x: jax.Array
    W_z: jax.Array
    W_xz: jax.Array
    b_h: jax.Array
    W_out: jax.Array
    b_out: jax.Array
    l2: float = float("nan")
    order: int = static_field(1)
    out_scale: float = static_field(0.1)
    tied: bool = static_field(False)
    name: str = static_field("featurized")

    ARRAY_SHAPES: ClassVar[dict[str, tuple]] = {
        "train_features": ("f", ("N", "Dx")),
        "test_features": ("f", ("M", "Dz")),
        "x_shift": ("f", ("Dx",)),
        "x_scale": ("f", ("Dx",)),
        "z_shift": ("f", ("Dz",)),
        "z_scale": ("f", ("Dz",)),
        "P": ("f", ("Dx", "d")),
        "Q": ("f", (None, "d")),
        "W_x": ("f", ("d", "H")),
        "W_z": ("f", ("d", "H")),
        "W_xz": ("f", ("d", "H")),
        "b_h": ("f", ("H",)),
        "W_out": ("f", ("H", "n1")),
        "b_out": ("f", ("n1",)),
    }

    # Parameters ------------------------------------------------------------------------
    def pair_outputs(self, train_features=None, test_features=None) -> jax.Array:
        """``float32[M, N, n+1]``: (A^(1), ..., A^(n), B) for every (test, train) pair.

        Pass other ``train_features [N', Dx]`` / ``test_features [M', Dz]`` to evaluate the
        map on examples other than the stored ones.
        """
        x = self.train_features if train_features is None else train_features
        z = self.test_features if test_features is None else test_features
        weights = {k: getattr(self, k) for k in ("x_shift", "x_scale", "z_shift", "z_scale")}
        weights.update({k: getattr(self, k) for k in TRAINABLE})
        return _pair_map(x, z, weights, out_scale=self.out_scale, tied=self.tied)

    def effects(self) -> tuple[jax.Array, jax.Array]:
        """``(A: float32[M, N, n], B: float32[M, N])`` of the stored pool and tests."""
        out = self.pair_outputs()
        return out[..., : self.order], out[..., self.order]

    # The Simulator interface -------------------------------------------------------------
    def per_test(self):
        return self.effects()

    def init_state(self, p, L0):
        return jnp.full((self.order,), L0, jnp.float32)

    def step(self, p, state, ids, w, t, s, L):
        A, B = p  # [N, n], [N]
        a = jnp.sum(A[ids] * w[:, None], axis=0)  # sum_{i in c_t} A^(k)_i, k = 1..n
        b = jnp.sum(B[ids] * w)
        if self.order == 1:
            L_new = (1.0 + a[0]) * L + b
        else:
            L_new = markov_update(state, a, b)
        L_new = L_new.astype(L.dtype)
        return jnp.concatenate([L_new[None], state[:-1]]), L_new

    def seen_ids(self):
        return jnp.ones(self.num_train, bool)

    def restrict(self, tests):
        return self.with_features(test=jnp.asarray(self.test_features)[tests])

    def count_effects(self):
        if self.order != 1:
            return None
        A, B = self.effects()
        return 1.0, A[..., 0], B

    @property
    def num_test(self) -> int:
        return self.test_features.shape[0]

    @property
    def num_train(self) -> int:
        return self.train_features.shape[0]

    # Other examples ------------------------------------------------------------------------
    def with_features(self, *, train=None, test=None) -> FeaturizedSimulator:
        """The same learned map over another pool ``float32[N', Dx]`` and/or other test
        examples ``float32[M', Dz]`` (e.g. examples no fitting run used)."""
        new = {}
        for key, value, ref in (
            ("train_features", train, self.train_features),
            ("test_features", test, self.test_features),
        ):
            if value is None:
                continue
            value = jnp.asarray(value, jnp.float32)
            if value.ndim != 2 or value.shape[1] != ref.shape[1]:
                raise ValueError(
                    f"{key} must have shape [*, {ref.shape[1]}] like the fitted ones, got "
                    f"{value.shape}"
                )
            new[key] = value
        return self.replace(**new)

    def as_linear(self) -> LinearSimulator:
        """The equivalent ``LinearSimulator`` (``one_plus_sum`` form) for the stored pool and
        test examples; order 1 only."""
        if self.order != 1:
            raise ValueError(
                f"only order 1 has a linear equivalent, this one has order {self.order}"
            )
        A, B = self.effects()
        seen = jnp.ones(self.num_train, bool)
        return LinearSimulator(A=A[..., 0], B=B, seen=seen, alpha0=1.0, name=self.name, l2=self.l2)


@partial(jax.jit, static_argnames=("out_scale", "tied"))
def _pair_map(x, z, w, *, out_scale: float, tied: bool) -> jax.Array:
    """The pair map of the module docstring: ``x [N, Dx]``, ``z [M, Dz]`` -> ``[M, N, n+1]``.

    Compiled, so the numbers do not depend on whether the fields are NumPy or JAX arrays.
    """
    u = ((x - w["x_shift"]) / w["x_scale"]) @ w["P"]  # [N, d]
    v = ((z - w["z_shift"]) / w["z_scale"]) @ (w["P"] if tied else w["Q"])  # [M, d]
    pre = (
        (u @ w["W_x"])[None, :, :]
        + (v @ w["W_z"])[:, None, :]
        + jnp.einsum("nd,md,dh->mnh", u, v, w["W_xz"])
        + w["b_h"]
    )
    return out_scale * (jax.nn.gelu(pre) @ w["W_out"] + w["b_out"])


# The order-n update ------------------------------------------------------------------------
def markov_update(history: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """One step of the order-n update for one test example.

    Args:
      history: ``float32[n]``: ``(L_{t-1}, ..., L_{t-n})``.
      a: ``float32[n]``: ``sum_{i in c_t} A^(k)_i`` for k = 1..n.
      b: scalar ``sum_{i in c_t} B_i``.

    Returns:
      scalar L_t = L_{t-1} + sum_k a_k L_{t-k} + b.
    """
    return history[0] + jnp.dot(a, history) + b


EXTENSIONS = {
    "simulator class": {"FeaturizedSimulator": FeaturizedSimulator},
    "simulator": {
        # Trained with optax: referenced by name, imported on first use.
        "featurized": Fitter(
            "simfluence_jax.featurized_fit:fit_featurized",
            inputs=("features",),
            group="featurized",
            doc="(A, B) from frozen embeddings; needs features=",
        ),
    },
}
