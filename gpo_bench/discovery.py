"""Discovery of everything the registries and cards come from, in one place: the built-in task and method
cards, loaders and methods, then the users' own, which come without forking from include folders
(`--include-path DIR`, repeatable, and `$GPO_BENCH_INCLUDE_PATH`, folders separated by `os.pathsep`) and
installed packages' `gpo_bench.plugins` entry points.

An include folder holds task cards in `tasks/*.yaml`, method cards in `baselines/*.yaml` and Python modules
(`*.py`, not starting with `_`), each imported once so that its `@LOADERS.register` / `@METHODS.register`
take effect. An entry point names a module of an installed package, imported the same way; the folder of
that module may hold `tasks/` and `baselines/` too. `--include-path` is put into the environment, so the
worker processes of a sweep see the same folders.

`discover()` imports the built-ins and then every plugin module; the CLI, the Python API, each sweep worker and
every lookup of a card's loader or method implementation call it first (a second call imports nothing new).
`card_paths` finds the cards by name."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback
from importlib import metadata
from pathlib import Path

from .errors import CardError, PluginError
from .registry import LOADERS, METHODS

PACKAGE_DIR = Path(__file__).resolve().parent
CARD_KINDS = {"tasks": "task", "baselines": "method"}
INCLUDE_ENV = "GPO_BENCH_INCLUDE_PATH"
ENTRY_POINT_GROUP = "gpo_bench.plugins"
_imported: set[str] = set()  # plugin files and entry points already imported in this process


def include_paths() -> list[Path]:
    """The include folders in `$GPO_BENCH_INCLUDE_PATH` (where `--include-path` also puts its folders)."""
    paths = [Path(p).expanduser() for p in os.environ.get(INCLUDE_ENV, "").split(os.pathsep) if p.strip()]
    for path in paths:
        if not path.is_dir():
            raise PluginError(f"include path {path} (from --include-path or ${INCLUDE_ENV}) is not a folder")
    return paths


def add_include_paths(paths: list[Path]) -> None:
    """`--include-path` folders, put before those of `$GPO_BENCH_INCLUDE_PATH` in the environment."""
    for path in paths:
        if not Path(path).expanduser().is_dir():
            raise PluginError(f"--include-path {path}: not a folder")
    chosen = [str(Path(p).expanduser().resolve()) for p in paths]
    chosen += [p for p in os.environ.get(INCLUDE_ENV, "").split(os.pathsep) if p.strip() and p not in chosen]
    os.environ[INCLUDE_ENV] = os.pathsep.join(chosen)


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _describe(entry: metadata.EntryPoint) -> str:
    dist = getattr(entry.dist, "name", None) or "an installed package"
    return f"entry point {entry.name} = {entry.value} ({ENTRY_POINT_GROUP}, from {dist})"


def card_roots() -> list[tuple[Path, str]]:
    """(folder, where it comes from) of every place user cards live: include folders, then the folders of
    the plugin entry points' modules."""
    roots = [(path, f"include path {path}") for path in include_paths()]
    for entry in _entry_points():
        try:
            spec = importlib.util.find_spec(entry.module)
        except (ImportError, ValueError) as error:
            raise PluginError(f"{_describe(entry)}: cannot find module {entry.module!r} ({error})") from None
        if spec is None or spec.origin is None:
            raise PluginError(f"{_describe(entry)}: module {entry.module!r} is not installed")
        roots.append((Path(spec.origin).parent, _describe(entry)))
    return roots


def _failure(where: str, path: Path | None, error: BaseException) -> PluginError:
    """The import error of a plugin, with the line of the plugin file where it was raised."""
    line = ""
    if isinstance(error, SyntaxError):
        line = f" (line {error.lineno})"
    elif path is not None:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
        line = f" (line {frames[-1].lineno})" if frames else ""
    return PluginError(f"{where}: the plugin failed to import{line}: {type(error).__name__}: {error}")


def _import_file(path: Path) -> None:
    name = f"gpo_bench_plugin_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so classes defined in it know their file
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise _failure(str(path), path, error) from error


def discover() -> None:
    """Import the built-in loaders and methods, then every include-path module and plugin entry point not
    imported yet (a name registered twice is an error naming both files)."""
    LOADERS.load_builtins()  # built-ins first, so a clash names the plugin
    METHODS.load_builtins()

    for folder in include_paths():
        for path in sorted(folder.resolve().glob("*.py")):
            if not path.name.startswith("_") and str(path) not in _imported:
                _imported.add(str(path))
                _import_file(path)
    for entry in _entry_points():
        key = f"entry point {entry.name}={entry.value}"
        if key not in _imported:
            _imported.add(key)
            try:
                entry.load()
            except Exception as error:
                raise _failure(_describe(entry), None, error) from error


def cards_dir(kind: str) -> Path:
    """`tasks` or `baselines`: inside the installed wheel, else at the repository root."""
    for candidate in (PACKAGE_DIR / "cards" / kind, PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise CardError(f"no {kind}/ card folder found next to {PACKAGE_DIR}")


def card_paths(kind: str) -> dict[str, Path]:
    """Card name → file (`kind`: tasks or baselines): the built-in cards, then those of the include folders and
    plugins; a name found twice is an error naming both files."""
    found = {p.stem: p for p in sorted(cards_dir(kind).glob("*.yaml"))}
    for root, origin in card_roots():
        for path in sorted((root / kind).glob("*.yaml")):
            if path.stem in found:
                raise CardError(
                    f"{path} ({origin}) defines the {CARD_KINDS[kind]} card {path.stem!r}, "
                    f"which {found[path.stem]} already defines; rename one (a card's name is its file name)"
                )
            found[path.stem] = path
    return found


def card_origin(path: str | Path) -> str:
    """'built-in' for the package's own cards, else the card file's path."""
    path = Path(path)
    return "built-in" if path.parent == cards_dir(path.parent.name) else str(path)


def task_names() -> list[str]:
    return list(card_paths("tasks"))


def method_names() -> list[str]:
    return list(card_paths("baselines"))
