import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import pytest

from shared.clock import ManualClock
from wal import WalFailed, WalFull, WalSettings, WriteAheadLog, iter_frames
from wal.fileops import OS_FILE_OPS, AppendFile, FileOps, OsFileOps
from wal.segment import SealedSegment, open_name, sealed_name


class SpyAppendFile:
    """Wraps a real append file; records syncs and can be told to fail."""

    def __init__(self, inner: AppendFile, ops: "SpyFileOps") -> None:
        self._inner = inner
        self._ops = ops

    def write(self, data: bytes | memoryview) -> None:
        self._inner.write(data)
        self._ops.written += len(data)

    def sync(self) -> None:
        if self._ops.fail_sync:
            self._ops.sync_attempts_after_failure += 1
            raise OSError(errno.EIO, "injected fdatasync EIO")
        self._inner.sync()
        self._ops.synced = self._ops.written

    def close(self) -> None:
        self._inner.close()


class SpyFileOps(OsFileOps):
    def __init__(self) -> None:
        self.written = 0
        self.synced = 0
        self.fail_sync = False
        self.sync_attempts_after_failure = 0

    def open_append(self, path: str) -> AppendFile:
        return SpyAppendFile(super().open_append(path), self)


class Seals:
    """Collects sealed segments; tests await a count instead of sleeping."""

    def __init__(self) -> None:
        self.segments: list[SealedSegment] = []
        self._changed = asyncio.Event()

    def __call__(self, segment: SealedSegment) -> None:
        self.segments.append(segment)
        self._changed.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.segments) < count:
                self._changed.clear()
                await self._changed.wait()


