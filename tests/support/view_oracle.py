"""A small pure-Python model of what a compiled view does to each row: the oracle of
tests/property/test_view_differential.py.

It reads the same `ViewDefinition` (columns, filter IR from compiler/condition.py) but
none of compiler/sql.py: every row is classified from the rules in
compiler/materialize.py (invalid JSON → required → cast → filters → accepted) with
values computed here:

- JSON is parsed by a hand-written parser with the grammar of DuckDB's reader (yyjson
  as DuckDB configures it: trailing commas allowed, `NaN`/`Inf`/`Infinity` in any case
  with an optional `-`, integers beyond 64 bits and doubles beyond the double range
  kept as their text, duplicate keys kept, the first one found by a path).
- `json_extract_string` is modelled: a string unquoted, JSON null or a missing path →
  NULL, anything else as minified JSON text the way DuckDB writes it (shortest
  round-trip doubles, `1.0`, `1e21`, `1e-7`, `-0.0`; control characters escaped).
- TRY_CAST from text to VARCHAR, BOOLEAN, BIGINT, INTEGER, DOUBLE and TIMESTAMP (the
  compiler reads TIMESTAMP through TIMESTAMPTZ in a UTC session, so offsets count),
  and from the virtual columns to those types, each checked against this DuckDB with
  small queries before it was written down (see the notes at each function).
- Filters are evaluated from the IR with SQL three-valued logic and DuckDB's typing:
  an exact comparison between integers and decimal literals, a DOUBLE comparison as
  soon as one side is DOUBLE (a literal with an exponent, like `1e3`, is a DOUBLE), NaN
  equal to itself and larger than every other double, text compared by code point.
  A text literal compared with a TIMESTAMP column is a `TemporalLiteral` in the IR,
  already parsed and converted to UTC by the compiler: its value is read here.
- Arithmetic: in DOUBLE when one side is a DOUBLE or the operator is `/`; on integers
  in the integer type DuckDB gives the expression (INTEGER + INTEGER is an INTEGER,
  UINTEGER - 2 a UINTEGER, a literal takes the other side's type when it fits), exactly,
  with an overflow an error. `/` and `%` by zero are NULL (docs/views.md), for every
  type. DECIMAL arithmetic is not modelled (Unsupported).
- The filters run inside TRY(): a row whose filters raise an error (an integer
  overflow) is dropped as `filtered`. DuckDB's optimizer rewrites some arithmetic
  before it runs (`b + 1 > 5` becomes `b > 4`, which cannot overflow), so for such a
  row DuckDB may also give the exact answer: `RowOutcome.alternative` says so.

Inputs outside the modelled part raise `Unsupported` (`ViewOracle()` for a definition,
`classify` for a value); the test's strategies never generate them (they filter text
with `text_is_modelled` / `document_is_modelled`), so an `Unsupported` in a test run
is a bug of the test, not a difference. Definitions the compiler refuses (defaults
that do not fit, text compared with a timestamp, …) never reach the oracle.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from compiler.condition import (
    COMPARISONS,
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
from compiler.definition import ColumnSpec, ViewDefinition

# docs/views.md: "arithmetic + - * / %, unary minus (division by zero gives NULL)";
# the compiler renders `x / NULLIF(y, 0)` (and `%` alike).
DIVISION_BY_ZERO_IS_NULL = True

SUPPORTED_TYPES = frozenset({"VARCHAR", "BOOLEAN", "BIGINT", "INTEGER", "DOUBLE", "TIMESTAMP"})
INT_RANGE = {"INTEGER": (-(2**31), 2**31 - 1), "BIGINT": (-(2**63), 2**63 - 1)}
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
U64_MAX = 2**64 - 1
TS_INFINITY = 2**63 - 1  # DuckDB's infinite timestamps, in microseconds
US_PER_S = 1_000_000


class Unsupported(Exception):
    """The input is outside what this oracle models (a bug of the test if it happens)."""


# ============================================================================ JSON
class JsonInvalid(ValueError):
    pass


# Parsed JSON: ("object", ((key, node), ...)) | ("array", (node, ...)) | ("string", s)
# | ("number", rendered text) | ("true",) | ("false",) | ("null",)
JsonNode = tuple[Any, ...]

_JSON_WS = " \t\n\r"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")
JSON_DEPTH_MAX = 200  # far below any limit of DuckDB's reader; deeper input is not modelled


class _JsonParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> JsonInvalid:
        return JsonInvalid(f"{what} at {self.pos}")

    def ws(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _JSON_WS:
            pos += 1
        self.pos = pos

    def document(self) -> JsonNode:
        self.ws()
        if self.pos >= len(self.text):
            raise self.fail("empty document")
        node = self.value(0)
        self.ws()
        if self.pos != len(self.text):
            raise self.fail("content after the document")
        return node

    def value(self, depth: int) -> JsonNode:
        if depth > JSON_DEPTH_MAX:
            raise Unsupported("JSON nested too deep for the oracle")
        text = self.text
        if self.pos >= len(text):
            raise self.fail("unexpected end")
        c = text[self.pos]
        if c == "{":
            return self.object(depth)
        if c == "[":
            return self.array(depth)
        if c == '"':
            return ("string", self.string())
        for word in ("true", "false", "null"):
            if text.startswith(word, self.pos):
                self.pos += len(word)
                return (word,)
        return ("number", self.number())

    def object(self, depth: int) -> JsonNode:
        self.pos += 1
        members: list[tuple[str, JsonNode]] = []
        self.ws()
        if self.text[self.pos : self.pos + 1] == "}":
            self.pos += 1
            return ("object", ())
        while True:
            if self.text[self.pos : self.pos + 1] != '"':
                raise self.fail("expected a key")
            key = self.string()
            self.ws()
            if self.text[self.pos : self.pos + 1] != ":":
                raise self.fail("expected ':'")
            self.pos += 1
            self.ws()
            members.append((key, self.value(depth + 1)))
            self.ws()
            c = self.text[self.pos : self.pos + 1]
            if c == "}":
                self.pos += 1
                return ("object", tuple(members))
            if c != ",":
                raise self.fail("expected ',' or '}'")
            self.pos += 1
            self.ws()
            if self.text[self.pos : self.pos + 1] == "}":  # a trailing comma is allowed
                self.pos += 1
                return ("object", tuple(members))

    def array(self, depth: int) -> JsonNode:
        self.pos += 1
        items: list[JsonNode] = []
        self.ws()
        if self.text[self.pos : self.pos + 1] == "]":
            self.pos += 1
            return ("array", ())
        while True:
            items.append(self.value(depth + 1))
            self.ws()
            c = self.text[self.pos : self.pos + 1]
            if c == "]":
                self.pos += 1
                return ("array", tuple(items))
            if c != ",":
                raise self.fail("expected ',' or ']'")
            self.pos += 1
            self.ws()
            if self.text[self.pos : self.pos + 1] == "]":  # a trailing comma is allowed
                self.pos += 1
                return ("array", tuple(items))

    def _hex4(self, at: int) -> int:
        digits = self.text[at : at + 4]
        if len(digits) != 4 or not all(c in _HEX for c in digits):
            raise self.fail("bad \\u escape")
        return int(digits, 16)

    def string(self) -> str:
        text = self.text
        pos = self.pos + 1
        out: list[str] = []
        while True:
            if pos >= len(text):
                self.pos = pos
                raise self.fail("unterminated string")
            c = text[pos]
            if c == '"':
                self.pos = pos + 1
                return "".join(out)
            if ord(c) < 0x20:
                self.pos = pos
                raise self.fail("control character in a string")
            if c != "\\":
                out.append(c)
                pos += 1
                continue
            e = text[pos + 1 : pos + 2]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                pos += 2
                continue
            if e != "u":
                self.pos = pos
                raise self.fail("bad escape")
            code = self._hex4(pos + 2)
            pos += 6
            if 0xDC00 <= code <= 0xDFFF:
                raise self.fail("lone low surrogate")
            if 0xD800 <= code <= 0xDBFF:
                if text[pos : pos + 2] != "\\u":
                    raise self.fail("high surrogate without a low one")
                low = self._hex4(pos + 2)
                if not 0xDC00 <= low <= 0xDFFF:
                    raise self.fail("high surrogate without a low one")
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                pos += 6
            out.append(chr(code))

    def number(self) -> str:
        """A number (or NaN/Inf literal), returned as DuckDB renders it."""
        text, start = self.text, self.pos
        pos = start + 1 if text[start] == "-" else start
        lowered = text[pos : pos + 8].lower()
        for word in ("infinity", "inf", "nan"):
            if lowered.startswith(word):
                self.pos = pos + len(word)
                return text[start : self.pos]  # kept as written
        if pos >= len(text) or text[pos] not in _DIGITS:
            self.pos = pos
            raise self.fail("expected a value")
        if text[pos] == "0":
            pos += 1
        else:
            while pos < len(text) and text[pos] in _DIGITS:
                pos += 1
        is_float = False
        if text[pos : pos + 1] == ".":
            is_float = True
            pos += 1
            if pos >= len(text) or text[pos] not in _DIGITS:
                self.pos = pos
                raise self.fail("expected a digit after '.'")
            while pos < len(text) and text[pos] in _DIGITS:
                pos += 1
        if text[pos : pos + 1] in ("e", "E"):
            is_float = True
            pos += 1
            if text[pos : pos + 1] in ("+", "-"):
                pos += 1
            if pos >= len(text) or text[pos] not in _DIGITS:
                self.pos = pos
                raise self.fail("expected an exponent")
            while pos < len(text) and text[pos] in _DIGITS:
                pos += 1
        self.pos = pos
        literal = text[start:pos]
        if not is_float:
            value = int(literal)
            if I64_MIN <= value <= U64_MAX:  # read as int64/uint64
                return str(value)
            return literal  # a big number is kept as written
        number = float(literal)
        if math.isinf(number):
            return literal  # beyond the double range: kept as written
        return format_double(number)


def parse_json(text: str) -> JsonNode:
    """The document, or JsonInvalid where DuckDB's json_valid() is false."""
    return _JsonParser(text).document()


