"""Filter conditions: tokenizer, parser and the typed intermediate form (IR).

A condition is parsed by hand into `Expr` nodes; nothing of the user's text reaches
SQL except through `compiler.sql`, which renders the IR. Accepted:

    literals      'text' (quote doubled to escape), 12, -3.5, 1e3, TRUE, FALSE, NULL
    names         output column names and the virtual columns (ts, topic, tenant,
                  segment_seq, frame_index)
    comparisons   = == != <> < <= > >=
    logic         AND OR NOT, parentheses
    predicates    [NOT] IN (literal, …)  [NOT] BETWEEN a AND b  [NOT] LIKE / ILIKE
                  IS [NOT] NULL
    arithmetic    + - * / %  and unary minus
    functions     see FUNCTIONS

Everything else — quoted identifiers, `;`, comments, subqueries, casts, any other
function — is a `ConditionError` naming the offending part and its position.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal, Union

CONDITION_CHARS_MAX = 4096
TOKENS_MAX = 512
DEPTH_MAX = 32
IN_LIST_MAX = 256

Category = Literal["string", "number", "boolean", "temporal", "json", "null", "any"]

# name → (min args, max args, argument categories (last repeats), result category)
FUNCTIONS: dict[str, tuple[int, int, tuple[Category, ...], Category]] = {
    "lower": (1, 1, ("string",), "string"),
    "upper": (1, 1, ("string",), "string"),
    "trim": (1, 1, ("string",), "string"),
    "length": (1, 1, ("string",), "number"),
    "starts_with": (2, 2, ("string", "string"), "boolean"),
    "ends_with": (2, 2, ("string", "string"), "boolean"),
    "contains": (2, 2, ("string", "string"), "boolean"),
    "abs": (1, 1, ("number",), "number"),
    "round": (1, 2, ("number", "number"), "number"),
    "floor": (1, 1, ("number",), "number"),
    "ceil": (1, 1, ("number",), "number"),
    "coalesce": (1, 8, ("any",), "any"),
}

KEYWORDS = frozenset(
    {"and", "or", "not", "in", "between", "like", "ilike", "is", "null", "true", "false"}
)
COMPARISONS = frozenset({"=", "==", "!=", "<>", "<", "<=", ">", ">="})


class ConditionError(ValueError):
    def __init__(self, message: str, position: int | None = None) -> None:
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"{message}{where}")
        self.position = position


# ------------------------------------------------------------------------- IR
@dataclass(frozen=True, slots=True)
class Literal_:
    value: str | int | Decimal | bool | None


@dataclass(frozen=True, slots=True)
class Name:
    name: str


@dataclass(frozen=True, slots=True)
class TemporalLiteral:
    """A text literal compared with a DATE/TIME/TIMESTAMP(TZ) column, parsed and
    normalised here (offsets converted to UTC) and rendered as a typed literal."""

    value: str  # normalised: 'YYYY-MM-DD', 'HH:MM:SS[.ffffff]' or 'YYYY-MM-DD HH:MM:SS.ffffff'
    type_name: str  # DATE | TIME | TIMESTAMP | TIMESTAMPTZ


@dataclass(frozen=True, slots=True)
class Unary:
    op: Literal["-", "not"]
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # comparison, arithmetic, "and", "or"
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class InList:
    operand: Expr
    items: tuple[Literal_ | TemporalLiteral, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Between:
    operand: Expr
    low: Expr
    high: Expr
    negated: bool


@dataclass(frozen=True, slots=True)
class Like:
    operand: Expr
    pattern: Expr
    case_insensitive: bool
    negated: bool


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Expr
    negated: bool


@dataclass(frozen=True, slots=True)
class Call:
    function: str
    args: tuple[Expr, ...]


Expr = Union[Literal_, TemporalLiteral, Name, Unary, Binary, InList, Between, Like, IsNull, Call]  # noqa: UP007


# -------------------------------------------------------------------- tokens
@dataclass(frozen=True, slots=True)
class Token:
    kind: Literal["name", "string", "number", "op", "end"]
    text: str
    position: int


_OPERATOR_CHARS = "=!<>+-*/%(),"


def tokenize(text: str) -> list[Token]:
    if len(text) > CONDITION_CHARS_MAX:
        raise ConditionError(f"condition is longer than {CONDITION_CHARS_MAX} characters")
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if len(tokens) >= TOKENS_MAX:
            raise ConditionError(f"condition has more than {TOKENS_MAX} tokens", i)
        if c.isascii() and (c.isalpha() or c == "_"):
            j = i + 1
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            tokens.append(Token("name", text[i:j].lower(), i))
            i = j
        elif (c.isascii() and c.isdigit()) or (c == "." and i + 1 < n and text[i + 1].isdigit()):
            j = i
            while j < n and text[j].isascii() and (text[j].isdigit() or text[j] == "."):
                j += 1
            if j < n and text[j] in "eE":
                k = j + 1
                if k < n and text[k] in "+-":
                    k += 1
                if k < n and text[k].isascii() and text[k].isdigit():
                    j = k
                    while j < n and text[j].isascii() and text[j].isdigit():
                        j += 1
            if j < n and text[j].isascii() and (text[j].isalpha() or text[j] == "_"):
                raise ConditionError(f"malformed number {text[i : j + 1]!r}", i)
            tokens.append(Token("number", text[i:j], i))
            i = j
        elif c == "'":
            j, parts = i + 1, []
            while True:
                end = text.find("'", j)
                if end < 0:
                    raise ConditionError("unterminated string literal", i)
                parts.append(text[j:end])
                if end + 1 < n and text[end + 1] == "'":
                    parts.append("'")
                    j = end + 2
                    continue
                j = end + 1
                break
            value = "".join(parts)
            if "\x00" in value:
                raise ConditionError("string literal contains a NUL character", i)
            tokens.append(Token("string", value, i))
            i = j
        elif c in _OPERATOR_CHARS:
            two = text[i : i + 2]
            if two in ("--", "/*"):
                raise ConditionError("comments are not allowed", i)
            if two in ("<=", ">=", "!=", "<>", "=="):
                tokens.append(Token("op", two, i))
                i += 2
            elif c == "!":
                raise ConditionError("unexpected '!'", i)
            else:
                tokens.append(Token("op", c, i))
                i += 1
        else:
            shown = {
                ";": "statement separators (';') are not allowed",
                '"': "quoted identifiers are not allowed",
                "`": "quoted identifiers are not allowed",
                "[": "brackets are not allowed",
                "{": "braces are not allowed",
                ":": "casts and parameters (':') are not allowed",
                "|": "operator '|' is not allowed",
                "$": "parameters ('$') are not allowed",
                "?": "parameters ('?') are not allowed",
            }
            raise ConditionError(shown.get(c, f"unexpected character {c!r}"), i)
    tokens.append(Token("end", "", n))
    return tokens


# -------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def _peek_name(self, offset: int = 0) -> str | None:
        token = self.tokens[min(self.i + offset, len(self.tokens) - 1)]
        return token.text if token.kind == "name" else None

    def _accept_name(self, word: str) -> bool:
        if self.tok.kind == "name" and self.tok.text == word:
            self.i += 1
            return True
        return False

    def _accept_op(self, op: str) -> bool:
        if self.tok.kind == "op" and self.tok.text == op:
            self.i += 1
            return True
        return False

    def _expect_op(self, op: str) -> None:
        if not self._accept_op(op):
            raise ConditionError(
                f"expected {op!r}, found {self._describe(self.tok)}", self.tok.position
            )

    @staticmethod
    def _describe(token: Token) -> str:
        return "the end of the condition" if token.kind == "end" else repr(token.text)

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > DEPTH_MAX:
            raise ConditionError(f"condition nests deeper than {DEPTH_MAX}", self.tok.position)

    def parse(self) -> Expr:
        expr = self.or_()
        if self.tok.kind != "end":
            raise ConditionError(f"unexpected {self._describe(self.tok)}", self.tok.position)
        return expr

    def or_(self) -> Expr:
        left = self.and_()
        while self._accept_name("or"):
            left = Binary("or", left, self.and_())
        return left

    def and_(self) -> Expr:
        left = self.not_()
        while self._accept_name("and"):
            left = Binary("and", left, self.not_())
        return left

    def not_(self) -> Expr:
        if self._accept_name("not"):
            self._enter()
            operand = self.not_()
            self.depth -= 1
            return Unary("not", operand)
        return self.predicate()

    def predicate(self) -> Expr:
        left = self.additive()
        tok = self.tok
        if tok.kind == "op" and tok.text in COMPARISONS:
            self.i += 1
            op = {"==": "=", "<>": "!="}.get(tok.text, tok.text)
            return Binary(op, left, self.additive())
        if self._accept_name("is"):
            negated = self._accept_name("not")
            if not self._accept_name("null"):
                raise ConditionError("expected NULL after IS [NOT]", self.tok.position)
            return IsNull(left, negated)
        negated = False
        if self._peek_name() == "not" and self._peek_name(1) in ("in", "between", "like", "ilike"):
            self.i += 1
            negated = True
        if self._accept_name("in"):
            return InList(left, self._in_items(), negated)
        if self._accept_name("between"):
            low = self.additive()
            if not self._accept_name("and"):
                raise ConditionError("expected AND in BETWEEN", self.tok.position)
            return Between(left, low, self.additive(), negated)
        for word in ("like", "ilike"):
            if self._accept_name(word):
                return Like(left, self.additive(), word == "ilike", negated)
        if negated:  # pragma: no cover - guarded by the peek above
            raise ConditionError("expected IN, BETWEEN or LIKE after NOT", self.tok.position)
        return left

    def _in_items(self) -> tuple[Literal_, ...]:
        self._expect_op("(")
        items: list[Literal_] = []
        while True:
            item = self.unary()
            if not isinstance(item, Literal_):
                raise ConditionError("IN lists may only hold literals", self.tok.position)
            items.append(item)
            if len(items) > IN_LIST_MAX:
                raise ConditionError(f"IN list longer than {IN_LIST_MAX}", self.tok.position)
            if self._accept_op(")"):
                return tuple(items)
            self._expect_op(",")

    def additive(self) -> Expr:
        left = self.multiplicative()
        while self.tok.kind == "op" and self.tok.text in ("+", "-"):
            op = self.tok.text
            self.i += 1
            left = Binary(op, left, self.multiplicative())
        return left

    def multiplicative(self) -> Expr:
        left = self.unary()
        while self.tok.kind == "op" and self.tok.text in ("*", "/", "%"):
            op = self.tok.text
            self.i += 1
            left = Binary(op, left, self.unary())
        return left

    def unary(self) -> Expr:
        if self._accept_op("-"):
            self._enter()
            operand = self.unary()
            self.depth -= 1
            if (
                isinstance(operand, Literal_)
                and isinstance(operand.value, (int, Decimal))
                and not isinstance(operand.value, bool)
            ):
                return Literal_(-operand.value)
            return Unary("-", operand)
        if self._accept_op("+"):
            return self.unary()
        return self.primary()

    def primary(self) -> Expr:
        tok = self.tok
        if tok.kind == "string":
            self.i += 1
            return Literal_(tok.text)
        if tok.kind == "number":
            self.i += 1
            return Literal_(_number(tok))
        if tok.kind == "op" and tok.text == "(":
            self.i += 1
            self._enter()
            inner = self.or_()
            self.depth -= 1
            self._expect_op(")")
            return inner
        if tok.kind == "name":
            self.i += 1
            if tok.text in ("true", "false"):
                return Literal_(tok.text == "true")
            if tok.text == "null":
                return Literal_(None)
            if self.tok.kind == "op" and self.tok.text == "(":
                return self._call(tok)
            if tok.text in KEYWORDS:
                raise ConditionError(f"unexpected keyword {tok.text.upper()}", tok.position)
            return Name(tok.text)
        raise ConditionError(f"unexpected {self._describe(tok)}", tok.position)

    def _call(self, name: Token) -> Expr:
        spec = FUNCTIONS.get(name.text)
        if spec is None:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise ConditionError(
                f"function {name.text!r} is not allowed (allowed: {allowed})", name.position
            )
        self._expect_op("(")
        self._enter()
        args: list[Expr] = []
        if not self._accept_op(")"):
            while True:
                args.append(self.or_())
                if self._accept_op(")"):
                    break
                self._expect_op(",")
        self.depth -= 1
        low, high = spec[0], spec[1]
        if not low <= len(args) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise ConditionError(
                f"{name.text}() takes {want} argument(s), got {len(args)}", name.position
            )
        return Call(name.text, tuple(args))


def _number(tok: Token) -> int | Decimal:
    text = tok.text
    if text.isdigit():
        if len(text) > 38:
            raise ConditionError("integer literal is too long", tok.position)
        return int(text)
    try:
        value = Decimal(text)
    except InvalidOperation as err:
        raise ConditionError(f"malformed number {text!r}", tok.position) from err
    if not value.is_finite() or abs(value.adjusted()) > 300:
        raise ConditionError(f"number {text!r} is out of range", tok.position)
    return value


def parse_condition(text: str) -> Expr:
    """Parse one filter condition into the IR; ConditionError says what and where."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("condition must be a non-empty string")
    return _Parser(tokenize(text)).parse()


