"""The package's layers run one way: no import loop among gpo_bench's modules (imports inside functions
included, since they run too), and the bottom layers import (almost) nothing of the package; and every module
is short enough to hold in one's head."""

import ast
from pathlib import Path

import gpo_bench

PACKAGE = Path(gpo_bench.__file__).resolve().parent
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def run_nodes(tree: ast.AST):
    """Every node of the tree but those inside an `if TYPE_CHECKING:` block."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *run_nodes(child)])
            continue
        yield node
        yield from run_nodes(node)


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that `name` imports anywhere in its file: `import gpo_bench.x`, `from . import x`
    (a module when x is one), `from .x import y`, plus the packages that importing a submodule runs first
    (not those the importer already sits in). Imports under `if TYPE_CHECKING:` never run and are left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in run_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in known and not name.startswith(candidate + ".") and candidate != name:
                    found.add(candidate)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_loop_and_accepts_a_chain():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_relative_function_level_and_package_imports():
    edges = graph()
    assert "gpo_bench.cards" in edges["gpo_bench.methods.base"]  # from ..cards import Limit
    assert "gpo_bench.methods" in edges["gpo_bench.runner"]  # importing methods.base runs the package first
    assert {"gpo_bench.methods.gpo", "gpo_bench.methods.baselines"} <= edges["gpo_bench.methods"]  # from . import x
    assert "gpo_bench.methods.gpo.method" not in edges["gpo_bench.methods.gpo.training"]  # under TYPE_CHECKING


def test_no_import_loop_in_the_package():
    loop = cycle(graph())
    assert loop is None, "import loop: " + " -> ".join(loop)


def test_the_bottom_layers_import_nothing_of_the_package():
    edges = graph()
    assert edges["gpo_bench.errors"] == set()
    assert edges["gpo_bench.registry"] <= {"gpo_bench.errors"}
    assert edges["gpo_bench.models"] == set()


def test_no_module_is_longer_than_max_lines():
    lines = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    over = sorted((n, name) for name, n in lines.items() if n > MAX_LINES)
    assert not over, f"modules over {MAX_LINES} lines: " + ", ".join(f"{name} ({n})" for n, name in reversed(over))