def format_double(value: float) -> str:
    """A double as DuckDB's JSON writer prints it: the shortest round-trip digits,
    positional between 1e-6 and 1e21 (always with a fraction, `1000.0`), otherwise
    `1.5e300` / `1e-7` (no `+`, no padding)."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()[1:]
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    assert isinstance(exponent, int)
    exponent += len("".join(map(str, digit_tuple))) - len(digits)
    sci = len(digits) - 1 + exponent  # value = d.ddd × 10**sci
    if -7 < sci < 21:
        if sci >= 0:
            whole = digits[: sci + 1].ljust(sci + 1, "0")
            return f"{sign}{whole}.{digits[sci + 1 :] or '0'}"
        return f"{sign}0.{'0' * (-sci - 1)}{digits}"
    mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
    return f"{sign}{mantissa}e{sci}"


def _json_string(value: str) -> str:
    out = ['"']
    for c in value:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif ord(c) < 0x20:
            short = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
            out.append(short.get(c) or f"\\u{ord(c):04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def render_json(node: JsonNode) -> str:
    """Minified JSON text as DuckDB writes it (json_extract_string of a container)."""
    kind = node[0]
    if kind == "object":
        return "{" + ",".join(f"{_json_string(k)}:{render_json(v)}" for k, v in node[1]) + "}"
    if kind == "array":
        return "[" + ",".join(render_json(v) for v in node[1]) + "]"
    if kind == "string":
        return _json_string(node[1])
    if kind == "number":
        return str(node[1])
    return str(kind)  # true | false | null


def extract_string(document: JsonNode, steps: Sequence[str | int]) -> str | None:
    """json_extract_string(raw, path) over a parsed document."""
    node: JsonNode | None = document
    for step in steps:
        assert node is not None
        if isinstance(step, int):
            node = node[1][step] if node[0] == "array" and step < len(node[1]) else None
        elif node[0] == "object":
            node = next((v for k, v in node[1] if k == step), None)  # the first duplicate
        else:
            node = None
        if node is None:
            return None
    assert node is not None
    if node[0] == "null":
        return None
    if node[0] == "string":
        return str(node[1])
    return render_json(node)


# ========================================================================== casts
# DuckDB's StringUtil::CharacterIsSpace: the ASCII spaces the number casts skip.
_SPACE = " \t\n\v\f\r"
# Text made of these alone may be a number with `_` separators (not modelled); any
# other character makes a cast with `_` fail anyway.
_NUMBER_CHARS = frozenset("0123456789_+-.eE")


def _tdiv(a: int, b: int) -> int:
    """C++ integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _tmod(a: int, b: int) -> int:
    return a - b * _tdiv(a, b)


@dataclass
class _IntState:
    result: int = 0
    decimal: int = 0
    decimal_digits: int = 0


