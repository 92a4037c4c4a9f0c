"""Reads T5X checkpoints (Orbax format) into the parameter tree of ``t5.T5Transformer``.

A T5X checkpoint step folder ``<model_dir>/checkpoint_<step>/`` holds an Orbax ``state`` item
whose tree is ``{'target': <params>, 'state': {'step': ..., 'param_states': ...}}``; the
``target`` tree uses the same names and the same ``[in, out]`` kernel layouts as
``T5Transformer``, so loading is a restore plus checks. Only ``target`` (and the scalar
``state/step``) is read, as host numpy arrays: no optimizer state, no t5x import, and no device
shardings, so the saved ``_sharding`` file (which names the writer's devices) plays no part.

The config is inferred from the parameter shapes (``infer_t5_config``) or checked against a
given one (``check_params``); any disagreement raises a ``ValueError`` that names the
parameters concerned.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from simfluence_jax.models.t5 import T5Config, flat_shapes, param_shapes

_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


@dataclasses.dataclass(frozen=True)
class T5XCheckpoint:
    """A restored checkpoint: ``params`` (nested dict of float32 numpy arrays), its
    ``config``, the training ``step`` (``None`` when the checkpoint does not store one) and the
    ``path`` of the Orbax item that was read."""

    params: dict
    config: T5Config
    step: int | None
    path: Path


def find_state_dir(path: str | Path) -> Path:
    """The Orbax ``state`` item folder for ``path``.

    ``path`` may be a step folder (``.../checkpoint_30``), its ``state`` item, or a T5X model
    dir holding ``checkpoint_<step>`` folders (the highest step is taken).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"T5X checkpoint path {str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"T5X checkpoint path {str(path)!r} is a file, not a checkpoint folder")
    if _is_orbax_item(path / "state"):
        return path / "state"
    if _is_orbax_item(path):
        return path
    steps = sorted(
        (int(m.group(1)), child)
        for child in path.iterdir()
        if child.is_dir() and (m := _STEP_DIR.match(child.name))
    )
    if steps:
        return find_state_dir(steps[-1][1])
    if (path / "checkpoint").is_file():
        raise ValueError(
            f"{str(path)!r} looks like a pre-Orbax T5X checkpoint (msgpack 'checkpoint' file); "
            "only Orbax checkpoints are supported"
        )
    contents = sorted(p.name for p in path.iterdir())[:10]
    raise ValueError(
        f"{str(path)!r} is not a T5X checkpoint: it has no Orbax 'state' item "
        f"(expected 'state/_METADATA'), nor checkpoint_<step> folders; it contains {contents}"
    )


def _is_orbax_item(path: Path) -> bool:
    return path.is_dir() and (path / "_METADATA").is_file()


def read_target_tree(state_dir: str | Path) -> tuple[dict, int | None]:
    """Restores ``target`` (and ``state/step`` when present) as host numpy arrays.

    Returns ``(params, step)``; ``params`` is the nested ``target`` dict in float32.
    """
    state_dir = Path(state_dir).absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        item_metadata = checkpointer.metadata(state_dir).item_metadata
    except Exception as err:  # orbax raises many types for unreadable folders
        raise ValueError(
            f"could not read Orbax metadata of {str(state_dir)!r}: {type(err).__name__}: {err}"
        ) from err
    if item_metadata is None:
        raise ValueError(
            f"could not read Orbax metadata of {str(state_dir)!r}: its tree metadata "
            "(_METADATA, manifest.ocdbt and data files) is missing or damaged"
        )
    metadata = item_metadata.tree
    if not isinstance(metadata, dict) or "target" not in metadata:
        keys = sorted(metadata) if isinstance(metadata, dict) else type(metadata).__name__
        raise ValueError(
            f"{str(state_dir)!r} is not a T5X train state: no 'target' in its tree (has {keys})"
        )
    wanted = {"target": metadata["target"]}
    inner = metadata.get("state")
    if isinstance(inner, dict) and "step" in inner:
        wanted["state"] = {"step": inner["step"]}

    item = jax.tree_util.tree_map(lambda m: np.zeros(m.shape, m.dtype), wanted)
    restore_args = jax.tree_util.tree_map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted
    )
    try:
        restored = checkpointer.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )
    except Exception as err:
        raise ValueError(
            f"could not restore 'target' from {str(state_dir)!r}: {type(err).__name__}: {err}"
        ) from err
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), restored["target"])
    step = restored.get("state", {}).get("step")
    return params, (None if step is None else int(np.asarray(step)))


