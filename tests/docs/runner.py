"""Running one documented example against the stack (the convention: docs/README.md)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
from pathlib import Path
from typing import Any

import duckdb

from ingest.manifest import parse_manifest
from tests.support.processes import ROOT

from .blocks import Block, fenced_blocks, output_matches
from .stack import SEED_EVENTS, Stack

BLOCK_TIMEOUT_S = 60.0
PRELUDE_DOC = ROOT / "docs" / "README.md"
SHELLS = {"sh", "bash", "shell"}


class ExampleFailed(AssertionError):
    pass


def prelude() -> str:
    """The `sh test setup` block of docs/README.md: the variables every example uses."""
    found = [b for b in fenced_blocks(PRELUDE_DOC) if {"test", "setup"} <= b.tags]
    if len(found) != 1:
        raise ExampleFailed(f"{PRELUDE_DOC}: expected one ```sh test setup block")
    return found[0].text


def with_ports(text: str, stack: Stack) -> str:
    """The docs use `edgemq up`'s default ports; the test's process listens elsewhere."""
    ports = stack.ports
    return (
        text.replace("127.0.0.1:8081", f"127.0.0.1:{ports['control']}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{ports['ingest']}")
        .replace("-p 1883", f"-p {ports['mqtt']}")
    )


def setup_env(stack: Stack) -> dict[str, str]:
    """The environment after the setup block, computed once per stack (the block runs
    for real; later examples start from what it exported)."""
    if stack.doc_env is None:
        script = "set -euo pipefail\n" + with_ports(prelude(), stack) + "\nenv -0\n"
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=stack.workdir,
            env=stack.env(),
            capture_output=True,
            timeout=BLOCK_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise ExampleFailed(f"{PRELUDE_DOC}: the setup block failed: {done.stderr!r}")
        pairs = (item.split(b"=", 1) for item in done.stdout.split(b"\0") if b"=" in item)
        stack.doc_env = {k.decode(): v.decode() for k, v in pairs}
    return dict(stack.doc_env)


def run_shell(block: Block, stack: Stack, *, setup: bool = True) -> str:
    """Run a shell (or, through `python3 -`, a Python) example; its stdout."""
    body = with_ports(block.text, stack)
    if block.lang == "python":
        body = f"python3 - <<'EDGEMQ_DOC_PY'\n{body}EDGEMQ_DOC_PY\n"
    try:
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + body],
            cwd=stack.workdir,
            env=setup_env(stack) if setup else stack.env(),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        raise ExampleFailed(f"{block.where}: timed out after {BLOCK_TIMEOUT_S}s") from err
    if done.returncode != 0:
        raise ExampleFailed(
            f"{block.where}: exit {done.returncode}\n--- stdout\n{done.stdout}"
            f"--- stderr\n{done.stderr}"
        )
    check_output(block, done.stdout)
    return done.stdout


def check_output(block: Block, stdout: str) -> None:
    if block.output is not None and not output_matches(block.output, stdout):
        raise ExampleFailed(
            f"{block.where}: output differs\n--- documented\n{block.output}--- actual\n{stdout}"
        )


def run_sql(block: Block, stack: Stack) -> list[tuple[Any, ...]]:
    """Run a SQL example in DuckDB with paths relative to the working directory (where
    `edgemq-data/` is); it must return rows."""
    with duckdb.connect() as con:
        con.execute(f"SET file_search_path = '{stack.workdir}'")
        try:
            rows = con.execute(block.text).fetchall()
        except duckdb.Error as err:
            raise ExampleFailed(f"{block.where}: {err}") from err
    if not rows:
        raise ExampleFailed(f"{block.where}: the query returned no rows")
    check_output(block, "\n".join(" | ".join(str(v) for v in row) for row in rows) + "\n")
    return rows


def run_view(block: Block, stack: Stack) -> dict[str, Any]:
    """Compile and preview a view definition through the real API."""
    body = {"definition": block.text, "format": block.lang, "samples": SEED_EVENTS}
    try:
        answer: dict[str, Any] = stack.api("/v1/views/preview", body)
    except urllib.error.HTTPError as err:
        raise ExampleFailed(f"{block.where}: {err.code} {err.read().decode()}") from err
    if answer["errors"]:
        raise ExampleFailed(f"{block.where}: preview errors {answer['errors']}")
    return answer


def shape(manifest: dict[str, Any]) -> dict[str, set[str]]:
    """The field names of a manifest, its artifacts and its views (not timing names)."""
    return {
        "manifest": set(manifest),
        "artifact": {k for a in manifest["artifacts"] for k in a},
        "view": {k for v in manifest["views"] for k in v},
        "kinds": {a["kind"] for a in manifest["artifacts"]},
    }


def run_manifest(block: Block, real: Path) -> None:
    """The strict parser takes the example, and it has every field a real one has."""
    try:
        parse_manifest(block.text.encode())
    except ValueError as err:
        raise ExampleFailed(f"{block.where}: {err}") from err
    documented, produced = shape(json.loads(block.text)), shape(json.loads(real.read_text()))
    for part in ("manifest", "artifact", "view"):
        if documented[part] != produced[part]:
            raise ExampleFailed(
                f"{block.where}: {part} fields {sorted(documented[part])} "
                f"!= produced {sorted(produced[part])}"
            )
    if not produced["kinds"] <= documented["kinds"]:
        raise ExampleFailed(f"{block.where}: artifact kinds miss {produced['kinds']}")


def run_block(block: Block, stack: Stack, real_manifest: Path) -> None:
    if block.lang in SHELLS or block.lang == "python":
        if "setup" not in block.tags:
            run_shell(block, stack)
    elif block.lang == "sql":
        run_sql(block, stack)
    elif block.lang in ("yaml", "json") and "view" in block.tags:
        run_view(block, stack)
    elif block.lang == "json" and "manifest" in block.tags:
        run_manifest(block, real_manifest)
    elif block.lang == "json":
        try:
            json.loads(block.text)
        except ValueError as err:
            raise ExampleFailed(f"{block.where}: {err}") from err
    else:
        raise ExampleFailed(f"{block.where}: no runner for ```{block.lang} test")
