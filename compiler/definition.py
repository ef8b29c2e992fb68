"""View definitions: parse YAML/JSON into typed models, reporting every problem.

    columns:      1..100 of {name, type, path | source, required, cast_failures, default}
    filters:      [{condition, description}]     all ANDed together
    partitions:   [{column, transform}]          identity | year | month | day | hour

Each problem carries a path such as `definition.columns[3].type`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from .condition import (
    Category,
    ConditionError,
    Expr,
    bind_temporal_literals,
    check_names_and_types,
    parse_condition,
)
from .errors import DefinitionInvalid, Problem
from .jsonpath import JsonPath, parse_jsonpath
from .types import INTEGER_TYPES, SIMPLE_TYPES, ColumnType, parse_type

COLUMNS_MAX = 100
FILTERS_MAX = 32
PARTITIONS_MAX = 4
DEFINITION_BYTES_MAX = 256 * 1024
NAME_CHARS_MAX = 63

CastPolicy = Literal["null", "dlq", "drop"]
Transform = Literal["identity", "year", "month", "day", "hour"]

# Virtual columns of the `source` relation and their types.
VIRTUAL_COLUMNS: dict[str, ColumnType] = {
    "ts": ColumnType("TIMESTAMP"),
    "topic": ColumnType("VARCHAR"),
    "tenant": ColumnType("UINTEGER"),
    "segment_seq": ColumnType("UBIGINT"),
    "frame_index": ColumnType("UBIGINT"),
}
# Names a column may not take: the virtual columns and the raw payload.
RESERVED_NAMES = frozenset({*VIRTUAL_COLUMNS, "raw"})
TRANSFORMS: tuple[Transform, ...] = ("identity", "year", "month", "day", "hour")


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    type: ColumnType
    path: JsonPath | None
    source: str | None  # a virtual column name, when `path` is None
    required: bool = False
    cast_failures: CastPolicy = "null"
    default: str | int | float | bool | None = None


@dataclass(frozen=True, slots=True)
class FilterSpec:
    condition: str
    expr: Expr
    description: str | None = None


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    column: str
    transform: Transform = "identity"

    @property
    def folder_name(self) -> str:
        return self.column if self.transform == "identity" else f"{self.column}_{self.transform}"


@dataclass(frozen=True, slots=True)
class ViewDefinition:
    columns: tuple[ColumnSpec, ...]
    filters: tuple[FilterSpec, ...] = ()
    partitions: tuple[PartitionSpec, ...] = ()

    def column(self, name: str) -> ColumnSpec:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @property
    def reads_json(self) -> bool:
        return any(c.path is not None for c in self.columns)


def category_of(column_type: ColumnType) -> Category:
    if column_type.name in ("VARCHAR", "UUID"):
        return "string"
    if column_type.name == "BOOLEAN":
        return "boolean"
    if column_type.is_temporal:
        return "temporal"
    if column_type.name == "JSON":
        return "json"
    return "number"


def is_valid_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= NAME_CHARS_MAX
        and name[0].isascii()
        and name[0].islower()
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in name)
    )


def load_definition_text(text: str, fmt: Literal["json", "yaml"]) -> Any:
    """Decode a definition document; DefinitionInvalid when it is not valid YAML/JSON."""
    if len(text.encode("utf-8")) > DEFINITION_BYTES_MAX:
        raise DefinitionInvalid(
            [Problem("definition", f"larger than {DEFINITION_BYTES_MAX} bytes")]
        )
    try:
        return json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except RecursionError as err:
        raise DefinitionInvalid([Problem("definition", "nested too deeply")]) from err
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise DefinitionInvalid([Problem("definition", f"not valid {fmt.upper()}: {err}")]) from err


class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def unknown_keys(self, path: str, obj: Mapping[str, Any], allowed: set[str]) -> None:
        for key in obj:
            if key not in allowed:
                self.add(f"{path}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")


_INTEGER_RANGES = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "HUGEINT": (-(2**127), 2**127 - 1),
    "UTINYINT": (0, 2**8 - 1),
    "USMALLINT": (0, 2**16 - 1),
    "UINTEGER": (0, 2**32 - 1),
    "UBIGINT": (0, 2**64 - 1),
}
# Which column types a virtual column can be read as (others would always be NULL).
VIRTUAL_TARGETS: dict[str, frozenset[str]] = {
    "ts": frozenset({"TIMESTAMP", "TIMESTAMPTZ", "DATE", "VARCHAR"}),
    "topic": frozenset(SIMPLE_TYPES | {"DECIMAL"}),
    "tenant": frozenset(INTEGER_TYPES | {"DECIMAL", "DOUBLE", "FLOAT", "VARCHAR"}),
    "segment_seq": frozenset(INTEGER_TYPES | {"DECIMAL", "DOUBLE", "FLOAT", "VARCHAR"}),
    "frame_index": frozenset(INTEGER_TYPES | {"DECIMAL", "DOUBLE", "FLOAT", "VARCHAR"}),
}


def normalise_default(value: Any, column_type: ColumnType) -> str | int | float | bool:
    """The default as stored and rendered; ValueError when it does not fit the type.
    Date/time defaults are parsed here (offsets converted to UTC), numbers range-checked."""
    import datetime as dt
    import math
    import struct
    import uuid as uuid_module
    from decimal import Decimal, InvalidOperation, localcontext

    name = column_type.name
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if name == "BOOLEAN":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if isinstance(value, bool):
        raise ValueError(f"does not fit type {column_type.sql}")
    if name in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[name]
        if not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer {low}..{high} for {name}")
        return value
    if name in ("FLOAT", "DOUBLE"):
        try:  # float() of a huge int and struct's "f" raise OverflowError
            as_float = float(value) if isinstance(value, (int, float)) else math.nan
            if name == "FLOAT":
                struct.pack("<f", as_float)  # beyond FLOAT's range: CAST fails at run time
        except OverflowError:
            as_float = math.nan
        if not math.isfinite(as_float):
            raise ValueError(f"must be a finite number within {name}'s range")
        return as_float
    if name == "DECIMAL":
        try:
            number = Decimal(str(value)) if isinstance(value, (int, float, str)) else None
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            raise ValueError(f"must be a number fitting {column_type.sql}")
        assert column_type.precision is not None
        assert column_type.scale is not None
        try:
            with localcontext() as context:  # room for 38 digits (28 by default)
                context.prec = 80
                rounded = number.quantize(Decimal(1).scaleb(-column_type.scale))
        except InvalidOperation:  # more digits than even that: does not fit
            rounded = Decimal(10) ** 80
        if len(rounded.as_tuple().digits) > column_type.precision:
            raise ValueError(f"must be a number fitting {column_type.sql}")
        return str(number)
    if not isinstance(value, str):
        raise ValueError(f"must be a string for {column_type.sql}")
    try:
        if name == "UUID":
            return str(uuid_module.UUID(value))
        if name == "JSON":
            json.loads(value)
            return value
        if name == "DATE":
            return dt.date.fromisoformat(value).isoformat()
        if name == "TIME":
            return dt.time.fromisoformat(value).isoformat()
        if name in ("TIMESTAMP", "TIMESTAMPTZ"):
            moment = dt.datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
            # isoformat pads the year to 4 digits (strftime's %Y does not on glibc)
            return moment.isoformat(sep=" ", timespec="microseconds")
    except (ValueError, OverflowError) as err:  # OverflowError: an offset past year 1/9999
        raise ValueError(f"is not a valid {column_type.sql} value") from err
    return value


def _parse_default(c: _Collector, path: str, value: Any, column_type: ColumnType) -> Any:
    if value is None:
        return None
    try:
        return normalise_default(value, column_type)
    except ValueError as err:
        c.add(path, f"default {value!r} {err}")
        return None


def _parse_column(c: _Collector, path: str, raw: Any) -> ColumnSpec | None:
    if not isinstance(raw, Mapping):
        c.add(path, "each column must be an object")
        return None
    c.unknown_keys(
        path, raw, {"name", "type", "path", "source", "required", "cast_failures", "default"}
    )
    before = len(c.problems)
    name = raw.get("name")
    if not is_valid_name(name):
        c.add(f"{path}.name", "must match ^[a-z][a-z0-9_]*$ (at most 63 characters)")
    elif name in RESERVED_NAMES:
        c.add(f"{path}.name", f"{name!r} is reserved (virtual columns and 'raw')")
    column_type = ColumnType("VARCHAR")
    try:
        column_type = parse_type(raw.get("type", ""))
    except ValueError as err:
        c.add(f"{path}.type", str(err) if "type" in raw else "is required")
    json_path: JsonPath | None = None
    source = raw.get("source")
    if ("path" in raw) == ("source" in raw):
        c.add(path, "give exactly one of 'path' (a JSONPath) or 'source' (a virtual column)")
    elif "path" in raw:
        try:
            json_path = parse_jsonpath(raw["path"])
        except ValueError as err:
            c.add(f"{path}.path", str(err))
    elif source not in VIRTUAL_COLUMNS:
        c.add(f"{path}.source", f"must be one of {', '.join(VIRTUAL_COLUMNS)}")
    elif column_type.name not in VIRTUAL_TARGETS[source]:
        allowed = ", ".join(sorted(VIRTUAL_TARGETS[source]))
        c.add(f"{path}.type", f"the virtual column {source!r} can be read as {allowed}")
    required = raw.get("required", False)
    if not isinstance(required, bool):
        c.add(f"{path}.required", "must be true or false")
    policy = raw.get("cast_failures", "null")
    policy = "null" if policy is None else policy
    if policy not in ("null", "dlq", "drop"):
        c.add(f"{path}.cast_failures", "must be null, dlq or drop")
    default = _parse_default(c, f"{path}.default", raw.get("default"), column_type)
    if len(c.problems) > before:
        return None
    return ColumnSpec(str(name), column_type, json_path, source, required, policy, default)  # type: ignore[arg-type]


def parse_definition(raw: Any) -> ViewDefinition:
    """Validate a decoded definition object; DefinitionInvalid lists every problem."""
    c = _Collector()
    if not isinstance(raw, Mapping):
        raise DefinitionInvalid([Problem("definition", "must be an object")])
    c.unknown_keys("definition", raw, {"columns", "filters", "partitions"})
    raw_columns = raw.get("columns")
    columns: list[ColumnSpec] = []
    if not isinstance(raw_columns, list) or not 1 <= len(raw_columns) <= COLUMNS_MAX:
        c.add("definition.columns", f"must be a list of 1 to {COLUMNS_MAX} columns")
        raw_columns = raw_columns[:COLUMNS_MAX] if isinstance(raw_columns, list) else []
    seen: set[str] = set()
    for index, raw_column in enumerate(raw_columns):
        path = f"definition.columns[{index}]"
        column = _parse_column(c, path, raw_column)
        if column is None:
            continue
        if column.name in seen:
            c.add(f"{path}.name", f"duplicate column name {column.name!r}")
            continue
        seen.add(column.name)
        columns.append(column)

    names: dict[str, Category] = {n: category_of(t) for n, t in VIRTUAL_COLUMNS.items()}
    names.update({col.name: category_of(col.type) for col in columns})
    types = {n: t.name for n, t in VIRTUAL_COLUMNS.items()}
    types.update({col.name: col.type.name for col in columns})
    filters: list[FilterSpec] = []
    raw_filters = raw.get("filters") or []
    if not isinstance(raw_filters, list) or len(raw_filters) > FILTERS_MAX:
        c.add("definition.filters", f"must be a list of at most {FILTERS_MAX} filters")
        raw_filters = []
    for index, raw_filter in enumerate(raw_filters):
        path = f"definition.filters[{index}]"
        if not isinstance(raw_filter, Mapping):
            c.add(path, "each filter must be an object with a condition")
            continue
        c.unknown_keys(path, raw_filter, {"condition", "description"})
        text = raw_filter.get("condition")
        description = raw_filter.get("description")
        if description is not None and not isinstance(description, str):
            c.add(f"{path}.description", "must be a string")
        try:
            expr = bind_temporal_literals(parse_condition(text), types)  # type: ignore[arg-type]
            if check_names_and_types(expr, names) not in ("boolean", "null", "any"):
                raise ConditionError("condition must be true or false, not a value")
        except ConditionError as err:
            c.add(f"{path}.condition", str(err))
            continue
        filters.append(FilterSpec(text, expr, description))  # type: ignore[arg-type]

    partitions: list[PartitionSpec] = []
    raw_partitions = raw.get("partitions") or []
    if not isinstance(raw_partitions, list) or len(raw_partitions) > PARTITIONS_MAX:
        c.add("definition.partitions", f"must be a list of at most {PARTITIONS_MAX} partitions")
        raw_partitions = []
    by_name = {col.name: col for col in columns}
    for index, raw_partition in enumerate(raw_partitions):
        path = f"definition.partitions[{index}]"
        if not isinstance(raw_partition, Mapping):
            c.add(path, "each partition must be an object with a column")
            continue
        c.unknown_keys(path, raw_partition, {"column", "transform"})
        column_name = raw_partition.get("column")
        transform = raw_partition.get("transform", "identity")
        if transform not in TRANSFORMS:
            c.add(f"{path}.transform", f"must be one of {', '.join(TRANSFORMS)}")
            continue
        target = by_name.get(column_name) if isinstance(column_name, str) else None
        if target is None:
            c.add(f"{path}.column", "must name a column of this view")
            continue
        if transform != "identity" and target.type.name not in ("TIMESTAMP", "TIMESTAMPTZ", "DATE"):
            c.add(f"{path}.transform", f"{transform} needs a TIMESTAMP, TIMESTAMPTZ or DATE column")
            continue
        if transform == "hour" and target.type.name == "DATE":
            c.add(f"{path}.transform", "hour needs a TIMESTAMP or TIMESTAMPTZ column")
            continue
        if target.type.name in ("JSON", "FLOAT", "DOUBLE"):
            c.add(f"{path}.column", f"cannot partition by a {target.type.sql} column")
            continue
        partitions.append(PartitionSpec(target.name, transform))
    if len({p.folder_name for p in partitions}) != len(partitions):
        c.add("definition.partitions", "the same partition is listed twice")
    if c.problems:
        raise DefinitionInvalid(c.problems)
    return ViewDefinition(tuple(columns), tuple(filters), tuple(partitions))
