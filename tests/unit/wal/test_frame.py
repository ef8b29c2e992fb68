import pytest

from wal.frame import (
    FMT_RECORD,
    FMT_TOPIC,
    HEADER_BYTES,
    LEGACY_HEADER_BYTES,
    Layout,
    encode_frame,
    encode_legacy_frame,
    encode_records,
    encode_topic_frame,
    join_topic_payload,
    split_topic_payload,
)
from wal.reader import decode_at, iter_frames

WORKED_EXAMPLE = bytes.fromhex("00000014cff7d56a000000002a0000018d0c8d3fc07b2261223a317d")


def test_the_documented_worked_example_encodes_to_its_golden_bytes() -> None:
    assert encode_frame(b'{"a":1}', tenant=42, ts_ms=1705312600000) == WORKED_EXAMPLE


def test_the_documented_worked_example_decodes_to_its_fields() -> None:
    frame, end = decode_at(WORKED_EXAMPLE, 0, Layout.CURRENT)
    assert (frame.fmt, frame.tenant, frame.ts_ms, frame.payload) == (
        FMT_RECORD,
        42,
        1705312600000,
        b'{"a":1}',
    )
    assert end == len(WORKED_EXAMPLE) == HEADER_BYTES + 7


def test_header_sizes_match_the_spec() -> None:
    assert (HEADER_BYTES, LEGACY_HEADER_BYTES) == (21, 17)


def test_a_topic_frame_keeps_topic_and_message() -> None:
    data = encode_topic_frame("sensors/7/temp", b"\x00\xff21.5", tenant=3, ts_ms=5)
    [(offset, frame)] = list(iter_frames(data))
    assert offset == 0
    assert frame.fmt == FMT_TOPIC
    assert frame.topic == "sensors/7/temp"
    assert frame.message == b"\x00\xff21.5"
    assert frame.payload[:2] == len("sensors/7/temp").to_bytes(2, "big")


def test_encode_records_equals_one_frame_per_record() -> None:
    records = [b"a", b"", b"ccc"]
    joined = encode_records(records, tenant=9, ts_ms=77)
    assert joined == b"".join(encode_frame(r, tenant=9, ts_ms=77) for r in records)


def test_a_legacy_frame_counts_the_whole_frame_in_len() -> None:
    data = encode_legacy_frame(b"hello", ts_ms=1)
    assert int.from_bytes(data[:4], "big") == len(data) == 17 + 5
    [(_, frame)] = list(iter_frames(data))
    assert (frame.tenant, frame.payload) == (None, b"hello")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tenant": -1, "ts_ms": 0}, "tenant"),
        ({"tenant": 2**32, "ts_ms": 0}, "tenant"),
        ({"tenant": 0, "ts_ms": -5}, "timestamp"),
        ({"tenant": 0, "ts_ms": 0, "fmt": 7}, "format"),
    ],
)
def test_encoding_rejects_fields_that_do_not_fit_the_header(
    kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_frame(b"x", **kwargs)


def test_a_topic_longer_than_u16_is_rejected() -> None:
    with pytest.raises(ValueError, match="topic"):
        join_topic_payload("t" * 70_000, b"")


def test_a_malformed_topic_payload_is_rejected() -> None:
    with pytest.raises(ValueError, match="runs past"):
        split_topic_payload(b"\x00\x09abc")
