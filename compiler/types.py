"""The allowlist of column types: DuckDB type names a view column may use."""

from __future__ import annotations

from dataclasses import dataclass

SIMPLE_TYPES = frozenset(
    {
        "VARCHAR",
        "BOOLEAN",
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "FLOAT",
        "DOUBLE",
        "DATE",
        "TIME",
        "TIMESTAMP",
        "TIMESTAMPTZ",
        "UUID",
        "JSON",
    }
)
INTEGER_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
    }
)
DECIMAL_PRECISION_MAX = 38


@dataclass(frozen=True, slots=True)
class ColumnType:
    name: str  # one of SIMPLE_TYPES or "DECIMAL"
    precision: int | None = None
    scale: int | None = None

    @property
    def sql(self) -> str:
        if self.name == "DECIMAL":
            return f"DECIMAL({self.precision},{self.scale})"
        return self.name

    @property
    def is_temporal(self) -> bool:
        return self.name in {"DATE", "TIME", "TIMESTAMP", "TIMESTAMPTZ"}


def parse_type(text: str) -> ColumnType:
    """`VARCHAR`, `double`, `DECIMAL(10, 2)` → ColumnType; ValueError naming the problem."""
    if not isinstance(text, str):
        raise ValueError("type must be a string")
    compact = "".join(text.split()).upper()
    if compact in SIMPLE_TYPES:
        return ColumnType(compact)
    if compact.startswith("DECIMAL(") and compact.endswith(")"):
        inner = compact[len("DECIMAL(") : -1].split(",")
        if len(inner) != 2 or not all(part.isdigit() and len(part) <= 2 for part in inner):
            raise ValueError("DECIMAL needs two numbers: DECIMAL(precision, scale)")
        precision, scale = int(inner[0]), int(inner[1])
        if not 1 <= precision <= DECIMAL_PRECISION_MAX:
            raise ValueError(f"DECIMAL precision must be 1..{DECIMAL_PRECISION_MAX}")
        if not 0 <= scale <= precision:
            raise ValueError("DECIMAL scale must be between 0 and the precision")
        return ColumnType("DECIMAL", precision, scale)
    allowed = ", ".join(sorted(SIMPLE_TYPES)) + ", DECIMAL(p,s)"
    shown = text if len(text) <= 40 else text[:40] + "…"
    raise ValueError(f"type {shown!r} is not allowed; allowed types: {allowed}")
