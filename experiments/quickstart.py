"""Entry point: `python -m experiments.quickstart [--gin.NAME=VALUE ...]`.

Runs the whole pipeline (runs, simulators, held-out evaluation, counterfactual, report) with
`gin_configs/experiments/quickstart.gin`; extra arguments are passed to `simfluence run`.
"""

import sys
from pathlib import Path

from simfluence_jax.cli import main

GIN = Path(__file__).resolve().parents[1] / "gin_configs" / "experiments" / "quickstart.gin"

if __name__ == "__main__":
    sys.exit(main(["run", "--gin_file", str(GIN), *sys.argv[1:]]))
