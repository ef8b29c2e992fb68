"""The WAL against an in-memory model, with power cuts anywhere (tests/support/simfs.py).

`WalCrashMachine` drives one `WriteAheadLog` on a `SimFs` through appends (plain and
topic frames, several appends per step so they group-commit), seal requests, clock
moves past the segment age, commits of sealed segments, `segment_bytes` changes,
injected write/fsync failures, clean close-and-reopen, and power cuts: either right
now, or armed to happen before the k-th next file operation, i.e. in the middle of a
write, a seal, a commit, a close or a recovery. After a power cut the WAL is reopened
on the disk image the cut left (sometimes with a second cut during that recovery).

While the WAL runs, every acknowledgement and every sealed segment is checked against
the model: acks name the open segment and the exact byte offset, in append order, and
nothing is acknowledged after a failure; a seal names the open segment with exactly
the acknowledged frames and bytes; size, age and requested seals happen.

After every reopen the directory is read back with an independent frame decoder:

- every acknowledged record, and every record a previous recovery found, is present
  exactly once, in the segment its ack named, unless its segment was committed;
- nothing else is present except a prefix of the records appended but never
  acknowledged in the last session; nothing committed or lost comes back; records
  are in append order; payload, tenant, timestamp and format round-trip;
- sequence numbers: committed + present segments are exactly 1..open_seq-1 (no gap,
  no reuse of a number that held data);
- the recovery report matches the files it found (frames kept, bytes kept/cut per
  open segment, sealed segments pending, epoch, created) and only EPOCH, the sealed
  segments and one empty open segment are left.

Waiting: the WAL acknowledges from its writer thread. After each step the machine
waits (on an asyncio.Event, never a sleep) until every append is resolved and every
seal the model predicts has been reported, so the next step, and an armed power cut,
see a quiet writer.

Three WAL bugs this machine found (a committed sequence number handed out again after
a crash during recovery; recovery sealing page-cache-only data without an fsync; a new
WAL directory whose parent was never fsynced) are fixed; the regression tests at the
end of this file reproduce each of them exactly.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import os
import random
import struct
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import google_crc32c
import pytest
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from shared.clock import ManualClock
from wal import AppendAck, SealedSegment, WalFailed, WalFull, WalSettings, WriteAheadLog
from wal.frame import FMT_RECORD, FMT_TOPIC, encode_records, join_topic_payload
from wal.reader import iter_frames
from wal.segment import EPOCH_FILE, open_name, parse_name, sealed_name

try:  # `python -m pytest` (./dev test) puts the repository root on sys.path ...
    from tests.support.report import report
    from tests.support.simfs import SimFs
except ImportError:  # ... a bare `pytest` only puts tests/ there (rootdir-relative import)
    from support.report import report  # type: ignore[no-redef,import-not-found,unused-ignore]
    from support.simfs import SimFs  # type: ignore[no-redef,import-not-found,unused-ignore]

T = TypeVar("T")
PWR01: collections.Counter[str] = collections.Counter()
"""Figures for the PWR-01 report line, printed once the module's tests are done."""


@pytest.fixture(scope="module", autouse=True)
def _pwr01_report() -> Iterator[None]:
    yield
    if PWR01["machines"]:
        report("PWR-01", **PWR01)


WAL_DIR = "/data/wal/endpoint-1"
EPOCH = 7
HEADER = struct.Struct(">IIBIQ")  # LEN | CRC32C | FMT | TENANT | TS (see wal/__init__.py)
LEN_AFTER_CRC = 13
WAIT_S = 10.0  # a safety net for a writer that never answers; never reached when green


class KnownBug(AssertionError):
    """A regression of one of the fixed bugs the tests at the end reproduce."""


# ------------------------------------------------------- independent decoding
@dataclass(frozen=True, slots=True)
class DecodedFrame:
    fmt: int
    tenant: int
    ts_ms: int
    payload: bytes


