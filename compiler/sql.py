"""SQL emission from the typed IR. The only place identifiers and literals are quoted.

Two renderings of one definition:
- `display_sql` — the `compiledSql` the preview shows, in the style of the reference:
  `SELECT json_extract_string(raw, '$.userId') AS user_id, CAST(… AS TIMESTAMP) AS …
  FROM source WHERE event_type != 'heartbeat'`.
- `classify_sql` — what materialisation and preview run: the same projection with
  TRY_CAST, plus a `__rule` number per row saying which outcome rule (invalid JSON,
  required value missing, cast failure, filter) the row met first; 0 means accepted.

The relation `source(raw, ts, topic, tenant, segment_seq, frame_index)` is supplied by
the sandbox. Internal names start with `__`; view columns cannot (they start with a
letter), so they never collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from .condition import (
    Between,
    Binary,
    Call,
    Expr,
    InList,
    IsNull,
    Like,
    Literal_,
    Name,
    TemporalLiteral,
    Unary,
)
from .definition import VIRTUAL_COLUMNS, ColumnSpec, ViewDefinition

# DuckDB keywords of the categories 'reserved' and 'type_function' (duckdb_keywords()):
# identifiers with these names are quoted. tests/unit/compiler checks the list
# against the DuckDB in use.
QUOTED_KEYWORDS = frozenset(
    """
