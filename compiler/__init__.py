"""compiler — view definitions → validated IR → sandboxed DuckDB SQL.

A pure library (no aiohttp, no S3). `duckdb` is imported only by `compiler.sandbox`.

Entry points:
- `parse_definition(obj)` / `load_definition_text(text, fmt)` → `ViewDefinition`, or
  `DefinitionInvalid` listing every problem with its path (the API's 422);
- `display_sql(definition)` → the preview's `compiledSql`;
- `run_preview(definition, samples)` → the preview response (blocking);
- `materialize_view(definition, segment, limits)` → typed rows per partition, DLQ rows
  and counts (blocking); `segment_table(...)` and `raw_table(...)` build the Arrow
  tables of a segment.
Blocking calls go through `shared.offload.BlockingPool` from async code.
"""

from .definition import ViewDefinition, load_definition_text, parse_definition
from .errors import (
    CompilerError,
    DefinitionInvalid,
    Problem,
    SandboxError,
    ViewExecutionError,
    ViewTimeout,
)
from .materialize import ViewCounts, ViewResult, materialize_view
from .parquet import SegmentTable, parquet_bytes, raw_table, segment_table, write_parquet
from .preview import run_preview
from .sandbox import PREVIEW_LIMITS, SandboxLimits
from .sql import display_sql

__all__ = [
    "PREVIEW_LIMITS",
    "CompilerError",
    "DefinitionInvalid",
    "Problem",
    "SandboxError",
    "SandboxLimits",
    "SegmentTable",
    "ViewCounts",
    "ViewDefinition",
    "ViewExecutionError",
    "ViewResult",
    "ViewTimeout",
    "display_sql",
    "load_definition_text",
    "materialize_view",
    "parquet_bytes",
    "parse_definition",
    "raw_table",
    "run_preview",
    "segment_table",
    "write_parquet",
]
