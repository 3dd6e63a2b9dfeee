"""The one registry pattern: named factories (loaders, methods, encoders) looked up by name,
with a helpful error that suggests the closest names."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the closest known names."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def unknown_name(kind: str, name: str, known: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known))}.")


def _source_file(obj: object) -> str:
    try:
        return inspect.getsourcefile(obj) or repr(obj)
    except TypeError:
        return repr(obj)


class Registry(Generic[T]):
    """Name → object (a class or function) with a one-line description for `gpo-bench list`. Looking a
    name up first imports the plugins (`gpo_bench.plugins`: include folders and entry points)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
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

    def get(self, name: str) -> T:
        _load_plugins()
        if name not in self._entries:
            raise unknown_name(self.kind, name, list(self._entries))
        return self._entries[name][0]

    def names(self) -> list[str]:
        _load_plugins()
        return sorted(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        return [(name, self._entries[name][1]) for name in self.names()]


def _load_plugins() -> None:
    from .plugins import load  # here, not at the top: plugins import the modules that fill the registries

    load()


LOADERS: Registry[Callable] = Registry("loader")
METHODS: Registry[type] = Registry("method implementation")
