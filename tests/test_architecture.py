"""Dependencies point one way (README, "Architecture"): the package's imports, read with
``ast`` (nothing is imported), against the layering

    core  <-  models, data  <-  training, gradients, reports, ... <-  pipeline  <-  cli

Every import counts: module level, class bodies, ``try``/``if`` blocks and function bodies,
not ``if TYPE_CHECKING:`` blocks. An import inside a function that a rule forbids is allowed
only when ``LAZY_IMPORTS`` lists it with its reason (and the list holds nothing stale).
Modules imported by name (``importlib.import_module``: the ``"module:attr"`` fitters of
the ``Fitter`` records, the modules the registries list, gin's configurables) are not
imports here.
Importing ``simfluence_jax`` and fitting a core simulator without the training stack is
``test_core_only.py``'s check. ``from simfluence_jax import NAME`` is resolved through the
package's lazy export table, so a name exported from another layer counts as an import of
that layer. No import cycle either: no module imports, through others, itself (registries
read their entries from declarations instead, ``simfluence_jax.registry``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "simfluence_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: The core: what a user with only logged runs installs, fits and simulates with.
CORE = (
    "runs", "fileio", "registry", "sampling", "synthetic", "simulators", "solvers", "rollouts",
    "fitting", "filter_fit", "evaluation", "metrics", "counterfactuals", "sharding", "lds",
    "importers", "logger", "attribution", "impulse_shape",
)  # fmt: skip
#: Third-party packages of the training stack, which the core never imports.
TRAINING_STACK = ("gin", "tensorflow", "flax", "optax", "orbax", "seqio")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lazy_exports() -> dict[str, str]:
    """``simfluence_jax.<name>`` -> the module ``simfluence_jax/__init__.py`` loads it from."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
                table = ast.literal_eval(node.value)
                return {
                    f"{PACKAGE}.{name}": f"{PACKAGE}.{module or name}"
                    for name, module in table.items()
                }
    return {}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import of ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    exports = _lazy_exports()
    found: list[tuple[str, int, bool]] = []

    def visit(nodes, lazy: bool):
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(ast.iter_child_nodes(node), True)
                continue
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse, lazy)
                continue
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno, lazy) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                found.append((base, node.lineno, lazy))
                for alias in node.names:
                    name = f"{base}.{alias.name}"
                    found.append((exports.get(name, name), node.lineno, lazy))
            visit(ast.iter_child_nodes(node), lazy)

    visit(ast.parse(path.read_text()).body, False)
    return found


def _import_time_imports(path: Path) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import that runs when ``path`` is imported."""
    return [(target, line) for target, line, lazy in _imports(path) if not lazy]


def _modules(*prefixes: str) -> list[Path]:
    """The package's files under ``simfluence_jax.<prefix>`` for any prefix ('' = all)."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        rel = name[len(PACKAGE) + 1 :] if name != PACKAGE else ""
        if any(rel == p or rel.startswith(p + ".") or p == "" for p in prefixes):
            out.append(path)
    return out


#: Imports inside functions that a rule forbids, allowed one by one:
#: ``(file under simfluence_jax/, imported module) -> why``.
LAZY_IMPORTS = {
    ("models/t5_model.py", f"{PACKAGE}.data"): "the default T5 vocabulary is trained on "
    "gensim's bundled texts (data.gensim_text), read only when no vocabulary is given",
    ("models/t5_model.py", f"{PACKAGE}.data.gensim_text"): "the same import, by module",
}


def _forbidden_imports(sources: list[Path], forbidden: tuple[str, ...]):
    """``(file, imported module, line, inside a function)`` of every import of ``sources``
    that names a module of ``forbidden``."""
    for path in sources:
        for target, line, lazy in _imports(path):
            for f in forbidden:
                ours = f"{PACKAGE}.{f}" if f not in TRAINING_STACK else f
                if target == ours or target.startswith(ours + "."):
                    yield path.relative_to(ROOT).as_posix(), target, line, lazy


def _violations(sources: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        {
            f"{PACKAGE}/{name}:{line} imports {target}"
            for name, target, line, lazy in _forbidden_imports(sources, forbidden)
            if not (lazy and (name, target) in LAZY_IMPORTS)
        }
    )


def _core() -> list[Path]:
    return [ROOT / "__init__.py", *_modules(*CORE)]


def _libraries() -> list[Path]:
    """Everything between the core and the pipeline (training, gradients, reports, ...)."""
    outside = {*map(str, _core()), *map(str, _modules("models", "data", "pipeline", "cli"))}
    return [p for p in _modules("") if str(p) not in outside]


