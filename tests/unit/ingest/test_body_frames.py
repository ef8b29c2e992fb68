"""ingest.body.frame_records against the two-pass reference it replaces on the HTTP hot
path: `encode_records(split_records(...))`. Same frame bytes, same record count and
payload bytes, or the same BodyError (status, code, message, line) — on random bodies,
valid and invalid, under limits small enough that every limit is reached."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.body import BodyError, BodyKind, BodyLimits, FramedRecords, frame_records, split_records
from wal.frame import encode_records
from wal.reader import iter_frames

SMALL = BodyLimits(body_bytes_max=4096, record_bytes_max=120, records_max=12, json_depth_max=6)
LIMIT_SETS = (SMALL, BodyLimits(), BodyLimits(records_max=1, json_depth_max=1))
SEEDED = settings(derandomize=True, max_examples=300, deadline=None, print_blob=True)

# Lines a body is made of: valid records, the edge cases of the NDJSON rules (blank,
# whitespace-only, CR, surrounding whitespace), invalid JSON, bad UTF-8, deep nesting,
# records over the size limit.
PIECES = (
    b'{"a":1}',
    b'{"device":"d-1","temp":21.5,"ok":true,"tags":["x","y"]}',
    b"[1,2,3]",
    b'"just a string"',
    b"42",
    b"null",
    b'  {"padded": true}  ',
    b"",
    b"   ",
    b"\t",
    b"\r",
    b'{"crlf":1}\r',
    b'{"two_cr":1}\r\r',
    '{"n":"caf\u00e9 \u2603"}'.encode(),
    b'{"bad_utf8":"\xff\xfe"}',
    b'{"bad":',
    b"{'single':1}",
    b"[1,2,]",
    b'{"a":1} {"b":2}',
    b"nan",
    b"1e999",
    b'{"s":"\\ud800"}',
    b'{"ctl":"\x01"}',
    b"[" * 6 + b"]" * 6,
    b"[" * 7 + b"]" * 7,
    b'{"a":' * 7 + b"1" + b"}" * 7,
    b'["[[[[[[[[", {"x":"{{{{{{{{"}]',
    b'{"big":"' + b"x" * 130 + b'"}',
    b'{"edge":"' + b"y" * 108 + b'"}',
)


def reference(data: bytes, kind: BodyKind, limits: BodyLimits, ts_ms: int) -> FramedRecords:
    records = split_records(data, kind, limits)
    frames = encode_records(records, tenant=7, ts_ms=ts_ms)
    return FramedRecords(frames, len(records), sum(map(len, records)))


def outcome(
    call: object, data: bytes, kind: BodyKind, limits: BodyLimits
) -> FramedRecords | tuple[int, str, str, int | None]:
    assert callable(call)
    try:
        result = call(data, kind, limits, 1_700_000_000_123)
    except BodyError as err:
        return (err.status, err.code, err.message, err.line)
    assert isinstance(result, FramedRecords)
    return result


def fused(data: bytes, kind: BodyKind, limits: BodyLimits, ts_ms: int) -> FramedRecords:
    return frame_records(data, kind, limits, tenant=7, ts_ms=ts_ms)


def random_body(rng: random.Random) -> bytes:
    lines = [rng.choice(PIECES) for _ in range(rng.randint(0, 16))]
    body = b"\n".join(lines)
    if rng.random() < 0.3:
        body += b"\n"
    if rng.random() < 0.1 and body:  # a random byte flipped somewhere
        i = rng.randrange(len(body))
        body = body[:i] + bytes([rng.randrange(256)]) + body[i + 1 :]
    return body


@pytest.mark.parametrize("limits", LIMIT_SETS, ids=("small", "default", "one_record"))
def test_fused_equals_split_then_encode_on_random_bodies(limits: BodyLimits) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"seed {seed}")
    rng = random.Random(seed)
    kinds = {"ok": 0, "error": 0}
    for _ in range(3000):
        body = random_body(rng)
        kind = rng.choice((BodyKind.NDJSON, BodyKind.NDJSON, BodyKind.NDJSON, BodyKind.JSON))
        expected = outcome(reference, body, kind, limits)
        assert outcome(fused, body, kind, limits) == expected, (seed, body, kind)
        kinds["ok" if isinstance(expected, FramedRecords) else "error"] += 1
    # Both branches were exercised, so the comparison covered accepted and refused bodies.
    assert kinds["ok"] > 20, kinds
    assert kinds["error"] > 100, kinds


@SEEDED
@given(st.lists(st.sampled_from(PIECES) | st.binary(max_size=40), max_size=20))
def test_fused_equals_reference_hypothesis(lines: list[bytes]) -> None:
    body = b"\n".join(lines)
    for limits in LIMIT_SETS:
        expected = outcome(reference, body, BodyKind.NDJSON, limits)
        assert outcome(fused, body, BodyKind.NDJSON, limits) == expected


@pytest.mark.parametrize("kind", list(BodyKind))
def test_every_kind_frames_like_the_reference(kind: BodyKind) -> None:
    body = b'{"a":1}\n\n  {"b":[2]}\r\n' if kind is not BodyKind.RECORDIO else b"3\nabc\n2\nde"
    if kind is BodyKind.JSON:
        body = b' {"a":[1,2]} '
    got = frame_records(body, kind, BodyLimits(), tenant=3, ts_ms=99)
    assert got == reference_kind(body, kind)
    frames = [frame for _, frame in iter_frames(got.frames)]
    assert [f.payload for f in frames] == split_records(body, kind, BodyLimits())
    assert {(f.tenant, f.ts_ms) for f in frames} == {(3, 99)}
    assert got.records == len(frames)
    assert got.nbytes == sum(len(f.payload) for f in frames)


def reference_kind(body: bytes, kind: BodyKind) -> FramedRecords:
    records = split_records(body, kind, BodyLimits())
    return FramedRecords(
        encode_records(records, tenant=3, ts_ms=99), len(records), sum(map(len, records))
    )


def test_refusals_keep_their_line_numbers() -> None:
    body = b'{"a":1}\n\n{"a":\n'
    with pytest.raises(BodyError) as info:
        frame_records(body, BodyKind.NDJSON, BodyLimits(), tenant=1, ts_ms=1)
    assert (info.value.status, info.value.code, info.value.line) == (400, "invalid_json", 3)


def test_bad_header_fields_are_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="tenant"):
        frame_records(b"{}", BodyKind.NDJSON, BodyLimits(), tenant=-1, ts_ms=1)
