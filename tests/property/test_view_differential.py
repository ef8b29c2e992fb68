"""Views against a pure-Python oracle (tests/support/view_oracle.py).

Hypothesis generates view definitions — columns of the types the oracle models
(VARCHAR, BOOLEAN, BIGINT, INTEGER, DOUBLE, TIMESTAMP) read from JSON paths or from
the virtual columns (as the types compiler.definition.VIRTUAL_TARGETS allows), with
`required`, `cast_failures` and `default` (TIMESTAMP defaults with UTC offsets too),
and filters over them: comparisons, IN, BETWEEN, LIKE, functions, DOUBLE and integer
arithmetic (division and modulo by zero, integer overflow) and timestamp literals in
any ISO-8601 spelling the compiler takes — and a segment of payloads: JSON objects
with nested objects and arrays, duplicate keys, trailing commas, escapes, unicode,
numbers at the edges of the integer and double types, numbers and booleans spelled as
text, timestamps in several formats and offsets, missing and null fields, plus invalid
JSON and bytes that are not UTF-8. `materialize_view` (DuckDB) must agree with the
oracle on every row: outcome (accepted / dropped / dlq), reason code and column, and
every typed value; the DLQ table, the counts and the accepted files must say the same.
A row whose filters overflow is dropped (the filters run in TRY) or, where DuckDB's
optimizer rewrote the arithmetic away, decided by the exact answer: both are allowed.

What the oracle leaves out, the strategies leave out too (each is commented where it
is excluded): DECIMAL arithmetic (widths and scales grow with every operator, and past
38 digits DuckDB errors or compares in DOUBLE), arithmetic in UBIGINT/HUGEINT
(`segment_seq`, `frame_index`), `round(x, n)` with n ≠ 0, timestamp text DuckDB is
lenient about (`2024/1/2`, zone names), `_` digit separators and hex/binary integer
text.

Definitions the compiler must refuse are generated too (`refused_definitions`):
defaults that do not fit their type, virtual columns read as a type they cannot be,
paths with an empty key, invalid timestamp literals and text compared with a
timestamp. The regression tests at the end pin the bugs this suite found.

The Hypothesis seed is random per run and shown with every failure (`note`); set
EDGEMQ_VIEW_SEED to replay a run. EDGEMQ_LONG_TESTS=1 runs many more examples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import (
    HealthCheck,
    currently_in_test_context,
    event,
    example,
    given,
    note,
    seed,
    settings,
)
from hypothesis import strategies as st

from compiler.condition import Binary, Literal_, Name, TemporalLiteral
from compiler.definition import VIRTUAL_TARGETS, ViewDefinition, parse_definition
from compiler.errors import DefinitionInvalid
from compiler.jsonpath import parse_jsonpath
from compiler.materialize import ViewResult, materialize_view
from compiler.parquet import segment_table
from compiler.sandbox import SandboxLimits
from compiler.types import SIMPLE_TYPES

try:  # `python -m pytest` (./dev test) puts the repository root on sys.path ...
    from tests.support import view_oracle as oracle
except ImportError:  # ... a bare `pytest` only puts tests/ there (rootdir-relative import)
    from support import view_oracle as oracle  # type: ignore[no-redef]

LONG = os.environ.get("EDGEMQ_LONG_TESTS") == "1"
SEED = int(os.environ.get("EDGEMQ_VIEW_SEED") or random.SystemRandom().randrange(2**32))
settings.register_profile(
    "view-differential",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "view-differential-long", settings.get_profile("view-differential"), max_examples=3000
)
PROFILE = settings.get_profile("view-differential-long" if LONG else "view-differential")
LIMITS = SandboxLimits(memory_limit_mib=256, threads=1, deadline_s=60.0)

# ================================================================ strategies
# Keys the documents use and paths read. '' is a key of documents but never of a
# path: `$['']` is refused (test_an_empty_key_path_is_refused, refused_definitions).
KEYS = ("a", "b", "user_id", "amount", "é", "a b", "x.y", "it's", "0", "-k", "😀", "n", "A")
DOC_KEYS = (*KEYS, "")
NAMES = (
    "a",
    "b",
    "user_id",
    "value",
    "amount",
    "x1",
    "c_9",
    "select",  # DuckDB keywords: quoted in the SQL
    "order",
    "from",
    "group",
    "limit",
    "lower",  # a function name used as a column name
    "length",
)
TYPES = ("VARCHAR", "BOOLEAN", "BIGINT", "INTEGER", "DOUBLE", "TIMESTAMP")
VIRTUAL = ("ts", "topic", "tenant", "segment_seq", "frame_index")
# The virtual columns a column of each type may read (ts as VARCHAR or TIMESTAMP,
# tenant/segment_seq/frame_index as numbers or VARCHAR, topic as anything).
VIRTUAL_SOURCES = {t: tuple(s for s in VIRTUAL if t in VIRTUAL_TARGETS[s]) for t in TYPES}
TS_MS_MIN, TS_MS_MAX = -62135596800000, 253402300799999  # 0001-01-01 .. 9999-12-31

# Characters of free text: ASCII (LIKE wildcards, quotes, backslash, spaces, control
# characters) and non-ASCII with special case mappings, spaces trim() removes,
# combining marks, astral characters. No NUL: the oracle does not model it in casts.
TEXT_CHARS = (
    "abcxyzABCXYZ019 %_\\'\"-+.:,/\t\n\x01\x1f\x7féÉİıßẞΣσςᾳKÅ中😀\u00a0\u3000\u2028\u0301\ufeff"
)
free_text = st.text(st.sampled_from(TEXT_CHARS), max_size=10).filter(oracle.text_is_modelled)


@st.composite
def numeric_text(draw: st.DrawFn) -> str:
    """Numbers written as text: signs, decimals, exponents, surrounding spaces."""
    digits = st.text("0123456789", max_size=21)
    sign = draw(st.sampled_from(["", "", "-", "+", "+-"]))
    body = draw(digits)
    if draw(st.booleans()):
        body += "." + draw(digits)
    if draw(st.integers(0, 3)) == 0:
        body += draw(st.sampled_from("eE")) + draw(st.sampled_from(["", "-", "+"]))
        body += draw(st.text("0123456789", min_size=1, max_size=5))
    space = st.sampled_from(["", "", " ", "\t", "\n ", "\r\n"])
    return draw(space) + sign + body + draw(space)


@st.composite
def timestamp_text(draw: st.DrawFn, *, exact: bool = False, offsets: bool = True) -> str:
    """ISO-8601 timestamps: date only, `T` or space, minutes/seconds/fractions of 1-9
    digits, `Z` or ±HH[:MM|MM] offsets. With exact=False also impossible dates and
    times (month 13, Feb 30, 23:60, …), which DuckDB and the oracle give as NULL.
    Hour 24 and year 0 are not generated (DuckDB rolls them over, not modelled)."""
    year = draw(st.integers(1, 9999) | st.sampled_from([1, 1970, 2000, 2024, 2100, 9999]))
    if exact:
        month, day = draw(st.integers(1, 12)), draw(st.integers(1, 28))
        hour, minute, sec = (
            draw(st.integers(0, 23)),
            draw(st.integers(0, 59)),
            draw(st.integers(0, 59)),
        )
    else:
        month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
        hour, minute, sec = (
            draw(st.integers(0, 23)),
            draw(st.integers(0, 60)),
            draw(st.integers(0, 60)),
        )
    text = f"{year:04d}-{month:02d}-{day:02d}"
    if draw(st.integers(0, 4)) == 0:
        return text
    text += draw(st.sampled_from("T ")) + f"{hour:02d}:{minute:02d}"
    if draw(st.integers(0, 4)):
        text += f":{sec:02d}"
        if draw(st.booleans()):
            text += "." + draw(st.text("0123456789", min_size=1, max_size=9))
    zone = draw(st.integers(0, 3)) if offsets else draw(st.integers(0, 1))
    if zone == 1:
        text += "Z"
    elif zone >= 2:
        oh, om = draw(st.integers(0, 15)), draw(st.integers(0, 59))
        text += draw(st.sampled_from("+-")) + f"{oh:02d}"
        text += draw(st.sampled_from([f":{om:02d}", f"{om:02d}", ""]))
    return text


# Timestamps the compiler reads with datetime.fromisoformat (filter literals and
# defaults) in spellings DuckDB's cast does not take: only the compiler parses them.
ISO_ONLY_TIMESTAMPS = (
    "20240102T030405",
    "2024-01-02T03",
    "2024-W01-1",
    "2024-01-02T03:04:05,5",
    "2024-01-02t03:04",
    "2024-01-02T03:04:05+02:00:30",
    "2024-01-02T03:04:05.25-0130",
    "2024-02-29T23:59:59.999999-14:00",
)
TS_MICROS_MIN = oracle.days_from_civil(1, 1, 1) * 86_400_000_000
TS_MICROS_MAX = oracle.days_from_civil(10000, 1, 1) * 86_400_000_000 - 1


def in_timestamp_range(text: str) -> bool:
    """Whether the UTC instant of the text lies in 0001-01-01 .. 9999-12-31 (an
    offset can push it out: `0001-01-01T00:00+01:00`, which the compiler refuses)."""
    micros = oracle.parse_timestamp(text, honour_offset=True)
    return micros is not None and TS_MICROS_MIN <= micros <= TS_MICROS_MAX


# A timestamp the compiler takes as a filter literal or a default.
timestamp_literal_text = st.one_of(
    timestamp_text(exact=True).filter(in_timestamp_range),
    timestamp_text(exact=True).filter(in_timestamp_range),
    st.sampled_from(ISO_ONLY_TIMESTAMPS),
)


# Text values of JSON strings (and of `topic`): what casts must handle.
string_values = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "true",
            "TRUE",
            "t",
            "yes",
            "Y",
            "no",
            "0",
            "1",
            "on",
            "off",
            " 12 ",
            "+7",
            "-0",
            "1.5",
            "2.5",
            "-2.5",
            "0.5",
            "1e3",
            "1E+3",
            "1e-3",
            "1,000",
            "12abc",
            "inf",
            "-Infinity",
            "NaN",
            "2147483647",
            "2147483647.5",
            "2147483648",
            "-2147483648",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "18446744073709551615",
            "epoch",
            "infinity",
            "-infinity",
            "2024-02-29",
            "2023-02-29",
            "2024-01-02T03:04:05+02:00",
            "2024-01-02 03:04:05.123456789Z",
            "null",
            "{}",
            "[1]",
        ]
    ),
    numeric_text(),
    timestamp_text(),
    free_text,
).filter(oracle.text_is_modelled)

_EDGE_INTS = [
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**32 - 1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    10**30,
    -(10**25),
]
_NUMBER_SPELLINGS = [
    "-0",
    "1.50",
    "1e3",
    "1E+3",
    "-0.0",
    "0.5",
    "2.5",
    "-2.5",
    "1.5e-7",
    "5e-7",
    "1e21",
    "1e20",
    "1e-6",
    "1e-7",
    "5e-324",
    "1.7976931348623157e308",
    "1e400",
    "-1e400",
    "1.0e+400",
    "1e-400",
    "0e0",
    "12.3400e2",
    "123456789012345678901234567890.5",
    "NaN",
    "-Infinity",
    "Infinity",
    "nan",
    "inf",
    "-INF",
]
number_literal = st.one_of(
    st.sampled_from(_EDGE_INTS).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-1000, 1000).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(-1e6, 1e6).map(lambda f: repr(round(f, 2))),
    st.sampled_from(_NUMBER_SPELLINGS),
)


def json_string(value: str, rnd: random.Random) -> str:
    """A JSON string literal, escaping some characters that need no escape."""
    out = ['"']
    for c in value:
        r = rnd.random()
        if c in '"\\' and r < 0.7:
            out.append("\\" + c)
        elif c == "/" and r < 0.3:
            out.append("\\/")
        elif c in "\b\f\n\r\t" and r < 0.7:
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
        elif c in '"\\' or ord(c) < 0x20 or r < 0.06:
            code = ord(c)
            if code > 0xFFFF:
                code -= 0x10000
                units = (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF))
            else:
                units = (code,)
            out.extend(("\\u%04x" if r < 0.5 else "\\u%04X") % u for u in units)
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


@st.composite
def json_value(draw: st.DrawFn, depth: int = 0) -> str:
    rnd = draw(st.randoms(use_true_random=False))

    def ws() -> str:
        return "".join(rnd.choice(" \t\n\r") for _ in range(rnd.choice([0, 0, 0, 1, 2])))

    kind = draw(
        st.sampled_from(["object", "array", "number", "string", "string", "literal"])
        if depth < 3
        else st.sampled_from(["number", "string", "literal"])
    )
    if kind in ("object", "array"):
        size = draw(st.integers(0, 4))
        if kind == "object":
            keys = [draw(st.sampled_from(DOC_KEYS)) for _ in range(size)]
            items = [
                f"{ws()}{json_string(k, rnd)}{ws()}:{ws()}{draw(json_value(depth + 1))}{ws()}"
                for k in keys
            ]
        else:
            items = [f"{ws()}{draw(json_value(depth + 1))}{ws()}" for _ in range(size)]
        body = ",".join(items) + ("," if items and rnd.random() < 0.15 else "")
        return ("{" if kind == "object" else "[") + body + ("}" if kind == "object" else "]")
    if kind == "number":
        return draw(number_literal)
    if kind == "string":
        return json_string(draw(string_values), rnd)
    return draw(st.sampled_from(["true", "false", "null"]))


@st.composite
def json_document(draw: st.DrawFn) -> str:
    """Mostly an object whose members the paths read; sometimes any JSON value."""
    rnd = draw(st.randoms(use_true_random=False))
    if draw(st.integers(0, 5)):
        keys = draw(st.lists(st.sampled_from(DOC_KEYS), max_size=6))
        members = [f"{json_string(k, rnd)}:{draw(json_value(1))}" for k in keys]
        sep = rnd.choice([",", ", ", " ,\n "])
        text = "{" + sep.join(members) + ("," if members and rnd.random() < 0.1 else "") + "}"
    else:
        text = draw(json_value(0))
    return rnd.choice(["", " ", "\n"]) + text + rnd.choice(["", " ", "\r\n"])


@st.composite
def broken_json(draw: st.DrawFn) -> str:
    """Invalid JSON (mostly): a document cut short, with a character inserted or
    removed, or a known-invalid text. Some mutations stay valid; the oracle decides."""
    text = draw(json_document())
    at = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["cut", "insert", "delete", "sample"]))
    if how == "cut":
        return text[:at]
    if how == "insert":
        junk = ['"', ",", "]", "}", "\\", "x", "-", "0", ".", "e", "\x0c", "nan", ":", "\\u"]
        return text[:at] + draw(st.sampled_from(junk)) + text[at:]
    if how == "delete":
        return text[:at] + text[at + 1 :]
    return draw(
        st.sampled_from(
            [
                "",
                "   ",
                "{",
                "[1,,]",
                "[,]",
                "{,}",
                "{'a':1}",
                '{"a":1} x',
                '/*c*/{"a":1}',
                '\ufeff{"a":1}',
                "tRue",
                "01",
                "-",
                "1.",
                ".5",
                "+1",
                '"\\ud800"',
                '{"a":"\x01"}',
                '{"a" 1}',
                "NaNx",
                "infini",
                '{"a":1,"a":2}',  # valid: the first duplicate is read
                "[1,]",  # valid: trailing commas are allowed
                "-Infinity",  # valid
            ]
        )
    )


def path_text(steps: Sequence[str | int], rnd: random.Random) -> str:
    """A JSONPath in one of the spellings the compiler accepts."""
    parts = ["$"]
    for step in steps:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif re.fullmatch(r"[A-Za-z0-9_-]+", step) and rnd.random() < 0.6:
            parts.append(f".{step}")
        elif "'" in step or rnd.random() < 0.5:
            parts.append(f'["{step}"]')
        else:
            parts.append(f"['{step}']")
    return "".join(parts)


path_steps = st.lists(st.sampled_from(KEYS) | st.integers(0, 2), max_size=3)


@st.composite
def defaults(draw: st.DrawFn, type_name: str) -> Any:
    """A default that fits the column's type: integers up to the type's limits,
    finite doubles (-0.0 too), timestamps with UTC offsets."""
    if type_name == "VARCHAR":
        return draw(free_text | string_values)
    if type_name == "BOOLEAN":
        return draw(st.booleans())
    if type_name in oracle.INT_RANGE:
        lo, hi = oracle.INT_RANGE[type_name]
        return draw(st.integers(lo, hi) | st.sampled_from([lo, hi, 0]))
    if type_name == "DOUBLE":
        return draw(
            st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308, 2**53 + 1])
        )
    assert type_name == "TIMESTAMP"
    return draw(timestamp_literal_text)


@st.composite
def columns(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    rnd = draw(st.randoms(use_true_random=False))
    out = []
    for name in names:
        type_name = draw(st.sampled_from(TYPES))
        spelled = draw(st.sampled_from([type_name, type_name.lower(), f" {type_name.title()} "]))
        column: dict[str, Any] = {"name": name, "type": spelled}
        if draw(st.integers(0, 4)):
            column["path"] = path_text(draw(path_steps), rnd)
        else:
            column["source"] = draw(st.sampled_from(VIRTUAL_SOURCES[type_name]))
        if draw(st.booleans()):
            column["required"] = draw(st.booleans())
        policy = draw(st.sampled_from([None, "null", "dlq", "drop"]))
        if policy is not None:
            column["cast_failures"] = policy
        if draw(st.integers(0, 3)) == 0:
            column["default"] = draw(defaults(type_name))
        out.append(column)
    return out


# --------------------------------------------------------------- conditions
@dataclass(frozen=True)
class Scope:
    """Names a condition may use, by category (view columns and virtual columns)."""

    text: tuple[str, ...]
    exact: tuple[str, ...]
    integer: tuple[str, ...]  # the exact ones arithmetic may use (not UBIGINT)
    double: tuple[str, ...]
    boolean: tuple[str, ...]
    temporal: tuple[str, ...]


def scope_of(cols: list[dict[str, Any]]) -> Scope:
    by_type: dict[str, list[str]] = {t: [] for t in TYPES}
    for c in cols:
        by_type[c["type"].strip().upper()].append(c["name"])
    return Scope(
        text=(*by_type["VARCHAR"], "topic"),
        exact=(*by_type["BIGINT"], *by_type["INTEGER"], "tenant", "segment_seq", "frame_index"),
        integer=(*by_type["BIGINT"], *by_type["INTEGER"], "tenant"),
        double=tuple(by_type["DOUBLE"]),
        boolean=tuple(by_type["BOOLEAN"]),
        temporal=(*by_type["TIMESTAMP"], "ts"),
    )


def kw(draw: st.DrawFn, word: str) -> str:
    return draw(st.sampled_from([word.upper(), word.lower(), word.title()]))


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


int_literal = st.sampled_from(_EDGE_INTS[:-4]) | st.integers(-1000, 1000)
decimal_literal = st.builds(
    lambda whole, frac, neg: ("-" if neg else "") + f"{whole}.{frac}",
    st.integers(0, 999999),
    st.text("0123456789", min_size=1, max_size=6),
    st.booleans(),
)
# A literal with an exponent is a DOUBLE only when str() of its Decimal keeps the
# exponent (1e3 → 1E+3, 1.5e-7); 1.5e1 becomes 15, an integer, and 1e-3 0.001, a
# DECIMAL. Mantissas of at most 15 digits.
double_literal = st.builds(
    lambda mantissa, exp: f"{mantissa}e{exp}",
    st.sampled_from(["1", "2.5", "-1", "5", "1.5", "123456789012345", "0.1", "-7.25"]),
    st.integers(-30, 30) | st.just(280),
).filter(lambda text: "E" in str(Decimal(text)))
# Divisors: zero in every spelling (x / 0 and x % 0 are NULL), and others.
divisor_literal = st.sampled_from(
    ["0", "0", "0.0", "-0.0", "0e0", "2", "-3", "0.5", "1.5e0", "1e-3", "7", "-2.5e1", "1e300"]
)
# Integer literals in integer arithmetic: at the INTEGER/UINTEGER/BIGINT edges, and
# within BIGINT (a HUGEINT literal makes HUGEINT arithmetic, not modelled).
arith_int_literal = st.sampled_from(
    [0, 1, -1, 2, -2, 2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63)]
) | st.integers(-1000, 1000)


@st.composite
def num_expr(draw: st.DrawFn, scope: Scope, depth: int) -> str:
    """A numeric operand, fully parenthesised: integer arithmetic (int_expr), DOUBLE
    arithmetic (one side a DOUBLE), `/` (always DOUBLE) and `%` (of integers, or of a
    DOUBLE) by anything, zero included. DECIMAL arithmetic is not generated."""
    choices = ["exact_name", "int", "decimal", "double", "length"]
    if scope.double:
        choices += ["double_name", "double_name"]
    if depth < 3:
        choices += ["arith", "div", "div", "func", "coalesce", "neg", *["int_arith"] * 4]
    choice = draw(st.sampled_from(choices))
    if choice == "exact_name":
        return draw(st.sampled_from(scope.exact))
    if choice == "double_name":
        return draw(st.sampled_from(scope.double))
    if choice == "int":
        return str(draw(int_literal))
    if choice == "decimal":
        return draw(decimal_literal)
    if choice == "double":
        return draw(double_literal)
    if choice == "length":
        return f"{kw(draw, 'length')}({draw(str_expr(scope, depth + 1))})"
    if choice == "int_arith":
        return draw(int_expr(scope, depth))
    if choice == "div":
        divisor = draw(divisor_literal | num_expr(scope, depth + 1))
        op = draw(st.sampled_from(["/", "%", "%"]))
        if op == "/":
            return f"({draw(num_expr(scope, depth + 1))} / {divisor})"
        if draw(st.booleans()):  # integer % integer (C++ remainder, in the integer type)
            return f"({draw(int_expr(scope, depth + 1))} % {draw(int_expr(scope, depth + 1))})"
        return f"({draw(double_expr(scope, depth + 1))} % {divisor})"  # fmod in DOUBLE
    double = draw(double_expr(scope, depth + 1))
    if choice == "arith":
        other = draw(num_expr(scope, depth + 1))
        op = draw(st.sampled_from(["+", "-", "*"]))
        return f"({double} {op} {other})" if draw(st.booleans()) else f"({other} {op} {double})"
    if choice == "func":
        f = draw(st.sampled_from(["abs", "floor", "ceil", "round", "round0"]))
        return f"round({double}, 0)" if f == "round0" else f"{kw(draw, f)}({double})"
    if choice == "coalesce":
        return f"coalesce({double}, {draw(num_expr(scope, depth + 1))})"
    return f"- {double}" if draw(st.booleans()) else f"-({double})"


@st.composite
def int_expr(draw: st.DrawFn, scope: Scope, depth: int) -> str:
    """An expression of an integer type (INTEGER, BIGINT or UINTEGER in DuckDB): the
    integer columns, `tenant`, length(), literals, + - * %, unary minus, abs, round,
    floor/ceil (DOUBLE results) and coalesce, fully parenthesised. Overflows (an error
    in DuckDB: the row is filtered) and `%` by zero (NULL) are meant to happen."""
    choices = ["name", "name", "literal", "length"]
    if depth < 4:
        choices += ["arith", "arith", "arith", "mod", "neg", "func", "coalesce"]
    choice = draw(st.sampled_from(choices))
    if choice == "name":
        return draw(st.sampled_from(scope.integer))
    if choice == "literal":
        return str(draw(arith_int_literal))
    if choice == "length":
        return f"{kw(draw, 'length')}({draw(str_expr(scope, depth + 1))})"
    a = draw(int_expr(scope, depth + 1))
    if choice == "neg":
        if re.fullmatch(r"-?[0-9]+", a) and int(a) == -(2**63):
            return a  # -(-9223372036854775808) would be a HUGEINT literal
        return f"-({a})"
    if choice == "func":
        f = draw(st.sampled_from(["abs", "abs", "round", "round0", "floor", "ceil"]))
        return f"round({a}, 0)" if f == "round0" else f"{kw(draw, f)}({a})"
    b = draw(int_expr(scope, depth + 1))
    if choice == "coalesce":
        return f"coalesce({a}, {b})"
    op = "%" if choice == "mod" else draw(st.sampled_from(["+", "-", "*"]))
    return f"({a} {op} {b})"


@st.composite
def double_expr(draw: st.DrawFn, scope: Scope, depth: int) -> str:
    """An expression of type DOUBLE."""
    if scope.double and draw(st.integers(0, 2)):
        return draw(st.sampled_from(scope.double))
    return draw(double_literal)


@st.composite
def str_expr(draw: st.DrawFn, scope: Scope, depth: int) -> str:
    choice = draw(
        st.sampled_from(["name", "name", "literal"] + (["func", "coalesce"] if depth < 3 else []))
    )
    if choice == "name":
        return draw(st.sampled_from(scope.text))
    if choice == "literal":
        return sql_string(draw(string_values))
    if choice == "func":
        f = draw(st.sampled_from(["lower", "upper", "trim"]))
        return f"{kw(draw, f)}({draw(str_expr(scope, depth + 1))})"
    return f"coalesce({draw(str_expr(scope, depth + 1))}, {draw(str_expr(scope, depth + 1))})"


def ts_literal() -> st.SearchStrategy[str]:
    # A text literal next to a TIMESTAMP column is parsed by the compiler (offsets
    # converted to UTC) into a TemporalLiteral; the oracle reads its value.
    return timestamp_literal_text.map(sql_string)


@st.composite
def comparison(draw: st.DrawFn, scope: Scope, depth: int) -> str:
    op = draw(st.sampled_from(["=", "==", "!=", "<>", "<", "<=", ">", ">="]))
    category = draw(st.sampled_from(["number", "number", "text", "temporal", "boolean"]))
    if category == "number":
        left, right = draw(num_expr(scope, depth)), draw(num_expr(scope, depth))
    elif category == "text":
        left, right = draw(str_expr(scope, depth)), draw(str_expr(scope, depth))
    elif category == "temporal":
        left = draw(st.sampled_from(scope.temporal))
        right = draw(st.sampled_from(scope.temporal) | ts_literal())
        if draw(st.booleans()):
            left, right = right, left  # '2024-01-02' < ts binds the literal too
    else:
        atoms = st.sampled_from([*scope.boolean, "TRUE", "FALSE", "NULL"])
        left, right = draw(atoms), draw(atoms)
    if draw(st.integers(0, 9)) == 0:
        right = "NULL"
    return f"{left} {op} {right}"


@st.composite
def operand_and_items(draw: st.DrawFn, scope: Scope, depth: int) -> tuple[str, list[str]]:
    category = draw(st.sampled_from(["number", "text", "temporal", "boolean"]))
    if category == "number":
        literal = st.one_of(int_literal.map(str), decimal_literal, double_literal)
        operand = draw(num_expr(scope, depth))
    elif category == "text":
        literal = string_values.map(sql_string)
        operand = draw(str_expr(scope, depth))
    elif category == "temporal":
        literal = ts_literal()
        operand = draw(st.sampled_from(scope.temporal))
    else:
        literal = st.sampled_from(["TRUE", "FALSE"])
        operand = draw(st.sampled_from([*scope.boolean, "TRUE"]))
    items = draw(st.lists(literal | st.just("NULL"), min_size=1, max_size=4))
    return operand, items


@st.composite
def condition(draw: st.DrawFn, scope: Scope, depth: int = 0) -> str:
    kinds = ["compare", "compare", "arith", "is_null", "in", "between", "like", "str_fn", "atom"]
    if depth < 3:
        kinds += ["not", "and", "or", "paren", "coalesce"]
    kind = draw(st.sampled_from(kinds))
    if kind == "compare":
        return draw(comparison(scope, depth))
    if kind == "arith":  # integer arithmetic against a number: overflow, % by zero
        op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="]))
        left, right = draw(int_expr(scope, depth)), draw(num_expr(scope, depth + 1))
        return f"{left} {op} {right}" if draw(st.booleans()) else f"{right} {op} {left}"
    if kind == "is_null":
        operand = draw(
            st.one_of(
                num_expr(scope, depth),
                str_expr(scope, depth),
                st.sampled_from([*scope.temporal, *scope.boolean]),
            )
        )
        return f"{operand} {kw(draw, 'is')} {'NOT ' if draw(st.booleans()) else ''}NULL"
    if kind == "in":
        operand, items = draw(operand_and_items(scope, depth))
        neg = kw(draw, "not") + " " if draw(st.booleans()) else ""
        return f"{operand} {neg}{kw(draw, 'in')} ({', '.join(items)})"
    if kind == "between":
        operand, items = draw(operand_and_items(scope, depth))
        low, high = items[0], items[-1]
        neg = kw(draw, "not") + " " if draw(st.booleans()) else ""
        return f"{operand} {neg}{kw(draw, 'between')} {low} {kw(draw, 'and')} {high}"
    if kind == "like":
        value = draw(str_expr(scope, depth))
        pattern = draw(
            st.text(st.sampled_from("ab%_\\éÉİßΣσ😀 "), max_size=5).map(sql_string)
            | str_expr(scope, depth)
        )
        word = kw(draw, draw(st.sampled_from(["like", "ilike"])))
        neg = kw(draw, "not") + " " if draw(st.booleans()) else ""
        return f"{value} {neg}{word} {pattern}"
    if kind == "str_fn":
        f = draw(st.sampled_from(["starts_with", "ends_with", "contains"]))
        return f"{f}({draw(str_expr(scope, depth))}, {draw(str_expr(scope, depth))})"
    if kind == "atom":
        return draw(st.sampled_from([*scope.boolean, "TRUE", "FALSE", "NULL"]))
    if kind == "not":
        return f"{kw(draw, 'not')} {draw(condition(scope, depth + 1))}"
    if kind in ("and", "or"):
        left, right = draw(condition(scope, depth + 1)), draw(condition(scope, depth + 1))
        return f"{left} {kw(draw, kind)} {right}"
    if kind == "paren":
        return f"({draw(condition(scope, depth + 1))})"
    return f"coalesce({draw(condition(scope, depth + 1))}, {draw(condition(scope, depth + 1))})"


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    cols = draw(columns())
    scope = scope_of(cols)
    filters = [
        {"condition": draw(condition(scope))} for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3])))
    ]
    return {"columns": cols, **({"filters": filters} if filters else {})}


@dataclass(frozen=True)
class Segment:
    frames: tuple[oracle.Frame, ...]


def typed_json(type_name: str, rnd: random.Random) -> st.SearchStrategy[str]:
    """JSON text for a value a column of this type reads: mostly of that type, as a
    JSON value or spelled as a string, sometimes null or anything at all."""
    as_string = st.builds(lambda t: json_string(t, rnd), string_values)
    typed: dict[str, st.SearchStrategy[str]] = {
        "VARCHAR": as_string,
        "BOOLEAN": st.sampled_from(["true", "false", '"yes"', '"T"', '"0"', "1", '"on"'])
        | as_string,
        "TIMESTAMP": st.builds(lambda t: json_string(t, rnd), timestamp_text()) | as_string,
    }
    likely = typed.get(type_name, number_literal | as_string)
    return st.one_of(likely, likely, likely, st.just("null"), json_value(1))


@st.composite
def planted_document(draw: st.DrawFn, targets: Sequence[tuple[tuple[str | int, ...], str]]) -> str:
    """A document with values where the view's paths look (of the column's type, or
    null, or missing), duplicate keys (the first counts) and other members around."""
    rnd = draw(st.randoms(use_true_random=False))
    tree: Any = None
    for steps, type_name in targets:
        tree = _plant(tree, steps, type_name)

    def render(node: Any) -> str:
        if node is None:
            return draw(json_value(1))
        if node[0] == "leaf":
            return draw(typed_json(node[1], rnd))
        members = node[1]
        if node[0] == "arr":
            size = max(members) + 1 + rnd.choice([0, 0, 1])
            return "[" + ",".join(render(members.get(i)) for i in range(size)) + "]"
        parts = [
            (key, render(child))
            for key, child in members.items()
            if rnd.random() > 0.1  # sometimes missing
        ]
        for _ in range(rnd.choice([0, 0, 1, 2])):
            parts.insert(rnd.randrange(len(parts) + 1), (rnd.choice(DOC_KEYS), render(None)))
        sep = rnd.choice([",", ", ", " ,\n "])
        return "{" + sep.join(f"{json_string(k, rnd)}:{v}" for k, v in parts) + "}"

    return rnd.choice(["", " "]) + render(tree) + rnd.choice(["", "\n"])


def _plant(node: Any, steps: tuple[str | int, ...], type_name: str) -> Any:
    if not steps:
        return ("leaf", type_name) if node is None else node
    kind = "arr" if isinstance(steps[0], int) else "obj"
    if node is None:
        node = (kind, {})
    if node[0] != kind:
        return node  # another column's path already went another way
    node[1][steps[0]] = _plant(node[1].get(steps[0]), steps[1:], type_name)
    return node


@st.composite
def segments(draw: st.DrawFn, definition: ViewDefinition) -> Segment:
    targets = [(c.path.steps, c.type.name) for c in definition.columns if c.path is not None]
    payload = st.one_of(
        *[planted_document(targets).map(str.encode)] * (6 if targets else 0),
        json_document().map(str.encode),
        # a mutation can make a new string value: keep the ones the oracle models
        broken_json().filter(oracle.document_is_modelled).map(str.encode),
        st.sampled_from([b"\xff\xfe", b'{"a":"\xc3"}', b'{"a":1}\x80', b"\xed\xa0\x80"]),
    )
    n = draw(st.integers(1, 12))
    seq = draw(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1]))
    frames = []
    for index in range(n):
        frames.append(
            oracle.Frame(
                payload=draw(payload),
                ts_ms=draw(
                    st.integers(TS_MS_MIN, TS_MS_MAX)
                    | st.sampled_from([0, -1, 1700000000123, TS_MS_MIN, TS_MS_MAX])
                ),
                topic=draw(st.none() | string_values),
                tenant=draw(st.none() | st.integers(0, 2**32 - 1) | st.sampled_from([0, 2**31])),
                segment_seq=seq,
                frame_index=index,
            )
        )
    return Segment(tuple(frames))


@st.composite
def view_cases(draw: st.DrawFn) -> tuple[dict[str, Any], Segment]:
    raw_definition = draw(definitions())
    return raw_definition, draw(segments(parse_definition(raw_definition)))


# ================================================================= comparison
def _column_values(table: pa.Table, name: str) -> list[Any]:
    column = table[name]
    if pa.types.is_timestamp(column.type):
        factor = {"s": 1_000_000, "ms": 1000, "us": 1, "ns": None}[column.type.unit]
        assert factor is not None, "nanosecond timestamps are not expected"
        return [None if v is None else v * factor for v in column.cast(pa.int64()).to_pylist()]
    return list(column.to_pylist())


def _same(expected: Any, got: Any) -> bool:
    if expected is None or got is None:
        return expected is None and got is None
    if isinstance(expected, float) or isinstance(got, float):
        if not (isinstance(expected, float) and isinstance(got, float)):
            return False
        if math.isnan(expected) or math.isnan(got):
            return math.isnan(expected) and math.isnan(got)
        return expected == got and math.copysign(1, expected) == math.copysign(1, got)
    return type(expected) is type(got) and bool(expected == got)


def run_view(definition: ViewDefinition, segment: Segment) -> ViewResult:
    frames = segment.frames
    table = segment_table(
        messages=[f.payload for f in frames],
        ts_ms=[f.ts_ms for f in frames],
        topics=[f.topic for f in frames],
        tenants=[f.tenant for f in frames],
        fmts=[0] * len(frames),
        segment_seq=frames[0].segment_seq,
    )
    return materialize_view(definition, table, LIMITS)


def _note(text: str) -> None:
    """note() in a Hypothesis test (shown with its failure); nothing elsewhere."""
    if currently_in_test_context():
        note(text)


def _event(text: str) -> None:
    if currently_in_test_context():
        event(text)


def check_against_oracle(raw_definition: dict[str, Any], segment: Segment) -> None:
    _note(f"hypothesis seed {SEED} (EDGEMQ_VIEW_SEED={SEED} replays this run)")
    _note(f"definition: {json.dumps(raw_definition, ensure_ascii=False)}")
    for frame in segment.frames:
        _note(f"frame {frame.frame_index}: {frame}")
    definition = parse_definition(raw_definition)
    model = oracle.ViewOracle(definition)  # Unsupported here is a bug of the strategies
    expected = [model.classify(f) for f in segment.frames]
    result = run_view(definition, segment)
    _note(f"SQL: {result.plan.sql}")

    classified = result.classified
    assert classified["frame_index"].to_pylist() == list(range(len(segment.frames)))
    names = [c.name for c in definition.columns]
    got_values = {name: _column_values(classified, name) for name in names}
    problems = []
    settled = []  # the oracle's outcomes, with DuckDB's choice where two are allowed
    for index, (want, rule_number) in enumerate(
        zip(expected, classified["__rule"].to_pylist(), strict=True)
    ):
        if rule_number == 0:
            got = ("accepted", None, None)
        else:
            rule = result.plan.rule(rule_number)
            got = (rule.outcome, rule.code, rule.column)
        if want.alternative is not None:
            _event(f"row overflows in a filter; DuckDB: {got[0]}")
            if got == want.alternative:
                want = dataclasses.replace(want, outcome="accepted", code=None, alternative=None)
        settled.append(want)
        if got != (want.outcome, want.code, want.column):
            problems.append(
                f"frame {index}: DuckDB {got}, oracle {want.outcome, want.code, want.column}"
            )
        for name in names:
            if not _same(want.values[name], got_values[name][index]):
                problems.append(
                    f"frame {index} column {name!r}: DuckDB {got_values[name][index]!r}, "
                    f"oracle {want.values[name]!r}"
                )
    assert not problems, "\n".join(problems)
    expected = settled
    for want in expected:
        _event(f"row {want.outcome} {want.code or ''}".strip())
        if want.overflowed:
            _event("row overflows in a filter")
    for feature in sorted({f for spec in definition.filters for f in _features(spec.expr)}):
        _event(f"filter has {feature}")
    for name in names:
        column = definition.column(name)
        filled = sum(w.values[name] is not None for w in expected if w.code != "invalid_json")
        _event(f"{column.type.name} column has a value in {'some' if filled else 'no'} rows")

    # The DLQ table, the counts and the accepted files say the same as `__rule`.
    dlq = {
        row["frame_index"]: (row["reason"]["code"], row["reason"]["column"], row["payload"])
        for row in result.dlq.to_pylist()
    }
    want_dlq = {
        i: (w.code, w.column, _utf8(f.payload))
        for i, (w, f) in enumerate(zip(expected, segment.frames, strict=True))
        if w.outcome == "dlq"
    }
    assert dlq == want_dlq
    outcomes = [w.outcome for w in expected]
    counts = result.counts
    assert (counts.processed, counts.accepted, counts.dropped, counts.dlq) == (
        len(outcomes),
        outcomes.count("accepted"),
        outcomes.count("dropped"),
        outcomes.count("dlq"),
    )
    accepted = [w for w in expected if w.outcome == "accepted"]
    files = [f.table for f in result.files]
    if not accepted:
        assert files == []
        return
    (table,) = files  # no partitions: one file
    assert table.column_names == names
    for name in names:
        got_column = _column_values(table, name)
        assert all(_same(w.values[name], g) for w, g in zip(accepted, got_column, strict=True))


def _features(node: Any) -> set[str]:
    """What of interest a filter IR holds (for the statistics)."""
    found = set()
    if isinstance(node, TemporalLiteral):
        found.add("a timestamp literal")
    if isinstance(node, Binary) and node.op in ("/", "%"):
        right = node.right
        if isinstance(right, Literal_) and right.value is not None and right.value == 0:
            found.add(f"{node.op} by a literal zero")
    if isinstance(node, Binary) and node.op in ("+", "-", "*", "%"):
        found.add(f"arithmetic {node.op}")
    for child in getattr(node, "__slots__", ()):
        value = getattr(node, child)
        for item in value if isinstance(value, tuple) else (value,):
            if hasattr(item, "__slots__"):
                found |= _features(item)
    return found


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ====================================================================== tests
def _def(*columns: dict[str, Any], filters: Sequence[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"columns": list(columns)}
    if filters:
        out["filters"] = [{"condition": c} for c in filters]
    return out


def _seg(*payloads: bytes, topic: str | None = "t", tenant: int | None = 1) -> Segment:
    return Segment(
        tuple(oracle.Frame(p, 1700000000123, topic, tenant, 7, i) for i, p in enumerate(payloads))
    )


@pytest.mark.timeout(3600 if LONG else 300)
@PROFILE
@seed(SEED)
@given(case=view_cases())
@example(  # casts at the type edges, required / default / cast_failures
    case=(
        _def(
            {"name": "a", "type": "INTEGER", "path": "$.n", "cast_failures": "drop"},
            {"name": "b", "type": "BIGINT", "path": "$.n", "required": True},
            {"name": "value", "type": "DOUBLE", "path": "$.n", "default": 1.5},
            {"name": "select", "type": "BOOLEAN", "path": "$.n", "cast_failures": "dlq"},
            {"name": "order", "type": "TIMESTAMP", "path": "$.n"},
        ),
        _seg(
            b'{"n": 2147483647.5}',
            b'{"n": "1e3"}',
            b'{"n": " 12 "}',
            b'{"n": 9223372036854775808}',
            b'{"n": -0}',
            b'{"n": "yes"}',
            b'{"n": null}',
            b"{}",
            b'{"n": "2024-01-02T03:04:05+02:00"}',
            b'{"n": 1.5e-7}',
            b'{"n": NaN}',
            b'{"n": [1, 2,]}',
            b"not json",
            b"\xff",
        ),
    )
)
@example(  # three-valued logic, DOUBLE vs exact comparisons, NaN
    case=(
        _def(
            {"name": "a", "type": "DOUBLE", "path": "$.a"},
            {"name": "b", "type": "BIGINT", "path": "$.b"},
            {"name": "user_id", "type": "VARCHAR", "path": "$.u"},
            filters=[
                "a = b OR b IN (9007199254740992, 1e0) OR NOT (a > 1.5e0 AND user_id IS NULL)",
                "coalesce(user_id, topic) NOT ILIKE '%İ%' OR b BETWEEN 9007199254740995.5 AND 1e20",
            ],
        ),
        _seg(
            b'{"a": 9007199254740992, "b": 9007199254740993}',
            b'{"a": NaN, "b": 9007199254740995}',
            b'{"a": "nan", "b": null, "u": "\\u0130x"}',
            b'{"b": 1}',
        ),
    )
)
def test_materialized_rows_match_the_oracle(case: tuple[dict[str, Any], Segment]) -> None:
    print(f"hypothesis seed {SEED}")  # shown with -rP / -s; failures show it via note()
    check_against_oracle(*case)


# ------------------------------------------------- oracle pieces, by example
@pytest.mark.parametrize(
    ("text", "steps", "want"),
    [
        ('{"a":1.50}', ("a",), "1.5"),
        ('{"a":1e3}', ("a",), "1000.0"),
        ('{"a":-0}', ("a",), "0"),
        ('{"a":-0.0}', ("a",), "-0.0"),
        ('{"a":1e21}', ("a",), "1e21"),
        ('{"a":1e-7}', ("a",), "1e-7"),
        ('{"a":18446744073709551616}', ("a",), "18446744073709551616"),
        ('{"a":1e400}', ("a",), "1e400"),
        ('{"a":-Infinity}', ("a",), "-Infinity"),
        ('{ "a" : { "b" : [1, 2 ,] } }', ("a",), '{"b":[1,2]}'),
        ('{"a":"x\\u0001\\n"}', (), '{"a":"x\\u0001\\n"}'),
        ('{"a":1,"a":2}', ("a",), "1"),
        ('{"a":null}', ("a",), None),
        ("[1,[2,3]]", (1, 1), "3"),
        ('"s"', ("a",), None),
    ],
)
def test_json_extract_model(text: str, steps: tuple[str | int, ...], want: str | None) -> None:
    assert oracle.extract_string(oracle.parse_json(text), steps) == want


@pytest.mark.parametrize(
    ("text", "type_name", "want"),
    [
        ("1.5", "INTEGER", 2),
        ("-2.5", "BIGINT", -3),
        ("1e3", "BIGINT", 1000),
        (" 12 ", "INTEGER", 12),
        ("+7", "INTEGER", 7),
        ("2147483647.5", "INTEGER", None),
        ("9223372036854775807", "BIGINT", 2**63 - 1),
        ("5e-7", "INTEGER", 0),
        ("1,000", "INTEGER", None),
        ("+-1", "DOUBLE", -1.0),
        ("1e400", "DOUBLE", math.inf),
        ("yes", "BOOLEAN", True),
        (" true", "BOOLEAN", None),
        ("on", "BOOLEAN", None),
        ("2024-01-02T03:04:05+02:00", "TIMESTAMP", 1704157445000000),
        ("2024-01-02T03:04:05.1234567", "TIMESTAMP", 1704164645123456),
        ("2023-02-29", "TIMESTAMP", None),
        ("1700000000", "TIMESTAMP", None),
    ],
)
def test_cast_model(text: str, type_name: str, want: Any) -> None:
    assert oracle.cast_text(text, type_name) == want


# ------------------------------------------------------ refused definitions
# Timestamp text datetime.fromisoformat refuses (the compiler parses literals and
# defaults with it): impossible dates and times, offsets of 24 h, an offset that moves
# the instant out of 0001..9999, numbers, spaces, DuckDB-only words.
BAD_TIMESTAMPS = (
    "",
    "soon",
    "hello",
    "2024-02-30",
    "2023-02-29",
    "2024-13-01",
    "2024-00-10",
    "2024-01-02T24:00:00",
    "2024-01-02T23:60",
    "2024-01-02T23:59:60",
    "2024-01-02T03:04:05+24:00",
    "0001-01-01T00:00:00+00:01",
    "9999-12-31T23:59:59.999999-00:01",
    "1700000000",
    " 2024-01-02",
    "2024-1-2",
    "2024-01-02T03:04:05 UTC",
)


@st.composite
def bad_default(draw: st.DrawFn, type_name: str) -> Any:
    """A default that does not fit the type: out of range, not finite, the wrong kind
    of JSON value, NUL characters, invalid timestamps."""
    wrong_kind: list[Any] = [True, "1", [1], {"a": 1}]
    if type_name == "VARCHAR":
        return draw(
            st.sampled_from([1, 1.5, True, ["x"]])
            | st.builds(lambda a, b: f"{a}\x00{b}", free_text, free_text)
        )
    if type_name == "BOOLEAN":
        return draw(st.sampled_from([1, 0, "true", "yes", 1.0, "t"]))
    if type_name in oracle.INT_RANGE:
        lo, hi = oracle.INT_RANGE[type_name]
        return draw(
            st.integers(hi + 1, 2**80)
            | st.integers(-(2**80), lo - 1)
            | st.sampled_from([lo - 1, hi + 1, 2**64, 1.5, 1e3, math.inf, *wrong_kind])
        )
    if type_name == "DOUBLE":
        return draw(st.sampled_from([math.inf, -math.inf, math.nan, 10**400, *wrong_kind]))
    assert type_name == "TIMESTAMP"
    return draw(
        st.sampled_from([*BAD_TIMESTAMPS, 1704067200, 1.5, True, "2024-01-02\x00"])
        | timestamp_text().filter(lambda t: oracle.parse_timestamp(t, honour_offset=True) is None)
    )


def _unreadable_types(source: str) -> list[str]:
    names = sorted({*SIMPLE_TYPES, "DECIMAL"} - VIRTUAL_TARGETS[source])
    return ["DECIMAL(10,2)" if n == "DECIMAL" else n for n in names]


@st.composite
def refused_definitions(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A generated (valid) definition with one thing made invalid, and the problem path
    DefinitionInvalid must name."""
    raw = draw(definitions())
    cols: list[dict[str, Any]] = raw["columns"]
    index = draw(st.integers(0, len(cols) - 1))
    column = cols[index]
    rnd = draw(st.randoms(use_true_random=False))
    kind = draw(st.sampled_from(["default", "virtual", "empty_key", "literal", "text_vs_time"]))
    if kind == "default":
        column["default"] = draw(bad_default(column["type"].strip().upper()))
        return raw, f"definition.columns[{index}].default"
    if kind == "virtual":
        source = draw(st.sampled_from(["ts", "tenant", "segment_seq", "frame_index"]))
        column.pop("path", None)
        column.pop("default", None)
        column["source"] = source
        column["type"] = draw(st.sampled_from(_unreadable_types(source)))
        return raw, f"definition.columns[{index}].type"
    if kind == "empty_key":
        steps = draw(path_steps)
        steps.insert(draw(st.integers(0, len(steps))), "")
        column.pop("source", None)
        column["path"] = path_text(steps, rnd)
        return raw, f"definition.columns[{index}].path"
    scope = scope_of(cols)
    name = draw(st.sampled_from(scope.temporal))
    if kind == "literal":  # a text literal next to a timestamp that is not a timestamp
        bad = sql_string(draw(st.sampled_from(BAD_TIMESTAMPS)))
        good = draw(ts_literal())
        condition = draw(
            st.sampled_from(
                [
                    f"{name} > {bad}",
                    f"{bad} = {name}",
                    f"{name} IN ({good}, {bad})",
                    f"{name} NOT BETWEEN {bad} AND {good}",
                    f"{name} BETWEEN {good} AND {bad}",
                ]
            )
        )
    else:  # text compared with a timestamp other than as a literal next to its column
        # (a bare literal would be bound as a timestamp: `'2024-01-02' = ts` is fine)
        text = draw(
            st.sampled_from(scope.text)
            | st.builds(
                lambda f, x: f"{f}({x})", st.sampled_from(["lower", "trim"]), str_expr(scope, 1)
            )
        )
        literal = draw(ts_literal())
        condition = draw(
            st.sampled_from(
                [
                    f"{text} = {name}",
                    f"{name} < {text}",
                    f"{name} > lower({literal})",
                    f"coalesce({name}, {literal}) > {name}",
                    f"coalesce({literal}, {name}) IS NULL",
                    f"{literal} BETWEEN {name} AND {name}",
                    f"{name} IN ({literal}) AND {text} >= {name}",
                ]
            )
        )
    filters = raw.setdefault("filters", [])
    filters.append({"condition": condition})
    return raw, f"definition.filters[{len(filters) - 1}].condition"


