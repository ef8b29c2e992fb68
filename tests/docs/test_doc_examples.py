"""The docs' examples run against a real `edgemq up` (convention: docs/README.md).

One process for the module, on free ports with a fresh data directory; a first
delivery (with a DLQ row) before the docs run. Every ```… test block of every Markdown
file under docs/ runs in file order; marked tables are compared with what the running
system produces (Parquet schemas, manifest fields, node metrics). The README's
quickstart commands run too, as written (only the ports are the test's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.support.processes import ROOT

from .blocks import Block, executed_blocks, fenced_blocks, marked_tables, output_matches
from .runner import ExampleFailed, run_block, run_shell
from .stack import Stack, start

DOCS = sorted((ROOT / "docs").rglob("*.md"))
MUST_HAVE_EXAMPLES = [
    "README.md",
    "quickstart.md",
    "concepts.md",
    "architecture.md",
    "ingest.md",
    "mqtt.md",
    "views.md",
    "control-plane.md",
    "operations.md",
    "security.md",
    "formats/manifest.md",
    "formats/raw-parquet.md",
    "formats/s3-layout.md",
    "formats/wal.md",
]
BACKTICKED = re.compile(r"`([a-z_][a-z0-9_]*)`")


TOOLS = ("bash", "curl", "gzip", "mosquitto_pub")
"""What the shell examples call besides the project's own virtualenv."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:  # the suite's convention for Debian tools (see ./dev): CI must have them
        message = f"the doc examples need {', '.join(missing)} on PATH (./dev installs them)"
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must run the doc examples: {message}")
        pytest.skip(message)
    running = start(tmp_path_factory.mktemp("docs"))
    try:
        manifest = running.seed()
        running.wait_active()
        yield running, manifest
    finally:
        code = running.stop()
    assert code == 0, f"edgemq up exited {code}:\n{running.log()}"


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("name", MUST_HAVE_EXAMPLES)
def test_each_doc_has_executed_examples(name: str) -> None:
    path = ROOT / "docs" / name
    assert path.exists(), f"{path} is missing"
    assert executed_blocks(path) or marked_tables(path), f"docs/{name} has no ```… test example"


def _first(pattern: str, stack: Stack) -> Path:
    found = sorted(stack.bucket_dir().glob(pattern))
    assert found, f"no {pattern} under {stack.bucket_dir()}"
    return found[0]


def _parquet_columns(path: Path) -> list[tuple[str, str, str, str]]:
    """(name, Arrow type, DuckDB type, nullable) of each column of a Parquet file."""
    schema = pq.read_schema(path)
    with duckdb.connect() as con:
        described = con.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{path}', hive_partitioning = false)"
        ).fetchall()
    return [
        (field.name, str(field.type), str(row[1]), "yes" if field.nullable else "no")
        for field, row in zip(schema, described, strict=True)
    ]


def _check_schema(rows: list[list[str]], path: Path, where: str) -> None:
    """Rows `| `name` | `arrow type` | `DuckDB type` | nullable | meaning |`."""
    documented = [
        (r[0].strip("`"), r[1].strip("`"), r[2].strip("`"), r[3].strip().lower()) for r in rows
    ]
    actual = _parquet_columns(path)
    assert documented == actual, f"{where}: documented {documented}\n!= produced {actual}"


def _node_metric_families(stack: Stack) -> set[str]:
    with urllib.request.urlopen(f"{stack.boot['ingest_url']}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE edgemq_") and not line.split()[2].endswith("_created"):
            families.add(line.split()[2])
    return families


def check_tables(path: Path, stack: Stack, manifest: Path) -> int:
    tables = marked_tables(path)
    where = _id(path)
    for name, rows in tables.items():
        if name == "raw-parquet-schema":
            _check_schema(rows, _first("loc/*/parquet/dt=*/*.parquet", stack), where)
        elif name == "dlq-schema":
            _check_schema(rows, _first("dlq/demo_events/v1/*.parquet", stack), where)
        elif name == "manifest-fields":
            names = {n for r in rows for n in BACKTICKED.findall(r[0])}
            real = set(json.loads(manifest.read_text()))
            assert names == real, f"{where}: manifest fields {sorted(names)} != {sorted(real)}"
        elif name == "node-metrics":
            names = {n for r in rows for n in BACKTICKED.findall(r[0])}
            real = _node_metric_families(stack)
            assert names == real, (
                f"{where}: undocumented {sorted(real - names)}, not served {sorted(names - real)}"
            )
        else:
            raise AssertionError(f"{where}: no check named {name!r}")
    return len(tables)


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_doc_examples_run(path: Path, stack: tuple[Stack, Path]) -> None:
    running, manifest = stack
    blocks = executed_blocks(path)
    for block in blocks:
        run_block(block, running, manifest)
    check_tables(path, running, manifest)


def _readme_commands() -> list[Block]:
    readme = ROOT / "README.md"
    return [
        b
        for b in fenced_blocks(readme)
        if b.lang == "sh" and ("bootstrap.json" in b.text or "mosquitto_pub" in b.text)
    ]


def test_readme_quickstart_commands_run_as_written(stack: tuple[Stack, Path]) -> None:
    """The README's curl and mosquitto_pub blocks, as one script (the second uses the
    variables of the first), without the docs' setup block."""
    running, _ = stack
    blocks = _readme_commands()
    assert len(blocks) >= 2, "the README's quickstart (curl, mosquitto_pub) is missing"
    script = replace(blocks[0], text="".join(b.text for b in blocks))
    out = run_shell(script, running, setup=False)
    assert '"accepted": 2' in out, out


def test_a_broken_example_fails(tmp_path: Path, stack: tuple[Stack, Path]) -> None:
    """The runner is able to fail: each kind of broken example raises."""
    running, manifest = stack
    doc = tmp_path / "broken.md"
    good = json.loads(manifest.read_text())
    del good["views"][0]["dlq"]
    doc.write_text(
        "```sh test\nfalse\n```\n\n"
        '```sh test\necho "$EP"\n```\n\n```text output\nnot-the-endpoint\n```\n\n'
        "```sql test\nSELECT * FROM read_parquet('edgemq-data/nothing/*.parquet')\n```\n\n"
        "```yaml test view\ncolumns:\n  - {name: a, type: NOTATYPE, path: $.a}\n```\n\n"
        f"```json test manifest\n{json.dumps(good)}\n```\n\n"
        "```python test\nraise SystemExit(2)\n```\n"
    )
    blocks = executed_blocks(doc)
    assert len(blocks) == 6
    for block in blocks:
        with pytest.raises(ExampleFailed):
            run_block(block, running, manifest)


def test_output_placeholders() -> None:
    assert output_matches("a <id> b\n…\nend\n", "a 123 b\nx\ny\nend\n")
    assert output_matches('{"accepted": 2, "epoch": <n>}\n', '{"accepted": 2, "epoch": 17}\n')
    assert not output_matches('{"accepted": 2}\n', '{"accepted": 3}\n')
    assert not output_matches("a <id>\n", "a 1\nextra\n")


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    in_fence = False
    anchors = set()
    for line in path.read_text().splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


@pytest.mark.parametrize("path", [*DOCS, ROOT / "README.md"], ids=_id)
def test_relative_links_resolve(path: Path) -> None:
    """Links between the docs (and their #anchors) point at something that exists."""
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        missing_anchor = bool(anchor) and resolved.suffix == ".md" and resolved.exists()
        if not resolved.exists() or (missing_anchor and anchor not in _anchors(resolved)):
            broken.append(target)
    assert not broken, f"{_id(path)}: broken links {broken}"