def _frames(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return [frame.payload for _, frame in iter_frames(f.read())]


async def _open(directory: Path, fileops: FileOps = OS_FILE_OPS, **kw: object) -> WriteAheadLog:
    return await WriteAheadLog.open(str(directory), fileops=fileops, initial_epoch=1, **kw)  # type: ignore[arg-type]


async def test_an_append_resolves_only_after_the_fsync_that_covers_it(tmp_path: Path) -> None:
    ops = SpyFileOps()
    wal = await _open(tmp_path, ops)
    observed: list[tuple[int, int]] = []

    def check(fut: asyncio.Future[object]) -> None:
        observed.append((ops.synced, ops.written))

    futures = [wal.append([b"r%d" % i], tenant=1) for i in range(200)]
    for fut in futures:
        fut.add_done_callback(check)
    acks = await asyncio.gather(*futures)
    assert all(synced == written for synced, written in observed)
    offsets = [a.offset for a in acks]
    assert offsets == sorted(offsets)
    await wal.close()


async def test_a_segment_is_sealed_when_it_reaches_segment_bytes(tmp_path: Path) -> None:
    sealed = Seals()
    wal = await _open(tmp_path, settings=WalSettings(segment_bytes=1000), on_sealed=sealed)
    for i in range(100):
        await wal.append([b"x" * 30 + b"%03d" % i], tenant=1)
    await wal.close()
    assert [s.seq for s in sealed.segments] == list(range(1, len(sealed.segments) + 1))
    assert all(1000 <= s.size_bytes < 1000 + 54 for s in sealed.segments)
    payloads = [p for s in sealed.segments for p in _frames(s.path)]
    payloads += _frames(str(tmp_path / open_name(len(sealed.segments) + 1)))
    assert payloads == [b"x" * 30 + b"%03d" % i for i in range(100)]


async def test_a_segment_is_sealed_when_its_first_record_is_old_enough(tmp_path: Path) -> None:
    clock = ManualClock()
    sealed = Seals()
    wal = await _open(
        tmp_path, settings=WalSettings(segment_max_age_s=5), clock=clock, on_sealed=sealed
    )
    await wal.append([b"a"], tenant=1)
    clock.advance(4.9)
    wal.poke()
    await asyncio.sleep(0)
    assert sealed.segments == []
    clock.advance(0.2)
    wal.poke()
    await sealed.wait_for(1)
    assert [s.seq for s in sealed.segments] == [1]
    assert sealed.segments[0].frames == 1
    await wal.close()


async def test_an_idle_empty_segment_is_never_sealed(tmp_path: Path) -> None:
    sealed = Seals()
    wal = await _open(tmp_path, on_sealed=sealed)
    wal.request_seal()
    await wal.close(seal=True)
    assert sealed.segments == []
    assert sorted(os.listdir(tmp_path)) == ["EPOCH", open_name(1)]


async def test_new_segment_bytes_apply_at_the_next_rotation(tmp_path: Path) -> None:
    sealed = Seals()
    wal = await _open(tmp_path, settings=WalSettings(segment_bytes=200), on_sealed=sealed)
    await wal.append([b"y" * 100], tenant=1)
    wal.reconfigure(segment_bytes=10_000)
    await wal.append([b"y" * 100], tenant=1)  # the open segment still seals at 200 bytes
    await sealed.wait_for(1)
    for _ in range(20):
        await wal.append([b"y" * 100], tenant=1)
    assert len(sealed.segments) == 1  # 20 * 121 bytes < 10_000
    await wal.close()


async def test_appending_past_the_pending_bound_raises_wal_full(tmp_path: Path) -> None:
    wal = await _open(tmp_path, settings=WalSettings(pending_bytes_max=1000, retry_after_s=2))
    first = wal.append([b"z" * 500], tenant=1)
    with pytest.raises(WalFull) as info:
        wal.append([b"z" * 500], tenant=1)
    assert info.value.retry_after_s == 2
    await first
    await wal.append([b"z" * 500], tenant=1)  # room again once fsynced
    await wal.close()


async def test_a_failed_fsync_is_sticky_and_never_retried(tmp_path: Path) -> None:
    ops = SpyFileOps()
    wal = await _open(tmp_path, ops)
    await wal.append([b"before"], tenant=1)
    ops.fail_sync = True
    with pytest.raises(WalFailed) as in_flight:
        await wal.append([b"lost"], tenant=1)
    assert in_flight.value.maybe_written  # written, not synced: outcome unknown
    with pytest.raises(WalFailed) as later:
        wal.append([b"after"], tenant=1)
    assert not later.value.maybe_written
    assert wal.failed is not None
    assert ops.sync_attempts_after_failure == 1
    await wal.close()
    ops.fail_sync = False
    reopened = await _open(tmp_path)
    [segment] = reopened.sealed_segments()
    assert _frames(segment.path)[0] == b"before"
    await reopened.close()


async def test_committing_a_segment_deletes_it_and_keeps_numbering(tmp_path: Path) -> None:
    sealed = Seals()
    wal = await _open(tmp_path, on_sealed=sealed)
    await wal.append([b"a"], tenant=1)
    wal.request_seal()
    await wal.append([b"b"], tenant=1)
    await wal.close(seal=True)
    assert [s.seq for s in sealed.segments] == [1, 2]
    wal = await _open(tmp_path, on_sealed=sealed)
    assert [s.seq for s in wal.sealed_segments()] == [1, 2]
    await wal.mark_committed(1)
    await wal.mark_committed(2)
    with pytest.raises(KeyError):
        await wal.mark_committed(2)
    assert not (tmp_path / sealed_name(1)).exists()
    await wal.close()
    wal = await _open(tmp_path)
    assert wal.open_seq == 3
    ack = await wal.append([b"c"], tenant=1)
    assert (ack.epoch, ack.seq, ack.offset) == (1, 3, 0)
    await wal.close()


async def test_unshipped_bytes_count_sealed_open_and_queued_data(tmp_path: Path) -> None:
    sealed = Seals()
    wal = await _open(tmp_path, settings=WalSettings(segment_bytes=100), on_sealed=sealed)
    await wal.append([b"q" * 100], tenant=1)  # sealed: 121 bytes
    await sealed.wait_for(1)
    await wal.append([b"q" * 10], tenant=1)  # open: 31 bytes
    assert wal.unshipped_bytes == 121 + 31
    await wal.mark_committed(1)
    assert wal.unshipped_bytes == 31
    await wal.close()


async def test_unshipped_bytes_count_a_segment_between_its_seal_and_the_loop_taking_it_over(
    tmp_path: Path,
) -> None:
    """The writer seals right after the fsync that fills a segment; until the loop runs
    the seal callback, the sealed bytes must still count (they did not, once)."""
    for trial in range(40):
        wal = await WriteAheadLog.open(
            str(tmp_path / f"w{trial}"), settings=WalSettings(segment_bytes=64)
        )
        try:
            ack = await wal.append([b"x" * 100], tenant=1)
            assert wal.unshipped_bytes >= 100 + 21, f"trial {trial}: {wal.unshipped_bytes}"
            assert ack.seq == 1
        finally:
            await wal.close()


async def test_appends_queued_behind_a_failed_batch_fail_as_certainly_not_written(
    tmp_path: Path,
) -> None:
    ops = SpyFileOps()
    wal = await _open(tmp_path, ops)
    await wal.append([b"before"], tenant=1)
    ops.fail_sync = True
    futures = [wal.append([b"r%d" % i * 200], tenant=1) for i in range(50)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, WalFailed) for r in results)
    maybe = [r.maybe_written for r in results if isinstance(r, WalFailed)]
    assert maybe[0] is True  # the first batch was written when its fsync failed
    # whatever was not in that batch was never written
    assert maybe == sorted(maybe, reverse=True)
    await wal.close()


class SlowDirSyncOps(OsFileOps):
    """Directory fsyncs take a while (they do on a busy disk), and the test can see
    when the writer is inside one."""

    def __init__(self) -> None:
        self.in_dir_sync = threading.Event()

    def fsync_dir(self, path: str) -> None:
        self.in_dir_sync.set()
        time.sleep(0.2)
        super().fsync_dir(path)
        self.in_dir_sync.clear()


async def test_unshipped_bytes_do_not_count_a_segment_twice_while_the_next_one_opens(
    tmp_path: Path,
) -> None:
    """Sealing opens the next segment and fsyncs the directory after the last ack went
    out; a client's next request must not see the sealed bytes counted twice then
    (admission would answer 503 `backlog` early; it once did)."""
    ops = SlowDirSyncOps()
    wal = await _open(tmp_path, ops, settings=WalSettings(segment_bytes=64))
    try:
        await wal.append([b"x" * 100], tenant=1)  # fills segment 1: the writer seals it
        deadline = asyncio.get_running_loop().time() + 5
        while not ops.in_dir_sync.is_set():  # wait until the writer is in the slow part
            assert asyncio.get_running_loop().time() < deadline, "the seal never started"
            await asyncio.sleep(0.001)
        assert wal.unshipped_bytes == 100 + 21
    finally:
        await wal.close()