@settings(PROFILE, max_examples=PROFILE.max_examples)
@seed(SEED)
@given(case=refused_definitions())
def test_definitions_that_cannot_run_are_refused(case: tuple[dict[str, Any], str]) -> None:
    raw_definition, path = case
    _note(f"definition: {raw_definition!r}")
    with pytest.raises(DefinitionInvalid) as refused:
        parse_definition(raw_definition)
    assert path in [p.path for p in refused.value.problems], refused.value


@PROFILE
@seed(SEED)
@given(text=timestamp_literal_text.filter(lambda t: t not in ISO_ONLY_TIMESTAMPS))
def test_timestamp_literals_and_defaults_name_the_instant_of_the_text(text: str) -> None:
    """The compiler's parse of a literal or default (fromisoformat, offset → UTC) is the
    instant DuckDB reads from the same text in a payload (TIMESTAMPTZ, UTC session)."""
    want = oracle.parse_timestamp(text, honour_offset=True)
    definition = parse_definition(
        _def(
            {"name": "t", "type": "TIMESTAMP", "path": "$.t", "default": text},
            filters=[f"t = {sql_string(text)}"],
        )
    )
    (column,) = definition.columns
    assert oracle.normalised_timestamp(column.default) == want
    expr = definition.filters[0].expr
    assert isinstance(expr, Binary)
    assert isinstance(expr.right, TemporalLiteral)
    assert oracle.normalised_timestamp(expr.right.value) == want


