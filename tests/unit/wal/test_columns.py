"""wal.columns.decode_columns reads a segment exactly as wal.reader.iter_frames does:
the same frames, the same first error, and a zero tail (a preallocated segment) as the
end (the frames fuzzer found decode_columns refusing 9 zero bytes that iter_frames
reads as an empty segment)."""

from __future__ import annotations

import pytest

from wal.columns import decode_columns
from wal.errors import FrameError
from wal.frame import encode_records, encode_topic_frame
from wal.reader import iter_frames

SEGMENT = encode_records([b'{"a":1}', b"two"], tenant=7, ts_ms=1_705_312_600_000) + (
    encode_topic_frame("sensors/1", b"\x00\xff", tenant=7, ts_ms=5)
)


def _outcome(fn: object, data: bytes) -> object:
    try:
        result = fn(data)  # type: ignore[operator]
        return ("ok", len(result) if hasattr(result, "__len__") else len(list(result)))
    except FrameError as err:
        return (type(err).__name__, err.offset)


@pytest.mark.parametrize("zeros", [1, 7])
def test_a_tail_shorter_than_8_bytes_is_truncated_for_both_readers(zeros: int) -> None:
    data = SEGMENT + b"\0" * zeros
    outcome = _outcome(decode_columns, data)
    assert outcome == _outcome(iter_frames, data) == ("TruncatedFrame", len(SEGMENT))


@pytest.mark.parametrize("zeros", [0, 8, 9, 21, 4096])
def test_a_zero_tail_ends_the_segment_for_both_readers(zeros: int) -> None:
    data = SEGMENT + b"\0" * zeros
    assert _outcome(decode_columns, data) == _outcome(iter_frames, data) == ("ok", 3)
    columns = decode_columns(data)
    assert columns.message == [b'{"a":1}', b"two", b"\x00\xff"]
    assert columns.topic == [None, None, "sensors/1"]


def test_only_zeros_is_an_empty_segment() -> None:
    assert _outcome(decode_columns, b"\0" * 9) == _outcome(iter_frames, b"\0" * 9) == ("ok", 0)


def test_zeros_followed_by_data_are_still_a_bad_frame() -> None:
    data = SEGMENT + b"\0" * 16 + b"\x01"
    outcome = _outcome(decode_columns, data)
    assert outcome == _outcome(iter_frames, data)
    assert outcome[0] != "ok"  # type: ignore[index]
