"""Cost of recording every test loss at every step, against the loops a researcher would write.

For each setting, per training step (median over repeats of a block of ``steps`` steps,
measured interleaved so machine load hits every variant alike):

* ``fused_scan``: the run factory's compiled chunk (``lax.scan`` over steps of the
  instrumented step: update, then the losses of all M test examples), one run;
* ``fused_step``: the instrumented ``train_step`` jitted and called once per step;
* ``train_only`` and ``eval_only``: the plain update, and the test evaluation, alone;
* ``train_then_eval``: plain update and a separate evaluation call every step (the baseline
  the overhead is measured against; results stay on the device);
* ``naive_host_copy``: the same, copying the losses to the host after every step.

* ``run_g1`` / ``run_g4``: the factory's whole ``run`` of 4 runs (L_0 and host copies
  included) per run-step, with ``group_size`` 1 (a loop over runs reusing one compiled
  step) and 4 (``vmap`` over the 4 runs); ``run_mesh2``, when two devices exist (e.g.
  ``XLA_FLAGS=--xla_force_host_platform_device_count=2``), shards groups of 2 runs over a
  2-device mesh, one run per device.

``overhead = fused_scan / train_then_eval`` (aim: <= 1.10), from wall time and from the
process's CPU time (steadier when other jobs share the machine). Runs per hour are for the
GPTfluence run shape (T = 96 steps, batch 4) from ``run_g1`` and ``run_g4``.

Settings: ``toy`` (seconds; a smoke test), ``minilm_top1`` (the default: MiniLM on the
polarity task, top layer + head trained on cached lower layers, M = 50 test sentences of
48 tokens), ``minilm_top2``, ``minilm_lora``, ``minilm_full``, and ``t5_tiny`` /
``t5_tiny_lora`` (the tiny T5 pretrained by ``simfluence_jax.training.pretrain``, fine-tuned
text-to-text on polarity, input 64 / target 4 tokens).

Run: ``python -m benchmarks.bench_run_factory [--settings minilm_top1,toy] [--steps 8]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from benchmarks.common import table, write
from simfluence_jax.sampling import sample_curricula
from simfluence_jax.training import (
    RunFactory,
    init_state,
    make_eval_losses,
    make_method,
    make_optimizer,
    make_update,
)

T_PROTOCOL = 96


def toy_setting():
    from simfluence_jax.training.toy import ToyClassifier, random_task

    model = ToyClassifier(dim=64, n_layers=3, seq_len=32, vocab_size=512)
    pool, test = random_task(model, num_train=200, num_test=50)
    return model, model.init(jax.random.PRNGKey(0)), pool, test


def minilm_setting():
    from simfluence_jax.data.tasks import get_task
    from simfluence_jax.models.minilm import make_minilm

    task = get_task("polarity")
    model = make_minilm(label_names=task.label_names)
    pool = model.example_arrays(task.train_texts, task.train_targets)
    test = model.example_arrays(task.test_texts, task.test_targets)
    return model, model.init(jax.random.PRNGKey(0)), pool, test


def t5_setting():
    """The tiny T5 pretrained on lee_background (cached after the first call), fine-tuned
    text-to-text on polarity (targets "positive" / "negative")."""
    from simfluence_jax.data.tasks import get_task
    from simfluence_jax.training.pretrain import pretrain_t5

    task = get_task("polarity")
    model = pretrain_t5(progress=False).model(input_length=64, target_length=4)
    pool = model.example_arrays(task.train_texts, task.train_targets)
    test = model.example_arrays(task.test_texts, task.test_targets)
    return model, model.init(jax.random.PRNGKey(0)), pool, test


SETTINGS = {
    "toy": (toy_setting, "full", {}, 1e-2),
    "minilm_top1": (minilm_setting, "top_layers", {"n_top": 1}, 1e-4),
    "minilm_top2": (minilm_setting, "top_layers", {"n_top": 2}, 1e-4),
    "minilm_lora": (minilm_setting, "lora", {"rank": 8}, 1e-3),
    "minilm_full": (minilm_setting, "full", {}, 2e-5),
    "t5_tiny": (t5_setting, "full", {}, 1e-3),
    "t5_tiny_lora": (t5_setting, "lora", {"rank": 4}, 3e-3),
}


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one blocked call."""
    w0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - w0, time.process_time() - c0


