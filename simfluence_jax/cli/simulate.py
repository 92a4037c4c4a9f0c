"""Subcommands that use saved simulators on curricula: ``simfluence simulate`` (a curriculum
and its edit) and ``attribute`` (the training examples that help or hurt a test example)."""

from __future__ import annotations

import numpy as np

from simfluence_jax import fileio
from simfluence_jax.cli.common import load_runs, load_sims


def _curriculum(args, runs):
    from simfluence_jax import counterfactuals as cf
    from simfluence_jax.sampling import load_curricula

    if args.curriculum:
        batches = load_curricula(args.curriculum, pool_size=runs.num_train if runs else None)
        base = batches[0] if batches.ndim == 3 else batches
    elif runs is not None:
        if not 0 <= args.run < runs.num_runs:
            raise ValueError(f"--run {args.run} out of range for {runs.num_runs} runs")
        base = runs.batches[args.run]
    else:
        raise ValueError("give --curriculum FILE, or --runs DIR with --run INDEX")

    pool = runs.num_train if runs is not None else None

    def ids(text, option):
        try:
            out = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"{option}: ids must be comma-separated integers, got {text!r}"
            ) from None
        outside = [i for i in out if i < 0 or (pool is not None and i >= pool)]
        if outside:
            raise ValueError(
                f"{option}: ids {outside} are not in the pool of {pool} training examples "
                f"(ids 0..{pool - 1})"
                if pool is not None
                else f"{option}: ids must be >= 0, got {outside}"
            )
        absent = sorted(set(out) - set(cf.flatten(base).tolist()))
        if absent:
            raise ValueError(
                f"{option}: ids {absent} do not occur in the curriculum being edited, so the "
                "edit would not change it"
            )
        return out

    edited = base
    if args.remove:
        edited = cf.remove(edited, ids(args.remove, "--remove"))
    if args.duplicate:
        edited = cf.duplicate(edited, ids(args.duplicate, "--duplicate"))
    if args.reverse:
        edited = cf.reverse(edited)
    if args.move_to_end:
        for i in ids(args.move_to_end, "--move_to_end"):
            edited = cf.move_to_end(edited, i)
    return base, edited


def cmd_simulate(args) -> np.ndarray:
    """``simfluence simulate``: simulates a curriculum and its edited version from a logged
    run's ``L_0``. Returns ``float32[2, T+1, M]``, the given and the edited trajectories (the
    shorter curriculum padded with empty steps), also written as CSV with ``--out``."""
    from simfluence_jax import counterfactuals as cf
    from simfluence_jax.rollouts import simulate

    sims = load_sims(args.simulators)
    if args.name not in sims:
        raise ValueError(f"no simulator {args.name!r} in {args.simulators}; have {sorted(sims)}")
    sim = sims[args.name]
    runs = load_runs(args.runs) if args.runs else None
    sim_pool = getattr(sim, "num_train", None)
    if runs is not None and sim_pool is not None and sim_pool != runs.num_train:
        raise ValueError(
            f"the simulator {args.name!r} in {args.simulators} covers {sim_pool} training "
            f"examples but the run set {args.runs} has a pool of {runs.num_train}"
        )
    base, edited = _curriculum(args, runs)
    if runs is not None:
        r = args.run if not args.curriculum else 0
        L0 = runs.L0[r]
    else:
        raise ValueError("--runs is needed for the starting losses L_0")
    both = cf.stack([base, edited])
    rates = None if runs.learning_rates is None else runs.learning_rates[r]
    traj = simulate(sim, both, L0, learning_rates=cf.keep_schedule(rates, both.shape[1]))
    T0, T1 = base.shape[0], edited.shape[0]
    before, after = traj[0, T0], traj[1, T1]
    print(f"{args.name}: mean final test loss {before.mean():.4f} (given curriculum) -> "
          f"{after.mean():.4f} (edited); largest change on test example "
          f"{int(np.argmax(np.abs(after - before)))}")  # fmt: skip
    if args.out:
        header = "curriculum,step," + ",".join(f"test_{j}" for j in range(traj.shape[-1]))
        rows = [f"{c},{t}," + ",".join(f"{v:.6g}" for v in traj[c, t])
                for c in range(2) for t in range(traj.shape[1])]  # fmt: skip
        fileio.atomic_write(args.out, header + "\n" + "\n".join(rows) + "\n")
        print(f"trajectories written to {args.out}")
    return traj


