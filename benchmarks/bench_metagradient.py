"""Exact metagradients: their cost as a multiple of one training run, and their memory with
and without rematerialisation, side by side in one process.

For one run of a setting (one curriculum, one seed), each timed after a warm-up call that
compiles it:

* ``train``: the run's T updates alone (a ``lax.scan`` of the factory's update, no test
  losses): what MAGIC's "2-3x the cost of training" is measured against;
* ``run``: the run factory's instrumented run (every test loss after every step), as logged;
* ``reverse K tests``: reverse-mode metagradients of the final loss of the first
  ``--batch-tests`` test examples (one ``vmap`` over their cotangents; default 10, all M
  would take minutes per call on the quickstart model here), rematerialised every ``remat``
  steps and without; timed once on the quickstart model, medians of ``--repeat`` on the toy;
* ``reverse 1 test``: the same for one test example (the MAGIC setting: one target);
* ``jvp``: forward mode, every test example's whole trajectory along one edit direction.

Memory: XLA's temporary buffer size of each compiled reverse-mode call
(``compiled.memory_analysis()``) and the peak resident memory the call adds (Linux
``VmHWM`` reset just before the call, minus ``VmRSS``).

Settings: ``toy`` (the toy classifier; seconds) and ``quickstart`` (the quickstart
protocol's model: MiniLM, top layer + head trained on cached lower layers, 1.8M trainable
parameters, polarity, N = 150, M = 50, batch 4, 48 steps), each under plain SGD (the
quickstart's) and AdamW (gin_configs/optimizers/adamw.gin).

Run: ``python -m benchmarks.bench_metagradient [--settings toy,quickstart] [--optimizers
sgd,adamw] [--remat 8]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

from benchmarks.common import reset_peak_rss, status_kb, table, write
from simfluence_jax.gradients.metagradient import Replay

COLUMNS = ["setting", "optimizer", "what", "seconds", "x_train", "x_train_per_test", "x_run",
           "compile_s"]  # fmt: skip
OPTIMIZERS = {
    "sgd": ("sgd", 0.05, {}),
    "adamw": ("adamw", 5e-4, {"b1": 0.9, "schedule": "linear", "warmup_steps": 5}),
}


def setting(name: str, optimizer: str):
    """``(factory, batches int32[T, B], seed)`` of a setting."""
    from simfluence_jax.pipeline.config import RunsConfig
    from simfluence_jax.pipeline.generate import prepare, sample

    opt, lr, kwargs = OPTIMIZERS[optimizer]
    if name == "quickstart":
        cfg = RunsConfig(optimizer=opt, learning_rate=lr, optimizer_kwargs=kwargs, num_runs=1)
        setup = prepare(cfg)
        return setup.factory, sample(cfg, len(setup.task.train_texts))[0], cfg.seed * 100_003
    if name == "toy":
        from simfluence_jax.sampling import sample_curricula
        from simfluence_jax.training import RunFactory, make_method, make_optimizer
        from simfluence_jax.training.toy import ToyClassifier, random_task

        model = ToyClassifier(dim=64, n_layers=3, seq_len=32, vocab_size=512)
        pool, test = random_task(model, num_train=150, num_test=50)
        if "schedule" in kwargs:
            kwargs = {**kwargs, "total_steps": 48}
        factory = RunFactory(
            model, model.init(jax.random.PRNGKey(0)), method=make_method("full"),
            optimizer=make_optimizer(opt, learning_rate=lr * 4, **kwargs), pool=pool, test=test,
        )  # fmt: skip
        batches = sample_curricula(
            num_runs=1, pool_size=150, batch_size=4, subset_size=96, num_steps=48, seed=0
        )[0]
        return factory, batches, 0
    raise ValueError(f"unknown setting {name!r}; known: toy, quickstart")


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measured_reverse(replay: Replay, batches, seed: int, *, repeat: int, **kwargs) -> dict:
    """Compile seconds, median run seconds, XLA temporary MB and peak RSS increase (MB) of a
    reverse-mode call."""
    t0 = time.perf_counter()
    lowered, args = replay.lower_metagradients(batches, seed, **kwargs)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    if repeat > 1:
        jax.block_until_ready(compiled(*args))  # warm (compiled ahead of time already)
    reset = reset_peak_rss()
    before = status_kb("VmRSS") if reset else None
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    peak = (status_kb("VmHWM") - before) / 1024 if reset else float("nan")
    stats = compiled.memory_analysis()
    temp = getattr(stats, "temp_size_in_bytes", None) if stats is not None else None
    return dict(
        compile_s=compile_s,
        seconds=seconds,
        xla_temp_mb=float("nan") if temp is None else temp / 2**20,
        peak_rss_increase_mb=peak,
        finite=bool(np.all(np.isfinite(np.asarray(out[1])))),
    )


def bench(
    name: str, optimizer: str, *, remat: int, repeat: int, batch_tests: int, slow_repeat: int
) -> tuple[list[dict], dict]:
    factory, batches, seed = setting(name, optimizer)
    replay = Replay(factory)
    T, B = batches.shape
    M = factory.num_test
    base = dict(setting=name, optimizer=optimizer, T=T, B=B, M=M)

    w = jax.numpy.ones(batches.shape, jax.numpy.float32)
    data = replay.data

    @jax.jit
    def train(w, seed, b, data):
        def step(state, x):
            return replay.update(state, x[0], data, x[1]), None

        return jax.lax.scan(step, replay.initial_state(seed), (b, w))[0].trainable

    seed_arr = jax.numpy.asarray(np.uint32(seed))
    b = jax.numpy.asarray(batches)
    train_s = timed(lambda: train(w, seed_arr, b, data), repeat)
    run_s = timed(lambda: factory.run(batches[None], [seed]), repeat)
    losses = replay.losses(batches, seed)
    logged = factory.run(batches[None], [seed])[0]
    reproduce = float(np.max(np.abs(losses - logged)))

    rows = [
        {**base, "what": "train (T updates)", "seconds": train_s, "x_train": 1.0},
        {**base, "what": "run (instrumented)", "seconds": run_s, "x_train": run_s / train_s},
    ]
    memory = []
    some = list(range(min(batch_tests, M)))
    for label, tests, chunk, rep in [
        (f"reverse {len(some)} tests remat={remat}", some, remat, slow_repeat),
        (f"reverse {len(some)} tests no remat", some, None, slow_repeat),
        (f"reverse 1 test remat={remat}", [0], remat, repeat),
    ]:
        got = measured_reverse(replay, batches, seed, repeat=rep, tests=tests, remat_chunk=chunk)
        x = got["seconds"] / train_s
        row = {**base, "what": label, "seconds": got["seconds"], "x_train": x,
               "x_train_per_test": x / len(tests), "compile_s": got["compile_s"]}  # fmt: skip
        print(table([row], COLUMNS), flush=True)
        rows.append(row)
        memory.append({**base, "what": label, **got})
    v = -(batches == batches[batches >= 0][0]).astype(np.float32)  # remove one id
    jvp_s = timed(lambda: replay.trajectory_jvp(batches, seed, v)[1], repeat)
    rows.append(
        {**base, "what": "jvp (all M, all steps)", "seconds": jvp_s, "x_train": jvp_s / train_s,
         "x_run": jvp_s / run_s}
    )  # fmt: skip
    return rows, {"memory": memory, "w1_max_abs_diff": reproduce, **base}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="toy,quickstart")
    parser.add_argument("--optimizers", default="sgd,adamw")
    parser.add_argument("--remat", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-tests", type=int, default=10)
    args = parser.parse_args(argv)
    rows, details = [], []
    for name in args.settings.split(","):
        for opt in args.optimizers.split(","):
            got, info = bench(
                name, opt, remat=args.remat, repeat=args.repeat, batch_tests=args.batch_tests,
                slow_repeat=args.repeat if name == "toy" else 1,
            )  # fmt: skip
            rows += got
            details.append(info)
            print(table(got, COLUMNS), flush=True)
            cols = ["what", "seconds", "xla_temp_mb", "peak_rss_increase_mb", "finite"]
            print(table(info["memory"], cols), flush=True)
            print(f"w = 1 vs the factory's run: max |dL| = {info['w1_max_abs_diff']:.3g}\n")
    path = write("bench_metagradient", {"args": dataclasses.asdict(_Args(**vars(args))),
                                        "timings": rows, "details": details})  # fmt: skip
    print(f"wrote {path}")


@dataclasses.dataclass
class _Args:
    settings: str
    optimizers: str
    remat: int
    repeat: int
    batch_tests: int


if __name__ == "__main__":
    main()
