"""Frame codec.

Current layout (21-byte header, all big-endian)::

    LEN u32 | CRC32C u32 | FMT u8 | TENANT u32 | TS u64 (ms) | PAYLOAD
    LEN = 13 + len(PAYLOAD)   (the bytes after the CRC field)
    CRC32C covers PAYLOAD only

Legacy layout (17-byte header, read only)::

    LEN u32 | CRC32C u32 | FMT u8 | TS u64 (ms) | PAYLOAD
    LEN = 17 + len(PAYLOAD)   (the whole frame)

FMT 0: PAYLOAD is the record. FMT 1: PAYLOAD is ``u16 topic_len | topic | message``.
Which layout a segment uses is decided per segment by `reader.detect_layout`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import google_crc32c

FMT_RECORD = 0
FMT_TOPIC = 1
KNOWN_FMTS = frozenset({FMT_RECORD, FMT_TOPIC})

HEADER = struct.Struct(">IIBIQ")
HEADER_BYTES = HEADER.size  # 21
LEGACY_HEADER = struct.Struct(">IIBQ")
LEGACY_HEADER_BYTES = LEGACY_HEADER.size  # 17
LEN_AFTER_CRC = HEADER_BYTES - 8  # 13: FMT + TENANT + TS
TOPIC_LEN = struct.Struct(">H")

U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
# Upper bound on one frame's payload. Ingest limits records to far less; the bound
# keeps a corrupt LEN from making a reader allocate gigabytes.
PAYLOAD_BYTES_MAX = 64 * 1024 * 1024
TOPIC_BYTES_MAX = 0xFFFF


class Layout(enum.Enum):
    CURRENT = "current"
    LEGACY = "legacy"


@dataclass(frozen=True, slots=True)
class Frame:
    fmt: int
    tenant: int | None  # None for legacy frames, which carry no tenant
    ts_ms: int
    payload: bytes

    @property
    def topic(self) -> str | None:
        return split_topic_payload(self.payload)[0] if self.fmt == FMT_TOPIC else None

    @property
    def message(self) -> bytes:
        return split_topic_payload(self.payload)[1] if self.fmt == FMT_TOPIC else self.payload


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def _check_header_fields(fmt: int, tenant: int, ts_ms: int, payload_len: int) -> None:
    if fmt not in KNOWN_FMTS:
        raise ValueError(f"unknown frame format {fmt}")
    if not 0 <= tenant <= U32_MAX:
        raise ValueError(f"tenant {tenant} is not a u32")
    if not 0 <= ts_ms <= U64_MAX:
        raise ValueError(f"timestamp {ts_ms} is not a u64")
    if payload_len > PAYLOAD_BYTES_MAX:
        raise ValueError(f"payload of {payload_len} bytes exceeds {PAYLOAD_BYTES_MAX}")


def encode_frame(payload: bytes, *, tenant: int, ts_ms: int, fmt: int = FMT_RECORD) -> bytes:
    """One frame in the current layout."""
    _check_header_fields(fmt, tenant, ts_ms, len(payload))
    return HEADER.pack(LEN_AFTER_CRC + len(payload), crc32c(payload), fmt, tenant, ts_ms) + payload


def encode_records(records: Sequence[bytes], *, tenant: int, ts_ms: int) -> bytes:
    """FMT 0 frames for `records`, back to back (the hot path of HTTP ingest)."""
    _check_header_fields(FMT_RECORD, tenant, ts_ms, max(map(len, records), default=0))
    pack = HEADER.pack
    value = google_crc32c.value
    parts: list[bytes] = []
    for record in records:
        parts.append(pack(LEN_AFTER_CRC + len(record), value(record), FMT_RECORD, tenant, ts_ms))
        parts.append(record)
    return b"".join(parts)


def join_topic_payload(topic: str, message: bytes) -> bytes:
    """The FMT 1 payload: ``u16 topic_len | topic (UTF-8) | message``."""
    raw = topic.encode("utf-8")
    if len(raw) > TOPIC_BYTES_MAX:
        raise ValueError(f"topic of {len(raw)} bytes exceeds {TOPIC_BYTES_MAX}")
    return TOPIC_LEN.pack(len(raw)) + raw + message


def split_topic_payload(payload: bytes) -> tuple[str, bytes]:
    """Inverse of `join_topic_payload`; ValueError when the payload is not FMT 1."""
    if len(payload) < TOPIC_LEN.size:
        raise ValueError("FMT 1 payload shorter than its topic length field")
    (n,) = TOPIC_LEN.unpack_from(payload)
    end = TOPIC_LEN.size + n
    if end > len(payload):
        raise ValueError("FMT 1 topic length runs past the payload")
    return payload[TOPIC_LEN.size : end].decode("utf-8"), payload[end:]


def encode_topic_frame(topic: str, message: bytes, *, tenant: int, ts_ms: int) -> bytes:
    return encode_frame(
        join_topic_payload(topic, message), tenant=tenant, ts_ms=ts_ms, fmt=FMT_TOPIC
    )


def encode_legacy_frame(payload: bytes, *, ts_ms: int, fmt: int = FMT_RECORD) -> bytes:
    """A frame in the legacy 17-byte layout. Only tests and converters write these."""
    _check_header_fields(fmt, 0, ts_ms, len(payload))
    total = LEGACY_HEADER_BYTES + len(payload)
    return LEGACY_HEADER.pack(total, crc32c(payload), fmt, ts_ms) + payload