#: The libraries between the core and the pipeline; they may import one another.
LIBRARIES = ("training", "store", "gradients", "featurized_fit", "search", "reports")
RULES = {
    "core imports nothing above it, and no gin, TensorFlow, Flax, optax, orbax or seqio": (
        _core,
        ("models", "data", *LIBRARIES, "pipeline", "cli", *TRAINING_STACK),
    ),
    "models import nothing above them, and no gin": (
        lambda: _modules("models"),
        (*LIBRARIES, "pipeline", "cli", "gin"),
    ),
    "data imports no model nor anything above it, and no gin": (
        lambda: _modules("data"),
        ("models", *LIBRARIES, "pipeline", "cli", "gin"),
    ),
    "training, store, gradients, featurized_fit, search, reports: no pipeline, CLI or gin": (
        _libraries,
        ("pipeline", "cli", "gin"),
    ),
    "the pipeline imports no CLI and no gin": (lambda: _modules("pipeline"), ("cli", "gin")),
}


def test_every_core_module_exists_and_the_walk_finds_imports():
    """The rules below would pass vacuously on a wrong path or a broken parser."""
    core = {_module_name(p) for p in _core()}
    for name in CORE:
        assert f"{PACKAGE}.{name}" in core, name
    imports = dict(_import_time_imports(ROOT / "fitting" / "ridge.py"))
    assert f"{PACKAGE}.solvers" in imports and "numpy" in imports
    assert len(_libraries()) > 10 and all("pipeline" not in str(p) for p in _libraries())
    # Known violations are found: the CLI's gin edge imports the pipeline at module level.
    assert _violations([ROOT / "cli" / "gin_edge.py"], ("pipeline",))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_imports_point_one_way(rule):
    sources, forbidden = RULES[rule]
    assert not _violations(sources(), forbidden), rule


def test_models_do_not_import_data():
    assert not _violations(_modules("models"), ("data",))


def test_imports_inside_functions_are_read_and_every_allowed_one_is_still_there():
    linear = _imports(ROOT / "fitting" / "linear.py")
    assert (f"{PACKAGE}.filter_fit", True) in {(t, inside) for t, _, inside in linear}
    assert f"{PACKAGE}.filter_fit" not in dict(_import_time_imports(ROOT / "fitting" / "linear.py"))
    rules = [*RULES.values(), (lambda: _modules("models"), ("data",))]
    found = {
        (name, target)
        for sources, forbidden in rules
        for name, target, _, inside in _forbidden_imports(sources(), forbidden)
        if inside
    }
    stale = sorted(set(LAZY_IMPORTS) - found)
    assert not stale, f"LAZY_IMPORTS lists imports that are gone: {stale}"


def _import_graph() -> dict[str, set[str]]:
    """``module -> modules of the package it imports when imported``. A name imported from a
    module (``from a.b import C``) is an edge to ``a.b``; an import of a package a module
    belongs to is left out (Python imports it first anyway, whatever the module says)."""
    modules = {_module_name(p): p for p in _modules("")}

    def resolve(target: str) -> str:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target

    graph = {}
    for name, path in modules.items():
        targets = {resolve(t) for t, _ in _import_time_imports(path)}
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_no_import_cycle():
    """No module imports, through others, itself: registrations are declared (``EXTENSIONS``,
    read by the registries), never made by a module importing the one that uses them."""
    graph = _import_graph()
    # The walk sees edges within a package and across packages.
    assert f"{PACKAGE}.data.tasks" in graph[f"{PACKAGE}.data.word_tasks"]
    assert f"{PACKAGE}.models.t5" in graph[f"{PACKAGE}.models.t5_model"]
    # A cycle is found, through any number of modules, and reported once.
    made_up = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _import_cycles(made_up) == [["a", "b", "c"]]
    assert _import_cycles({**graph, f"{PACKAGE}.data.tasks": {f"{PACKAGE}.data.word_tasks"}})
    assert not _import_cycles(graph), _import_cycles(graph)


#: Most lines a file of the package may have: small modules, one concept each.
MAX_LINES = 450
#: Files allowed over ``MAX_LINES``: ``models/t5.py`` stays whole (the T5.1.1 model, its size
#: table and its T5X checkpoint reading belong together).
OVER_THE_LIMIT = {"models/t5.py"}


def test_files_stay_under_the_line_limit():
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for path in ROOT.rglob("*.py")
    }
    assert len(sizes) > 50 and all(name in sizes for name in OVER_THE_LIMIT)
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    new = {name: n for name, n in over.items() if name not in OVER_THE_LIMIT}
    assert not new, f"over {MAX_LINES} lines (split them along their seams): {new}"
    stale = sorted(OVER_THE_LIMIT - set(over))
    assert not stale, f"now under {MAX_LINES} lines; take them off OVER_THE_LIMIT: {stale}"