def _int_loop(buf: str, negative: bool, exponent_ok: bool, st: _IntState, lo: int, hi: int) -> bool:
    """DuckDB's text → integer parser (IntegerCastLoop with IntegerDecimalCastOperation,
    an int64 accumulator), as this DuckDB behaves where it differs from its older
    sources; with exponent_ok False it is the plain loop that reads the exponent."""
    start = 1 if negative or buf[:1] == "+" else 0
    pos, n = start, len(buf)
    if not any(c in _DIGITS for c in buf[start:].split("e")[0].split("E")[0]):
        return False  # no digit at all: '+', '- ', '5e ' (checked)
    while pos < n:
        c = buf[pos]
        if c not in _DIGITS:
            if c == ".":
                before = pos > start
                pos += 1
                first = pos
                while pos < n and buf[pos] in _DIGITS:
                    if not exponent_ok:
                        return False  # the plain loop (the exponent) takes no decimals
                    digit = ord(buf[pos]) - 48
                    if st.decimal <= (I64_MAX - digit) // 10:  # else: ignore more decimals
                        st.decimal_digits += 1
                        st.decimal = st.decimal * 10 + digit
                    pos += 1
                if not (before or pos > first):
                    return False
                if pos >= n:
                    break
            if buf[pos] in _SPACE:
                if buf[pos:].strip(_SPACE):
                    return False
                pos = n
                break
            if exponent_ok and buf[pos] in "eE":
                if pos == start:
                    return False
                pos += 1
                if pos >= n:
                    return False
                exp = _IntState()
                if not _int_loop(buf[pos:], buf[pos] == "-", False, exp, -(2**15), 2**15 - 1):
                    return False
                return _int_exponent(st, exp.result, negative)
            return False
        value = st.result * 10 + (-(ord(c) - 48) if negative else ord(c) - 48)
        if not lo <= value <= hi:
            return False
        st.result = value
        pos += 1
    if exponent_ok and not _int_finalize(st, negative):
        return False
    return pos > start


def _int_exponent(st: _IntState, exponent: int, negative: bool) -> bool:
    """IntegerDecimalCastOperation::HandleExponent: a negative exponent shifts the
    integer part right and rounds on the last digit shifted out (the fraction digits
    are dropped, which cannot change a half-away-from-zero rounding); a positive one
    shifts the fraction digits in (as many of them as fitted in an int64)."""
    if exponent < 0:
        for _ in range(min(-exponent, 21)):
            st.decimal = _tmod(st.result, 10)
            st.result = _tdiv(st.result, 10)
        st.decimal = abs(st.decimal)
        st.decimal_digits = 1
        return _int_finalize(st, negative)
    e = exponent
    while st.result != 0 and e > 0:
        e -= 1
        st.result *= 10
        if not I64_MIN <= st.result <= I64_MAX:
            return False
    if st.decimal == 0:
        return _int_finalize(st, negative)
    e = exponent - st.decimal_digits
    remainder = 0
    if e < 0:
        if -e <= 19:  # checked: 19 fraction digits with e0 still round
            power = 10**-e
            remainder = st.decimal % power
            st.decimal //= power
        else:
            st.decimal = 0
    else:
        for _ in range(e):
            st.decimal *= 10
            if st.decimal > I64_MAX:
                return False
    st.decimal_digits = (st.decimal_digits - exponent) & 0xFFFF  # uint16_t
    st.result = st.result - st.decimal if negative else st.result + st.decimal
    if not I64_MIN <= st.result <= I64_MAX:
        return False
    st.decimal = remainder
    return _int_finalize(st, negative)


def _int_finalize(st: _IntState, negative: bool) -> bool:
    # The range check against the target type happens in cast_integer.
    while st.decimal > 10:
        st.decimal //= 10
        st.decimal_digits = (st.decimal_digits - 1) & 0xFFFF
    if st.decimal_digits == 1 and st.decimal >= 5:
        st.result += -1 if negative else 1
        st.decimal = 0
    return True


def cast_integer(text: str, type_name: str) -> int | None:
    """TRY_CAST(text AS INTEGER|BIGINT). Leading/trailing ASCII spaces, `+`, decimals
    (rounded half away from zero: '2.5' → 3, '1.5' AS INTEGER is 2) and exponents
    ('1e3' → 1000) are accepted. Hex/binary prefixes and `_` digit separators are
    accepted by DuckDB too, but not modelled (Unsupported)."""
    lo, hi = INT_RANGE[type_name]
    s = text.lstrip(_SPACE)
    if not s:
        return None
    if "_" in s and _NUMBER_CHARS.issuperset(s.strip(_SPACE)):
        raise Unsupported("digit separators in an integer cast")
    if s[0] == "0" and s[1:2] in ("x", "X", "b", "B"):
        raise Unsupported("hex/binary integer literal")
    st = _IntState()
    # DuckDB parses into an int64 and range-checks the result (then the rounding step)
    # against the target type; a first pass without decimals gives the same answers.
    if not _int_loop(s, s[0] == "-", True, st, I64_MIN, I64_MAX):
        return None
    if not lo <= st.result <= hi:
        return None
    # _int_finalize rounded in int64; DuckDB rounds in the target type: the same
    # value, but out of range is a failure either way (checked above).
    return st.result


_DOUBLE_RE = re.compile(
    r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|-?(?:infinity|inf|nan)",
    re.IGNORECASE,
)


def cast_double(text: str) -> float | None:
    """TRY_CAST(text AS DOUBLE): leading/trailing ASCII spaces, one optional `+` (then
    even a `-`: '+-1' is -1.0), fast_float's grammar, inf/infinity/nan in any case,
    overflow to ±inf, correctly rounded (as Python's float())."""
    s = text.strip(_SPACE)
    if ("_" in s and _NUMBER_CHARS.issuperset(s)) or re.match(r"[+-]*nan\(", s, re.I):
        raise Unsupported("digit separators / nan payloads in a double cast")
    if s[:1] == "+":
        s = s[1:]
    if not _DOUBLE_RE.fullmatch(s):
        return None
    return float(s)


_TRUE = frozenset({"true", "t", "1", "yes", "y"})
_FALSE = frozenset({"false", "f", "0", "no", "n"})


def cast_boolean(text: str) -> bool | None:
    """TRY_CAST(text AS BOOLEAN): exactly one of the words, ASCII case-insensitive,
    no surrounding spaces ('on'/'off' are not booleans)."""
    if not text.isascii():
        return None
    word = text.lower()
    return True if word in _TRUE else False if word in _FALSE else None


