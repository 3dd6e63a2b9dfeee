"""The one registry pattern: named factories (loaders, methods) looked up by name, with a helpful error that
suggests the closest names. A leaf: it imports nothing of the package but its errors. The built-ins are named
as a module path string, imported on the first lookup (their `@register` decorators fill the registry);
users' plugins are imported by `gpo_bench.discovery.discover()`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import UnknownNameError, unknown_name

__all__ = ["LOADERS", "METHODS", "Registry", "UnknownNameError", "unknown_name"]

T = TypeVar("T")


def _source_file(obj: object) -> str:
    try:
        return inspect.getsourcefile(obj) or repr(obj)
    except TypeError:
        return repr(obj)


class Registry(Generic[T]):
    """Name → object (a class or function) with a one-line description for `gpo-bench list`. `builtins` is the
    module (a dotted path) whose import registers the package's own entries; it is imported on first use."""

    def __init__(self, kind: str, builtins: str) -> None:
        self.kind = kind
        self.builtins = builtins
        self._builtins_loaded = False
        self._entries: dict[str, tuple[T, str]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} {name!r} is registered twice: in {_source_file(obj)} "
                    f"and in {_source_file(self._entries[name][0])}; rename one"
                )
            self._entries[name] = (obj, description)
            return obj

        return decorate

    def load_builtins(self) -> None:
        """Import the built-in entries' module once (before any plugin, so that a clash names the plugin)."""
        if not self._builtins_loaded:
            self._builtins_loaded = True
            try:
                importlib.import_module(self.builtins)
            except BaseException:
                self._builtins_loaded = False
                raise

    def get(self, name: str) -> T:
        self.load_builtins()
        if name not in self._entries:
            raise unknown_name(self.kind, name, list(self._entries))
        return self._entries[name][0]

    def names(self) -> list[str]:
        self.load_builtins()
        return sorted(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        return [(name, self._entries[name][1]) for name in self.names()]


LOADERS: Registry[Callable] = Registry("loader", builtins="gpo_bench.loaders")
METHODS: Registry[type] = Registry("method implementation", builtins="gpo_bench.methods")