def decode_prefix(data: bytes) -> tuple[list[DecodedFrame], int]:
    """The valid frames at the start of `data` and how many bytes they cover; stops at
    the first invalid frame. Written from the format, not with wal.reader."""
    frames: list[DecodedFrame] = []
    offset = 0
    while len(data) - offset >= HEADER.size:
        length, crc, fmt, tenant, ts_ms = HEADER.unpack_from(data, offset)
        end = offset + 8 + length
        if length < LEN_AFTER_CRC or end > len(data) or fmt not in (FMT_RECORD, FMT_TOPIC):
            break
        payload = data[offset + HEADER.size : end]
        if google_crc32c.value(payload) != crc:
            break
        if fmt == FMT_TOPIC:
            topic_end = 2 + int.from_bytes(payload[:2], "big")
            if len(payload) < 2 or topic_end > len(payload):
                break
            try:
                payload[2:topic_end].decode("utf-8")
            except UnicodeDecodeError:
                break
        frames.append(DecodedFrame(fmt, tenant, ts_ms, payload))
        offset = end
    return frames, offset


def record_id(frame: DecodedFrame) -> int:
    """The record id embedded in a frame this test wrote (the message starts ``rec:<id>;``)."""
    message = frame.payload
    if frame.fmt == FMT_TOPIC:
        message = message[2 + int.from_bytes(message[:2], "big") :]
    assert message.startswith(b"rec:"), f"a frame this test never wrote: {frame!r}"
    return int(message[4 : message.index(b";")])


def sealed_record_ids(fs: SimFs) -> list[int]:
    """Record ids in the sealed segments of `fs`, in segment then frame order."""
    out: list[int] = []
    for name in fs.listdir(WAL_DIR):
        parsed = parse_name(name)
        if parsed is not None and not parsed[1]:
            data = fs.read_bytes(f"{WAL_DIR}/{name}")
            frames, valid = decode_prefix(data)
            assert valid == len(data), f"{name} has bytes after its last valid frame"
            out.extend(record_id(f) for f in frames)
    return out


@dataclass(frozen=True, slots=True)
class OpenSegmentExpectation:
    seq: int
    frames_kept: int
    bytes_kept: int
    bytes_cut: int


@dataclass(frozen=True, slots=True)
class DiskExpectation:
    """What recovery should report, worked out from the files before it runs."""

    created: bool
    opens: tuple[OpenSegmentExpectation, ...]
    segment_files: int


def expect_recovery(fs: SimFs) -> DiskExpectation:
    try:
        names = fs.listdir(WAL_DIR)
    except FileNotFoundError:  # the first open creates the directory
        names = []
    opens = []
    segment_files = 0
    for name in names:
        parsed = parse_name(name)
        if parsed is None:
            continue
        segment_files += 1
        seq, is_open = parsed
        if is_open:
            data = fs.read_bytes(f"{WAL_DIR}/{name}")
            frames, valid = decode_prefix(data)
            # Trailing zeros (a preallocated tail, ADR 0016) are not counted as cut.
            cut = len(data[valid:].rstrip(b"\0"))
            opens.append(OpenSegmentExpectation(seq, len(frames), valid, cut))
    opens.sort(key=lambda o: o.seq)
    return DiskExpectation(EPOCH_FILE not in names, tuple(opens), segment_files)


def reported_opens(wal: WriteAheadLog) -> tuple[OpenSegmentExpectation, ...]:
    return tuple(
        OpenSegmentExpectation(o.seq, o.frames_kept, o.bytes_kept, o.bytes_cut)
        for o in wal.recovery.open_segments
    )


# ------------------------------------------------------------------ the model
@dataclass(frozen=True, slots=True)
class Rec:
    rid: int
    fmt: int
    tenant: int
    ts_ms: int
    message: bytes  # what was passed to append / append_topic
    payload: bytes  # the frame payload (FMT 1: topic length, topic, message)

    @property
    def frame_bytes(self) -> int:
        return HEADER.size + len(self.payload)


@dataclass(slots=True)
class Append:
    """One append call that was queued (it returned a future)."""

    recs: list[Rec]
    future: asyncio.Future[AppendAck]
    ack: AppendAck | None = None

    @property
    def size(self) -> int:
        return sum(r.frame_bytes for r in self.recs)


SEGMENT_BYTES = st.sampled_from([1, 150, 400, 1_000, 100_000])
SEED = st.integers(0, 2**32 - 1)
RECOVERY_CUT = st.none() | st.integers(0, 8)


class WalCrashMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.wake = asyncio.Event()
        self.clock = ManualClock()
        self.fs = self._watch(SimFs([os.path.dirname(WAL_DIR)]))
        self.wal: WriteAheadLog | None = None
        self.settings = WalSettings()
        self.next_rid = 0
        self.records: dict[int, Rec] = {}
        self.durable: dict[int, int] = {}  # record -> segment it must be in
        self.maybe_committed: dict[int, list[int]] = {}  # commit cut short: whole or gone
        self.committed: set[int] = set()  # sequence numbers deleted for good
        self.dead_rids: set[int] = set()  # committed, rejected or lost: never to come back
        self.max_seq = 0  # the highest sequence number that ever held data
        self._new_session(open_seq=1)
        PWR01["machines"] += 1

    def _new_session(self, open_seq: int) -> None:
        self.session: list[Append] = []  # queued appends of the current WAL, in order
        self.events: list[tuple[str, Any]] = []  # ("done", Append) / ("sealed", segment)
        self.drained = 0  # session[:drained] are in `events` already
        self.failed_at: int | None = None  # index of the first failed append
        self.fault_injected = False
        self.open_seq = open_seq  # the open segment, as the model sees it
        self.open_bytes = 0
        self.open_frames = 0
        self.opened_at: float | None = None  # clock when its first batch was written
        self.open_limit = self.settings.segment_bytes  # segment_bytes in force for it
        self.seal_wanted = False

    # ---------------------------------------------------------------- plumbing
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def _watch(self, fs: SimFs) -> SimFs:
        def wake_up() -> None:
            self.loop.call_soon_threadsafe(self.wake.set)

        fs.on_power_cut = wake_up
        return fs

    @property
    def w(self) -> WriteAheadLog:
        assert self.wal is not None
        return self.wal

    def _drain(self) -> None:
        """Move resolved appends into `events`, in append order (no checks here: this
        also runs inside WAL callbacks, where an exception would only be logged)."""
        while self.drained < len(self.session) and self.session[self.drained].future.done():
            self.events.append(("done", self.session[self.drained]))
            self.drained += 1

    def _on_sealed(self, segment: SealedSegment) -> None:
        self._drain()  # the acks of its batches were delivered before this callback
        self.events.append(("sealed", segment))
        self.wake.set()

    def _seal_expected(self) -> bool:
        if self.open_frames == 0:
            return False
        if self.seal_wanted or self.open_bytes >= self.open_limit:
            return True
        if self.opened_at is None:
            return False
        return self.clock.monotonic() >= self.opened_at + self.settings.segment_max_age_s

    async def _quiet(self) -> None:
        """Wait until every append is resolved and every predicted seal was reported."""
        async with asyncio.timeout(WAIT_S):
            while True:
                self.wake.clear()
                self._drain()
                self._process_events()
                resolved = self.drained == len(self.session)
                stopped = self.fs.dead or self.w.failed is not None
                if resolved and (stopped or not self._seal_expected()):
                    return
                await self.wake.wait()

    def _settle(self) -> None:
        try:
            self.run(self._quiet())
        except TimeoutError:
            raise AssertionError(
                f"the writer went quiet: {len(self.session) - self.drained} append(s) "
                f"unresolved, seal of segment {self.open_seq} expected: "
                f"{self._seal_expected()}, failed: {self.w.failed!r}"
            ) from None

    def _after_step(self) -> None:
        self._settle()
        if self.fs.dead:
            self._reboot(recovery_cut=None, seed=0)
        elif self.w.failed is not None:
            assert self.fault_injected, f"the WAL failed on its own: {self.w.failed!r}"

    # ------------------------------------------------- acks and seals, as they come
    def _process_events(self) -> None:
        for kind, item in self.events:
            if kind == "done":
                self._check_done(item)
            else:
                self._check_seal(item)
        self.events.clear()

    def _check_done(self, append: Append) -> None:
        err = append.future.exception()
        if err is not None:
            assert isinstance(err, WalFailed), repr(err)
            if self.failed_at is None:
                self.failed_at = self.session.index(append)
            return
        ack = append.future.result()
        assert self.failed_at is None, f"{ack} acknowledged after an append failed"
        append.ack = ack
        seq = self.open_seq
        assert (ack.epoch, ack.seq, ack.frames) == (EPOCH, seq, len(append.recs)), ack
        assert ack.offset == self.open_bytes, f"{ack}: expected offset {self.open_bytes}"
        assert ack.offset < self.open_limit, f"{ack}: written past segment_bytes"
        if ack.offset == 0:
            self.opened_at = self.clock.monotonic()
        self.open_bytes += append.size
        self.open_frames += ack.frames
        self.max_seq = max(self.max_seq, seq)
        for rec in append.recs:
            self.durable[rec.rid] = seq

    def _check_seal(self, segment: SealedSegment) -> None:
        seq = self.open_seq
        assert self.open_frames > 0, f"sealed {segment} without acknowledged frames"
        assert (segment.seq, segment.epoch) == (seq, EPOCH), segment
        assert segment.path == f"{WAL_DIR}/{sealed_name(seq)}", segment
        assert (segment.size_bytes, segment.frames) == (self.open_bytes, self.open_frames)
        event("sealed")
        self.open_seq = seq + 1
        self.open_bytes = self.open_frames = 0
        self.opened_at = None
        self.open_limit = self.settings.segment_bytes  # reconfigure() applies from here
        self.seal_wanted = False

    # -------------------------------------------------------- open and recover
    def _recover(self, fs: SimFs, recovery_cut: int | None, seed: int) -> None:
        """Open the WAL on `fs`; a power cut during recovery reopens on its image."""
        fs.clear_faults()
        if recovery_cut is not None:
            fs.arm_power_cut(recovery_cut, random.Random(seed))
        while True:
            expected = expect_recovery(fs)
            try:
                wal = self.run(
                    WriteAheadLog.open(
                        WAL_DIR,
                        settings=self.settings,
                        clock=self.clock,
                        fileops=fs,
                        on_sealed=self._on_sealed,
                        initial_epoch=EPOCH,
                    )
                )
            except OSError:
                assert fs.cut_image is not None, "recovery failed without a power cut"
                note(f"power cut during recovery after {fs.mutations} file operations")
                event("a power cut hit a recovery")
                fs = self._watch(fs.cut_image)
                continue
            break
        self.fs, self.wal = fs, wal
        self._check_recovered(expected)
        PWR01["recoveries_checked"] += 1
        PWR01["records_verified"] += len(self.durable)

    def _reboot(self, recovery_cut: int | None, seed: int) -> None:
        """After a power cut: stop the old writer (every call fails now), reopen."""
        image = self.fs.cut_image
        assert image is not None
        event("power cut")
        PWR01["power_cuts"] += 1
        self.run(self.w.close())
        self._drain()
        self._process_events()
        assert self.drained == len(self.session), "close() left appends unresolved"
        self._recover(self._watch(image), recovery_cut, seed)

    def _check_recovered(self, expected: DiskExpectation) -> None:
        wal, fs = self.w, self.fs

        # The recovery report describes the files that were there.
        report = wal.recovery
        assert (report.epoch, wal.epoch, report.created) == (EPOCH, EPOCH, expected.created)
        got = reported_opens(wal)
        assert got == expected.opens, f"recovery reported {got}, the files say {expected.opens}"
        for o in report.open_segments:
            assert (o.reason is None) == (o.bytes_cut == 0), o
        assert report.frames_kept == sum(o.frames_kept for o in expected.opens)
        assert report.bytes_cut == sum(o.bytes_cut for o in expected.opens)

        # Only EPOCH, sealed segments and one empty open segment are left.
        present: dict[int, list[int]] = {}
        sizes: dict[int, int] = {}
        names = fs.listdir(WAL_DIR)
        assert open_name(wal.open_seq) in names, f"no open segment {wal.open_seq}: {names}"
        for name in names:
            path = f"{WAL_DIR}/{name}"
            if name == EPOCH_FILE:
                assert fs.read_bytes(path) == f"{EPOCH}\n".encode()
                continue
            parsed = parse_name(name)
            assert parsed is not None, f"stray file {name} after recovery"
            seq, is_open = parsed
            if is_open:
                assert seq == wal.open_seq, f"open segment {seq}, writer at {wal.open_seq}"
                # Empty, or only the zeros of its preallocated space.
                assert not fs.read_bytes(path).strip(b"\0"), f"{name} is not empty"
                if not self.settings.preallocate_bytes:
                    assert fs.file_size(path) == 0, f"{name} is not empty"
                continue
            data = fs.read_bytes(path)
            frames, valid = decode_prefix(data)
            assert valid == len(data), f"{name}: bytes after the last valid frame"
            assert frames, f"{name}: a sealed segment without frames"
            assert [f.payload for _, f in iter_frames(data)] == [f.payload for f in frames]
            rids = []
            for frame in frames:
                rid = record_id(frame)
                rec = self.records.get(rid)
                assert rec is not None, f"phantom record {rid} in {name}"
                assert (frame.fmt, frame.tenant, frame.ts_ms, frame.payload) == (
                    rec.fmt,
                    rec.tenant,
                    rec.ts_ms,
                    rec.payload,
                ), f"record {rid} changed on disk"
                rids.append(rid)
            present[seq] = rids
            sizes[seq] = len(data)
        assert report.sealed_pending == len(present)
        assert [(s.seq, s.size_bytes) for s in wal.sealed_segments()] == sorted(sizes.items())

        # Records: once each, in append order, nothing lost, nothing resurrected.
        found = [rid for seq in sorted(present) for rid in present[seq]]
        where = {rid: seq for seq, rids in present.items() for rid in rids}
        assert len(where) == len(found), "a record is present twice"
        assert found == sorted(found), "records are out of append order"
        back = set(found) & self.dead_rids
        assert not back, f"committed, rejected or lost records came back: {sorted(back)}"
        for rid, seq in self.durable.items():
            assert where.get(rid) == seq, f"record {rid} of segment {seq} is in {where.get(rid)}"
        for seq, rids in self.maybe_committed.items():
            assert present.get(seq, rids) == rids, f"half-committed segment {seq} changed"
        unacked = [r.rid for a in self.session if a.ack is None for r in a.recs]
        extra = [r for r in found if r not in self.durable and where[r] not in self.maybe_committed]
        assert extra == unacked[: len(extra)], (
            f"unacknowledged survivors {extra} are not a prefix of {unacked}"
        )

        # Sequence numbers: committed + present == 1..open_seq-1, nothing reused.
        self.committed |= set(self.maybe_committed) - set(present)
        assert not (set(present) & self.committed), "a committed segment is back"
        highest = max(self.max_seq, *present, 0)
        assert wal.open_seq == highest + 1, f"open segment {wal.open_seq}, not {highest + 1}"
        gaps = set(range(1, wal.open_seq)) - set(present) - self.committed
        assert not gaps, f"sequence numbers {sorted(gaps)} vanished"

        if extra:
            event("unacknowledged records survived")
        if report.bytes_cut:
            event("recovery cut a torn tail")
        if any(o.zero_tail_bytes for o in report.open_segments):
            event("recovery dropped a preallocated zero tail")
        if any(o.frames_kept for o in report.open_segments):
            event("recovery sealed an open segment")
        if self.maybe_committed:
            event("a power cut hit a commit")

        # The disk is the truth from now on.
        self.dead_rids |= {r.rid for a in self.session for r in a.recs} - set(found)
        self.dead_rids |= {r for rids in self.maybe_committed.values() for r in rids} - set(found)
        self.durable = dict(where)
        self.maybe_committed = {}
        self.max_seq = highest
        self._new_session(open_seq=wal.open_seq)

    # ------------------------------------------------------------------- rules
    @initialize(
        segment_bytes=SEGMENT_BYTES,
        batch_bytes_max=st.sampled_from([1, 200, 4 * 1024 * 1024]),
        pending_bytes_max=st.sampled_from([400, 64 * 1024 * 1024]),
        max_age_s=st.sampled_from([5.0, 30.0]),
        preallocate_bytes=st.sampled_from([0, 0, 64, 1000]),
        recovery_cut=RECOVERY_CUT,
        seed=SEED,
    )
    def open_the_wal(
        self,
        segment_bytes: int,
        batch_bytes_max: int,
        pending_bytes_max: int,
        max_age_s: float,
        preallocate_bytes: int,
        recovery_cut: int | None,
        seed: int,
    ) -> None:
        self.settings = WalSettings(
            segment_bytes=segment_bytes,
            segment_max_age_s=max_age_s,
            batch_bytes_max=batch_bytes_max,
            pending_bytes_max=pending_bytes_max,
            preallocate_bytes=preallocate_bytes,
        )
        if preallocate_bytes:
            event("preallocated segments")
        self._recover(self.fs, recovery_cut, seed)

    @rule(
        calls=st.lists(
            st.tuples(st.booleans(), st.lists(st.integers(0, 150), min_size=1, max_size=4)),
            min_size=1,
            max_size=4,
        ),
        tenant=st.sampled_from([0, 1, 2**32 - 1]),
    )
    def append(self, calls: list[tuple[bool, list[int]]], tenant: int) -> None:
        """Several appends in one event-loop step, so they can share a batch and fsync."""
        self._append_calls(calls, tenant)

    @rule(sizes=st.lists(st.integers(0, 12), min_size=2, max_size=12))
    def append_a_burst(self, sizes: list[int]) -> None:
        """Many small single-record appends in one step: group commit at work."""
        self._append_calls([(False, [n]) for n in sizes], tenant=1)

    def _append_calls(self, calls: list[tuple[bool, list[int]]], tenant: int) -> None:
        """One append (or append_topic) per call, each with records padded by `pads`."""

        async def go() -> None:
            for topic, pads in calls:
                ts = self.clock.time_ms()
                recs = []
                for pad in pads[:1] if topic else pads:
                    rid = self.next_rid
                    self.next_rid += 1
                    message = b"rec:%d;" % rid + b"." * pad
                    if topic:
                        payload = join_topic_payload(f"t/{rid % 3}", message)
                        recs.append(Rec(rid, FMT_TOPIC, tenant, ts, message, payload))
                    else:
                        recs.append(Rec(rid, FMT_RECORD, tenant, ts, message, message))
                self.records.update((r.rid, r) for r in recs)
                size = sum(r.frame_bytes for r in recs)
                failed, pending = self.w.failed, self.w.pending_bytes
                try:
                    if topic:
                        future = self.w.append_topic(
                            f"t/{recs[0].rid % 3}", recs[0].message, tenant=tenant
                        )
                    else:
                        future = self.w.append([r.message for r in recs], tenant=tenant)
                except WalFailed:
                    assert failed is not None, "WalFailed from a WAL that had not failed"
                    self.dead_rids.update(r.rid for r in recs)
                    continue
                except WalFull:
                    event("WalFull")
                    assert failed is None
                    assert pending + size > self.settings.pending_bytes_max
                    self.dead_rids.update(r.rid for r in recs)
                    continue
                assert failed is None, "a failed WAL accepted an append"
                assert pending + size <= self.settings.pending_bytes_max, "WalFull expected"
                future.add_done_callback(lambda _: self.wake.set())
                self.session.append(Append(recs, future))

        self.run(go())
        self._after_step()

    @rule()
    def request_seal(self) -> None:
        """Only on a segment with data: a request on an empty one is dropped by the
        writer thread whenever it gets to it, which could seal a later segment at a
        moment the model cannot predict (test_an_idle_empty_segment_is_never_sealed in
        tests/unit/wal/test_log.py covers the dropped request)."""
        if self.open_frames and self.w.failed is None:
            self.seal_wanted = True
            self.w.request_seal()
        self._after_step()

    @rule(seconds=st.sampled_from([1, 4, 29, 31, 60]))
    def advance_the_clock(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.w.poke()
        self._after_step()

    @rule(segment_bytes=SEGMENT_BYTES)
    def reconfigure(self, segment_bytes: int) -> None:
        self.w.reconfigure(segment_bytes=segment_bytes)
        s = self.settings
        self.settings = dataclasses.replace(s, segment_bytes=segment_bytes)
        self._after_step()

    @rule(pick=st.integers(0, 2**16))
    def commit_a_sealed_segment(self, pick: int) -> None:
        sealed = self.w.sealed_segments()
        if not sealed:
            return
        seq = sealed[pick % len(sealed)].seq
        rids = sorted(rid for rid, s in self.durable.items() if s == seq)
        for rid in rids:
            del self.durable[rid]
        try:
            self.run(self.w.mark_committed(seq))
        except OSError:
            assert self.fs.dead, "mark_committed failed without a power cut"
            self.maybe_committed[seq] = rids
        else:
            self.committed.add(seq)
            self.dead_rids.update(rids)
            assert seq not in {s.seq for s in self.w.sealed_segments()}
        self._after_step()

    @rule(
        op=st.sampled_from(["sync", "write"]),
        err=st.sampled_from([errno.EIO, errno.ENOSPC]),
        partial=st.integers(0, 40),
    )
    def inject_a_failure(self, op: str, err: int, partial: int) -> None:
        """The next write or fdatasync fails: the WAL must fail for good."""
        self.fs.fail_next(op, err=err, partial=partial)
        self.fault_injected = True
        self._after_step()

    @rule(seal=st.booleans())
    def close_and_reopen(self, seal: bool) -> None:
        self.run(self.w.close(seal=seal))
        self._drain()
        self._process_events()
        assert self.drained == len(self.session), "close() left appends unresolved"
        if self.fs.dead:  # an armed power cut hit the close
            self._reboot(recovery_cut=None, seed=0)
            return
        if self.w.failed is None:
            assert all(a.ack is not None for a in self.session), "close() dropped appends"
            assert not (seal and self.open_frames), "close(seal=True) did not seal"
        self._recover(self.fs, None, 0)

    @rule(after_ops=st.none() | st.integers(0, 12), seed=SEED, recovery_cut=RECOVERY_CUT)
    def cut_the_power(self, after_ops: int | None, seed: int, recovery_cut: int | None) -> None:
        """Now (None), or just before the (after_ops+1)-th file operation from now: in a
        write, a seal, a commit, a close or the next recovery. The reopen after a cut now
        may itself be cut after `recovery_cut` operations."""
        if after_ops is not None:
            self.fs.arm_power_cut(after_ops, random.Random(seed))
            self._after_step()
            return
        self.fs.power_cut(random.Random(seed))
        self._reboot(recovery_cut, seed ^ 0x5EED)

    def teardown(self) -> None:
        try:
            if self.wal is not None:
                self.run(asyncio.wait_for(self.wal.close(), WAIT_S))
            for append in self.session:  # observe every failure, even after a failed step
                if append.future.done() and not append.future.cancelled():
                    append.future.exception()
            self.run(self.loop.shutdown_default_executor())
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


WalCrashMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEveryAcknowledgedRecordSurvivesAnyPowerCut = WalCrashMachine.TestCase


# ------------------------------------------------------- plain scenario tests
def _payload(i: int) -> bytes:
    return b"rec:%d;" % i + b"." * (i % 17)


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize(
    ("op", "err", "partial"),
    [("sync", errno.EIO, 0), ("write", errno.ENOSPC, 0), ("write", errno.ENOSPC, 30)],
)
async def test_a_failed_write_or_fsync_is_sticky_and_everything_acked_before_it_survives(
    op: str, err: int, partial: int, seed: int
) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    fs = SimFs([WAL_DIR])
    wal = await WriteAheadLog.open(
        WAL_DIR, settings=WalSettings(segment_bytes=300), fileops=fs, initial_epoch=EPOCH
    )
    acked = []
    for i in range(rng.randint(1, 25)):
        await wal.append([_payload(i)], tenant=1)
        acked.append(i)
    fs.fail_next(op, err=err, partial=partial)
    failing = [wal.append([_payload(100 + j)], tenant=1) for j in range(3)]
    for future in failing:
        with pytest.raises(WalFailed):
            await future
    assert wal.failed is not None
    assert isinstance(wal.failed.__cause__, OSError)
    assert wal.failed.__cause__.errno == err
    syncs = fs.calls["sync"]
    for j in range(3):
        with pytest.raises(WalFailed):
            wal.append([_payload(200 + j)], tenant=1)
        with pytest.raises(WalFailed):
            wal.append_topic("t", _payload(300 + j), tenant=1)
    wal.request_seal()
    await wal.close(seal=True)
    assert fs.calls["sync"] == syncs, "a failed fsync was retried"

    # Restart on the same disk, and on the disks a power cut at this moment may leave.
    for disk in [fs, *fs.crash_states(rng, 4)]:
        before = expect_recovery(disk)
        reopened = await WriteAheadLog.open(WAL_DIR, fileops=disk, initial_epoch=EPOCH)
        assert reported_opens(reopened) == before.opens
        assert reopened.failed is None
        found = sealed_record_ids(disk)
        assert found[: len(acked)] == acked
        # The failed batch may be there (it reached the file), what was queued behind not.
        assert found[len(acked) :] == [100, 101, 102][: len(found) - len(acked)]
        if op == "write":
            assert found == acked  # a failed write leaves at most a torn frame
        await reopened.append([b"rec:999;"], tenant=1)
        await reopened.close()


async def test_a_sequence_number_is_never_reused_after_a_restart_cut_short() -> None:
    seed = 1
    print(f"seed={seed}")
    fs = SimFs([os.path.dirname(WAL_DIR)])
    wal = await WriteAheadLog.open(WAL_DIR, fileops=fs, initial_epoch=EPOCH)
    first = await wal.append([b"rec:1;"], tenant=1)
    await wal.close(seal=True)
    wal = await WriteAheadLog.open(WAL_DIR, fileops=fs)
    await wal.mark_committed(first.seq)  # delivered: seg-1 is gone, seg-2.wal.open is durable
    await wal.close()
    assert fs.durable_listdir(WAL_DIR) == ["EPOCH", open_name(2)]

    # Restart, and cut the power before each file operation of the restart in turn (the
    # fixed bug: recovery deleted the empty seg-2.wal.open before the writer re-created
    # it, so a cut in between left only EPOCH and numbering restarted at 1).
    rng = random.Random(seed)
    for after_ops in range(12):
        [disk] = fs.crash_states(rng, 1)  # everything was durable: an exact copy
        disk.arm_power_cut(after_ops, rng)
        try:
            reopened = await WriteAheadLog.open(WAL_DIR, fileops=disk)
            await reopened.close()
        except OSError:
            pass
        for image in disk.crash_states(rng, 5):
            wal = await WriteAheadLog.open(WAL_DIR, fileops=image)
            second = await wal.append([b"rec:2;"], tenant=1)
            await wal.close()
            if (second.epoch, second.seq) == (first.epoch, first.seq):
                raise KnownBug(
                    f"(epoch, seq) {(first.epoch, first.seq)} named two different segments "
                    f"(power cut after {after_ops} operations)"
                )


async def test_acknowledged_records_survive_a_power_cut_in_a_new_wal_directory() -> None:
    seed = 20240601
    print(f"seed={seed}")
    fs = SimFs(["/data"])  # the WAL directory does not exist yet
    wal = await WriteAheadLog.open(WAL_DIR, fileops=fs, initial_epoch=EPOCH)
    await wal.append([b"rec:1;"], tenant=1)
    await wal.close()
    assert fs.pending_dir_ops("/data") == []  # the new directory's entry was fsynced
    for disk in fs.crash_states(random.Random(seed), 20):
        reopened = await WriteAheadLog.open(WAL_DIR, fileops=disk, initial_epoch=EPOCH + 1)
        await reopened.close()
        if reopened.recovery.created or sealed_record_ids(disk) != [1]:
            raise KnownBug(f"an acknowledged record is lost; the disk holds {disk.files()}")


async def test_what_recovery_keeps_survives_a_power_cut() -> None:
    seed = 3
    print(f"seed={seed}")
    fs = SimFs([WAL_DIR])
    wal = await WriteAheadLog.open(WAL_DIR, fileops=fs, initial_epoch=EPOCH)
    await wal.close()
    # The writer wrote a batch and the process died before its fdatasync (no power loss):
    # the frame is in the page cache only.
    f = fs.open_append(f"{WAL_DIR}/{open_name(1)}")
    f.write(encode_records([b"rec:1;"], tenant=1, ts_ms=1))
    f.close()
    wal = await WriteAheadLog.open(WAL_DIR, fileops=fs)  # restart: recovery seals it
    assert reported_opens(wal) == (OpenSegmentExpectation(1, 1, 27, 0),)
    await wal.close()
    assert fs.durable_listdir(WAL_DIR) == ["EPOCH", sealed_name(1), open_name(2)]
    for disk in fs.crash_states(random.Random(seed), 20):
        reopened = await WriteAheadLog.open(WAL_DIR, fileops=disk)
        await reopened.close()
        data = disk.read_bytes(f"{WAL_DIR}/{sealed_name(1)}")
        frames, valid = decode_prefix(data)
        if len(frames) != 1 or valid != len(data):
            raise KnownBug(f"sealed segment 1 holds {data!r} after a power cut")
