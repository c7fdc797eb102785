"""The layout rules, checked on the source so they cannot drift."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("coordinator", "workers", "cdc")


def _modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (a lazy import inside a function
    counts: it is a dependency all the same), with its full dotted name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from shardctl.cli import live` imports the module shardctl.cli.live
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports(path: Path) -> set[str]:
    """The top-level packages `path` imports."""
    return {name.split(".")[0] for name in _modules(path)}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_cli(path: Path) -> bool:
    return any(name == CLI or name.startswith(f"{CLI}.") for name in _modules(path))


CLI = "shardctl.cli"


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_never_import_each_other(layer: str) -> None:
    others = set(LAYERS) - {layer}
    for path in sorted((ROOT / layer).rglob("*.py")):
        wrong = _imports(path) & others
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_only_the_etcd_client_module_imports_aetcd() -> None:
    allowed = ROOT / "shardctl" / "core" / "etcd" / "client.py"
    offenders = [
        str(path.relative_to(ROOT))
        for top in ("shardctl", *LAYERS, "tests", "bench")
        for path in sorted((ROOT / top).rglob("*.py"))
        if path != allowed and "aetcd" in _imports(path)
    ]
    assert offenders == []


def _core_files() -> list[Path]:
    return sorted((ROOT / "shardctl" / "core").rglob("*.py"))


def test_the_tree_shows_the_layers() -> None:
    """shardctl/ holds two floors and nothing else: the core below, the CLI on top."""
    entries = {
        path.name
        for path in (ROOT / "shardctl").iterdir()
        if path.name != "__pycache__" and path.suffix != ".typed"
    }
    assert entries == {"__init__.py", "core", "cli"}


def test_core_does_not_import_the_layers() -> None:
    """shardctl's core is below the layers; only its CLI sits above them."""
    for path in _core_files():
        wrong = _imports(path) & set(LAYERS)
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_core_does_not_import_the_cli() -> None:
    files = _core_files()
    assert ROOT / "shardctl" / "core" / "status.py" in files
    offenders = [str(path.relative_to(ROOT)) for path in files if _imports_cli(path)]
    assert offenders == []


@pytest.mark.parametrize("layer", LAYERS)
def test_roles_do_not_import_the_cli(layer: str) -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / layer).rglob("*.py"))
        if _imports_cli(path)
    ]
    assert offenders == []


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (module -> modules it imports) as a path that ends where
    it starts, or None when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle is not None:
            return cycle
    return None


def test_import_cycle_finds_a_cycle_and_only_a_cycle() -> None:
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b", "c"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


@pytest.mark.parametrize("floor", ["core", "cli"])
def test_modules_of_a_floor_import_no_cycle(floor: str) -> None:
    files = sorted((ROOT / "shardctl" / floor).rglob("*.py"))
    names = {_module_name(path) for path in files}
    graph = {
        _module_name(path): {
            name for name in _modules(path) if name in names and name != _module_name(path)
        }
        for path in files
    }
    assert f"shardctl.{floor}.status" in graph or f"shardctl.{floor}.live" in graph
    assert import_cycle(graph) is None, f"import cycle: {' -> '.join(import_cycle(graph) or [])}"