_TS_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?)?",
    re.ASCII,
)
# Number-shaped text, valid or not ('+-1', '1e', '.', ''): never a timestamp (checked
# with 20,000 such strings).
_NUMBER_TEXT_RE = re.compile(
    r"[ \t\n\v\f\r]*(?:\+-|[+-])?[0-9]*\.?[0-9]*(?:[eE][+-]?[0-9]*)?[ \t\n\v\f\r]*"
)
_TS_SPECIAL = {"infinity": TS_INFINITY, "inf": TS_INFINITY, "epoch": 0}
# Spaces and a sign, then the digits of a year: what text DuckDB might read as a date
# starts with; a date separator (' ', '-', '/', '\\' were found; '.' and ':' too, to
# be safe) must follow the digits.
_TS_LEAD_RE = re.compile(r"[ \t\n\v\f\r]*[+-]?([0-9]*)")
_TS_SEPARATORS = frozenset(" -/\\.:\t\n\v\f\r")


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (any year)."""
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse_timestamp(text: str, *, honour_offset: bool) -> int | None:
    """Microseconds since the epoch, or None where DuckDB's cast gives NULL.

    Modelled: `YYYY-MM-DD[(T| )HH:MM[:SS[.fraction]][Z|±HH[[:]MM]]]` with a 4-digit
    year 0001..9999 (fraction truncated to microseconds, an offset only after a time,
    any offset hour 00..99 accepted, checked) and the special words `infinity`, `inf`,
    `-infinity`, `-inf`, `epoch` in any case. A number is NULL, and so is text that
    starts with anything but a digit, a sign or a space. Everything else DuckDB is
    lenient about (`2024/1/2`, `T3:4:5`, time zone names, 24:00:00, year 0 / BC,
    surrounding spaces) is Unsupported."""
    sign = -1 if text[:1] == "-" else 1
    special = _TS_SPECIAL.get(text[1:].lower() if sign < 0 else text.lower())
    if special is not None and (sign > 0 or special != 0):
        return sign * special
    m = _TS_RE.fullmatch(text)
    if m is None:
        if _NUMBER_TEXT_RE.fullmatch(text):
            return None  # a number is not a timestamp (also '2024' and '-1')
        if text.strip(_SPACE).lower().lstrip("+-") in _TS_SPECIAL:
            raise Unsupported(f"special timestamp word with spaces or signs: {text!r}")
        lead = _TS_LEAD_RE.match(text)
        assert lead is not None  # everything in it is optional
        if not lead.group(1):
            return None  # DuckDB's date parser needs a digit first (checked)
        if text[lead.end() : lead.end() + 1] not in _TS_SEPARATORS:
            return None  # digits and then no date separator (checked)
        raise Unsupported(f"timestamp text outside the modelled grammar: {text!r}")
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    y, mo, d = int(year), int(month), int(day)
    if y == 0:
        raise Unsupported("year 0 (1 BC)")
    if not (1 <= mo <= 12 and 1 <= d <= _days_in_month(y, mo)):
        return None
    h, mi, s = int(hour or 0), int(minute or 0), int(second or 0)
    if h == 24:
        raise Unsupported("24:00 (DuckDB takes 24:00:00 as the next day)")
    if h > 23 or mi > 59 or s > 59:
        return None
    micros = int((fraction or "")[:6].ljust(6, "0"))
    offset_s = 0
    if offset and offset != "Z":
        digits = offset[1:].replace(":", "")
        oh, om = int(digits[:2]), int(digits[2:] or 0)
        if om > 59:
            raise Unsupported("offset minutes above 59")
        offset_s = (oh * 3600 + om * 60) * (1 if offset[0] == "+" else -1)
    seconds = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
    if honour_offset:
        seconds -= offset_s
    return seconds * US_PER_S + micros


def cast_text(text: str, type_name: str) -> Any:
    """TRY_CAST of extracted JSON text (or `topic`) to a view column type."""
    if "\x00" in text and type_name != "VARCHAR":
        raise Unsupported("NUL in text cast to a non-text type")
    if type_name == "VARCHAR":
        return text
    if type_name == "BOOLEAN":
        return cast_boolean(text)
    if type_name in INT_RANGE:
        return cast_integer(text, type_name)
    if type_name == "DOUBLE":
        return cast_double(text)
    if type_name == "TIMESTAMP":
        # TRY_CAST(TRY_CAST(text AS TIMESTAMPTZ) AS TIMESTAMP) in a UTC session
        return parse_timestamp(text, honour_offset=True)
    raise Unsupported(f"type {type_name}")


def text_is_modelled(text: str) -> bool:
    """Whether every modelled cast of `text` is inside the modelled part."""
    try:
        for type_name in SUPPORTED_TYPES:
            cast_text(text, type_name)
    except Unsupported:
        return False
    return True


def document_is_modelled(text: str) -> bool:
    """Whether every value a path could extract from this payload is modelled: the
    strings in it (containers render as `{…}`/`[…]`, numbers as numbers, both always
    modelled)."""
    try:
        document = parse_json(text)
    except JsonInvalid:
        return True
    stack = [document]
    while stack:
        node = stack.pop()
        if node[0] == "string" and not text_is_modelled(node[1]):
            return False
        if node[0] == "object":
            stack.extend(v for _, v in node[1])
        elif node[0] == "array":
            stack.extend(node[1])
    return True


def format_timestamp_ms(ms: int) -> str:
    """TIMESTAMP → VARCHAR: `YYYY-MM-DD HH:MM:SS[.fff]`, fraction without trailing zeros
    (years 1..9999 only)."""
    days, rest = divmod(ms, 86_400_000)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    if not 1 <= year <= 9999:
        raise Unsupported("year outside 1..9999")
    seconds, millis = divmod(rest, 1000)
    clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    text = f"{year:04d}-{month:02d}-{day:02d} {clock}"
    return text + (f".{millis:03d}".rstrip("0") if millis else "")


def cast_virtual(source: str, value: Any, type_name: str) -> Any:
    """TRY_CAST of a virtual column (ts in ms, tenant/segment_seq/frame_index as
    unsigned integers, topic as text) to a column type it may be read as
    (compiler.definition.VIRTUAL_TARGETS; parse_definition refuses the others)."""
    if value is None:
        return None
    if source == "topic":
        return cast_text(value, type_name)
    if source == "ts":
        if type_name == "TIMESTAMP":
            return value * 1000
        if type_name == "VARCHAR":
            return format_timestamp_ms(value)
        raise Unsupported(f"ts read as {type_name} (refused; TRY_CAST would be NULL)")
    # UINTEGER / UBIGINT
    if type_name == "VARCHAR":
        return str(value)
    if type_name in INT_RANGE:
        lo, hi = INT_RANGE[type_name]
        return value if lo <= value <= hi else None
    if type_name == "DOUBLE":
        return float(value)
    raise Unsupported(f"{source} read as {type_name} (refused by parse_definition)")


VIRTUAL_TYPES = {
    "ts": "TIMESTAMP",
    "topic": "VARCHAR",
    "tenant": "UINTEGER",
    "segment_seq": "UBIGINT",
    "frame_index": "UBIGINT",
}


def needs_cast(column: ColumnSpec) -> bool:
    if column.path is None:
        assert column.source is not None
        return VIRTUAL_TYPES[column.source] != column.type.name
    return column.type.name != "VARCHAR"


_NORMALISED_TS_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6})", re.ASCII
)


def normalised_timestamp(text: str) -> int:
    """Microseconds of a timestamp as the compiler normalises defaults and filter
    literals (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC): what DuckDB's CAST gives for it."""
    m = _NORMALISED_TS_RE.fullmatch(text)
    assert m is not None, f"not a normalised timestamp: {text!r}"
    micros = parse_timestamp(text, honour_offset=False)
    assert micros is not None, f"not a valid timestamp: {text!r}"
    return micros