def cmd_attribute(args):
    """``simfluence attribute``: the training examples that help (or hurt) a test example
    most under a logged curriculum, by simulated removal (``attribution.removal_effects``),
    printed as a table; with ``--all``, the ``[N, M]`` score matrix over curricula sampled
    like the runs, written with ``attribution.save_scores`` to ``--out``. Returns the
    ``Effects`` or the score matrix."""
    from simfluence_jax import attribution

    sims = load_sims(args.simulators)
    if args.name not in sims:
        raise ValueError(f"no simulator {args.name!r} in {args.simulators}; have {sorted(sims)}")
    sim = sims[args.name]
    runs = load_runs(args.runs)
    sim_pool = getattr(sim, "num_train", None)
    if sim_pool is not None and sim_pool != runs.num_train:
        raise ValueError(
            f"the simulator {args.name!r} in {args.simulators} covers {sim_pool} training "
            f"examples but the run set {args.runs} has a pool of {runs.num_train}"
        )
    if not 0 <= args.run < runs.num_runs:
        raise ValueError(f"--run {args.run} out of range for {runs.num_runs} runs")
    r = args.run
    rates = None if runs.learning_rates is None else runs.learning_rates[r]
    opts = dict(learning_rates=rates, horizon=args.horizon, repack=args.repack)
    train_texts = runs.metadata.get("train_texts") or None
    if args.all:
        if not args.out:
            raise ValueError("--all writes the score matrix: give --out PATH (no suffix)")
        S = attribution.score_matrix(
            sim, runs, runs.L0[r], num_curricula=args.num_curricula, seed=args.seed, **opts
        )
        details = {"simulator": args.name, "runs": str(args.runs), "horizon": args.horizon,
                   "repack": args.repack, "num_curricula": args.num_curricula,
                   "seed": args.seed}  # fmt: skip
        paths = attribution.save_scores(
            args.out, S, train_ids=runs.train_ids, test_ids=runs.test_ids,
            texts=train_texts, details=details,
        )  # fmt: skip
        print(f"{args.name}: scores of {S.shape[0]} training x {S.shape[1]} test examples "
              f"over {args.num_curricula} sampled curricula written to "
              f"{' and '.join(map(str, paths))} (score > 0: removing the example raises "
              "the test loss, i.e. it helps)")  # fmt: skip
        return S
    if args.test is None:
        raise ValueError("give --test INDEX (a test example), or --all for the score matrix")
    effects = attribution.removal_effects(sim, runs.batches[r], runs.L0[r], **opts)
    k = min(args.top, len(effects.ids))
    ids, delta = attribution.top(effects, args.test, k=k, direction=args.direction)
    test_texts = runs.metadata.get("test_texts") or None
    about = f": {test_texts[args.test]}" if test_texts else ""
    print(f"{args.name}, run {r}, test example {runs.test_ids[args.test]}{about}")
    print(f"the {k} most {args.direction} training examples: the simulated change of its loss "
          f"(mean of the last {args.horizon} steps) when each is removed; > 0 means it "
          "helps")  # fmt: skip
    header = ["rank", "id", "effect"] + (["text"] if train_texts else [])
    rows = [
        [str(n + 1), str(runs.train_ids[i]), f"{d:+.5f}"]
        + ([_shorten(train_texts[i], 70)] if train_texts else [])
        for n, (i, d) in enumerate(zip(ids, delta))
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for line in [header, *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())
    return effects


def _shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."
