"""The write-ahead log of one endpoint: group commit, rotation, sealing, retention.

One writer task per WAL. Producers call `append()`, which queues encoded frames and
returns a future; the writer takes everything queued (up to `batch_bytes_max`),
writes it and runs one fdatasync in the WAL's own thread, then resolves the futures
of exactly the appends that fsync covered. While one batch is being synced the next
one accumulates, so batches grow with load and each costs one fsync.

Policies:
- full: `append()` raises `WalFull` at once when the bytes waiting for fsync would pass
  `pending_bytes_max`; the caller answers 503 + Retry-After. Nothing waits unboundedly.
- failure: any write/fsync/rename error is sticky. The batch in flight and everything
  queued fail with `WalFailed`, later appends raise it, the fsync is never retried
  (a retried fsync can report success for data the kernel already dropped). Reopen
  (restart) to recover.
- rotation: after a batch, the open segment is sealed when it has reached
  `segment_bytes` or its first record is `segment_max_age_s` old. Seal = the data is
  already fsynced, close, rename `.wal.open` → `.wal`, create the next open file,
  fsync the directory. Empty segments are never sealed; a batch never spans segments.
- settings: `reconfigure()` takes effect at the next rotation.
- retention: `mark_committed(seq)` deletes a sealed segment (and fsyncs the directory);
  nothing else ever deletes one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from shared.clock import SYSTEM_CLOCK, Clock

from .errors import WalClosed, WalFailed, WalFull
from .fileops import OS_FILE_OPS, AppendFile, FileOps
from .frame import encode_records, encode_topic_frame
from .recovery import RecoveredState, RecoveryReport, recover
from .segment import SealedSegment, open_name, sealed_name

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WalSettings:
    segment_bytes: int = 32 * MIB
    """Seal the open segment once it holds at least this many bytes."""
    segment_max_age_s: float = 60.0
    """Seal the open segment once its first record is this old."""
    pending_bytes_max: int = 64 * MIB
    """Bound on bytes appended but not yet fsynced; beyond it `append` raises WalFull."""
    batch_bytes_max: int = 4 * MIB
    """One write + fdatasync covers at most this much (at least one append)."""
    retry_after_s: int = 1
    """The back-off hint carried by WalFull."""

    def __post_init__(self) -> None:
        if self.segment_bytes < 1 or self.batch_bytes_max < 1 or self.pending_bytes_max < 1:
            raise ValueError("segment_bytes, batch_bytes_max and pending_bytes_max must be >= 1")
        if self.segment_max_age_s <= 0:
            raise ValueError("segment_max_age_s must be > 0")


@dataclass(frozen=True, slots=True)
class AppendAck:
    """Where an append landed, known durable: segment `seq`, byte `offset` in it."""

    epoch: int
    seq: int
    offset: int
    frames: int


class _Pending:
    __slots__ = ("data", "frames", "future")

    def __init__(self, data: bytes, frames: int, future: asyncio.Future[AppendAck]) -> None:
        self.data = data
        self.frames = frames
        self.future = future


class WriteAheadLog:
    """Open with `await WriteAheadLog.open(...)`; close with `await wal.close()`."""

    def __init__(
        self,
        directory: str,
        state: RecoveredState,
        *,
        settings: WalSettings,
        clock: Clock,
        fileops: FileOps,
        executor: ThreadPoolExecutor,
        on_sealed: Callable[[SealedSegment], None] | None,
    ) -> None:
        self.directory = directory
        self.epoch = state.epoch
        self.recovery: RecoveryReport = state.report
        self._settings = settings
        self._next_settings = settings
        self._clock = clock
        self._fileops = fileops
        self._executor = executor
        self._on_sealed = on_sealed
        self._sealed: dict[int, SealedSegment] = {s.seq: s for s in state.sealed}
        self._sealed_bytes = sum(s.size_bytes for s in state.sealed)
        self._seq = state.next_seq
        self._file: AppendFile | None = None
        self._size = 0
        self._frames = 0
        self._opened_at: float | None = None  # monotonic time of the first batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._pending_bytes = 0  # queued + in flight
        self._failure: WalFailed | None = None
        self._closing = False
        self._seal_requested = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    async def open(
        cls,
        directory: str,
        *,
        settings: WalSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        fileops: FileOps = OS_FILE_OPS,
        on_sealed: Callable[[SealedSegment], None] | None = None,
        initial_epoch: int | None = None,
    ) -> WriteAheadLog:
        """Recover `directory` (see wal.recovery) and start the writer."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-writer")
        loop = asyncio.get_running_loop()
        try:
            state = await loop.run_in_executor(
                executor,
                lambda: recover(
                    directory, fileops=fileops, clock=clock, initial_epoch=initial_epoch
                ),
            )
            wal = cls(
                directory,
                state,
                settings=settings or WalSettings(),
                clock=clock,
                fileops=fileops,
                executor=executor,
                on_sealed=on_sealed,
            )
            await loop.run_in_executor(executor, wal._open_segment_sync)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        wal._task = asyncio.create_task(wal._run(), name=f"wal-writer:{directory}")
        return wal

    async def close(self, *, seal: bool = False) -> None:
        """Write and fsync everything queued, optionally seal, stop the writer."""
        if self._task is None:
            return
        self._closing = True
        self._seal_requested = self._seal_requested or seal
        self._wakeup.set()
        try:
            await self._task
        finally:
            self._task = None
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._close_file_sync)
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ appends
    def append(
        self, records: Sequence[bytes], *, tenant: int, ts_ms: int | None = None
    ) -> asyncio.Future[AppendAck]:
        """Queue FMT 0 frames for `records`; the future resolves after their fsync."""
        ts = self._clock.time_ms() if ts_ms is None else ts_ms
        return self.append_encoded(encode_records(records, tenant=tenant, ts_ms=ts), len(records))

    def append_topic(
        self, topic: str, message: bytes, *, tenant: int, ts_ms: int | None = None
    ) -> asyncio.Future[AppendAck]:
        """Queue one FMT 1 frame (an MQTT message and its topic)."""
        ts = self._clock.time_ms() if ts_ms is None else ts_ms
        return self.append_encoded(encode_topic_frame(topic, message, tenant=tenant, ts_ms=ts), 1)

    def append_encoded(self, data: bytes, frames: int) -> asyncio.Future[AppendAck]:
        """Queue whole, already encoded frames. Raises WalFull, WalFailed or WalClosed."""
        if self._failure is not None:
            raise self._failure
        if self._closing or self._task is None:
            raise WalClosed(f"WAL {self.directory} is closed")
        if not data or frames < 1:
            raise ValueError("an append carries at least one frame")
        if self._pending_bytes + len(data) > self._settings.pending_bytes_max:
            raise WalFull(
                self._pending_bytes, self._settings.pending_bytes_max, self._settings.retry_after_s
            )
        future: asyncio.Future[AppendAck] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(data, frames, future))
        self._pending_bytes += len(data)
        self._wakeup.set()
        return future

    # ------------------------------------------------------------ state & control
    @property
    def failed(self) -> WalFailed | None:
        return self._failure

    @property
    def pending_bytes(self) -> int:
        """Appended, not yet fsynced."""
        return self._pending_bytes

    @property
    def unshipped_bytes(self) -> int:
        """Everything on disk or queued that is not committed yet."""
        return self._sealed_bytes + self._size + self._pending_bytes

    @property
    def open_seq(self) -> int:
        return self._seq

    def sealed_segments(self) -> list[SealedSegment]:
        """Sealed segments not committed yet, oldest first."""
        return [self._sealed[s] for s in sorted(self._sealed)]

    def reconfigure(
        self, *, segment_bytes: int | None = None, segment_max_age_s: float | None = None
    ) -> None:
        """New sealing thresholds, applied from the next segment on."""
        changes: dict[str, float] = {}
        if segment_bytes is not None:
            changes["segment_bytes"] = segment_bytes
        if segment_max_age_s is not None:
            changes["segment_max_age_s"] = segment_max_age_s
        self._next_settings = replace(self._next_settings, **changes)  # type: ignore[arg-type]

    def request_seal(self) -> None:
        """Seal the open segment (if it has data) after what is queued now is written."""
        self._seal_requested = True
        self._wakeup.set()

    def poke(self) -> None:
        """Re-check the age deadline now (tests moving a manual clock call this)."""
        self._wakeup.set()

    async def mark_committed(self, seq: int) -> None:
        """The segment's manifest is stored and reported: delete it for good."""
        segment = self._sealed.get(seq)
        if segment is None:
            raise KeyError(f"segment {seq} is not a sealed, uncommitted segment of this WAL")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._delete_sync, segment.path)
        if self._sealed.pop(seq, None) is not None:
            self._sealed_bytes -= segment.size_bytes

    # --------------------------------------------------------------- writer task
    def _age_deadline(self) -> float | None:
        if self._opened_at is None:
            return None
        return self._opened_at + self._settings.segment_max_age_s

    def _seal_due(self) -> bool:
        if self._frames == 0:
            return False
        if self._seal_requested or self._size >= self._settings.segment_bytes:
            return True
        deadline = self._age_deadline()
        return deadline is not None and self._clock.monotonic() >= deadline

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._queue:
                    await self._write_batch(loop)
                elif self._closing:
                    if self._seal_requested and self._frames:
                        await self._seal(loop)
                    return
                else:
                    self._wakeup.clear()
                    deadline = self._age_deadline()
                    if not self._seal_requested and (
                        deadline is None or self._clock.monotonic() < deadline
                    ):
                        timeout = None
                        if deadline is not None:
                            timeout = max(0.0, deadline - self._clock.monotonic())
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wakeup.wait(), timeout)
                if self._seal_due():
                    await self._seal(loop)
                elif self._frames == 0:
                    self._seal_requested = False
        except OSError as err:
            self._fail(err)  # sticky: the writer stops, appends raise WalFailed
        except BaseException as err:
            # Cancellation or a programmer error: nobody may wait forever on a future.
            self._fail(err)
            raise

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        room = self._settings.segment_bytes - self._size
        limit = self._settings.batch_bytes_max
        while self._queue:
            nxt = len(self._queue[0].data)
            if batch and (size + nxt > limit or size + nxt > room):
                break
            batch.append(self._queue.popleft())
            size += nxt
        return batch

    async def _write_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._take_batch()
        data = [p.data for p in batch]
        start = self._size
        if self._opened_at is None:
            self._opened_at = self._clock.monotonic()
        try:
            await loop.run_in_executor(self._executor, self._write_sync, data)
        except OSError as err:
            self._fail(err, batch)
            raise
        offset = start
        for item in batch:
            self._pending_bytes -= len(item.data)
            self._size += len(item.data)
            self._frames += item.frames
            if not item.future.done():
                item.future.set_result(AppendAck(self.epoch, self._seq, offset, item.frames))
            offset += len(item.data)

    async def _seal(self, loop: asyncio.AbstractEventLoop) -> None:
        segment = await loop.run_in_executor(self._executor, self._seal_sync)
        self._sealed[segment.seq] = segment
        self._sealed_bytes += segment.size_bytes
        self._seal_requested = False
        if self._on_sealed is not None:
            self._on_sealed(segment)

    def _fail(self, err: BaseException, batch: Sequence[_Pending] = ()) -> None:
        if self._failure is None:
            self._failure = WalFailed(f"WAL {self.directory} failed: {err!r}")
            self._failure.__cause__ = err
            log.error("WAL %s is failed and accepts nothing more: %r", self.directory, err)
        for item in (*batch, *self._queue):
            if not item.future.done():
                item.future.set_exception(self._failure)
        self._queue.clear()
        self._pending_bytes = 0

    # ------------------------------------------ blocking parts (writer thread only)
    def _open_segment_sync(self) -> None:
        path = os.path.join(self.directory, open_name(self._seq))
        self._file = self._fileops.open_append(path)
        self._size = self._fileops.file_size(path)
        self._fileops.fsync_dir(self.directory)

    def _write_sync(self, data: list[bytes]) -> None:
        assert self._file is not None
        self._file.write(data[0] if len(data) == 1 else b"".join(data))
        self._file.sync()

    def _seal_sync(self) -> SealedSegment:
        assert self._file is not None
        self._file.close()
        self._file = None
        seq = self._seq
        sealed_path = os.path.join(self.directory, sealed_name(seq))
        self._fileops.rename(os.path.join(self.directory, open_name(seq)), sealed_path)
        segment = SealedSegment(seq, self.epoch, sealed_path, self._size, self._frames)
        self._seq = seq + 1
        self._settings = self._next_settings
        self._frames = 0
        self._opened_at = None
        self._open_segment_sync()  # creates seg-(seq+1).wal.open and fsyncs the directory
        return segment

    def _delete_sync(self, path: str) -> None:
        self._fileops.unlink(path)
        self._fileops.fsync_dir(self.directory)

    def _close_file_sync(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
