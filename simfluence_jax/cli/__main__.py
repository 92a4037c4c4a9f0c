"""``python -m simfluence_jax.cli``: the ``simfluence`` command."""

import sys

from simfluence_jax.cli.entry import main

sys.exit(main())
