"""The layout rules, checked on the source so they cannot drift."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("coordinator", "workers", "cdc")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_never_import_each_other(layer: str) -> None:
    others = set(LAYERS) - {layer}
    for path in sorted((ROOT / layer).rglob("*.py")):
        wrong = _imports(path) & others
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_only_the_etcd_client_module_imports_aetcd() -> None:
    allowed = ROOT / "shardctl" / "etcd" / "client.py"
    offenders = [
        str(path.relative_to(ROOT))
        for top in ("shardctl", *LAYERS, "tests", "bench")
        for path in sorted((ROOT / top).rglob("*.py"))
        if path != allowed and "aetcd" in _imports(path)
    ]
    assert offenders == []


def test_core_does_not_import_the_layers() -> None:
    """shardctl's core is below the layers; only its CLI sits above them."""
    for path in sorted((ROOT / "shardctl").rglob("*.py")):
        if "cli" in path.relative_to(ROOT).parts:
            continue
        wrong = _imports(path) & set(LAYERS)
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"
