"""The compiler's error tree.

CompilerError
├── DefinitionInvalid     the definition has problems; `.problems` lists every one
├── ViewExecutionError    DuckDB failed while running a compiled view
│   └── ViewTimeout       the deadline passed; the query was interrupted
└── SandboxError          the sandbox could not be set up as required
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a definition: where (`definition.columns[3].type`) and what."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class CompilerError(Exception):
    """Base class of every error this package raises on purpose."""


class DefinitionInvalid(CompilerError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        summary = "; ".join(f"{p.path}: {p.message}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"invalid view definition: {summary}{more}")


class ViewExecutionError(CompilerError):
    """Running a compiled view failed (not a row outcome: a real execution error)."""


class ViewTimeout(ViewExecutionError):
    """The view ran past its deadline and was interrupted."""


class SandboxError(CompilerError):
    """The DuckDB sandbox could not be locked down as required."""