# ------------------------------------------------------ fixed compiler bugs
# Each was a strict xfail `test_known_*` test; the compiler now does what it says.
def _refused(raw_definition: dict[str, Any]) -> list[str]:
    with pytest.raises(DefinitionInvalid) as refused:
        parse_definition(raw_definition)
    return [p.path for p in refused.value.problems]


def test_an_empty_key_path_is_refused() -> None:
    # was accepted and rendered `$.""`: Binder Error (JSON path error) at run time
    for path in ("$['']", '$[""]', "$.a['']", "$[''].a", "$[0]['']"):
        with pytest.raises(ValueError, match="empty key"):
            parse_jsonpath(path)
        assert _refused(_def({"name": "a", "type": "VARCHAR", "path": path})) == [
            "definition.columns[0].path"
        ]


@pytest.mark.parametrize(
    ("type_name", "default"),
    [
        pytest.param("INTEGER", 2**40, id="integer-out-of-range"),  # Conversion Error
        pytest.param("INTEGER", 2**31, id="integer-just-out-of-range"),
        pytest.param("BIGINT", -(2**63) - 1, id="bigint-out-of-range"),
        pytest.param("TIMESTAMP", "soon", id="timestamp-not-a-timestamp"),  # Conversion Error
        pytest.param("TIMESTAMP", "2023-02-29", id="timestamp-impossible-date"),
        pytest.param("TIMESTAMP", "0001-01-01T00:30:00+01:00", id="timestamp-before-year-1"),
        pytest.param("DOUBLE", math.inf, id="double-infinite"),  # ValueError in quote_literal
        pytest.param("DOUBLE", math.nan, id="double-nan"),
        pytest.param("DOUBLE", 10**400, id="double-beyond-range"),  # was an OverflowError
        pytest.param("VARCHAR", "x\x00", id="varchar-with-nul"),  # ValueError in quote_literal
    ],
)
def test_a_default_that_does_not_fit_is_refused(type_name: str, default: Any) -> None:
    raw = _def({"name": "a", "type": type_name, "path": "$.a", "default": default})
    assert _refused(raw) == ["definition.columns[0].default"]