def default_value(column: ColumnSpec) -> Any:
    """CAST(default AS type) of the default as parse_definition normalised it (the
    compiler refuses defaults that do not fit the type)."""
    value, type_name = column.default, column.type.name
    if value is None:
        return None
    if type_name == "VARCHAR":
        assert isinstance(value, str)
        return value
    if type_name == "BOOLEAN":
        assert isinstance(value, bool)
        return value
    if type_name in INT_RANGE:
        assert isinstance(value, int)
        lo, hi = INT_RANGE[type_name]
        assert lo <= value <= hi, "parse_definition let an out-of-range default through"
        return value
    if type_name == "DOUBLE":
        assert isinstance(value, float)
        assert math.isfinite(value)
        # Rendered as a literal (str(value)): `-0.0` is a DECIMAL literal, so the
        # default -0.0 arrives as 0.0 (every other double round-trips, checked).
        return value + 0.0
    if type_name == "TIMESTAMP":
        assert isinstance(value, str)
        return normalised_timestamp(value)
    raise Unsupported(f"type {type_name}")


# ======================================================================== filters
SqlType = Literal["BOOLEAN", "VARCHAR", "STRLIT", "TIMESTAMP", "EXACT", "DOUBLE", "NULL"]
_NUMERIC = frozenset({"EXACT", "DOUBLE"})

# Unicode *simple* case mappings (what DuckDB's lower/upper use, one code point to one)
# where Python's str.lower/upper would give a different single character or several:
# checked against this DuckDB for every code point. Elsewhere the mapping is Python's
# when it yields one character, else the character itself.
_LOWER_EXCEPTIONS = {"\u0130": "i"}
_UPPER_EXCEPTIONS = {
    "\u00df": "\u1e9e",
    **{chr(c): chr(c + 8) for c in (*range(0x1F80, 0x1F88), *range(0x1F90, 0x1F98))},
    **{chr(c): chr(c + 8) for c in range(0x1FA0, 0x1FA8)},
    "\u1fb3": "\u1fbc",
    "\u1fc3": "\u1fcc",
    "\u1ff3": "\u1ffc",
}


def duck_lower(text: str) -> str:
    out = []
    for c in text:
        low = _LOWER_EXCEPTIONS.get(c) or c.lower()
        out.append(low if len(low) == 1 else c)
    return "".join(out)


def duck_upper(text: str) -> str:
    out = []
    for c in text:
        up = _UPPER_EXCEPTIONS.get(c) or c.upper()
        out.append(up if len(up) == 1 else c)
    return "".join(out)


def duck_trim(text: str) -> str:
    """trim() removes characters of category Zs (not tabs or newlines) from both ends."""
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start]) == "Zs":
        start += 1
    while end > start and unicodedata.category(text[end - 1]) == "Zs":
        end -= 1
    return text[start:end]


def like(value: str, pattern: str) -> bool:
    """LIKE without an escape character: `%` any run, `_` one code point, `\\` literal."""
    parts = []
    for c in pattern:
        parts.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
    return re.fullmatch("".join(parts), value, re.DOTALL) is not None


def _double_key(value: float) -> tuple[int, float]:
    """DuckDB orders doubles totally: NaN equals NaN and is above +inf; -0.0 = 0.0."""
    return (1, 0.0) if math.isnan(value) else (0, value + 0.0)


def _round_half_away(value: float) -> float:
    if not math.isfinite(value) or abs(value) >= 2.0**52:
        return value  # already a whole number
    return math.copysign(float(Decimal(value).quantize(Decimal(1), ROUND_HALF_UP)), value)


def _fmod(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or math.isinf(a):
        return math.nan
    if math.isinf(b):
        return a
    return math.fmod(a, b)


def literal_type(value: object) -> SqlType:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, str):
        return "STRLIT"
    if isinstance(value, int):
        return "EXACT"
    assert isinstance(value, Decimal)
    # The literal reaches SQL as str(value): `1E+3` is a DOUBLE, `1.5` a DECIMAL,
    # `15` (from 1.5e1) an integer.
    return "DOUBLE" if "E" in str(value) else "EXACT"


def common_type(types: Sequence[SqlType]) -> SqlType:
    concrete = [t for t in types if t != "NULL"]
    if not concrete:
        return "NULL"
    kinds = set(concrete)
    if kinds <= _NUMERIC:
        return "DOUBLE" if "DOUBLE" in kinds else "EXACT"
    if kinds <= {"VARCHAR", "STRLIT"}:
        return "VARCHAR"
    if kinds == {"TIMESTAMP"}:
        return "TIMESTAMP"
    if kinds == {"BOOLEAN"}:
        return "BOOLEAN"
    # A text literal next to a TIMESTAMP column is a TemporalLiteral; anything else
    # mixing text and timestamps is refused by parse_definition.
    raise Unsupported(f"mixed types {sorted(kinds)}")


# ------------------------------------------------------------ integer arithmetic
# DuckDB's integer types a modelled filter computes in, and their ranges.
INT_TYPE_RANGE = {
    "INTEGER": (-(2**31), 2**31 - 1),
    "UINTEGER": (0, 2**32 - 1),
    "BIGINT": (I64_MIN, I64_MAX),
    "UBIGINT": (0, U64_MAX),
    "HUGEINT": (-(2**127), 2**127 - 1),
}
# (type, literal value): a literal is typed by its value where it meets another type.
IntType = tuple[str, int | None]


def literal_int_type(value: int) -> str:
    """The type of an integer literal on its own: INTEGER up to 2^31-1 in magnitude
    (`-2147483648` is a BIGINT: DuckDB's parser negates 2147483648), BIGINT, HUGEINT
    (checked with typeof())."""
    if abs(value) <= 2**31 - 1:
        return "INTEGER"
    return "BIGINT" if I64_MIN <= value <= I64_MAX else "HUGEINT"