# --------------------------------------------------------------- type check
def check_names_and_types(expr: Expr, names: dict[str, Category]) -> Category:
    """Check every name is known and operands are comparable; return the result category."""

    def literal_category(value: object) -> Category:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, str):
            return "string"
        return "number"

    def compatible(a: Category, b: Category) -> bool:
        return "null" in (a, b) or "any" in (a, b) or a == b

    def visit(node: Expr) -> Category:
        if isinstance(node, Literal_):
            return literal_category(node.value)
        if isinstance(node, TemporalLiteral):
            return "temporal"
        if isinstance(node, Name):
            if node.name not in names:
                known = ", ".join(sorted(names))
                raise ConditionError(f"unknown name {node.name!r} (known: {known})")
            return names[node.name]
        if isinstance(node, Unary):
            inner = visit(node.operand)
            want: Category = "boolean" if node.op == "not" else "number"
            if not compatible(inner, want):
                raise ConditionError(f"{node.op.upper()} needs a {want} operand, not {inner}")
            return want
        if isinstance(node, Binary):
            left, right = visit(node.left), visit(node.right)
            if node.op in ("and", "or"):
                for side in (left, right):
                    if not compatible(side, "boolean"):
                        raise ConditionError(
                            f"{node.op.upper()} needs boolean operands, not {side}"
                        )
                return "boolean"
            if node.op in COMPARISONS:
                if not compatible(left, right):
                    hint = (
                        " (compare a date/time column directly with a literal such as "
                        "'2026-01-15T10:00:00Z')"
                        if "temporal" in (left, right)
                        else ""
                    )
                    raise ConditionError(
                        f"cannot compare {left} with {right} using {node.op}{hint}"
                    )
                return "boolean"
            for side in (left, right):
                if not compatible(side, "number"):
                    raise ConditionError(f"arithmetic {node.op!r} needs numbers, not {side}")
            return "number"
        if isinstance(node, InList):
            operand = visit(node.operand)
            for item in node.items:
                if not compatible(operand, visit(item)):
                    raise ConditionError(f"IN list mixes {operand} with {visit(item)}")
            return "boolean"
        if isinstance(node, Between):
            operand = visit(node.operand)
            for bound in (node.low, node.high):
                if not compatible(operand, visit(bound)):
                    raise ConditionError(f"BETWEEN compares {operand} with {visit(bound)}")
            return "boolean"
        if isinstance(node, Like):
            for side in (visit(node.operand), visit(node.pattern)):
                if not compatible(side, "string"):
                    raise ConditionError(f"LIKE needs strings, not {side}")
            return "boolean"
        if isinstance(node, IsNull):
            visit(node.operand)
            return "boolean"
        _, _, arg_categories, result = FUNCTIONS[node.function]
        seen: list[Category] = []
        for index, arg in enumerate(node.args):
            want = arg_categories[min(index, len(arg_categories) - 1)]
            got = visit(arg)
            if not compatible(got, want):
                raise ConditionError(
                    f"{node.function}() argument {index + 1} must be {want}, not {got}"
                )
            seen.append(got)
        if result == "any":
            concrete = [c for c in seen if c not in ("null", "any")]
            if any(not compatible(concrete[0], c) for c in concrete[1:]):
                raise ConditionError(f"{node.function}() mixes {', '.join(concrete)}")
            return concrete[0] if concrete else "null"
        return result

    return visit(expr)