all analyse analyze and anti any array as asc asof asymmetric at authorization binary
both by case cast check collate collation column columns concurrently constraint create
cross default deferrable desc describe distinct do else end except false fetch for
foreign freeze from full generated glob group having ilike in initially inner intersect
into is isnull join lambda lateral leading left like limit map natural not notnull null
offset on only or order outer overlaps pivot pivot_longer pivot_wider placing positional
primary qualify references returning right select semi show similar some struct
summarize symmetric table tablesample then to trailing true try_cast tuple union unique
unpack unpivot using variadic verbose when where window with
""".split()
)


def quote_ident(name: str) -> str:
    plain = (
        name != ""
        and name[0].isascii()
        and (name[0].islower() or name[0] == "_")
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in name)
    )
    if plain and name not in QUOTED_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str | int | float | Decimal | bool | None) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (float, Decimal)):
        text = str(value)
        if text.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
            raise ValueError(f"cannot render {value!r} as a literal")
        return text
    if "\x00" in value:
        raise ValueError("string literals cannot hold NUL")
    return "'" + value.replace("'", "''") + "'"


# ------------------------------------------------------------ expressions
_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "pred": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}
_UNARY_MINUS = 7
_ATOM = 8


def render_expr(expr: Expr) -> str:
    return _render(expr, 0)


def _wrap(text: str, prec: int, parent: int) -> str:
    return f"({text})" if prec < parent else text


def _render(node: Expr, parent: int) -> str:
    pred = _PRECEDENCE["pred"]
    if isinstance(node, Literal_):
        text = quote_literal(node.value)
        value = node.value
        negative = isinstance(value, (int, Decimal)) and not isinstance(value, bool) and value < 0
        return _wrap(text, _UNARY_MINUS if negative else _ATOM, parent)
    if isinstance(node, TemporalLiteral):
        return f"{node.type_name} {quote_literal(node.value)}"
    if isinstance(node, Name):
        return quote_ident(node.name)
    if isinstance(node, Unary):
        if node.op == "not":
            return _wrap(f"NOT {_render(node.operand, _PRECEDENCE['not'])}", 3, parent)
        return _wrap(f"-{_render(node.operand, _UNARY_MINUS + 1)}", _UNARY_MINUS, parent)
    if isinstance(node, Binary):
        if node.op in ("and", "or"):
            prec = _PRECEDENCE[node.op]
            op = node.op.upper()
        elif node.op in _PRECEDENCE:
            prec, op = _PRECEDENCE[node.op], node.op
        else:
            prec, op = pred, node.op
        left = _render(node.left, prec)
        if op in ("/", "%"):  # x / 0 and x % 0 are NULL, for integers and doubles alike
            return _wrap(f"{left} {op} NULLIF({_render(node.right, 0)}, 0)", prec, parent)
        right = _render(node.right, prec + 1)
        return _wrap(f"{left} {op} {right}", prec, parent)
    if isinstance(node, InList):
        items = ", ".join(_render(i, 0) for i in node.items)
        neg = "NOT " if node.negated else ""
        return _wrap(f"{_render(node.operand, pred + 1)} {neg}IN ({items})", pred, parent)
    if isinstance(node, Between):
        neg = "NOT " if node.negated else ""
        operand = _render(node.operand, pred + 1)
        low, high = _render(node.low, pred + 1), _render(node.high, pred + 1)
        return _wrap(f"{operand} {neg}BETWEEN {low} AND {high}", pred, parent)
    if isinstance(node, Like):
        neg = "NOT " if node.negated else ""
        op = "ILIKE" if node.case_insensitive else "LIKE"
        text = f"{_render(node.operand, pred + 1)} {neg}{op} {_render(node.pattern, pred + 1)}"
        return _wrap(text, pred, parent)
    if isinstance(node, IsNull):
        neg = "NOT " if node.negated else ""
        return _wrap(f"{_render(node.operand, pred + 1)} IS {neg}NULL", pred, parent)
    assert isinstance(node, Call)
    return f"{node.function}({', '.join(_render(a, 0) for a in node.args)})"


def filters_sql(definition: ViewDefinition) -> str | None:
    parts = [render_expr(f.expr) for f in definition.filters]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return " AND ".join(f"({p})" for p in parts)


# ---------------------------------------------------------------- columns
def source_sql(column: ColumnSpec) -> str:
    """The untyped source of a column: the extracted JSON text or the virtual column."""
    if column.path is None:
        assert column.source is not None
        return quote_ident(column.source)
    function = "json_extract" if column.type.name == "JSON" else "json_extract_string"
    return f"{function}(raw, {quote_literal(column.path.render())})"


def _needs_cast(column: ColumnSpec) -> bool:
    if column.path is None:
        assert column.source is not None
        return VIRTUAL_COLUMNS[column.source] != column.type
    return column.type.name not in ("VARCHAR", "JSON")


def _default_sql(column: ColumnSpec) -> str:
    return f"CAST({quote_literal(column.default)} AS {column.type.sql})"


def display_column_sql(column: ColumnSpec) -> str:
    expr = source_sql(column)
    if _needs_cast(column):
        expr = f"CAST({expr} AS {column.type.sql})"
    if column.default is not None:
        expr = f"COALESCE({expr}, {_default_sql(column)})"
    return expr


def display_sql(definition: ViewDefinition) -> str:
    select = ", ".join(
        f"{display_column_sql(c)} AS {quote_ident(c.name)}" for c in definition.columns
    )
    where = filters_sql(definition)
    return f"SELECT {select} FROM source" + (f" WHERE {where}" if where else "")


def _typed_sql(column: ColumnSpec, source_ref: str) -> str:
    if not _needs_cast(column):
        typed = source_ref
    elif column.type.name == "TIMESTAMP" and (column.path is not None or column.source == "topic"):
        # Through TIMESTAMPTZ so that an offset in the text is honoured (UTC session).
        typed = f"TRY_CAST(TRY_CAST({source_ref} AS TIMESTAMPTZ) AS TIMESTAMP)"
    else:
        typed = f"TRY_CAST({source_ref} AS {column.type.sql})"
    if column.default is not None:
        typed = f"CASE WHEN {source_ref} IS NULL THEN {_default_sql(column)} ELSE {typed} END"
    return typed


# ------------------------------------------------------------------ rules
Outcome = Literal["dlq", "dropped"]


@dataclass(frozen=True, slots=True)
class Rule:
    """A reason a row is not accepted. `number` is what `__rule` holds."""

    number: int
    outcome: Outcome
    code: str  # invalid_json | required_missing | cast_failed | filtered
    column: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ClassifyPlan:
    sql: str
    rules: tuple[Rule, ...]
    output_columns: tuple[str, ...]

    def rule(self, number: int) -> Rule:
        return self.rules[number - 1]


PROVENANCE = ("raw", "ts", "topic", "tenant", "segment_seq", "frame_index")


def classify_sql(definition: ViewDefinition) -> ClassifyPlan:
    rules: list[Rule] = []
    conditions: list[str] = []

    def add(condition: str, outcome: Outcome, code: str, column: str | None, message: str) -> None:
        rules.append(Rule(len(rules) + 1, outcome, code, column, message))
        conditions.append(f"WHEN {condition} THEN {len(rules)}")

    if definition.reads_json:
        add(
            "NOT __json_ok",
            "dlq",
            "invalid_json",
            None,
            "payload is not valid JSON",
        )
    # Each payload is parsed once per function: all text paths go to one
    # json_extract_string call (and JSON-typed ones to one json_extract), whose list
    # result is then indexed (1-based).
    text_paths: list[str] = []
    json_paths: list[str] = []
    sources: list[str] = []
    typed: list[str] = []
    for index, column in enumerate(definition.columns):
        src = f"__s{index}"
        name = quote_ident(column.name)
        if column.path is None:
            extract = source_sql(column)
        else:
            paths = json_paths if column.type.name == "JSON" else text_paths
            paths.append(quote_literal(column.path.render()))
            extract = f"{'__jj' if paths is json_paths else '__jt'}[{len(paths)}]"
        sources.append(f"{extract} AS {src}")
        typed.append(f"{_typed_sql(column, src)} AS {name}")
        if column.required and column.default is None:
            add(
                f"{src} IS NULL",
                "dlq",
                "required_missing",
                column.name,
                f"required value for {column.name!r} is missing or null",
            )
        if _needs_cast(column):
            policy = column.cast_failures
            if policy == "null" and column.required:
                policy = "dlq"  # a required column cannot fall back to NULL
            if policy != "null":
                add(
                    f"{src} IS NOT NULL AND {name} IS NULL",
                    "dlq" if policy == "dlq" else "dropped",
                    "cast_failed",
                    column.name,
                    f"value for {column.name!r} does not cast to {column.type.sql}",
                )
    where = filters_sql(definition)
    if where is not None:
        # TRY: a row whose filter cannot be evaluated (an overflow, say) is not accepted;
        # it must not fail the whole segment.
        add(
            f"NOT COALESCE(TRY({where}), FALSE)",
            "dropped",
            "filtered",
            None,
            "a filter condition was not true",
        )
    json_ok = "COALESCE(json_valid(raw), FALSE)" if definition.reads_json else "TRUE"
    lists = [
        f"CASE WHEN __json_ok THEN {function}(raw, [{', '.join(paths)}]) END AS {alias}"
        for function, paths, alias in (
            ("json_extract_string", text_paths, "__jt"),
            ("json_extract", json_paths, "__jj"),
        )
        if paths
    ]
    case = f"CASE {' '.join(conditions)} ELSE 0 END" if conditions else "0"
    outputs = tuple(quote_ident(c.name) for c in definition.columns)
    provenance = ", ".join(PROVENANCE[1:])
    sql = (
        f"WITH __src AS (SELECT {', '.join(PROVENANCE)}, {json_ok} AS __json_ok FROM source), "
        f"__l AS (SELECT *{''.join(', ' + x for x in lists)} FROM __src), "
        f"__x AS (SELECT *, {', '.join(sources)} FROM __l), "
        f"__v AS (SELECT *, {', '.join(typed)} FROM __x), "
        f"__c AS (SELECT *, {case} AS __rule FROM __v) "
        # The payload is only needed for rows that are not accepted (the DLQ).
        f"SELECT {', '.join(outputs)}, CASE WHEN __rule <> 0 THEN raw END AS raw, "
        f"{provenance}, __rule FROM __c"
    )
    return ClassifyPlan(sql, tuple(rules), tuple(c.name for c in definition.columns))