def _max_int_type(a: str, b: str) -> str:
    """The smallest type holding both (INTEGER and UINTEGER → BIGINT, BIGINT and
    UBIGINT → HUGEINT), as DuckDB's implicit casts choose it."""
    lo = min(INT_TYPE_RANGE[a][0], INT_TYPE_RANGE[b][0])
    hi = max(INT_TYPE_RANGE[a][1], INT_TYPE_RANGE[b][1])
    for name, (t_lo, t_hi) in INT_TYPE_RANGE.items():
        if t_lo <= lo and hi <= t_hi:
            return name
    raise Unsupported(f"no integer type holds {a} and {b}")


def combine_int_types(a: IntType, b: IntType) -> IntType:
    """The type of `a op b` (and of coalesce(a, b)): a literal takes the other side's
    type when its value fits it (`u - 2` is a UINTEGER, `u + -1` a BIGINT); two
    literals, or types that differ, give the larger type (`1 + 2` is an INTEGER,
    `2147483647 + 1` an INTEGER too, so it overflows). NULL takes the other side's type
    (its value is NULL then: only the type of a coalesce() matters)."""
    if a[0] == "NULL" or b[0] == "NULL":
        return b if a[0] == "NULL" else a
    (ta, va), (tb, vb) = a, b
    if va is not None and vb is None:
        (ta, va), (tb, vb) = (tb, vb), (ta, va)
    if va is None and vb is not None:
        lo, hi = INT_TYPE_RANGE[ta]
        if lo <= vb <= hi:
            return (ta, None)
    return (_max_int_type(ta, tb), None)


class _Overflow(Exception):
    """An integer result outside its type: DuckDB raises an Out of Range error."""


@dataclass
class FilterModel:
    """Types of the names a filter may use; `type_of` raises Unsupported outside the
    modelled part of the grammar. `int_names` are the integer-typed names with their
    DuckDB types (for the result types, and so the overflows, of integer arithmetic)."""

    names: dict[str, SqlType]
    int_names: dict[str, str] = field(default_factory=dict)
    _types: dict[int, SqlType] = field(default_factory=dict)
    _int_types: dict[int, IntType | None] = field(default_factory=dict)

    def type_of(self, node: Expr) -> SqlType:
        key = id(node)
        if key not in self._types:
            self._types[key] = self._type_of(node)
        return self._types[key]

    def int_type(self, node: Expr) -> IntType | None:
        """The integer type of an expression, None if it is not an integer (a DECIMAL
        or DOUBLE literal, a DOUBLE expression, …)."""
        key = id(node)
        if key not in self._int_types:
            self._int_types[key] = self._int_type(node)
        return self._int_types[key]

    def _int_type(self, node: Expr) -> IntType | None:
        if isinstance(node, Literal_):
            value = node.value
            if value is None:
                return ("NULL", None)
            if isinstance(value, int) and not isinstance(value, bool):
                return (literal_int_type(value), value)
            return None
        if isinstance(node, Name):
            name = self.int_names.get(node.name)
            return None if name is None else (name, None)
        if isinstance(node, Unary) and node.op == "-":
            inner = self.int_type(node.operand)
            return None if inner is None else (inner[0], None)
        if isinstance(node, Binary) and node.op in ("+", "-", "*", "%"):
            left, right = self.int_type(node.left), self.int_type(node.right)
            if left is None or right is None:
                return None
            if node.op == "%":  # rendered `x % NULLIF(y, 0)`: y is no longer a literal
                right = (right[0], None)
            return combine_int_types(left, right)
        if isinstance(node, Call):
            if node.function == "length":
                return ("BIGINT", None)
            if node.function in ("abs", "round"):
                inner = self.int_type(node.args[0])
                if inner is None or inner[0] == "NULL":
                    return inner
                if node.function == "round" and inner[0] == "UINTEGER":
                    return ("BIGINT", None)  # round() has no unsigned overloads
                return (inner[0], None)
            if node.function == "coalesce":
                result: IntType | None = ("NULL", None)
                for arg in node.args:
                    arg_type = self.int_type(arg)
                    if arg_type is None or result is None:
                        return None
                    result = combine_int_types(result, arg_type)
                return result
        return None

    def _type_of(self, node: Expr) -> SqlType:
        if isinstance(node, Literal_):
            return literal_type(node.value)
        if isinstance(node, TemporalLiteral):
            if node.type_name != "TIMESTAMP":
                raise Unsupported(f"{node.type_name} literal")
            return "TIMESTAMP"
        if isinstance(node, Name):
            return self.names[node.name]
        if isinstance(node, Unary):
            inner = self.type_of(node.operand)
            if node.op == "not":
                if inner not in ("BOOLEAN", "NULL"):
                    raise Unsupported("NOT of a non-boolean")
                return "BOOLEAN"
            if inner in ("DOUBLE", "NULL"):
                return inner
            if inner == "EXACT" and self._integer_arithmetic(node):
                return "EXACT"
            raise Unsupported("unary minus of a DECIMAL")
        if isinstance(node, Binary):
            left, right = self.type_of(node.left), self.type_of(node.right)
            if node.op in ("and", "or"):
                if not {left, right} <= {"BOOLEAN", "NULL"}:
                    raise Unsupported("AND/OR of non-booleans")
                return "BOOLEAN"
            if node.op in COMPARISONS:
                common_type([left, right])
                return "BOOLEAN"
            for side in (left, right):
                if side not in ("EXACT", "DOUBLE", "NULL"):
                    raise Unsupported(f"arithmetic on {side}")
            if node.op == "/" or "DOUBLE" in (left, right):
                return "DOUBLE"  # `/` divides in DOUBLE, also integers and decimals
            if left == right == "NULL":
                return "NULL"
            if self._integer_arithmetic(node):
                return "EXACT"
            # DECIMAL arithmetic: the result width and scale grow with every operator,
            # past 38 digits DuckDB errors or compares in DOUBLE; not modelled.
            raise Unsupported("DECIMAL arithmetic")
        if isinstance(node, InList):
            common_type([self.type_of(node.operand), *(self.type_of(i) for i in node.items)])
            return "BOOLEAN"
        if isinstance(node, Between):
            common_type([self.type_of(x) for x in (node.operand, node.low, node.high)])
            return "BOOLEAN"
        if isinstance(node, Like):
            for side in (node.operand, node.pattern):
                if self.type_of(side) not in ("VARCHAR", "STRLIT", "NULL"):
                    raise Unsupported("LIKE on non-text")
            return "BOOLEAN"
        if isinstance(node, IsNull):
            self.type_of(node.operand)
            return "BOOLEAN"
        assert isinstance(node, Call)
        args = [self.type_of(a) for a in node.args]
        f = node.function
        if f in ("lower", "upper", "trim", "length", "starts_with", "ends_with", "contains"):
            if not set(args) <= {"VARCHAR", "STRLIT", "NULL"}:
                raise Unsupported(f"{f} of non-text")
            return "EXACT" if f == "length" else "VARCHAR" if len(args) == 1 else "BOOLEAN"
        if f in ("abs", "floor", "ceil", "round"):
            if f == "round" and len(node.args) == 2:
                # round(x, n) for n != 0 in this DuckDB is neither std::round(x·10ⁿ)/10ⁿ
                # (85.05 → 85.0) nor exact decimal rounding for large x (checked):
                # only n = 0 is modelled.
                digits = node.args[1]
                if not (isinstance(digits, Literal_) and type(digits.value) is int):
                    raise Unsupported("round() digits other than an integer literal")
                if digits.value != 0:
                    raise Unsupported("round(x, n) with n != 0")
            if args[0] in ("DOUBLE", "NULL"):
                return "DOUBLE"
            if args[0] == "EXACT" and self._integer_arithmetic(node.args[0]):
                # floor/ceil of an integer is a DOUBLE; abs and round keep the type
                return "DOUBLE" if f in ("floor", "ceil") else "EXACT"
            raise Unsupported(f"{f} of a DECIMAL")
        assert f == "coalesce"
        return common_type(args)

    def _integer_arithmetic(self, node: Expr) -> bool:
        int_type = self.int_type(node)
        if int_type is None:
            return False
        if int_type[0] in ("UBIGINT", "HUGEINT"):
            # HUGEINT results compare with DECIMAL/DOUBLE literals through conversions
            # that are not modelled; the strategies keep UBIGINT names out of arithmetic.
            raise Unsupported(f"integer arithmetic in {int_type[0]}")
        return True


