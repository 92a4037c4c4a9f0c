"""The ``simfluence`` command line (usage: :mod:`.entry`) and the gin edge that it and every
experiment entry point share (:mod:`.gin_edge`).

Modules: :mod:`.entry` (the parser, error lines and :func:`main`), one module per group of
subcommands (:mod:`.make`: ``run``, ``generate``, ``import``; :mod:`.fit`: ``fit``,
``evaluate``, ``report``; :mod:`.simulate`: ``simulate``, ``attribute``), :mod:`.common`
(what the subcommands share) and :mod:`.gin_edge` (gin parsing, the operative config, output
folders). ``simfluence`` and ``python -m simfluence_jax.cli`` call :func:`main`.
"""

from simfluence_jax.cli.entry import main
from simfluence_jax.cli.fit import cmd_evaluate, cmd_fit, cmd_report
from simfluence_jax.cli.gin_edge import (
    GIN_CONFIGS,
    OPERATIVE_CONFIG,
    Experiment,
    claim_output,
    configs,
    configured,
    find_gin_file,
    operative_config,
    parse_experiment,
    parse_gin,
    register_configurable,
    write_operative_config,
)
from simfluence_jax.cli.make import cmd_generate, cmd_import, cmd_run
from simfluence_jax.cli.simulate import cmd_attribute, cmd_simulate

__all__ = [
    "GIN_CONFIGS",
    "OPERATIVE_CONFIG",
    "Experiment",
    "claim_output",
    "cmd_attribute",
    "cmd_evaluate",
    "cmd_fit",
    "cmd_generate",
    "cmd_import",
    "cmd_report",
    "cmd_run",
    "cmd_simulate",
    "configs",
    "configured",
    "find_gin_file",
    "main",
    "operative_config",
    "parse_experiment",
    "parse_gin",
    "register_configurable",
    "write_operative_config",
]
