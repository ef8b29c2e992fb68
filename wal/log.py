"""The write-ahead log of one endpoint: group commit, rotation, sealing, retention.

Threads: producers call `append()` on the event loop; it queues encoded frames and
returns a future. One dedicated writer thread per WAL owns the open segment: it takes
everything queued (up to `batch_bytes_max`), writes it, runs one fdatasync, and posts
the acknowledgements of exactly the appends that fsync covered back to the loop with
one `call_soon_threadsafe` per batch. While one batch is being synced the next one
accumulates, so batches grow with load and each costs one fsync.

Pipelining: after batch N's fdatasync the thread first writes batch N+1 into the page
cache and only then posts N's acknowledgements, then syncs N+1. The loop's ack work and
the producers' next appends overlap with the disk instead of leaving it idle. An
acknowledgement is still only ever posted after the fdatasync covering it returned.

Policies:
- full: `append()` raises `WalFull` at once when the bytes waiting for fsync would pass
  `pending_bytes_max`; the caller answers 503 + Retry-After. Nothing waits unboundedly.
- failure: any write/fsync/rename error is sticky. The batch in flight and everything
  queued fail with `WalFailed`, later appends raise it, the fsync is never retried
  (a retried fsync can report success for data the kernel already dropped). Reopen
  (restart) to recover. See docs/adr/0004.
- rotation: after a batch, the open segment is sealed when it has reached
  `segment_bytes` or its first record is `segment_max_age_s` old. Seal = the data is
  already fsynced, close, rename `.wal.open` → `.wal`, create the next open file,
  fsync the directory. Empty segments are never sealed; a batch never spans segments.
- settings: `reconfigure()` takes effect at the next rotation.
- preallocation (`preallocate_bytes`, off by default, docs/adr/0016): the open segment
  is zero-filled ahead of the data; sizes and offsets count written bytes only, and
  sealing truncates the zero tail before the rename.
- retention: `mark_committed(seq)` deletes a sealed segment (and fsyncs the directory);
  nothing else ever deletes one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from shared import failpoints
from shared.clock import SYSTEM_CLOCK, Clock

from .errors import WalClosed, WalFailed, WalFull
from .fileops import OS_FILE_OPS, AppendFile, FileOps
from .frame import encode_records, encode_topic_frame
from .recovery import RecoveredState, RecoveryReport, recover
from .segment import SealedSegment, open_name, sealed_name

log = logging.getLogger(__name__)

MIB = 1024 * 1024
IDLE_WAIT_S_MAX = 1.0  # the writer re-checks its state at least this often when idle


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
    preallocate_bytes: int = 0
    """0: segments grow by appending. Otherwise the open segment's space is zero-filled
    and fsynced this many bytes at a time ahead of the data, so a batch's fdatasync
    has no size or extent change to journal; a sealed segment is truncated to its
    data. docs/adr/0016."""

    def __post_init__(self) -> None:
        if self.segment_bytes < 1 or self.batch_bytes_max < 1 or self.pending_bytes_max < 1:
            raise ValueError("segment_bytes, batch_bytes_max and pending_bytes_max must be >= 1")
        if self.segment_max_age_s <= 0:
            raise ValueError("segment_max_age_s must be > 0")
        if self.preallocate_bytes < 0:
            raise ValueError("preallocate_bytes must be >= 0")


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


class _Batch:
    """Appends written together; `seq`/`offset` say where (set by the writer thread)."""

    __slots__ = ("items", "nbytes", "offset", "seq", "sync_s")

    def __init__(self, items: list[_Pending], nbytes: int, seq: int, offset: int) -> None:
        self.items = items
        self.nbytes = nbytes
        self.seq = seq
        self.offset = offset
        self.sync_s = 0.0


@dataclass(frozen=True, slots=True)
class BatchStats:
    """One group commit, reported to `on_batch` on the loop: appends it acknowledged,
    bytes written and how long its fdatasync took."""

    appends: int
    nbytes: int
    sync_s: float


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
        loop: asyncio.AbstractEventLoop,
        on_sealed: Callable[[SealedSegment], None] | None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.directory = directory
        self._on_batch = on_batch
        self.epoch = state.epoch
        self.recovery: RecoveryReport = state.report
        self._clock = clock
        self._fileops = fileops
        self._loop = loop
        self._on_sealed = on_sealed
        # Event-loop side.
        self._limits = settings  # pending_bytes_max / retry_after_s for append()
        self._sealed: dict[int, SealedSegment] = {s.seq: s for s in state.sealed}
        self._sealed_bytes = sum(s.size_bytes for s in state.sealed)
        # Bytes sealed by the writer thread (written only there) and bytes of those
        # seals the loop has taken over into `_sealed_bytes` (written only on the loop):
        # their difference covers the moment between a seal and its loop callback.
        self._sealed_by_writer = 0
        self._sealed_seen_by_loop = 0
        # (open segment bytes, _sealed_by_writer), replaced whole by the writer so the
        # loop never sees one updated without the other.
        self._writer_counts: tuple[int, int] = (0, 0)
        self._pending_bytes = 0  # queued + in flight, not yet acknowledged
        self._done: asyncio.Future[None] = loop.create_future()
        # Shared (GIL-atomic reads/writes, deque ops; the condition guards sleeping).
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = threading.Condition(threading.Lock())
        self._idle = False
        self._closing = False
        self._seal_requested = False
        self._seal_on_close = False
        self._next_settings = settings
        self._failure: WalFailed | None = None
        # Writer-thread side.
        self._settings = settings
        self._seq = state.next_seq
        self._file: AppendFile | None = None
        self._size = 0
        self._frames = 0
        self._opened_at: float | None = None  # clock.monotonic() of the first batch
        self._thread = threading.Thread(
            target=self._writer_main, name=f"wal-writer:{directory}", daemon=True
        )

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
        on_batch: Callable[[BatchStats], None] | None = None,
        initial_epoch: int | None = None,
    ) -> WriteAheadLog:
        """Recover `directory` (see wal.recovery) and start the writer thread."""
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(
            None,
            lambda: recover(directory, fileops=fileops, clock=clock, initial_epoch=initial_epoch),
        )
        wal = cls(
            directory,
            state,
            settings=settings or WalSettings(),
            clock=clock,
            fileops=fileops,
            loop=loop,
            on_sealed=on_sealed,
            on_batch=on_batch,
        )
        await loop.run_in_executor(None, wal._open_segment_sync)
        wal._thread.start()
        return wal

    async def close(self, *, seal: bool = False) -> None:
        """Write and fsync everything queued, optionally seal, stop the writer."""
        if not self._thread.is_alive() and self._done.done():
            return
        self._seal_on_close = seal
        self._closing = True
        self._notify()
        await asyncio.shield(self._done)

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
        if self._closing:
            raise WalClosed(f"WAL {self.directory} is closed")
        if not data or frames < 1:
            raise ValueError("an append carries at least one frame")
        limits = self._limits
        if self._pending_bytes + len(data) > limits.pending_bytes_max:
            raise WalFull(self._pending_bytes, limits.pending_bytes_max, limits.retry_after_s)
        future: asyncio.Future[AppendAck] = self._loop.create_future()
        self._queue.append(_Pending(data, frames, future))
        self._pending_bytes += len(data)
        if self._idle:
            self._notify()
        return future

    # ------------------------------------------------------------ state & control
    @property
    def failed(self) -> WalFailed | None:
        return self._failure

    @property
    def pending_bytes(self) -> int:
        """Appended, not yet acknowledged."""
        return self._pending_bytes

    @property
    def unshipped_bytes(self) -> int:
        """Bytes on disk or queued that are not committed yet (exact between batches)."""
        # One read of the writer's published pair: (open segment bytes, bytes it sealed).
        open_bytes, sealed_by_writer = self._writer_counts
        in_handover = sealed_by_writer - self._sealed_seen_by_loop
        return self._sealed_bytes + in_handover + open_bytes + self._pending_bytes

    @property
    def open_segment_bytes(self) -> int:
        """Bytes fsynced into the open segment (read without a lock: a gauge value)."""
        return self._size

    def open_segment_age_s(self) -> float:
        """Seconds since the open segment's first write, 0 when it is empty."""
        opened = self._opened_at
        return 0.0 if opened is None else max(0.0, self._clock.monotonic() - opened)

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
        settings = self._next_settings
        if segment_bytes is not None:
            settings = replace(settings, segment_bytes=segment_bytes)
        if segment_max_age_s is not None:
            settings = replace(settings, segment_max_age_s=segment_max_age_s)
        self._next_settings = settings

    def request_seal(self) -> None:
        """Seal the open segment now if it has data; appends not yet written go to the
        next segment. A request on an empty segment is dropped."""
        self._seal_requested = True
        self._notify()

    def poke(self) -> None:
        """Re-check the age deadline now (tests moving a manual clock call this)."""
        self._notify()

    async def mark_committed(self, seq: int) -> None:
        """The segment's manifest is stored and reported: delete it for good."""
        segment = self._sealed.get(seq)
        if segment is None:
            raise KeyError(f"segment {seq} is not a sealed, uncommitted segment of this WAL")
        await self._loop.run_in_executor(None, self._delete_sync, segment.path)
        if self._sealed.pop(seq, None) is not None:
            self._sealed_bytes -= segment.size_bytes

    # ------------------------------------------------ loop-side completion hooks
    def _notify(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    def _acknowledge(self, batch: _Batch) -> None:
        offset = batch.offset
        for item in batch.items:
            if not item.future.done():
                item.future.set_result(AppendAck(self.epoch, batch.seq, offset, item.frames))
            offset += len(item.data)
        self._pending_bytes -= batch.nbytes
        if self._on_batch is not None:
            self._on_batch(BatchStats(len(batch.items), batch.nbytes, batch.sync_s))

    def _sealed_segment(self, segment: SealedSegment) -> None:
        self._sealed[segment.seq] = segment
        self._sealed_bytes += segment.size_bytes
        self._sealed_seen_by_loop += segment.size_bytes
        if self._on_sealed is not None:
            self._on_sealed(segment)

    def _fail_waiting(self, in_flight: list[_Pending]) -> None:
        """Fail every unacknowledged append: `in_flight` (the batch the error hit, whose
        bytes may be on disk) as `maybe_written`, the queued ones as not written."""
        failure = self._failure
        assert failure is not None
        maybe = WalFailed(str(failure), maybe_written=True)
        maybe.__cause__ = failure.__cause__
        queued = list(self._queue)
        self._queue.clear()
        for items, error in ((in_flight, maybe), (queued, failure)):
            for item in items:
                self._pending_bytes -= len(item.data)
                if not item.future.done():
                    item.future.set_exception(error)

    def _writer_stopped(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    # ------------------------------------------------------------- writer thread
    def _post(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.warning("WAL %s: event loop closed before the writer finished", self.directory)

    def _take_batch(self) -> _Batch | None:
        queue = self._queue
        if not queue:
            return None
        items: list[_Pending] = []
        size = 0
        room = self._settings.segment_bytes - self._size
        limit = self._settings.batch_bytes_max
        while queue:
            nxt = len(queue[0].data)
            if items and (size + nxt > limit or size + nxt > room):
                break
            items.append(queue.popleft())
            size += nxt
        return _Batch(items, size, self._seq, self._size)

    def _seal_due(self) -> bool:
        """Size or age says the open segment should be sealed."""
        if self._frames == 0:
            return False
        if self._size >= self._settings.segment_bytes:
            return True
        return (
            self._opened_at is not None
            and self._clock.monotonic() >= self._opened_at + self._settings.segment_max_age_s
        )

    def _wait_for_work(self) -> None:
        with self._wakeup:
            self._idle = True  # set before looking at the queue: no lost wake-up
            busy = self._queue or self._closing or self._seal_requested
            if not busy and not self._seal_due():
                timeout = IDLE_WAIT_S_MAX
                if self._opened_at is not None and self._frames:
                    deadline = self._opened_at + self._settings.segment_max_age_s
                    timeout = min(timeout, max(0.0, deadline - self._clock.monotonic()))
                self._wakeup.wait(timeout)
            self._idle = False

    def _writer_main(self) -> None:
        synced: _Batch | None = None  # fsynced, acknowledgement not posted yet
        batch: _Batch | None = None
        try:
            while True:
                if self._seal_requested:
                    self._seal_requested = False
                    if synced is not None:
                        self._post(self._acknowledge, synced)
                        synced = None
                    if self._frames:
                        self._seal_sync()
                    continue
                batch = self._take_batch()
                if batch is None:
                    if synced is not None:
                        self._post(self._acknowledge, synced)
                        synced = None
                    if self._seal_due():
                        self._seal_sync()
                    elif self._closing:
                        if self._seal_on_close and self._frames:
                            self._seal_sync()
                        break
                    else:
                        self._wait_for_work()
                    continue
                assert self._file is not None
                items = batch.items
                data = items[0].data if len(items) == 1 else b"".join(i.data for i in items)
                if self._opened_at is None:
                    self._opened_at = self._clock.monotonic()
                self._file.write(data)
                if synced is not None:  # pipelining: ack N while N+1 is on its way
                    self._post(self._acknowledge, synced)
                    synced = None
                failpoints.hit("wal.before_fsync")
                started = time.perf_counter()
                self._file.sync()
                batch.sync_s = time.perf_counter() - started
                failpoints.hit("wal.after_fsync")
                self._size += batch.nbytes
                self._writer_counts = (self._size, self._sealed_by_writer)
                self._frames += sum(i.frames for i in items)
                synced, batch = batch, None
                if self._size >= self._settings.segment_bytes:
                    self._post(self._acknowledge, synced)
                    synced = None
                    self._seal_sync()
        except BaseException as err:
            if synced is not None:  # durable before the error: acknowledge it
                self._post(self._acknowledge, synced)
            failure = WalFailed(f"WAL {self.directory} failed: {err!r}")
            failure.__cause__ = err
            self._failure = failure
            log.error("WAL %s is failed and accepts nothing more: %r", self.directory, err)
            self._post(self._fail_waiting, list(batch.items) if batch is not None else [])
            if not isinstance(err, OSError):
                raise
        finally:
            self._close_file_sync()
            self._post(self._writer_stopped)

    # --------------------------------------------- blocking parts (off the loop)
    def _open_segment_sync(self) -> None:
        path = os.path.join(self.directory, open_name(self._seq))
        chunk = self._settings.preallocate_bytes
        if chunk and not (self._fileops.exists(path) and self._fileops.file_size(path)):
            # Recovery leaves an open segment empty (or gone): it starts at byte 0.
            self._file = self._fileops.open_preallocated(path, chunk)
            self._size = 0
        else:
            self._file = self._fileops.open_append(path)
            self._size = self._fileops.file_size(path)
        self._writer_counts = (self._size, self._sealed_by_writer)
        self._fileops.fsync_dir(self.directory)

    def _seal_sync(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        seq = self._seq
        sealed_path = os.path.join(self.directory, sealed_name(seq))
        open_path = os.path.join(self.directory, open_name(seq))
        if self._fileops.file_size(open_path) != self._size:
            # The preallocated zero tail goes before the seal: a sealed segment is its
            # data only (ftruncate + fsync; a crash before the rename leaves an open
            # segment that recovery seals the same way).
            self._fileops.truncate(open_path, self._size)
        self._fileops.rename(open_path, sealed_path)
        failpoints.hit("wal.mid_seal")
        segment = SealedSegment(seq, self.epoch, sealed_path, self._size, self._frames)
        # Hand the bytes over in one tuple store: the loop reads the pair at once, so
        # it counts a sealed segment exactly once, never zero times or twice.
        self._sealed_by_writer += self._size
        self._size = 0
        self._writer_counts = (0, self._sealed_by_writer)
        self._seq = seq + 1
        self._settings = self._next_settings
        self._frames = 0
        self._opened_at = None
        self._open_segment_sync()  # creates seg-(seq+1).wal.open and fsyncs the directory
        self._post(self._sealed_segment, segment)

    def _delete_sync(self, path: str) -> None:
        self._fileops.unlink(path)
        self._fileops.fsync_dir(self.directory)

    def _close_file_sync(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