@pytest.mark.parametrize(
    ("source", "type_name"),
    [("ts", "BOOLEAN"), ("ts", "BIGINT"), ("tenant", "TIMESTAMP"), ("frame_index", "BOOLEAN")],
)
def test_a_virtual_column_read_as_a_type_it_cannot_have_is_refused(
    source: str, type_name: str
) -> None:
    # was accepted and always NULL (TRY_CAST from TIMESTAMP/UINTEGER has no such cast)
    raw = _def({"name": "a", "type": type_name, "source": source})
    assert _refused(raw) == ["definition.columns[0].type"]


@pytest.mark.parametrize(
    ("column", "condition"),
    [
        pytest.param(
            {"name": "a", "type": "VARCHAR", "path": "$.a"}, "ts > 'hello'", id="bad-literal"
        ),  # was a Conversion Error at run time
        pytest.param(
            {"name": "s", "type": "VARCHAR", "path": "$.s"}, "s = ts", id="text-column"
        ),  # was a Conversion Error for every row whose text is not a timestamp
        pytest.param(
            {"name": "t", "type": "TIMESTAMP", "path": "$.t"},
            "t > lower('x')",
            id="text-expression",
        ),  # was a Binder Error
        pytest.param(
            {"name": "t", "type": "TIMESTAMP", "path": "$.t"},
            "coalesce(t, '2024-01-01') > ts",
            id="coalesce-of-text-and-timestamp",
        ),
    ],
)
def test_text_that_is_not_a_timestamp_is_not_compared_with_one(
    column: dict[str, Any], condition: str
) -> None:
    assert _refused(_def(column, filters=[condition])) == ["definition.filters[0].condition"]


