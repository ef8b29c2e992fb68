"""Reading the executable parts of the Markdown docs (the convention of docs/README.md).

A fenced block whose info string has the word `test` is an example the doc test runs:
```sh test, ```python test, ```sql test, ```yaml test view, ```json test view,
```json test manifest. A block right after it (only blank lines between) whose info
string has the word `output` is the expected standard output. `setup` marks the shell
prelude every shell example starts with. A table right after `<!-- test: NAME -->` is
checked against the running system by the test named NAME.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
TABLE_MARK = re.compile(r"^<!--\s*test:\s*(?P<name>[a-z0-9-]+)\s*-->\s*$")
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9_ -]*>")
ELLIPSIS_LINE = "…"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    lang: str
    tags: frozenset[str]
    text: str
    output: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order (outputs not attached)."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, words = match["fence"], match["info"].split()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            body.append(lines[j])
            j += 1
        lang = words[0] if words else ""
        blocks.append(Block(path, i + 1, j + 1, lang, frozenset(words[1:]), "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def _gap_is_blank(lines: list[str], start: int, end: int) -> bool:
    return all(not line.strip() for line in lines[start:end])


def executed_blocks(path: Path) -> list[Block]:
    """The `test` blocks of a file, each with the `output` block that follows it."""
    lines = path.read_text().splitlines()
    every = fenced_blocks(path)
    result: list[Block] = []
    for index, block in enumerate(every):
        if "test" not in block.tags:
            continue
        output = None
        if index + 1 < len(every):
            after = every[index + 1]
            if "output" in after.tags and _gap_is_blank(lines, block.end, after.line - 1):
                output = after.text
        result.append(
            Block(block.path, block.line, block.end, block.lang, block.tags, block.text, output)
        )
    return result


def marked_tables(path: Path) -> dict[str, list[list[str]]]:
    """The body rows (cells stripped) of each table marked `<!-- test: NAME -->`."""
    lines = path.read_text().splitlines()
    tables: dict[str, list[list[str]]] = {}
    for i, line in enumerate(lines):
        mark = TABLE_MARK.match(line.strip())
        if mark is None:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        rows: list[list[str]] = []
        while j < len(lines) and lines[j].lstrip().startswith("|"):
            cells = [c.strip() for c in lines[j].strip().strip("|").split("|")]
            rows.append(cells)
            j += 1
        if len(rows) < 3:
            raise AssertionError(f"{path}:{i + 1}: no table after the marker {mark['name']!r}")
        tables[mark["name"]] = rows[2:]  # header and separator dropped
    return tables


def output_pattern(expected: str) -> re.Pattern[str]:
    """A regex for documented output: `<name>` placeholders match any text on a line,
    a line of just `…` matches any number of lines; trailing spaces are ignored."""
    parts: list[str] = []
    for line in expected.rstrip("\n").splitlines():
        if line.strip() == ELLIPSIS_LINE:
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        pieces = PLACEHOLDER.split(line.rstrip())
        parts.append(r"[^\n]+?".join(re.escape(p) for p in pieces) + r"[ \t]*\n")
    return re.compile("".join(parts))


def output_matches(expected: str, actual: str) -> bool:
    text = "\n".join(line.rstrip() for line in actual.rstrip("\n").splitlines()) + "\n"
    return output_pattern(expected).fullmatch(text) is not None
