"""ingest.artifacts: a real segment file in, every artifact read back out."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest
import zstandard

from compiler.errors import ViewExecutionError, ViewTimeout
from compiler.sandbox import SandboxLimits
from ingest import artifacts as artifacts_module
from ingest import layout
from ingest.artifacts import (
    CONTENT_TYPE_PARQUET,
    CONTENT_TYPE_ZSTD,
    RequiredViewFailed,
    SegmentArtifacts,
    SegmentCorrupt,
    build_artifacts,
    build_path,
    cleanup,
)
from ingest.snapshot import Binding, Endpoint
from wal.frame import HEADER_BYTES, encode_legacy_frame, encode_records, encode_topic_frame
from wal.segment import SealedSegment, sealed_name

LIMITS = SandboxLimits(memory_limit_mib=256, threads=1, deadline_s=20)
TENANT = 42
EPOCH, SEQ = 3, 12
NODE, REGION, PREFIX = "node-a", "iad", "acme/edgemq"
MIDNIGHT_MS = 1_764_460_800_000  # 2025-11-30T00:00:00.000Z
ALL_FORMATS = ("segments", "parquet", "parquet_views")
ENDPOINT = Endpoint(
    id="ep-1",
    account_id="acct-1",
    tenant=TENANT,
    accepting=True,
    config_epoch=1,
    segment_bytes=8 * 1024 * 1024,
    segment_max_age_seconds=60,
    output_formats=ALL_FORMATS,
)

# (ts_ms, topic, payload, outcome in VIEW): the segment spans midnight.
FRAMES: list[tuple[int, str | None, bytes, str]] = [
    (MIDNIGHT_MS - 2, None, b'{"device":"d1","temp":20}', "accepted"),
    (MIDNIGHT_MS - 2, None, b'{"device":"d2","temp":55}', "dropped"),  # filter temp < 40
    (MIDNIGHT_MS - 2, None, b"not json", "dlq"),
    (MIDNIGHT_MS - 1, None, b"\xff\xfe\x00binary", "dlq"),  # not UTF-8
    (MIDNIGHT_MS - 1, "sensors/a", b'{"device":"m1","temp":10.5}', "accepted"),
    (MIDNIGHT_MS, None, b'{"temp":1}', "dlq"),  # required device missing
    (MIDNIGHT_MS, None, b'{"device":"d3","temp":"hot"}', "dlq"),  # cast_failures: dlq
    (MIDNIGHT_MS + 5, "sensors/b", '{"device":"ü","temp":1}'.encode(), "accepted"),
    (MIDNIGHT_MS + 5, "sensors/b", b"\x80", "dlq"),  # FMT 1, not UTF-8
]
VIEW_DEFINITION: dict[str, Any] = {
    "columns": [
        {"name": "device", "type": "VARCHAR", "path": "$.device", "required": True},
        {"name": "temp", "type": "DOUBLE", "path": "$.temp", "cast_failures": "dlq"},
        {"name": "at", "type": "TIMESTAMP", "source": "ts"},
    ],
    "filters": [{"condition": "temp < 40"}],
    "partitions": [{"column": "at", "transform": "day"}],
}


def _binding(
    view_id: str = "view-1",
    *,
    name: str = "readings",
    definition: dict[str, Any] | None = None,
    is_required: bool = False,
) -> Binding:
    return Binding(
        binding_id=f"b-{view_id}",
        view_id=view_id,
        view_name=name,
        view_version=2,
        is_required=is_required,
        definition=VIEW_DEFINITION if definition is None else definition,
    )


def _encode(frames: Sequence[tuple[int, str | None, bytes, str]]) -> bytes:
    parts = []
    for ts_ms, topic, payload, _ in frames:
        if topic is None:
            parts.append(encode_records([payload], tenant=TENANT, ts_ms=ts_ms))
        else:
            parts.append(encode_topic_frame(topic, payload, tenant=TENANT, ts_ms=ts_ms))
    return b"".join(parts)


def _segment(
    tmp_path: Path, data: bytes, *, seq: int = SEQ, frames: int | None = None
) -> SealedSegment:
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir(exist_ok=True)
    path = wal_dir / sealed_name(seq)
    path.write_bytes(data)
    return SealedSegment(seq=seq, epoch=EPOCH, path=str(path), size_bytes=len(data), frames=frames)


def _build(
    tmp_path: Path,
    segment: SealedSegment,
    *,
    bindings: Sequence[Binding] = (),
    formats: Sequence[str] = ALL_FORMATS,
) -> SegmentArtifacts:
    return build_artifacts(
        segment,
        endpoint=ENDPOINT,
        bindings=bindings,
        output_formats=formats,
        node_id=NODE,
        region=REGION,
        prefix=PREFIX,
        work_dir=str(tmp_path / "work"),
        limits=LIMITS,
    )


def _rows(path: str, sql: str = "SELECT * FROM t") -> list[dict[str, Any]]:
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{path}')")
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


@pytest.fixture
def segment(tmp_path: Path) -> SealedSegment:
    return _segment(tmp_path, _encode(FRAMES), frames=len(FRAMES))


def test_every_artifact_reads_back_with_its_size_and_sha256(
    tmp_path: Path, segment: SealedSegment
) -> None:
    built = _build(tmp_path, segment, bindings=[_binding()])
    assert [a.kind for a in built.artifacts] == ["segment", "parquet", "view", "view", "dlq"]
    for artifact in built.artifacts:
        data = Path(artifact.path).read_bytes()
        assert artifact.bytes == len(data)
        assert artifact.sha256 == hashlib.sha256(data).hexdigest()
        assert artifact.metadata == {"sha256": artifact.sha256, "source": "seg-00000012.wal"}
        assert artifact.path.startswith(built.work_path + os.sep)
    assert (built.frames, built.wal_bytes) == (len(FRAMES), segment.size_bytes)
    assert (built.first_ts_ms, built.last_ts_ms) == (MIDNIGHT_MS - 2, MIDNIGHT_MS + 5)
    assert {"read", "decode", "segments", "parquet", "views", "total"} <= set(built.timings_ms)
    assert all(ms >= 0 for ms in built.timings_ms.values())


def test_the_compressed_segment_decompresses_to_the_segment_bytes(
    tmp_path: Path, segment: SealedSegment
) -> None:
    built = _build(tmp_path, segment, formats=["segments"])
    [artifact] = built.artifacts
    assert artifact.key == f"{PREFIX}/iad/ep-1/segments/node-a/3/seg-00000012.wal.zst"
    assert (artifact.content_type, artifact.rows, artifact.view_id) == (
        CONTENT_TYPE_ZSTD,
        len(FRAMES),
        None,
    )
    compressed = Path(artifact.path).read_bytes()
    assert zstandard.ZstdDecompressor().decompress(compressed) == Path(segment.path).read_bytes()


def test_the_raw_parquet_has_one_row_per_frame_in_its_first_frames_day(
    tmp_path: Path, segment: SealedSegment
) -> None:
    built = _build(tmp_path, segment, formats=["parquet"])
    [artifact] = built.artifacts
    assert artifact.key == f"{PREFIX}/iad/ep-1/parquet/dt=2025-11-29/node-a-3-00000012.parquet"
    assert (artifact.content_type, artifact.rows) == (CONTENT_TYPE_PARQUET, len(FRAMES))
    rows = _rows(
        artifact.path,
        "SELECT epoch_ms(ts) AS ts_ms, tenant, fmt, topic, payload, payload_bytes, "
        "segment_seq, frame_index, endpoint_id, node_id FROM t ORDER BY frame_index",
    )
    expected = []
    for index, (ts_ms, topic, payload, _) in enumerate(FRAMES):
        try:
            text, raw = payload.decode("utf-8"), None
        except UnicodeDecodeError:
            text, raw = None, payload
        expected.append(
            {
                "ts_ms": ts_ms,
                "tenant": TENANT,
                "fmt": 0 if topic is None else 1,
                "topic": topic,
                "payload": text,
                "payload_bytes": raw,
                "segment_seq": SEQ,
                "frame_index": index,
                "endpoint_id": "ep-1",
                "node_id": NODE,
            }
        )
    assert rows == expected


def test_view_files_and_the_dlq_add_up_to_every_frame(
    tmp_path: Path, segment: SealedSegment
) -> None:
    built = _build(tmp_path, segment, bindings=[_binding()], formats=["parquet_views"])
    [outcome] = built.views
    want = {k: sum(1 for f in FRAMES if f[3] == k) for k in ("accepted", "dropped", "dlq")}
    assert (outcome.accepted, outcome.dropped, outcome.dlq) == (
        want["accepted"],
        want["dropped"],
        want["dlq"],
    )
    assert outcome.processed == len(FRAMES) == outcome.accepted + outcome.dropped + outcome.dlq
    assert outcome.error_code is None
    views = [a for a in built.artifacts if a.kind == "view"]
    assert [a.key for a in views] == [
        f"{PREFIX}/views/readings/v2/at_day=2025-11-29/ep-1-node-a-3-00000012.parquet",
        f"{PREFIX}/views/readings/v2/at_day=2025-11-30/ep-1-node-a-3-00000012.parquet",
    ]
    view_rows = [row for a in views for row in _rows(a.path, "SELECT device, temp FROM t")]
    assert sorted(r["device"] for r in view_rows) == ["d1", "m1", "ü"]
    assert sum(a.rows or 0 for a in views) == outcome.accepted
    assert all(a.view_id == "view-1" for a in views)
    [dlq] = [a for a in built.artifacts if a.kind == "dlq"]
    assert dlq.key == f"{PREFIX}/dlq/readings/v2/ep-1-node-a-3-00000012.parquet"
    assert (outcome.dlq_key, outcome.dlq_bytes, dlq.rows) == (dlq.key, dlq.bytes, outcome.dlq)
    dlq_rows = _rows(dlq.path, "SELECT frame_index, reason.code AS code FROM t ORDER BY 1")
    assert dlq_rows == [
        {"frame_index": 2, "code": "invalid_json"},
        {"frame_index": 3, "code": "invalid_json"},
        {"frame_index": 5, "code": "required_missing"},
        {"frame_index": 6, "code": "cast_failed"},
        {"frame_index": 8, "code": "invalid_json"},
    ]


def test_a_view_that_accepts_nothing_writes_no_view_file(
    tmp_path: Path, segment: SealedSegment
) -> None:
    strict = {**VIEW_DEFINITION, "filters": [{"condition": "temp < -1000"}]}
    built = _build(tmp_path, segment, bindings=[_binding(definition=strict)])
    [outcome] = built.views
    assert outcome.accepted == 0
    assert [a.kind for a in built.artifacts if a.view_id] == ["dlq"]


def test_a_view_without_dlq_rows_writes_no_dlq_file(tmp_path: Path) -> None:
    clean = _segment(tmp_path, _encode([FRAMES[0], FRAMES[1]]))
    built = _build(tmp_path, clean, bindings=[_binding()], formats=["parquet_views"])
    assert [a.kind for a in built.artifacts] == ["view"]
    assert (built.views[0].dlq, built.views[0].dlq_key, built.views[0].dlq_bytes) == (0, None, None)


def test_an_optional_view_whose_definition_no_longer_parses_is_recorded_without_files(
    tmp_path: Path, segment: SealedSegment
) -> None:
    broken = _binding("view-broken", name="broken", definition={"columns": []})
    built = _build(tmp_path, segment, bindings=[broken, _binding()])
    failed, ok = built.views
    assert (failed.view_id, failed.error_code) == ("view-broken", "definition_invalid")
    assert failed.error_message
    assert "columns" in failed.error_message
    assert (failed.processed, failed.accepted, failed.dropped, failed.dlq) == (0, 0, 0, 0)
    assert not any(a.view_id == "view-broken" for a in built.artifacts)
    assert ok.error_code is None
    assert ok.accepted == 3


@pytest.mark.parametrize(
    ("error", "code"),
    [(ViewExecutionError("boom"), "view_execution_failed"), (ViewTimeout("late"), "view_timeout")],
)
def test_an_optional_view_that_fails_to_run_is_recorded_with_its_error_code(
    tmp_path: Path,
    segment: SealedSegment,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    code: str,
) -> None:
    def fail(*args: object) -> None:
        raise error

    monkeypatch.setattr(artifacts_module, "materialize_view", fail)
    built = _build(tmp_path, segment, bindings=[_binding()])
    [outcome] = built.views
    assert (outcome.error_code, outcome.error_message) == (code, str(error))
    assert [a.kind for a in built.artifacts] == ["segment", "parquet"]


def test_a_required_view_that_fails_blocks_the_build_and_leaves_no_files(
    tmp_path: Path, segment: SealedSegment
) -> None:
    required = _binding("view-req", definition={"columns": "nope"}, is_required=True)
    with pytest.raises(RequiredViewFailed) as caught:
        _build(tmp_path, segment, bindings=[_binding(), required])
    assert (caught.value.view_id, caught.value.code) == ("view-req", "definition_invalid")
    assert not os.path.exists(build_path(str(tmp_path / "work"), "ep-1", EPOCH, SEQ))


def test_a_corrupt_frame_raises_segment_corrupt_with_its_offset(tmp_path: Path) -> None:
    data = bytearray(_encode(FRAMES))
    third = sum(HEADER_BYTES + len(f[2]) + (2 + len(f[1]) if f[1] else 0) for f in FRAMES[:2])
    data[third + HEADER_BYTES] ^= 0xFF  # a payload byte of frame 2: its CRC no longer matches
    with pytest.raises(SegmentCorrupt) as caught:
        _build(tmp_path, _segment(tmp_path, bytes(data)))
    assert caught.value.offset == third
    assert "CRC" in caught.value.reason
    assert not os.path.exists(build_path(str(tmp_path / "work"), "ep-1", EPOCH, SEQ))


def test_a_segment_cut_short_raises_segment_corrupt(tmp_path: Path) -> None:
    data = _encode(FRAMES)
    with pytest.raises(SegmentCorrupt):
        _build(tmp_path, _segment(tmp_path, data[:-3]), formats=["segments"])


def test_a_frame_count_other_than_the_sealed_one_raises_segment_corrupt(
    tmp_path: Path,
) -> None:
    segment = _segment(tmp_path, _encode(FRAMES), frames=len(FRAMES) + 1)
    with pytest.raises(SegmentCorrupt, match="sealed with"):
        _build(tmp_path, segment)


@pytest.mark.parametrize(
    ("formats", "kinds"),
    [
        ((), []),
        (("segments",), ["segment"]),
        (("parquet",), ["parquet"]),
        (("parquet_views",), ["view", "view", "dlq"]),
        (("segments", "parquet"), ["segment", "parquet"]),
        (("parquet", "parquet_views"), ["parquet", "view", "view", "dlq"]),
    ],
)
def test_only_the_requested_output_formats_are_built(
    tmp_path: Path, segment: SealedSegment, formats: tuple[str, ...], kinds: list[str]
) -> None:
    built = _build(tmp_path, segment, bindings=[_binding()], formats=formats)
    assert [a.kind for a in built.artifacts] == kinds
    assert len(built.views) == (1 if "parquet_views" in formats else 0)
    assert built.frames == len(FRAMES)


def test_views_run_only_when_parquet_views_is_an_output_format(
    tmp_path: Path, segment: SealedSegment
) -> None:
    built = _build(tmp_path, segment, bindings=[_binding()], formats=["segments"])
    assert built.views == ()


def test_an_unknown_output_format_is_refused(tmp_path: Path, segment: SealedSegment) -> None:
    with pytest.raises(ValueError, match="unknown output formats"):
        _build(tmp_path, segment, formats=["csv"])


def test_two_segments_build_side_by_side_and_clean_up_separately(tmp_path: Path) -> None:
    first = _build(tmp_path, _segment(tmp_path, _encode(FRAMES), seq=12))
    second = _build(tmp_path, _segment(tmp_path, _encode(FRAMES[:3]), seq=13))
    assert first.work_path != second.work_path
    cleanup(first)
    assert not os.path.exists(first.work_path)
    assert all(os.path.exists(a.path) for a in second.artifacts)
    cleanup(second)
    assert os.listdir(tmp_path / "work") == []


def test_a_leftover_build_directory_is_replaced(tmp_path: Path, segment: SealedSegment) -> None:
    stale = Path(build_path(str(tmp_path / "work"), "ep-1", EPOCH, SEQ))
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"x")
    built = _build(tmp_path, segment)
    assert sorted(os.listdir(built.work_path)) == ["raw.parquet", "segment.wal.zst"]


def test_rebuilding_a_segment_gives_identical_artifacts(
    tmp_path: Path, segment: SealedSegment
) -> None:
    first = _build(tmp_path, segment, bindings=[_binding()])
    digests = [(a.key, a.sha256, a.bytes) for a in first.artifacts]
    second = _build(tmp_path, segment, bindings=[_binding()])
    assert [(a.key, a.sha256, a.bytes) for a in second.artifacts] == digests


def test_a_timestamp_past_year_9999_raises_segment_corrupt_at_its_frame(tmp_path: Path) -> None:
    good = encode_records([b"{}"], tenant=TENANT, ts_ms=MIDNIGHT_MS)
    bad = encode_records([b"{}"], tenant=TENANT, ts_ms=layout.TS_MS_MAX + 1)
    with pytest.raises(SegmentCorrupt, match="past 9999") as caught:
        _build(tmp_path, _segment(tmp_path, good + bad))
    assert caught.value.offset == len(good)


def test_a_legacy_segment_builds_with_null_tenants(tmp_path: Path) -> None:
    data = encode_legacy_frame(b'{"device":"old","temp":1}', ts_ms=MIDNIGHT_MS)
    built = _build(tmp_path, _segment(tmp_path, data), bindings=[_binding()])
    raw = next(a for a in built.artifacts if a.kind == "parquet")
    assert _rows(raw.path, "SELECT tenant, payload FROM t") == [
        {"tenant": None, "payload": '{"device":"old","temp":1}'}
    ]
    assert built.views[0].accepted == 1