class _Evaluator:
    """Evaluates filters over one row. With `checked`, an integer result outside its
    type raises _Overflow (DuckDB's error); without, integers are exact (the answer
    DuckDB gives where its optimizer has rewritten the arithmetic away)."""

    def __init__(self, model: FilterModel, row: dict[str, Any], *, checked: bool = True) -> None:
        self.model = model
        self.row = row
        self.checked = checked

    @staticmethod
    def to_type(value: Any, target: SqlType) -> Any:
        """Implicit cast of a value to the common type of a comparison."""
        if value is None:
            return None
        if target == "DOUBLE":
            return float(value)
        return value

    def integer(self, node: Expr, value: int) -> int:
        if self.checked:
            int_type = self.model.int_type(node)
            assert int_type is not None
            lo, hi = INT_TYPE_RANGE[int_type[0]]
            if not lo <= value <= hi:
                raise _Overflow(f"{value} out of {int_type[0]}")
        return value

    @staticmethod
    def compare(op: str, a: Any, b: Any, common: SqlType) -> bool | None:
        if a is None or b is None:
            return None
        if common == "DOUBLE":
            a, b = _double_key(a), _double_key(b)
        if op == "=":
            return bool(a == b)
        if op == "!=":
            return bool(a != b)
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        assert op == ">="
        return bool(a >= b)

    def typed(self, node: Expr, target: SqlType) -> Any:
        return self.to_type(self.eval(node), target)

    def eval(self, node: Expr) -> Any:
        m = self.model
        if isinstance(node, Literal_):
            value = node.value
            return float(value) if literal_type(value) == "DOUBLE" else value
        if isinstance(node, TemporalLiteral):
            return normalised_timestamp(node.value)
        if isinstance(node, Name):
            return self.row[node.name]
        if isinstance(node, Unary):
            inner = self.eval(node.operand)
            if inner is None:
                return None
            if node.op == "not":
                return not inner
            if m.type_of(node) == "DOUBLE":
                return -float(inner)
            return self.integer(node, -inner)
        if isinstance(node, Binary):
            if node.op in ("and", "or"):
                a, b = self.eval(node.left), self.eval(node.right)
                if node.op == "and":
                    if a is False or b is False:
                        return False
                    return None if a is None or b is None else True
                if a is True or b is True:
                    return True
                return None if a is None or b is None else False
            if node.op in COMPARISONS:
                common = common_type([m.type_of(node.left), m.type_of(node.right)])
                a, b = self.typed(node.left, common), self.typed(node.right, common)
                return self.compare(node.op, a, b, common)
            if m.type_of(node) != "DOUBLE":
                return self.integer_arithmetic(node)
            a, b = self.typed(node.left, "DOUBLE"), self.typed(node.right, "DOUBLE")
            if a is None or b is None:
                return None
            if node.op in ("/", "%") and b == 0 and DIVISION_BY_ZERO_IS_NULL:
                return None  # x / NULLIF(y, 0); also -0.0 = 0
            ops: dict[str, Callable[[float, float], float]] = {
                "+": lambda x, y: x + y,
                "-": lambda x, y: x - y,
                "*": lambda x, y: x * y,
                "/": lambda x, y: x / y,
                "%": _fmod,
            }
            return ops[node.op](a, b)
        if isinstance(node, InList):
            common = common_type([m.type_of(node.operand), *(m.type_of(i) for i in node.items)])
            a = self.typed(node.operand, common)
            results = [self.compare("=", a, self.typed(i, common), common) for i in node.items]
            found = True if True in results else None if None in results else False
            return (not found if found is not None else None) if node.negated else found
        if isinstance(node, Between):
            common = common_type([m.type_of(x) for x in (node.operand, node.low, node.high)])
            a = self.typed(node.operand, common)
            low = self.compare(">=", a, self.typed(node.low, common), common)
            high = self.compare("<=", a, self.typed(node.high, common), common)
            inside = (
                False
                if low is False or high is False
                else None
                if low is None or high is None
                else True
            )
            return (not inside if inside is not None else None) if node.negated else inside
        if isinstance(node, Like):
            value, pattern = self.eval(node.operand), self.eval(node.pattern)
            if value is None or pattern is None:
                return None
            if node.case_insensitive:
                value, pattern = duck_lower(value), duck_lower(pattern)
            matched = like(value, pattern)
            return not matched if node.negated else matched
        if isinstance(node, IsNull):
            is_null = self.eval(node.operand) is None
            return not is_null if node.negated else is_null
        assert isinstance(node, Call)
        return self.call(node)

    def integer_arithmetic(self, node: Binary) -> int | None:
        a, b = self.eval(node.left), self.eval(node.right)
        if a is None or b is None:
            return None
        if node.op == "%":
            if b == 0:
                return None  # x % NULLIF(y, 0)
            return self.integer(node, _tmod(a, b))  # C++ %: the sign of the dividend
        value = a + b if node.op == "+" else a - b if node.op == "-" else a * b
        return self.integer(node, value)

    def call(self, node: Call) -> Any:
        f = node.function
        if f == "coalesce":
            common = self.model.type_of(node)
            for arg in node.args:
                value = self.typed(arg, common)
                if value is not None:
                    return value
            return None
        args = [self.eval(a) for a in node.args]
        if any(a is None for a in args):
            return None
        if f == "lower":
            return duck_lower(args[0])
        if f == "upper":
            return duck_upper(args[0])
        if f == "trim":
            return duck_trim(args[0])
        if f == "length":
            return len(args[0])
        if f == "starts_with":
            return bool(args[0].startswith(args[1]))
        if f == "ends_with":
            return bool(args[0].endswith(args[1]))
        if f == "contains":
            return args[1] in args[0]
        if isinstance(args[0], int):  # integer abs / round / floor / ceil
            if f == "abs":
                return self.integer(node, abs(args[0]))
            return float(args[0]) if f in ("floor", "ceil") else args[0]
        x = float(args[0])
        if f == "abs":
            return abs(x)
        if f in ("floor", "ceil"):
            if not math.isfinite(x):
                return x
            return float(math.floor(x) if f == "floor" else math.ceil(x))
        assert f == "round"
        return _round_half_away(x)  # round(x) = round(x, 0): std::round


