"""The dependency direction of docs/adr/0001: shared ← wal ← ingest, shared ← compiler ←
control (ingest may use compiler); ingest and control never import each other; only the
`edgemq` command package imports the services. Checked on the source with `ast`, so a
lazy import inside a function counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "wal", "compiler", "ingest", "control", "edgemq")
ALLOWED: dict[str, set[str]] = {
    "shared": set(),
    "wal": {"shared"},
    "compiler": {"shared"},
    "ingest": {"shared", "wal", "compiler"},
    "control": {"shared", "compiler"},
    "edgemq": {"shared", "wal", "compiler", "ingest", "control"},
}
# Libraries must stay pure: no web framework, no S3 client, no SQL engine.
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "wal": {"aiohttp", "aioboto3", "aiobotocore", "boto3", "botocore", "duckdb"},
    "shared": {"aiohttp", "aioboto3", "aiobotocore", "boto3", "botocore", "duckdb"},
    "compiler": {"aiohttp", "aioboto3", "aiobotocore", "boto3", "botocore"},
}


def imported_top_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in sorted(imported_top_names(path)):
            inner = name in PACKAGES and name != package and name not in ALLOWED[package]
            if inner or name in FORBIDDEN_THIRD_PARTY.get(package, set()):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_layer_allows(package: str) -> None:
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package) == []


def test_the_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from control import app\n    import aiohttp.web\n")
    assert imported_top_names(module) == {"control", "aiohttp"}