def infer_t5_config(params: dict, **overrides: Any) -> T5Config:
    """A ``T5Config`` whose parameter shapes are those of ``params`` (a T5X ``target`` tree).

    Read from shapes: vocab and embedding size (``token_embedder/embedding: [V, E]``),
    heads and buckets (``encoder/relpos_bias/rel_embedding: [H, buckets]``), head size
    (query kernel ``[E, H*D]``), MLP width, layer counts, and ``logits_via_embedding``
    (true when ``decoder/logits_dense`` is absent). Not visible in shapes, so taken from
    ``overrides`` or T5.1.1 defaults: ``mlp_activations`` (``('gelu', 'linear')`` when there
    are two input kernels, ``('relu',)`` for one), ``dropout_rate`` 0, ``max_distance`` 128.
    """
    shapes = flat_shapes(params)

    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ValueError(
                f"cannot infer the T5 config: parameter {key!r} is missing "
                f"(found {len(shapes)} arrays, e.g. {sorted(shapes)[:4]})"
            )
        return shapes[key]

    vocab_size, emb_dim = need("token_embedder/embedding")
    num_heads, num_buckets = need("encoder/relpos_bias/rel_embedding")
    qkv = need("encoder/layers_0/attention/query/kernel")[1]
    if qkv % num_heads:
        raise ValueError(
            f"query kernel width {qkv} is not a multiple of the {num_heads} relpos heads"
        )
    n_wi = sum(1 for k in shapes if re.match(r"encoder/layers_0/mlp/wi(_\d+)?/kernel$", k))
    wi_key = "encoder/layers_0/mlp/wi/kernel" if n_wi == 1 else "encoder/layers_0/mlp/wi_0/kernel"
    inferred = {
        "vocab_size": vocab_size,
        "emb_dim": emb_dim,
        "num_heads": num_heads,
        "head_dim": qkv // num_heads,
        "mlp_dim": need(wi_key)[1],
        "num_encoder_layers": _count_layers(shapes, "encoder"),
        "num_decoder_layers": _count_layers(shapes, "decoder"),
        "logits_via_embedding": "decoder/logits_dense/kernel" not in shapes,
        "mlp_activations": ("relu",)
        if n_wi == 1
        else ("gelu", "linear") + ("linear",) * (n_wi - 2),
        "num_buckets": num_buckets,
    }
    inferred.update(overrides)
    return T5Config(**inferred)


def _count_layers(shapes: dict, stack: str) -> int:
    ids = {int(m.group(1)) for k in shapes if (m := re.match(rf"{stack}/layers_(\d+)/", k))}
    if not ids or ids != set(range(len(ids))):
        raise ValueError(f"{stack} layers in the checkpoint are not layers_0..N-1: {sorted(ids)}")
    return len(ids)


def check_params(params: dict, config: T5Config) -> None:
    """Raises ``ValueError`` unless ``params`` has exactly the arrays and shapes of ``config``."""
    got, want = flat_shapes(params), param_shapes(config)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = [
        f"{k}: checkpoint {got[k]} vs config {want[k]}"
        for k in want
        if got.get(k, want[k]) != want[k]
    ]
    if missing or extra or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches: " + "; ".join(wrong[:6]))
        if missing:
            parts.append(f"{len(missing)} missing: {missing[:6]}")
        if extra:
            parts.append(f"{len(extra)} unexpected: {extra[:6]}")
        raise ValueError("checkpoint parameters disagree with the T5 config: " + " | ".join(parts))


def load_t5x_checkpoint(path: str | Path, *, config: T5Config | None = None) -> T5XCheckpoint:
    """Restores a T5X checkpoint's parameters; infers ``config`` when not given, else checks it.

    ``path``: a ``checkpoint_<step>`` folder, its ``state`` item, or a model dir (latest step).
    """
    state_dir = find_state_dir(path)
    params, step = read_target_tree(state_dir)
    if config is None:
        config = infer_t5_config(params)
    check_params(params, config)
    return T5XCheckpoint(params=params, config=config, step=step, path=state_dir)