# =========================================================================== rows
@dataclass(frozen=True, slots=True)
class Frame:
    """One record of the segment as the `source` relation sees it."""

    payload: bytes
    ts_ms: int
    topic: str | None
    tenant: int | None
    segment_seq: int
    frame_index: int


@dataclass(frozen=True, slots=True)
class RowOutcome:
    outcome: Literal["accepted", "dropped", "dlq"]
    code: str | None  # invalid_json | required_missing | cast_failed | filtered
    column: str | None
    values: dict[str, Any]  # typed outputs: str/bool/int/float/None, TIMESTAMP in µs
    # What DuckDB may give instead: for a row whose filters overflow, TRY drops it,
    # unless the optimizer rewrote the arithmetic so that it no longer overflows
    # (`b + 1 > 5` → `b > 4`), and then the exact answer decides (accepted here).
    alternative: tuple[Literal["accepted"], None, None] | None = None
    overflowed: bool = False  # the filters raised an error (an integer overflow)


def int_column_types(definition: ViewDefinition) -> dict[str, str]:
    """The DuckDB integer type of each integer-typed name a filter may use."""
    names = {n: VIRTUAL_TYPES[n] for n in ("tenant", "segment_seq", "frame_index")}
    names.update({c.name: c.type.name for c in definition.columns if c.type.name in INT_RANGE})
    return names


def column_types(definition: ViewDefinition) -> dict[str, SqlType]:
    names: dict[str, SqlType] = {
        "ts": "TIMESTAMP",
        "topic": "VARCHAR",
        "tenant": "EXACT",
        "segment_seq": "EXACT",
        "frame_index": "EXACT",
    }
    kind: dict[str, SqlType] = {
        "VARCHAR": "VARCHAR",
        "BOOLEAN": "BOOLEAN",
        "BIGINT": "EXACT",
        "INTEGER": "EXACT",
        "DOUBLE": "DOUBLE",
        "TIMESTAMP": "TIMESTAMP",
    }
    for column in definition.columns:
        if column.type.name not in SUPPORTED_TYPES:
            raise Unsupported(f"column type {column.type.sql}")
        names[column.name] = kind[column.type.name]
    return names


class ViewOracle:
    def __init__(self, definition: ViewDefinition) -> None:
        self.definition = definition
        self.model = FilterModel(column_types(definition), int_column_types(definition))
        for spec in definition.filters:
            if self.model.type_of(spec.expr) not in ("BOOLEAN", "NULL"):
                raise Unsupported("a filter that is not a condition")
        self.defaults = {c.name: default_value(c) for c in definition.columns}

    def classify(self, frame: Frame) -> RowOutcome:
        definition = self.definition
        try:
            raw: str | None = frame.payload.decode("utf-8")
        except UnicodeDecodeError:
            raw = None  # the `raw` column is NULL, so json_valid is NULL → invalid
        document: JsonNode | None = None
        json_ok = False
        if raw is not None:
            try:
                document = parse_json(raw)
                json_ok = True
            except JsonInvalid:
                pass
        virtual = {
            "ts": frame.ts_ms,
            "topic": frame.topic,
            "tenant": frame.tenant,
            "segment_seq": frame.segment_seq,
            "frame_index": frame.frame_index,
        }
        values: dict[str, Any] = {}
        first: tuple[str, str | None, str | None] | None = None  # (outcome, code, column)
        if definition.reads_json and not json_ok:
            first = ("dlq", "invalid_json", None)
        for column in definition.columns:
            if column.path is not None:
                source = (
                    extract_string(document, column.path.steps) if document is not None else None
                )
                typed = None if source is None else cast_text(source, column.type.name)
            else:
                assert column.source is not None
                source = virtual[column.source]
                if needs_cast(column):
                    typed = cast_virtual(column.source, source, column.type.name)
                else:
                    typed = source * 1000 if column.source == "ts" else source
            if source is None and column.default is not None:
                typed = self.defaults[column.name]
            values[column.name] = typed
            if first is not None:
                continue
            if column.required and column.default is None and source is None:
                first = ("dlq", "required_missing", column.name)
            elif needs_cast(column) and source is not None and typed is None:
                policy = column.cast_failures
                if policy == "null" and column.required:
                    policy = "dlq"
                if policy != "null":
                    first = ("dlq" if policy == "dlq" else "dropped", "cast_failed", column.name)
        alternative: tuple[Literal["accepted"], None, None] | None = None
        overflowed = False
        if first is None and definition.filters:
            row = {**virtual, "ts": frame.ts_ms * 1000, **values}
            try:
                evaluator = _Evaluator(self.model, row)
                results = [evaluator.eval(f.expr) for f in definition.filters]
            except _Overflow:
                # NOT COALESCE(TRY(filters), FALSE): an error drops the row (filtered)
                results, overflowed = [None], True
                exact = _Evaluator(self.model, row, checked=False)
                if all(exact.eval(f.expr) is True for f in definition.filters):
                    alternative = ("accepted", None, None)
            if not all(r is True for r in results):
                first = ("dropped", "filtered", None)
        if first is None:
            return RowOutcome("accepted", None, None, values)
        outcome, code, column_name = first
        return RowOutcome(outcome, code, column_name, values, alternative, overflowed)  # type: ignore[arg-type]
