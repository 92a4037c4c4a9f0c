"""Per-example gradients, TracIn dot products and influence solves, measured side by side.

Sections (each prints a table; everything goes to ``benchmarks/results/bench_gradients.json``):

* ``throughput``: per-example gradients of the whole pool by ``vmap`` of ``grad`` (jitted,
  chunked) against the loop a researcher would otherwise write: a Python loop calling a
  jitted single-example ``grad`` once per example. Same gradients (checked), ratio reported.
* ``tracin``: the N x M gradient dot products of one checkpoint, exact and through random
  projections to 1024 dimensions (dense Gaussian, count sketch), with the Pearson
  correlation of the projected scores to the exact ones.
* ``memory``: memory of ``gradient_dots`` as the pool grows, chunked (bounded) against
  unchunked (one vmap over the whole pool: grows with N): XLA's temporary buffer size of the
  compiled call, and the peak resident memory the call adds (Linux ``VmHWM`` reset just
  before the call, minus ``VmRSS``). Each point runs in a fresh subprocess.
* ``influence``: the head-only exact inverse (the cheap quickstart inverse) and CG on the
  top layer + head (time per CG iteration for all M test examples at once).
* ``scores``: the whole N x M score matrix of each score provider, side by side, each in a
  fresh subprocess: seconds of the first call (compilation included, as a user meets it)
  and the peak resident memory it adds: TracIn-CP at one checkpoint, influence functions
  (exact head-only inverse; Lanczos rank 16 over all trained parameters), TRAK with one
  model (dimension 1024; the cost grows linearly with the ensemble size) and EK-FAC over
  every trained dense kernel with the exact Gauss-Newton of the softmax.

Settings: ``toy`` (the toy classifier, 45k parameters; seconds), ``minilm_top1`` (MiniLM on
the polarity task, top layer + head on cached lower layers: 1.8M parameters, N = 150,
M = 50 sentences of 48 tokens).

Run: ``python -m benchmarks.bench_gradients [--settings toy,minilm_top1] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import RESULTS, reset_peak_rss, status_kb, table, write
from simfluence_jax.gradients import (
    InfluenceConfig,
    Projection,
    gradient_dots,
    method_loss,
    per_example_grads,
)
from simfluence_jax.gradients.influence import inverse_hvp
from simfluence_jax.gradients.per_example import restrict, single_grad
from simfluence_jax.training import make_method


def toy_setting():
    from simfluence_jax.training.toy import ToyClassifier, random_task

    model = ToyClassifier(dim=64, n_layers=3, seq_len=32, vocab_size=512)
    pool, test = random_task(model, num_train=200, num_test=50)
    return model, model.init(jax.random.PRNGKey(0)), pool, test, make_method("full")


def minilm_setting():
    from simfluence_jax.data.tasks import get_task
    from simfluence_jax.models.minilm import make_minilm

    task = get_task("polarity")
    model = make_minilm(label_names=task.label_names)
    pool = model.example_arrays(task.train_texts, task.train_targets)
    test = model.example_arrays(task.test_texts, task.test_targets)
    return model, model.init(jax.random.PRNGKey(0)), pool, test, make_method("top_layers", n_top=1)


SETTINGS = {"toy": toy_setting, "minilm_top1": minilm_setting}
HEAD = r"(^|/)head/"
SECTIONS = ("throughput", "tracin", "memory", "influence", "scores")
#: The score providers of the ``scores`` section.
SCORE_METHODS = (
    "tracin_cp, 1 checkpoint",
    "influence, exact head only",
    "influence, lanczos 16, damping 1",
    "trak, 1 model, countsketch 1024",
    "trak, 1 model, gaussian 1024",
    "ekfac, dense kernels",
)


def prepared(name: str):
    """``(loss_fn, theta, frozen, pool_inputs, test_inputs)`` of a setting."""
    model, params, pool, test, method = SETTINGS[name]()
    data = method.setup(model, params, pool, test)
    theta = method.init(model, params)
    return method_loss(model, method), theta, data.frozen, data.pool, data.test


def rows_of(tree, n: int):
    return jax.tree_util.tree_map(lambda x: x[:n], tree)


def tile(tree, n: int):
    """``n`` rows from repeating the rows of ``tree`` (for memory scaling beyond the pool)."""

    def rep(x):
        reps = -(-n // x.shape[0])
        return jnp.concatenate([x] * reps)[:n]

    return jax.tree_util.tree_map(rep, tree)


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls after one warm-up (compile) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def timed_once(f, *args) -> tuple[float, object]:
    """Seconds of one call of the jitted ``f`` compiled ahead of time, and its output (for
    calls too slow to repeat)."""
    compiled = f.lower(*args).compile()
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------------------------------


def bench_throughput(name: str, *, repeat: int, quick: bool) -> list[dict]:
    loss_fn, theta, frozen, pool, _ = prepared(name)
    n = jax.tree_util.tree_leaves(pool)[0].shape[0]
    if quick:
        n = min(n, 48)
        pool = rows_of(pool, n)
    P = sum(x.size for x in jax.tree_util.tree_leaves(theta))
    one = jax.jit(lambda th, fr, z: single_grad(loss_fn, th, fr, z))

    def loop():
        return jnp.stack(
            [
                one(theta, frozen, jax.tree_util.tree_map(lambda x, i=i: x[i], pool))
                for i in range(n)
            ]
        )

    t_loop = timed(loop, repeat)
    ref = np.asarray(loop())
    rows = [
        dict(
            setting=name,
            params=P,
            N=n,
            method="loop of jitted grad",
            seconds=t_loop,
            per_s=n / t_loop,
            speedup=1.0,
        )
    ]
    for chunk in (8, 32, None):
        f = jax.jit(lambda th, fr, x, c=chunk: per_example_grads(loss_fn, th, fr, x, chunk_size=c))
        t = timed(lambda f=f: f(theta, frozen, pool), repeat)
        err = float(np.abs(np.asarray(f(theta, frozen, pool)) - ref).max() / np.abs(ref).max())
        rows.append(
            dict(
                setting=name,
                params=P,
                N=n,
                method=f"vmap, chunk {chunk or 'all'}",
                seconds=t,
                per_s=n / t,
                speedup=t_loop / t,
                max_rel_diff=err,
            )
        )
    return rows


def bench_tracin(name: str, *, quick: bool) -> list[dict]:
    loss_fn, theta, frozen, pool, test = prepared(name)
    if quick:
        pool, test = rows_of(pool, 48), rows_of(test, 16)
    n = jax.tree_util.tree_leaves(pool)[0].shape[0]
    m = jax.tree_util.tree_leaves(test)[0].shape[0]
    rows, exact = [], None
    for proj in (None, Projection(1024, "countsketch"), Projection(1024, "gaussian")):
        # The Gaussian matrix is regenerated per chunk (P x 1024 normals): big chunks.
        chunk = 64 if proj is not None and proj.kind == "gaussian" else 16
        f = jax.jit(
            lambda th, fr, x, y, p=proj, c=chunk: gradient_dots(
                loss_fn, th, fr, x, y, chunk_size=c, projection=p
            )
        )
        t, D = timed_once(f, theta, frozen, pool, test)
        D = np.asarray(D, np.float64)
        exact = D if proj is None else exact
        corr = float(np.corrcoef(D.ravel(), exact.ravel())[0, 1])
        label = "exact" if proj is None else f"{proj.kind} {proj.dim}"
        rows.append(
            dict(setting=name, N=n, M=m, scores=label, chunk=chunk, seconds=t, corr_with_exact=corr)
        )
    return rows


def memory_child(name: str, n: int, chunk: int | None) -> dict:
    loss_fn, theta, frozen, pool, test = prepared(name)
    pool = tile(pool, n)
    f = jax.jit(lambda th, fr, x, y: gradient_dots(loss_fn, th, fr, x, y, chunk_size=chunk))
    compiled = f.lower(theta, frozen, pool, test).compile()
    jax.block_until_ready((theta, frozen, pool, test))
    reset = reset_peak_rss()
    before = status_kb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(theta, frozen, pool, test))
    seconds = time.perf_counter() - t0
    after = status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = compiled.memory_analysis()
    temp = getattr(stats, "temp_size_in_bytes", None) if stats is not None else None
    return dict(
        setting=name,
        N=n,
        chunk=chunk or "all",
        peak_rss_increase_mb=(after - before) / 1024,
        xla_temp_mb=None if temp is None else temp / 2**20,
        seconds=seconds,
    )


def bench_memory(name: str, *, sizes: list[int], chunk: int, unchunked_max: int) -> list[dict]:
    rows = []
    for n in sizes:
        for c in (chunk, None):
            if c is None and n > unchunked_max:
                continue
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.bench_gradients",
                "--memory-child",
                json.dumps([name, n, c]),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                rows.append(dict(setting=name, N=n, chunk=c or "all", error=out.stderr[-300:]))
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def bench_influence(name: str, *, quick: bool, cg_iters: int, lanczos_rank: int) -> list[dict]:
    """Head-only exact inverse (all M tests), Lanczos rank k (all M tests: k HVPs of one
    vector) and CG (timed for 4 test examples: M HVPs per iteration)."""
    loss_fn, theta, frozen, pool, test = prepared(name)
    if quick:
        pool, test = rows_of(pool, 48), rows_of(test, 8)
    rows = []
    plans = [
        (
            "exact, head only",
            HEAD,
            test,
            InfluenceConfig(solver="exact", damping=1e-3, select=HEAD),
        ),
        (
            f"lanczos rank {lanczos_rank}, all trained",
            None,
            test,
            InfluenceConfig(solver="lanczos", damping=1e-2, lanczos_rank=lanczos_rank),
        ),
        (
            f"cg, {cg_iters} iterations, all trained",
            None,
            rows_of(test, 4),
            InfluenceConfig(solver="cg", damping=1e-2, cg_max_iter=cg_iters, cg_tol=0.0),
        ),
    ]
    for label, select, tests, cfg in plans:
        r = restrict(loss_fn, theta, frozen, select=select)
        grads = jax.jit(
            lambda th, fr, x, r=r: per_example_grads(r.loss_fn, th, fr, x, chunk_size=16)
        )
        G = grads(r.theta, r.frozen, tests)
        t0 = time.perf_counter()
        X, info = inverse_hvp(r.loss_fn, r.theta, r.frozen, pool, G, config=cfg)
        jax.block_until_ready(X)
        seconds = time.perf_counter() - t0
        m = int(G.shape[0])
        hvps = info.iterations * (m if cfg.solver == "cg" else 1)
        rows.append(
            dict(
                setting=name,
                params=r.num_params,
                M=m,
                solve=label,
                seconds=seconds,
                hvps=hvps,
                seconds_per_hvp=seconds / hvps,
                negative_curvature=info.negative_curvature,
            )
        )
    return rows


def scores_child(name: str, method: str, quick: bool) -> dict:
    """One score provider on one setting, in this (fresh) process: seconds and peak RSS."""
    from simfluence_jax.gradients import EKFACConfig, TRAKConfig, ekfac_scores, trak_scores
    from simfluence_jax.gradients.influence import influence_scores

    loss_fn, theta, frozen, pool, test = prepared(name)
    if quick:
        pool, test = rows_of(pool, 48), rows_of(test, 16)
    n = jax.tree_util.tree_leaves(pool)[0].shape[0]
    m = jax.tree_util.tree_leaves(test)[0].shape[0]
    num_classes = 2  # both settings are 2-class classifiers

    def run():
        if method.startswith("tracin_cp"):
            f = jax.jit(lambda th, fr, x, y: gradient_dots(loss_fn, th, fr, x, y, chunk_size=16))
            return f(theta, frozen, pool, test)
        if method == "influence, exact head only":
            cfg = InfluenceConfig(solver="exact", damping=0.01, select=HEAD, chunk_size=16)
            return influence_scores(loss_fn, theta, frozen, pool, test, config=cfg)[0]
        if method == "influence, lanczos 16, damping 1":
            cfg = InfluenceConfig(solver="lanczos", damping=1.0, lanczos_rank=16, chunk_size=16)
            return influence_scores(loss_fn, theta, frozen, pool, test, config=cfg)[0]
        if method.startswith("trak"):
            kind = method.split(", ")[-1].split()[0]
            cfg = TRAKConfig(dim=1024, projection=kind, chunk_size=64 if kind == "gaussian" else 16)
            return trak_scores(loss_fn, [theta], frozen, pool, test, config=cfg)[0]
        if method.startswith("ekfac"):
            cfg = EKFACConfig(fisher="true", num_classes=num_classes, chunk_size=16)
            return ekfac_scores(loss_fn, theta, frozen, pool, test, config=cfg)[0]
        raise ValueError(f"unknown method {method!r}")

    jax.block_until_ready((theta, frozen, pool, test))
    reset = reset_peak_rss()
    before = status_kb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = np.asarray(jax.block_until_ready(run()))
    seconds = time.perf_counter() - t0
    after = status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(
        setting=name,
        params=sum(int(x.size) for x in jax.tree_util.tree_leaves(theta)),
        N=n,
        M=m,
        method=method,
        seconds=seconds,
        peak_rss_increase_mb=(after - before) / 1024,
        finite=bool(np.all(np.isfinite(out))),
    )


def bench_scores(name: str, *, quick: bool, methods=SCORE_METHODS) -> list[dict]:
    rows = []
    for method in methods:
        arg = json.dumps([name, method, quick])
        cmd = [sys.executable, "-m", "benchmarks.bench_gradients", "--scores-child", arg]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            rows.append(dict(setting=name, method=method, error=out.stderr[-300:]))
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="toy,minilm_top1")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small pools: a smoke run")
    parser.add_argument("--cg-iters", type=int, default=3)
    parser.add_argument("--lanczos-rank", type=int, default=16)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--scores-child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--score-methods", default=";".join(SCORE_METHODS), help="';'-separated, scores section"
    )
    args = parser.parse_args(argv)
    if args.memory_child:
        name, n, chunk = json.loads(args.memory_child)
        print(json.dumps(memory_child(name, n, chunk)))
        return
    if args.scores_child:
        print(json.dumps(scores_child(*json.loads(args.scores_child))))
        return
    sections = args.sections.split(",")
    results: dict[str, list] = {s: [] for s in sections}
    for name in args.settings.split(","):
        if "throughput" in sections:
            results["throughput"] += bench_throughput(name, repeat=args.repeat, quick=args.quick)
        if "tracin" in sections:
            results["tracin"] += bench_tracin(name, quick=args.quick)
        if "memory" in sections:
            big = name == "minilm_top1"
            sizes = [75, 150, 300, 600] if big else [256, 1024, 4096]
            if args.quick:
                sizes = sizes[:2]
            results["memory"] += bench_memory(
                name, sizes=sizes, chunk=16, unchunked_max=300 if big else 4096
            )
        if "influence" in sections:
            results["influence"] += bench_influence(
                name, quick=args.quick, cg_iters=args.cg_iters, lanczos_rank=args.lanczos_rank
            )
        if "scores" in sections:
            methods = [m for m in args.score_methods.split(";") if m]
            results["scores"] += bench_scores(name, quick=args.quick, methods=methods)
    columns = {
        "throughput": [
            "setting",
            "params",
            "N",
            "method",
            "seconds",
            "per_s",
            "speedup",
            "max_rel_diff",
        ],
        "tracin": ["setting", "N", "M", "scores", "chunk", "seconds", "corr_with_exact"],
        "memory": ["setting", "N", "chunk", "peak_rss_increase_mb", "xla_temp_mb", "seconds"],
        "influence": [
            "setting",
            "params",
            "M",
            "solve",
            "seconds",
            "hvps",
            "seconds_per_hvp",
            "negative_curvature",
        ],
        "scores": [
            "setting",
            "params",
            "N",
            "M",
            "method",
            "seconds",
            "peak_rss_increase_mb",
            "finite",
        ],
    }
    for section, rows in results.items():
        print(f"\n## {section}\n")
        print(table(rows, columns[section]))
    suffix = "_quick" if args.quick else ""
    previous = RESULTS / f"bench_gradients{suffix}.json"
    if set(sections) != set(SECTIONS) and previous.exists():
        # A partial run updates its sections and keeps the others of the last full run.
        kept = json.loads(previous.read_text()).get("results", {})
        results = {**{k: v for k, v in kept.items() if k not in results}, **results}
    path = write(f"bench_gradients{suffix}", {"settings": args.settings, "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
