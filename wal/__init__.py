"""wal — the durable write-ahead log. A pure library: no aiohttp, boto or duckdb.

On-disk format (docs/formats/wal.md has the long version)
---------------------------------------------------------
One directory per endpoint (``<data>/wal/<endpoint_id>/``) holding:

- ``EPOCH``: the WAL generation number, decimal text, written atomically when the
  directory is created. Sequence numbers are contiguous per (node, endpoint, epoch);
  a WAL directory created anew (lost disk, wiped directory) gets a new epoch, so its
  object keys never collide with an earlier generation's.
- ``seg-<seq:08d>.wal.open``: the open segment, appended to by the group-commit writer
  (with ``WalSettings.preallocate_bytes`` it may end in zeros: a zero tail ends a
  segment; ADR 0016).
- ``seg-<seq:08d>.wal``: sealed segments waiting for delivery; deleted once committed.

A segment is frames back to back with no header or footer. A frame (big-endian) is
``LEN u32 | CRC32C u32 | FMT u8 | TENANT u32 | TS u64 ms | PAYLOAD`` with
``LEN = 13 + len(PAYLOAD)`` and the CRC over PAYLOAD only; FMT 0 carries a record,
FMT 1 ``u16 topic_len | topic | message``. Readers also accept the legacy 17-byte
layout without TENANT (see `wal.reader`).

Durability: an append's future resolves only after the fdatasync that covers it; a
segment is sealed by rename plus a directory fsync; the directory is fsynced after
every create, rename and delete. Recovery's decision table is in `wal.recovery`;
the writer's policies (full, failure, rotation, retention) are in `wal.log`.
"""

from .errors import (
    CorruptFrame,
    FrameError,
    TruncatedFrame,
    WalClosed,
    WalError,
    WalFailed,
    WalFull,
    WalStateError,
)
from .frame import (
    FMT_RECORD,
    FMT_TOPIC,
    Frame,
    Layout,
    encode_frame,
    encode_legacy_frame,
    encode_records,
    encode_topic_frame,
)
from .log import AppendAck, BatchStats, WalSettings, WriteAheadLog
from .reader import StreamReader, detect_layout, iter_frames, open_segment_stream
from .recovery import RecoveryReport
from .segment import SealedSegment

__all__ = [
    "FMT_RECORD",
    "FMT_TOPIC",
    "AppendAck",
    "BatchStats",
    "CorruptFrame",
    "Frame",
    "FrameError",
    "Layout",
    "RecoveryReport",
    "SealedSegment",
    "StreamReader",
    "TruncatedFrame",
    "WalClosed",
    "WalError",
    "WalFailed",
    "WalFull",
    "WalSettings",
    "WalStateError",
    "WriteAheadLog",
    "detect_layout",
    "encode_frame",
    "encode_legacy_frame",
    "encode_records",
    "encode_topic_frame",
    "iter_frames",
    "open_segment_stream",
]
