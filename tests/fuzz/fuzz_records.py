"""Fuzz target: the HTTP record decoder (ingest.body: `content_kind`,
`decode_content`, `split_records`) under small limits, so every limit is reachable.

The first input byte picks the body kind and the Content-Encoding, the next byte how
many of the following bytes form a Content-Type header value; the rest is the body.
Only `ingest.body.BodyError` may escape, and what is accepted must be what the module
promises: within the limits, NDJSON records without a newline, JSON records that the
standard library parses as strict UTF-8 JSON no deeper than `json_depth_max`.

    mkdir -p /tmp/records   # new inputs go to the first corpus directory
    python tests/fuzz/fuzz_records.py -runs=100000 /tmp/records tests/fuzz/corpus/records
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.harness import fuzz, instrumented

with instrumented(__name__, "ingest.body"):
    from ingest.body import (
        BodyError,
        BodyKind,
        BodyLimits,
        content_kind,
        decode_content,
        split_records,
    )

LIMITS = BodyLimits(body_bytes_max=8192, record_bytes_max=1024, records_max=64, json_depth_max=8)
KINDS = list(BodyKind)
CODINGS = [None, "gzip", "zstd", "identity"]


def _depth(value: object) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        else:
            continue
        deepest = max(deepest, depth + 1)
    return deepest


def _not_json(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _strict_json(record: bytes) -> object:
    return json.loads(
        record.decode("utf-8"),  # strict: no surrogates, no overlong forms
        parse_int=lambda _: 0,  # no int conversion limit: only the grammar matters
        parse_float=lambda _: 0.0,
        parse_constant=_not_json,  # NaN, Infinity
    )


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    kind = KINDS[data[0] % len(KINDS)]
    coding = CODINGS[(data[0] >> 2) % len(CODINGS)]
    header_len = data[1] % 64
    header, body = data[2 : 2 + header_len], data[2 + header_len :]
    with contextlib.suppress(BodyError):
        content_kind(header.decode("latin-1"))
    try:
        records = split_records(decode_content(body, coding, LIMITS), kind, LIMITS)
    except BodyError as err:
        refused: BodyError | None = err
    else:
        refused = None
    if refused is not None:
        assert 400 <= refused.status < 500, refused.status
        assert refused.code, refused
        assert refused.message, refused
        return
    assert 1 <= len(records) <= LIMITS.records_max
    assert sum(map(len, records)) <= LIMITS.body_bytes_max
    for record in records:
        assert 0 < len(record) <= LIMITS.record_bytes_max, len(record)
        if kind is BodyKind.NDJSON:
            assert b"\n" not in record
        if kind.is_json:
            try:
                value = _strict_json(record)
            except (UnicodeDecodeError, ValueError) as err:
                raise AssertionError(f"accepted a record that is not JSON: {err}") from err
            assert _depth(value) <= LIMITS.json_depth_max, "accepted a record nested too deep"


if __name__ == "__main__":
    fuzz(TestOneInput)