def test_an_integer_overflow_in_a_filter_drops_the_row() -> None:
    # was an Out of Range Error that failed the whole segment; TRY drops just that row
    raw = _def({"name": "b", "type": "BIGINT", "path": "$.b"}, filters=["round(b, -1) > 0"])
    result = run_view(
        parse_definition(raw), _seg(b'{"b":9223372036854775807}', b'{"b":5}', b'{"b":15}')
    )
    assert _rules(result) == [("dropped", "filtered"), ("accepted", None), ("accepted", None)]
    check_against_oracle(  # the same with arithmetic the oracle models
        _def({"name": "b", "type": "BIGINT", "path": "$.b"}, filters=["b * 2 > b"]),
        _seg(b'{"b":9223372036854775807}', b'{"b":5}', b'{"b":-5}'),
    )


def _rules(result: ViewResult) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for number in result.classified["__rule"].to_pylist():
        rule = result.plan.rule(number) if number else None
        out.append((rule.outcome, rule.code) if rule else ("accepted", None))
    return out


def test_division_by_zero_is_null() -> None:
    # was ±inf/NaN for `/` (and NULL only for integer `%`); docs/views.md says NULL
    definition = parse_definition(
        _def(
            {"name": "d", "type": "DOUBLE", "path": "$.d"},
            {"name": "i", "type": "BIGINT", "path": "$.i"},
            filters=["d / 0 IS NULL", "d % 0.0 IS NULL", "i / 0 IS NULL", "i % (i - i) IS NULL"],
        )
    )
    payloads = (b'{"d": 1.5, "i": 3}', b'{"d": 0, "i": 0}', b'{"d": -0.0, "i": -7}')
    result = run_view(definition, _seg(*payloads))
    assert result.counts.accepted == 3
    check_against_oracle(
        _def({"name": "d", "type": "DOUBLE", "path": "$.d"}, filters=["d / 0 IS NULL"]),
        _seg(*payloads),
    )


