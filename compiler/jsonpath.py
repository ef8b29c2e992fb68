"""The JSONPath subset: `$`, `.key`, `['key']` / `["key"]`, `[n]`.

Parsed into steps by hand (no regular expressions over user text), then rendered in
the path syntax DuckDB's JSON functions take. Keys that are not plain identifiers are
rendered quoted (`$."a b"`); a key may not contain a double quote, a backslash or a
control character, because DuckDB's path syntax has no escape for them.
"""

from __future__ import annotations

from dataclasses import dataclass

PATH_CHARS_MAX = 512
STEPS_MAX = 32
INDEX_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class JsonPath:
    steps: tuple[str | int, ...]  # str = object key, int = array index

    def render(self) -> str:
        """The path in DuckDB syntax."""
        parts = ["$"]
        for step in self.steps:
            if isinstance(step, int):
                parts.append(f"[{step}]")
            elif _is_plain(step):
                parts.append(f".{step}")
            else:
                parts.append(f'."{step}"')
        return "".join(parts)


def _is_plain(key: str) -> bool:
    return (
        key != ""
        and (key[0].isascii() and (key[0].isalpha() or key[0] == "_"))
        and all(c.isascii() and (c.isalnum() or c == "_") for c in key)
    )


def _check_key(key: str) -> str:
    if not key:
        raise ValueError("an empty key cannot be addressed")
    for c in key:
        if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F:
            raise ValueError(f"key {key!r} contains a character paths cannot carry ({c!r})")
    return key


def parse_jsonpath(text: str) -> JsonPath:
    if not isinstance(text, str):
        raise ValueError("path must be a string")
    if len(text) > PATH_CHARS_MAX:
        raise ValueError(f"path is longer than {PATH_CHARS_MAX} characters")
    if not text.startswith("$"):
        raise ValueError("path must start with '$'")
    steps: list[str | int] = []
    i, n = 1, len(text)
    while i < n:
        if len(steps) >= STEPS_MAX:
            raise ValueError(f"path has more than {STEPS_MAX} steps")
        c = text[i]
        if c == ".":
            j = i + 1
            while j < n and (text[j].isascii() and (text[j].isalnum() or text[j] in "_-")):
                j += 1
            key = text[i + 1 : j]
            if not key:
                raise ValueError(f"expected a key after '.' at position {i}")
            steps.append(key)
            i = j
        elif c == "[":
            if i + 1 < n and text[i + 1] in "'\"":
                quote = text[i + 1]
                end = text.find(quote, i + 2)
                if end < 0 or end + 1 >= n or text[end + 1] != "]":
                    raise ValueError(f"unterminated quoted key at position {i}")
                steps.append(_check_key(text[i + 2 : end]))
                i = end + 2
            else:
                end = text.find("]", i)
                digits = text[i + 1 : end] if end > 0 else ""
                if not (digits.isascii() and digits.isdigit()):
                    raise ValueError(
                        f"expected [n], ['key'] or [\"key\"] at position {i}; "
                        "wildcards, slices and filters are not supported"
                    )
                index = int(digits)
                if index > INDEX_MAX:
                    raise ValueError(f"array index {index} is larger than {INDEX_MAX}")
                steps.append(index)
                i = end + 1
        else:
            raise ValueError(f"unexpected {c!r} at position {i}; expected '.' or '['")
    return JsonPath(tuple(steps))
