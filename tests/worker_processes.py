"""Starting the worker processes of a ``jax.distributed`` test (one CPU device each, joined on
a free local port) and collecting their output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from simfluence_jax.training.distributed import free_port


def run_workers(worker: Path, args: list[str], *, timeout: float, num: int = 2) -> list[str]:
    """Runs ``num`` processes of the script ``worker`` with ``args`` (plus ``--process-id``,
    ``--num-processes`` and ``--port``) at once; returns each one's output (stdout and stderr)
    after asserting that every one exited with 0."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(worker.parents[1]))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(worker),
                *args,
                "--process-id",
                str(i),
                "--num-processes",
                str(num),
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs
