"""Preallocated segments (WalSettings.preallocate_bytes, docs/adr/0016) on real files:
the open segment carries a zero tail, the bytes and offsets the WAL reports are the
written ones, a sealed segment is cut to its data, and a zero tail left by a stop or
a crash is recovered as the end of the log, not as a torn write."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from wal import CorruptFrame, StreamReader, WalSettings, WriteAheadLog, iter_frames
from wal.dump import dump_segment
from wal.fileops import OS_FILE_OPS, OsPreallocatedFile
from wal.frame import encode_records
from wal.segment import open_name, sealed_name

CHUNK = 4096


def _payloads(path: Path) -> list[bytes]:
    return [frame.payload for _, frame in iter_frames(path.read_bytes())]


def _size(path: Path) -> int:
    return path.stat().st_size


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


async def _open(directory: Path, **kw: int) -> WriteAheadLog:
    settings = WalSettings(preallocate_bytes=CHUNK, **kw)
    return await WriteAheadLog.open(str(directory), settings=settings, initial_epoch=1)


async def test_the_open_segment_is_zero_filled_ahead_and_counts_written_bytes(
    tmp_path: Path,
) -> None:
    wal = await _open(tmp_path)
    open_path = tmp_path / open_name(1)
    assert open_path.read_bytes() == bytes(CHUNK)
    records = [b'{"n":%d}' % i for i in range(3)]
    ack = await wal.append(records, tenant=1, ts_ms=5)
    written = len(encode_records(records, tenant=1, ts_ms=5))
    assert (ack.seq, ack.offset) == (1, 0)
    assert wal.open_segment_bytes == written
    assert wal.unshipped_bytes == written
    data = open_path.read_bytes()
    assert len(data) == CHUNK
    assert data[:written] == encode_records(records, tenant=1, ts_ms=5)
    assert not data[written:].strip(b"\0")
    second = await wal.append([b'{"x":1}'], tenant=1, ts_ms=6)
    assert second.offset == written
    await wal.close()


async def test_a_write_past_the_allocation_grows_it_by_whole_chunks(tmp_path: Path) -> None:
    wal = await _open(tmp_path, batch_bytes_max=CHUNK * 8)
    big = [b'"' + b"x" * 3000 + b'"' for _ in range(4)]  # ≈ 12 KiB in one append
    await wal.append(big, tenant=1, ts_ms=1)
    size = _size(tmp_path / open_name(1))
    assert size % CHUNK == 0
    assert size >= wal.open_segment_bytes > 2 * CHUNK
    await wal.close()


async def test_a_sealed_segment_is_cut_to_its_data(tmp_path: Path) -> None:
    wal = await _open(tmp_path, segment_bytes=600)
    records = [b'{"n":%d,"pad":"%s"}' % (i, b"p" * 60) for i in range(12)]
    for record in records:
        await wal.append([record], tenant=2, ts_ms=7)
    await wal.close(seal=True)
    sealed = wal.sealed_segments()
    assert sealed, "nothing sealed"
    got: list[bytes] = []
    for segment in sealed:
        path = Path(segment.path)
        assert _size(path) == segment.size_bytes
        got += _payloads(path)
    assert got == records
    assert wal.unshipped_bytes == sum(s.size_bytes for s in sealed)
    # The next open segment is preallocated again.
    assert _size(tmp_path / open_name(wal.open_seq)) == CHUNK


async def test_a_zero_tail_left_by_a_stop_is_recovered_as_the_end_of_the_log(
    tmp_path: Path,
) -> None:
    wal = await _open(tmp_path)
    records = [b"[%d]" % i for i in range(5)]
    ack = await wal.append(records, tenant=1, ts_ms=3)
    written = wal.open_segment_bytes
    await wal.close()  # not sealed: the zero tail stays on disk
    assert _size(tmp_path / open_name(ack.seq)) == CHUNK

    reopened = await _open(tmp_path)
    (report,) = reopened.recovery.open_segments
    assert (report.frames_kept, report.bytes_kept) == (5, written)
    assert (report.bytes_cut, report.reason, report.zero_tail_bytes) == (0, None, CHUNK - written)
    sealed = tmp_path / sealed_name(ack.seq)
    assert _size(sealed) == written
    assert _payloads(sealed) == records
    await reopened.close()


async def test_a_torn_frame_before_the_zero_tail_is_still_cut_and_reported(
    tmp_path: Path,
) -> None:
    wal = await _open(tmp_path)
    await wal.append([b'{"kept":1}'], tenant=1, ts_ms=3)
    written = wal.open_segment_bytes
    await wal.close()
    torn = encode_records([b'{"torn":true}'], tenant=1, ts_ms=4)[:-3]
    _write_at(tmp_path / open_name(1), written, torn)

    reopened = await _open(tmp_path)
    (report,) = reopened.recovery.open_segments
    assert (report.frames_kept, report.bytes_kept, report.bytes_cut) == (1, written, len(torn))
    assert report.reason is not None
    assert report.zero_tail_bytes == CHUNK - written - len(torn)
    assert _payloads(tmp_path / sealed_name(1)) == [b'{"kept":1}']
    await reopened.close()


def test_preallocation_needs_a_new_or_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old data")
    with pytest.raises(FileExistsError):
        OS_FILE_OPS.open_preallocated(str(path), CHUNK)
    assert path.read_bytes() == b"old data"
    with pytest.raises(ValueError, match="chunk_bytes"):
        OsPreallocatedFile(str(tmp_path / "g"), 0)


def test_settings_refuse_a_negative_preallocation() -> None:
    with pytest.raises(ValueError, match="preallocate_bytes"):
        WalSettings(preallocate_bytes=-1)


def test_readers_stop_at_a_zero_tail_but_not_at_zeros_followed_by_data(tmp_path: Path) -> None:
    frames = encode_records([b"[1]", b"[2]"], tenant=1, ts_ms=1)
    tail = tmp_path / "tail.wal.open"
    tail.write_bytes(frames + bytes(3 * 1024 * 1024 + 5))  # over several read chunks
    with open(tail, "rb") as f:
        assert [fr.payload for _, fr in StreamReader(f)] == [b"[1]", b"[2]"]
    out = io.StringIO()
    assert dump_segment(str(tail), out) is None
    assert len(out.getvalue().splitlines()) == 2

    hole = tmp_path / "hole.wal.open"
    hole.write_bytes(frames + bytes(2 * 1024 * 1024) + b"\x01")
    with open(hole, "rb") as f, pytest.raises(CorruptFrame) as info:
        list(StreamReader(f))
    assert info.value.offset == len(frames)