def test_a_timestamp_default_offset_is_honoured() -> None:
    definition = parse_definition(
        _def(
            {
                "name": "t",
                "type": "TIMESTAMP",
                "path": "$.t",
                "default": "2024-01-01T02:00:00+02:00",
            }
        )
    )
    assert definition.columns[0].default == "2024-01-01 00:00:00.000000"
    result = run_view(definition, _seg(b"{}", b'{"t": "2024-01-01T02:00:00+02:00"}'))
    # both are 2024-01-01 00:00 UTC (the default's offset was dropped: 02:00)
    assert _column_values(result.classified, "t") == [1704067200000000] * 2


def test_a_filter_literal_offset_is_honoured() -> None:
    definition = parse_definition(
        _def(
            {"name": "t", "type": "TIMESTAMP", "path": "$.t"},
            filters=["t = '2024-01-01T02:00:00+02:00'", "'2024-01-01T00:30:00+01:00' < t"],
        )
    )
    assert definition.filters[0].expr == Binary(
        "=", Name("t"), TemporalLiteral("2024-01-01 00:00:00.000000", "TIMESTAMP")
    )
    result = run_view(definition, _seg(b'{"t": "2024-01-01T00:00:00Z"}'))
    assert result.counts.accepted == 1  # the same instant (the offset was dropped)


def test_a_topic_read_as_timestamp_honours_its_offset() -> None:
    definition = parse_definition(_def({"name": "t", "type": "TIMESTAMP", "source": "topic"}))
    result = run_view(definition, _seg(b"{}", topic="2024-01-01T02:00:00+02:00"))
    assert _column_values(result.classified, "t") == [1704067200000000]  # 00:00 UTC, not 02:00


def test_identity_partition_folders_of_timestamps_are_whole_seconds() -> None:
    # docs/views.md: identity partitions show timestamps as YYYY-MM-DDTHH:MM:SS (the
    # folder carried the fraction: t=2024-01-02T03%3A04%3A05.000000)
    raw = _def({"name": "t", "type": "TIMESTAMP", "path": "$.t"})
    raw["partitions"] = [{"column": "t"}]
    result = run_view(
        parse_definition(raw),
        _seg(b'{"t": "2024-01-02T03:04:05Z"}', b'{"t": "2024-01-02T03:04:05.75Z"}'),
    )
    assert [(f.folders, f.table.num_rows) for f in result.files] == [
        (("t=2024-01-02T03%3A04%3A05",), 2)
    ]