# ------------------------------------------------------- temporal literals
def _normalise_temporal(text: str, type_name: str) -> str:
    import datetime as dt

    if type_name == "DATE":
        return dt.date.fromisoformat(text).isoformat()
    if type_name == "TIME":
        return dt.time.fromisoformat(text).isoformat()
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    # isoformat pads the year to 4 digits (strftime's %Y does not on glibc)
    return moment.isoformat(sep=" ", timespec="microseconds")


def _temporal(node: Expr, types: dict[str, str]) -> str | None:
    if isinstance(node, Name) and types.get(node.name) in (
        "DATE",
        "TIME",
        "TIMESTAMP",
        "TIMESTAMPTZ",
    ):
        return types[node.name]
    return None


def _bind(node: Expr, type_name: str | None) -> Expr:
    if type_name is None or not isinstance(node, Literal_) or not isinstance(node.value, str):
        return node
    try:
        return TemporalLiteral(_normalise_temporal(node.value, type_name), type_name)
    except (ValueError, OverflowError) as err:  # OverflowError: an offset past year 1/9999
        raise ConditionError(f"{node.value!r} is not a valid {type_name} literal") from err


def bind_temporal_literals(expr: Expr, types: dict[str, str]) -> Expr:
    """Turn text literals compared with a date/time column into typed, UTC-normalised
    literals; ConditionError for text that is not a valid value of that type."""

    def walk(node: Expr) -> Expr:
        if isinstance(node, Binary):
            left, right = walk(node.left), walk(node.right)
            if node.op in COMPARISONS:
                right = _bind(right, _temporal(left, types))
                left = _bind(left, _temporal(right, types))
            return Binary(node.op, left, right)
        if isinstance(node, InList):
            kind = _temporal(node.operand, types)
            items = tuple(_bind(i, kind) for i in node.items)
            return InList(walk(node.operand), items, node.negated)  # type: ignore[arg-type]
        if isinstance(node, Between):
            kind = _temporal(node.operand, types)
            return Between(
                walk(node.operand),
                _bind(walk(node.low), kind),
                _bind(walk(node.high), kind),
                node.negated,
            )
        if isinstance(node, Unary):
            return Unary(node.op, walk(node.operand))
        if isinstance(node, Like):
            return Like(walk(node.operand), walk(node.pattern), node.case_insensitive, node.negated)
        if isinstance(node, IsNull):
            return IsNull(walk(node.operand), node.negated)
        if isinstance(node, Call):
            return Call(node.function, tuple(walk(a) for a in node.args))
        return node

    return walk(expr)
