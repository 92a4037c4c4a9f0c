"""Name -> object registries for simulators, importers, solvers, models, tasks and methods.

An unknown name raises a ``ValueError`` that lists every known name, so a typo in a gin
file or on the command line tells the user what they could have meant.

Registration is declarative. A module that adds extensions says so in one module-level
dict, read by the registries and never by the module itself::

    EXTENSIONS = {
        "importer": {"long": Importer(read=read_long, ...)},
    }

keyed by the registry's ``kind`` and then by name. A registry built with
``Registry(kind, packages=("simfluence_jax.importers",))`` finds its entries by listing the
modules of those packages (``pkgutil``) and reading their ``EXTENSIONS`` the first time a
name is looked up, so adding a format, a simulator or a model is a new module in the
package and nothing else: no list to edit, no import kept for its side effect. Modules
outside the package join through :func:`add_extension_module` or the environment variable
``SIMFLUENCE_JAX_EXTENSIONS`` (module names separated by commas), which is how a user's own
simulator reaches the ``simfluence`` command. ``Registry.register`` remains for entries
made at run time (a task read from a file, a test's stand-in). :func:`forget_module` takes
back what one module declared, from every registry (a test's throwaway extension).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import weakref
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

#: The module attribute every registry reads.
DECLARATION = "EXTENSIONS"
#: Extension modules outside the packages, comma-separated (read at every lookup).
ENV_VARIABLE = "SIMFLUENCE_JAX_EXTENSIONS"
_ADDED_MODULES: list[str] = []
#: Every registry made, for :func:`forget_module`.
_REGISTRIES: weakref.WeakSet = weakref.WeakSet()


def add_extension_module(module: str) -> None:
    """Makes every registry read the ``EXTENSIONS`` of ``module`` (an importable name such
    as ``"my_lab.simulators"``) besides those of its packages.

    Raises:
      ValueError: the module cannot be imported, or its ``EXTENSIONS`` is malformed.
    """
    _import(module)
    if module not in _ADDED_MODULES:
        _ADDED_MODULES.append(module)


def remove_extension_module(module: str) -> None:
    """Undoes :func:`add_extension_module` for later lookups (entries already read stay)."""
    if module in _ADDED_MODULES:
        _ADDED_MODULES.remove(module)


def forget_module(module: str) -> None:
    """Takes back what ``module`` declared: its entries leave every registry, and
    :func:`add_extension_module` is undone for it. A module still listed (in a registry's
    package, or in the environment variable) is read again at the next lookup, so remove it
    from there (and from ``sys.modules``) first to forget it for good."""
    remove_extension_module(module)
    for registry in list(_REGISTRIES):
        registry.forget(module)


def _import(module: str):
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"cannot import the extension module {module!r}: {err}") from None
    declared = getattr(mod, DECLARATION, {})
    if not isinstance(declared, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in declared.items()
    ):
        raise ValueError(
            f"{module}.{DECLARATION} must be a dict {{kind: {{name: entry}}}}, "
            f"got {type(declared).__name__}"
        )
    return mod


def _extra_modules() -> list[str]:
    from_env = [m.strip() for m in os.environ.get(ENV_VARIABLE, "").split(",") if m.strip()]
    return from_env + [m for m in _ADDED_MODULES if m not in from_env]


class Registry(Generic[T]):
    """A named collection; ``kind`` appears in error messages ("simulator", ...) and is the
    key of its entries in a module's ``EXTENSIONS``.

    Args:
      kind: what the entries are.
      packages: packages whose modules declare entries (listed on lookup, imported once).
    """

    def __init__(self, kind: str, *, packages: tuple[str, ...] = ()):
        self.kind = kind
        self.packages = tuple(packages)
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._read: set[str] = set()
        _REGISTRIES.add(self)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("linear")`` stores the decorated object under a name
        (for entries made at run time; modules declare theirs in ``EXTENSIONS``)."""

        def add(obj: T) -> T:
            self._add(name, obj, origin="register()")
            return obj

        return add

    def _add(self, name: str, obj: T, *, origin: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{origin}: a {self.kind} name must be a non-empty string")
        if name in self._items:
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {self._origin[name]}); "
                f"{origin} declares it again"
            )
        self._items[name] = obj
        self._origin[name] = origin

    def _modules(self) -> list[str]:
        names = []
        for package in self.packages:
            pkg = importlib.import_module(package)
            found = pkgutil.iter_modules(getattr(pkg, "__path__", []), package + ".")
            names += sorted(info.name for info in found)
        return names + _extra_modules()

    def discover(self) -> None:
        """Reads the declarations of modules not read yet (cheap when there are none)."""
        for module in self._modules():
            if module in self._read:
                continue
            mod = _import(module)
            if getattr(getattr(mod, "__spec__", None), "_initializing", False):
                # A lookup made while this module is still being imported (its
                # EXTENSIONS may not exist yet): read it at a later lookup.
                continue
            self._read.add(module)
            declared = getattr(mod, DECLARATION, {})
            for name, obj in declared.get(self.kind, {}).items():
                self._add(name, obj, origin=module)

    def forget(self, module: str) -> None:
        """Drops the entries ``module`` declared and marks it unread (see :func:`forget_module`)."""
        for name in [n for n, origin in self._origin.items() if origin == module]:
            del self._items[name], self._origin[name]
        self._read.discard(module)

    def get(self, name: str) -> T:
        if name not in self._items:
            self.discover()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def origin(self, name: str) -> str:
        """The module that declared ``name`` (``register()`` for run-time entries)."""
        self.get(name)
        return self._origin[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
