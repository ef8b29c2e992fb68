"""Arrow tables of a segment: the `source` relation views run over, the raw Parquet
table (DESIGN.md §6), and Parquet encoding. No DuckDB here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_COMPRESSION = "zstd"
SCAN_CHUNK_ROWS = 16 * 1024

RAW_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("tenant", pa.uint32()),
        pa.field("fmt", pa.uint8(), nullable=False),
        pa.field("topic", pa.string()),
        pa.field("payload", pa.string()),
        pa.field("payload_bytes", pa.binary()),
        pa.field("segment_seq", pa.uint64(), nullable=False),
        pa.field("frame_index", pa.uint64(), nullable=False),
        pa.field("endpoint_id", pa.string(), nullable=False),
        pa.field("node_id", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class SegmentTable:
    """One segment as Arrow: `source` is the relation views read
    (raw, ts, topic, tenant, segment_seq, frame_index); `payload_bytes` holds the
    original bytes of payloads that are not UTF-8 (null elsewhere), by frame index."""

    source: pa.Table
    payload_bytes: pa.Array
    fmt: pa.Array

    @property
    def rows(self) -> int:
        return int(self.source.num_rows)


def _utf8_or_none(messages: Sequence[bytes]) -> tuple[pa.Array, pa.Array]:
    binary = pa.array(messages, pa.binary())
    try:
        text = binary.cast(pa.string())  # validates UTF-8 for the whole array in C
        return text, pa.nulls(len(messages), pa.binary())
    except pa.ArrowInvalid:
        decoded: list[str | None] = []
        raw: list[bytes | None] = []
        for message in messages:
            try:
                decoded.append(message.decode("utf-8"))
                raw.append(None)
            except UnicodeDecodeError:
                decoded.append(None)
                raw.append(message)
        return pa.array(decoded, pa.string()), pa.array(raw, pa.binary())


def segment_table(
    *,
    messages: Sequence[bytes],
    ts_ms: Sequence[int],
    topics: Sequence[str | None],
    tenants: Sequence[int | None],
    fmts: Sequence[int],
    segment_seq: int,
) -> SegmentTable:
    n = len(messages)
    text, original = _utf8_or_none(messages)
    source = pa.table(
        {
            "raw": text,
            "ts": pa.array(ts_ms, pa.int64()).cast(pa.timestamp("ms")),
            "topic": pa.array(topics, pa.string()),
            "tenant": pa.array(tenants, pa.uint32()),
            "segment_seq": pa.repeat(pa.scalar(segment_seq, pa.uint64()), n),
            "frame_index": pa.array(range(n), pa.uint64()),
        }
    )
    # Zero-copy slices: DuckDB scans an Arrow table with one thread per chunk.
    source = pa.Table.from_batches(source.to_batches(max_chunksize=SCAN_CHUNK_ROWS), source.schema)
    return SegmentTable(source, original, pa.array(fmts, pa.uint8()))


def raw_table(segment: SegmentTable, *, endpoint_id: str, node_id: str) -> pa.Table:
    """The raw Parquet rows: one per frame (DESIGN.md §6)."""
    src = segment.source
    n = segment.rows
    return pa.Table.from_arrays(
        [
            src["ts"].cast(pa.timestamp("ms", tz="UTC")),
            src["tenant"],
            segment.fmt,
            src["topic"],
            src["raw"],
            segment.payload_bytes,
            src["segment_seq"],
            src["frame_index"],
            pa.repeat(pa.scalar(endpoint_id, pa.string()), n),
            pa.repeat(pa.scalar(node_id, pa.string()), n),
        ],
        schema=RAW_SCHEMA,
    )


def write_parquet(table: pa.Table, where: str | pa.NativeFile) -> None:
    """zstd-compressed Parquet to a path or an Arrow output stream."""
    pq.write_table(table, where, compression=PARQUET_COMPRESSION)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    write_parquet(table, sink)
    return bytes(sink.getvalue().to_pybytes())