def bench_setting(name: str, *, steps: int, repeat: int, runs_steps: int) -> dict:
    make, method_name, method_kwargs, lr = SETTINGS[name]
    model, params, pool, test = make()
    method = make_method(method_name, **method_kwargs)
    optimizer = make_optimizer("adam", learning_rate=lr)
    t0 = time.perf_counter()
    factory = RunFactory(
        model, params, method=method, optimizer=optimizer, pool=pool, test=test, chunk_steps=steps
    )
    setup_s = time.perf_counter() - t0
    n = factory.num_train
    batches = sample_curricula(
        num_runs=4, pool_size=n, subset_size=min(128, n), batch_size=4, num_steps=steps, seed=0
    )
    data = factory.data
    update = jax.jit(make_update(model, method=method, optimizer=optimizer))
    evaluate = jax.jit(make_eval_losses(model, method=method))
    step = jax.jit(factory.train_step)
    ids = [jnp.asarray(batches[0, t]) for t in range(steps)]
    state0 = init_state(factory.trainable0, optimizer, seed=0)

    fresh_states = [factory.init_states([0]) for _ in range(repeat + 1)]  # advance donates

    def fused_scan():
        return factory.advance(fresh_states.pop(), batches[:1], steps)[1]

    def fused_step():
        s, out = state0, None
        for t in range(steps):
            s, out = step(s, ids[t], data)
        return out

    def train_only():
        s = state0
        for t in range(steps):
            s = update(s, ids[t], data)
        return s.trainable

    def eval_only():
        out = None
        for _ in range(steps):
            out = evaluate(state0.trainable, data)
        return out

    def train_then_eval():
        s, outs = state0, []
        for t in range(steps):
            s = update(s, ids[t], data)
            outs.append(evaluate(s.trainable, data))
        return outs

    def naive_host_copy():
        s, outs = state0, []
        for t in range(steps):
            s = update(s, ids[t], data)
            outs.append(np.asarray(evaluate(s.trainable, data)))
        return outs

    # Whole runs: L_0 + runs_steps steps, loop over runs (G=1) vs vmap over 4 runs (G=4).
    run_batches = sample_curricula(
        num_runs=4, pool_size=n, subset_size=min(128, n), batch_size=4, num_steps=runs_steps
    )
    variants = {
        "fused_scan": fused_scan,
        "fused_step": fused_step,
        "train_only": train_only,
        "eval_only": eval_only,
        "train_then_eval": train_then_eval,
        "naive_host_copy": naive_host_copy,
        "run_g1": lambda: factory.run(run_batches, np.arange(4), group_size=1),
        "run_g4": lambda: factory.run(run_batches, np.arange(4), group_size=4),
    }
    if jax.device_count() >= 2:  # runs split over 2 devices, one run per device at a time
        mesh = Mesh(np.array(jax.devices()[:2]), ("runs",))
        mesh_factory = RunFactory(
            model, params, method=method, optimizer=optimizer, pool=pool, test=test,
            chunk_steps=steps, mesh=mesh,
        )  # fmt: skip
        variants["run_mesh2"] = lambda: mesh_factory.run(run_batches, np.arange(4), group_size=2)
    per = {k: steps for k in variants}
    per.update({k: 4 * runs_steps for k in variants if k.startswith("run_")})
    t0 = time.perf_counter()
    for fn in variants.values():  # compile everything first
        jax.block_until_ready(fn())
    compile_s = time.perf_counter() - t0
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for _ in range(repeat):
        for k, fn in variants.items():
            w, c = _time(fn)
            wall[k].append(w / per[k])
            cpu[k].append(c / per[k])
    per_step = {k: float(np.median(v)) for k, v in wall.items()}
    cpu_step = {k: float(np.median(v)) for k, v in cpu.items()}
    out = {
        "setting": name,
        "method": method_name,
        "num_train": n,
        "num_test": factory.num_test,
        "setup_s": setup_s,
        "compile_s": compile_s,
        **{f"{k}_ms": 1e3 * v for k, v in per_step.items()},
        **{f"{k}_cpu_ms": 1e3 * v for k, v in cpu_step.items()},
        "overhead_scan": per_step["fused_scan"] / per_step["train_then_eval"],
        "overhead_step": per_step["fused_step"] / per_step["train_then_eval"],
        "overhead_scan_cpu": cpu_step["fused_scan"] / cpu_step["train_then_eval"],
        "naive_over_fused": per_step["naive_host_copy"] / per_step["fused_scan"],
        "eval_share": per_step["eval_only"] / per_step["train_then_eval"],
        "runs_per_hour_g1": 3600 / (T_PROTOCOL * per_step["run_g1"]),
        "runs_per_hour_g4": 3600 / (T_PROTOCOL * per_step["run_g4"]),
        **(
            {"runs_per_hour_mesh2": 3600 / (T_PROTOCOL * per_step["run_mesh2"])}
            if "run_mesh2" in per_step
            else {}
        ),
        "raw_wall_s_per_step": wall,
        "raw_cpu_s_per_step": cpu,
    }
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="minilm_top1,t5_tiny")
    parser.add_argument("--steps", type=int, default=8, help="steps per timed block")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--run-steps", type=int, default=16, help="steps per run for runs/hour")
    parser.add_argument("--name", default="bench_run_factory")
    args = parser.parse_args(argv)
    rows = []
    for name in args.settings.split(","):
        print(f"[{name}] ...", flush=True)
        rows.append(
            bench_setting(name, steps=args.steps, repeat=args.repeat, runs_steps=args.run_steps)
        )
        print(table(rows[-1:], COLUMNS), flush=True)
    print()
    print(table(rows, COLUMNS))
    path = write(args.name, {"args": vars(args), "results": rows})
    print(f"wrote {path}")


COLUMNS = [
    "setting",
    "fused_scan_ms",
    "fused_step_ms",
    "train_only_ms",
    "eval_only_ms",
    "train_then_eval_ms",
    "naive_host_copy_ms",
    "overhead_scan",
    "overhead_scan_cpu",
    "overhead_step",
    "naive_over_fused",
    "run_g1_ms",
    "run_g4_ms",
    "run_mesh2_ms",
    "runs_per_hour_g1",
    "runs_per_hour_g4",
    "runs_per_hour_mesh2",
]

if __name__ == "__main__":
    main()
