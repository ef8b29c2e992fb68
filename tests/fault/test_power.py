"""Power cuts on a real file system (PWR-02, PWR-04) and the ack-after-fsync audit
(PWR-03); PWR-01, simulated crash states, is tests/property/test_wal_crash_model.py.

PWR-02: an ext4 image on a loop device, a WAL writer (tests/fault/power_child.py)
appending to it and logging every acknowledgement to a file outside the image. At a
seeded random instant the test notes how long the ack log is, then takes the power cut:
an instant copy of the image's backing file (tests/support/loopfs.py explains why that
is what the device holds and not what the page cache holds, and why the copy is a
reflink on an XFS scratch). The copy is fsck'd, mounted, recovered with the WAL's own
recovery, and every acknowledgement logged before the cut must be there: the records
in segment <seq> at exactly the acknowledged bytes, payloads intact. The copy is the
disk the next cycle starts from, as after a reboot, so every cut also re-checks every
earlier cycle's acknowledgements (the oldest segments are "delivered": deleted, as
`mark_committed` does, to keep the image small).

PWR-04 runs the same harness with fsync disabled (`eatmydata`): it must see loss, or
the harness could not see it either. PWR-03 runs the writer under strace and checks
that each acknowledgement (the ack-log write) comes after an fdatasync that returned 0
on the segment holding the acknowledged bytes, after those bytes were written; then
the same for a node (`python -m edgemq node`): every HTTP 200 written to a client
socket must follow the fdatasync covering the segment write that holds each record id
of that request. Under `eatmydata` both audits must flag every acknowledgement.

Randomised instants print their seed; replay with EDGEMQ_TEST_SEED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from shared.clock import SYSTEM_CLOCK
from tests.fault.power_child import TENANT, record
from tests.fault.traced_node import Node
from tests.support.ledger import Ledger
from tests.support.loopfs import (
    MIB,
    LoopMount,
    Scratch,
    fsck,
    make_image,
    missing_root_tools,
    run,
    snapshot_scratch,
)
from tests.support.postgres import free_port
from tests.support.report import report
from tests.support.stack import control_plane
from wal.errors import FrameError, WalStateError
from wal.fileops import OS_FILE_OPS
from wal.reader import iter_frames
from wal.recovery import recover
from wal.segment import parse_name

ROOT = Path(__file__).resolve().parents[2]
LONG = os.environ.get("EDGEMQ_LONG_TESTS") == "1"
LONG_REASON = "long tier: set EDGEMQ_LONG_TESTS=1"
CYCLES = 10
LONG_CYCLES = 120
CONTROL_CYCLES = 3
IMAGE_BYTES = 64 * MIB
LONG_IMAGE_BYTES = {"ext4": 128 * MIB, "xfs": 320 * MIB, "btrfs": 160 * MIB}
"""XFS and btrfs refuse file systems under 300 MB and 114 MB."""
IDS_PER_CYCLE = 10_000_000
KEEP_SEGMENTS = 6
"""Segments kept after a verified cut; older ones are deleted like committed ones."""
CUT_AFTER_S = (0.05, 1.0)
"""The cut falls this long after the first acknowledgement of a cycle (seeded)."""
READY_TIMEOUT_S = 30.0
WAL_SUBDIR = "data/wal/endpoint-1"
ACK_LINE = re.compile(rb"^ack (\d+) (\d+) (\d+) (\d+) (\d+)$")


def _seed() -> int:
    seed = int(os.environ.get("EDGEMQ_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed} (replay with EDGEMQ_TEST_SEED={seed})")
    return seed


def _skip_without(*tools: str) -> None:
    reason = missing_root_tools(*tools)
    if reason:
        pytest.skip(reason)


# ------------------------------------------------------------------ the writer
@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    offset: int
    nbytes: int
    first: int
    last: int

    @property
    def ids(self) -> range:
        return range(self.first, self.last + 1)


def read_acks(path: Path, size: int | None = None) -> list[Ack]:
    """The complete ack lines in the first `size` bytes of the log (all when None)."""
    try:
        with open(path, "rb") as f:
            data = f.read() if size is None else f.read(size)
    except FileNotFoundError:
        return []
    acks = []
    for line in data.split(b"\n")[:-1]:  # the last piece is "" or an unfinished line
        m = ACK_LINE.match(line)
        if m:
            acks.append(Ack(*map(int, m.groups())))
    return acks


class WalChild:
    """tests/fault/power_child.py, optionally behind a command prefix (eatmydata,
    strace); `pid` is the writer's own pid (not the prefix's)."""

    def __init__(
        self,
        wal_dir: Path,
        ack_log: Path,
        first_id: int,
        *,
        prefix: Sequence[str] = (),
        pause_ms: float = 2.0,
    ) -> None:
        self.ack_log = ack_log
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "tests.fault.power_child",
                str(wal_dir),
                str(ack_log),
                str(first_id),
                str(pause_ms),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.pid = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def wait_ready(self) -> None:
        try:
            line = self._lines.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            line = b""
        if not line.startswith(b"ready "):
            raise AssertionError(f"writer not ready ({line!r}):\n{self.stop()}")
        self.pid = int(line.split()[1])

    def wait_first_ack(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ack_log.exists() or self.ack_log.stat().st_size == 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the writer acknowledged nothing:\n{self.stop()}")
            time.sleep(0.005)  # polling a file someone else writes; bounded above

    def stop(self) -> str:
        """SIGKILL the writer (the prefix exits with it); its stderr."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid or self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        with self.proc.stderr:
            return self.proc.stderr.read().decode(errors="replace")[-4000:]


# ------------------------------------------------------------ the verification
@dataclass
class Verdict:
    acks: int = 0
    records_acked: int = 0
    lost: int = 0
    misplaced: int = 0
    corrupt: int = 0
    duplicates: int = 0
    frames: int = 0
    bytes_cut: int = 0
    seq_gaps: int = 0
    recovery_error: str | None = None
    samples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.samples) < 10:
            self.samples.append(text)


def _frame_id(payload: bytes) -> int | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value.get("id") if isinstance(value, dict) else None


def verify(wal_dir: Path, acks: Sequence[Ack], committed: set[int]) -> Verdict:
    """Recover `wal_dir` with the WAL's recovery; check every ack against it."""
    verdict = Verdict(acks=len(acks), records_acked=sum(len(a.ids) for a in acks))
    try:
        state = recover(str(wal_dir), fileops=OS_FILE_OPS, clock=SYSTEM_CLOCK)
    except WalStateError as err:
        verdict.recovery_error = str(err)
        verdict.lost = verdict.records_acked
        return verdict
    verdict.bytes_cut = state.report.bytes_cut
    seen: dict[int, int] = {}
    at: dict[tuple[int, int], tuple[int, int]] = {}  # (seq, offset) → (id, end)
    for segment in state.sealed:
        data = Path(segment.path).read_bytes()
        try:
            for offset, frame in iter_frames(data):
                verdict.frames += 1
                rid = _frame_id(frame.payload)
                if rid is None or frame.payload != record(rid) or frame.tenant != TENANT:
                    verdict.corrupt += 1
                    verdict.note(f"corrupt frame at seg {segment.seq} offset {offset}")
                    continue
                seen[rid] = seen.get(rid, 0) + 1
                end = offset + 21 + len(frame.payload)
                at[(segment.seq, offset)] = (rid, end)
        except FrameError as err:  # recovery sealed it: it must decode to the end
            verdict.corrupt += 1
            verdict.note(f"segment {segment.seq} does not decode: {err}")
    verdict.duplicates = sum(n - 1 for n in seen.values() if n > 1)
    for ack in acks:
        missing = [i for i in ack.ids if i not in seen]
        verdict.lost += len(missing)
        if missing:
            verdict.note(f"lost {missing[:3]} acked in seg {ack.seq} at {ack.offset}")
            continue
        offset = ack.offset
        for rid in ack.ids:
            found = at.get((ack.seq, offset))
            if found is None or found[0] != rid:
                verdict.misplaced += 1
                verdict.note(f"id {rid} is not at seg {ack.seq} offset {offset}")
                break
            offset = found[1]
        else:
            if offset != ack.offset + ack.nbytes:
                verdict.misplaced += 1
    seqs = committed | {s.seq for s in state.sealed}
    if seqs:
        verdict.seq_gaps = len(set(range(1, max(seqs) + 1)) - seqs)
    return verdict


def deliver_old_segments(wal_dir: Path, committed: set[int]) -> set[int]:
    """Delete all but the newest KEEP_SEGMENTS sealed segments (unlink, fsync the
    directory: what `mark_committed` does); the sequence numbers deleted."""
    sealed = sorted(
        seq
        for name in os.listdir(wal_dir)
        if (parsed := parse_name(name)) is not None and not parsed[1]
        for seq in [parsed[0]]
    )
    gone = set(sealed[:-KEEP_SEGMENTS]) if len(sealed) > KEEP_SEGMENTS else set()
    for seq in gone:
        os.unlink(wal_dir / f"seg-{seq:08d}.wal")
    if gone:
        OS_FILE_OPS.fsync_dir(str(wal_dir))
    committed |= gone
    return gone


# ------------------------------------------------------------- the power cuts
@dataclass
class CutRun:
    snapshot: str
    fs: str
    cycles: int = 0
    acks_checked: int = 0
    records_checked: int = 0
    frames_recovered: int = 0
    bytes_cut: int = 0
    lost_acked: int = 0
    cycles_with_loss: int = 0
    misplaced: int = 0
    corrupt: int = 0
    duplicates: int = 0
    seq_gaps: int = 0
    recovery_errors: int = 0
    fsck_repaired: int = 0
    fsck_failed: int = 0
    cut_after_s: list[float] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def figures(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if k not in ("verdicts", "cut_after_s")} | {
            "cut_after_s_max": max(self.cut_after_s, default=0.0)
        }


@contextlib.contextmanager
def _mounted(image: Path, mountpoint: Path, fs: str) -> Iterator[LoopMount]:
    with LoopMount(image, mountpoint, options="data=ordered" if fs == "ext4" else None) as m:
        yield m


def _check_image(image: Path, fs: str, result: CutRun, *, before_mount: bool) -> None:
    """ext4 and btrfs are checked before mounting (e2fsck replays the journal); XFS
    refuses a dirty log, so it is mounted first (log replay) and checked after."""
    if (fs == "xfs") == before_mount:
        return
    code, out = fsck(image, fs) if fs != "xfs" else _xfs_check(image)
    if code == 1 and fs == "ext4":
        result.fsck_repaired += 1
    elif code != 0:
        result.fsck_failed += 1
        raise AssertionError(f"fsck of the cut image exited {code}:\n{out[-3000:]}")


def _xfs_check(image: Path) -> tuple[int, str]:
    done = run(["xfs_repair", "-n", image], check=False)
    return done.returncode, done.stdout + done.stderr


def power_cuts(
    tmp_path: Path,
    rng: random.Random,
    cycles: int,
    *,
    prefix: Sequence[str] = (),
    fs: str = "ext4",
    image_bytes: int = IMAGE_BYTES,
) -> CutRun:
    """The PWR-02 harness: `cycles` cuts, each checked; the caller judges the result."""
    with snapshot_scratch(tmp_path / "scratch") as scratch:
        result = CutRun(scratch.method, fs)
        image = scratch.path / "disk-0.img"
        make_image(image, image_bytes, fs=fs)
        acked: list[Ack] = []  # acks logged before a cut, not yet delivered
        committed: set[int] = set()
        for cycle in range(cycles):
            image = _one_cycle(
                tmp_path, scratch, image, cycle, rng, prefix, fs, acked, committed, result
            )
            if result.verdicts[-1].lost and prefix:
                # A control run that lost data cannot go on checking those acks.
                acked.clear()
        return result


def _one_cycle(
    tmp_path: Path,
    scratch: Scratch,
    image: Path,
    cycle: int,
    rng: random.Random,
    prefix: Sequence[str],
    fs: str,
    acked: list[Ack],
    committed: set[int],
    result: CutRun,
) -> Path:
    ack_log = tmp_path / f"acks-{cycle}.log"
    cut = scratch.path / f"disk-{cycle + 1}.img"
    with _mounted(image, tmp_path / "live", fs) as live:
        wal_dir = live.mountpoint / WAL_SUBDIR
        child = WalChild(wal_dir, ack_log, first_id=(cycle + 1) * IDS_PER_CYCLE, prefix=prefix)
        try:
            child.wait_ready()
            child.wait_first_ack()
            delay_s = rng.uniform(*CUT_AFTER_S)
            time.sleep(delay_s)  # the random instant of the cut (seeded): the input
            logged = ack_log.stat().st_size  # every ack in these bytes precedes the cut
            scratch.snapshot(image, cut)  # the power cut
        finally:
            stderr = child.stop()
    image.unlink()
    new_acks = read_acks(ack_log, logged)
    assert new_acks, f"cycle {cycle}: no acknowledgement before the cut:\n{stderr}"
    acked.extend(new_acks)
    result.cut_after_s.append(round(delay_s, 3))

    _check_image(cut, fs, result, before_mount=True)
    with _mounted(cut, tmp_path / "verify", fs) as mount:
        wal_dir = mount.mountpoint / WAL_SUBDIR
        verdict = verify(wal_dir, acked, committed)
        # Delivery: the oldest segments leave (their acks were checked at every cut).
        gone = deliver_old_segments(wal_dir, committed) if not verdict.recovery_error else set()
    acked[:] = [a for a in acked if a.seq not in gone]
    _check_image(cut, fs, result, before_mount=False)
    result.verdicts.append(verdict)
    result.cycles += 1
    result.acks_checked += verdict.acks
    result.records_checked += verdict.records_acked
    result.frames_recovered += verdict.frames
    result.bytes_cut += verdict.bytes_cut
    result.lost_acked += verdict.lost
    result.cycles_with_loss += 1 if verdict.lost else 0
    result.misplaced += verdict.misplaced
    result.corrupt += verdict.corrupt
    result.duplicates += verdict.duplicates
    result.seq_gaps += verdict.seq_gaps
    result.recovery_errors += 1 if verdict.recovery_error else 0
    print(
        f"cycle {cycle}: cut after {delay_s:.3f}s; {verdict.acks} acks "
        f"({verdict.records_acked} records) checked, {verdict.frames} frames, "
        f"{verdict.bytes_cut} bytes cut, lost {verdict.lost}"
        + (f" ({verdict.recovery_error})" if verdict.recovery_error else "")
        + (f" {verdict.samples[:3]}" if verdict.samples else "")
    )
    return cut


def _assert_no_loss(result: CutRun) -> None:
    bad = {
        k: getattr(result, k)
        for k in (
            "lost_acked",
            "misplaced",
            "corrupt",
            "duplicates",
            "seq_gaps",
            "recovery_errors",
            "fsck_failed",
        )
        if getattr(result, k)
    }
    samples = [s for v in result.verdicts for s in v.samples][:10]
    assert bad == {}, f"{bad}; e.g. {samples}"
    assert result.cycles > 0
    assert result.acks_checked > 0


def _run_pwr02(
    tmp_path: Path, cycles: int, fs: str, scenario: str, image_bytes: int = IMAGE_BYTES
) -> None:
    tools = {"ext4": ("mkfs.ext4", "e2fsck"), "xfs": ("mkfs.xfs", "xfs_repair")}
    _skip_without("losetup", "mount", "umount", *tools.get(fs, ("mkfs.btrfs", "btrfs")))
    seed = _seed()
    started = time.monotonic()
    result = power_cuts(tmp_path, random.Random(seed), cycles, fs=fs, image_bytes=image_bytes)
    report(scenario, seed=seed, runtime_s=round(time.monotonic() - started, 1), **result.figures())
    _assert_no_loss(result)


def test_acknowledged_records_survive_power_cuts_of_a_loop_mounted_ext4_image(
    tmp_path: Path,
) -> None:
    _run_pwr02(tmp_path, CYCLES, "ext4", "PWR-02")


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not LONG, reason=LONG_REASON)
@pytest.mark.parametrize("fs", ["ext4", "xfs", "btrfs"])
def test_acknowledged_records_survive_hundreds_of_power_cuts(tmp_path: Path, fs: str) -> None:
    _run_pwr02(tmp_path, LONG_CYCLES, fs, f"PWR-02-long-{fs}", LONG_IMAGE_BYTES[fs])


def test_the_power_cut_harness_sees_loss_when_fsync_is_disabled(tmp_path: Path) -> None:
    """PWR-04, the negative control: under eatmydata fdatasync returns at once and does
    nothing, so acknowledged records sit in the page cache, which a cut loses."""
    _skip_without("losetup", "mount", "umount", "mkfs.ext4", "e2fsck", "eatmydata")
    seed = _seed()
    started = time.monotonic()
    result = power_cuts(tmp_path, random.Random(seed), CONTROL_CYCLES, prefix=["eatmydata"])
    report(
        "PWR-04",
        seed=seed,
        runtime_s=round(time.monotonic() - started, 1),
        fsync="disabled (eatmydata)",
        **result.figures(),
    )
    assert result.cycles_with_loss >= 1, (
        "with fsync disabled the harness saw no loss: it cannot see loss at all"
    )
    assert result.corrupt == 0
    assert result.fsck_failed == 0


# --------------------------------------------------------------- the fsync audit
STRACE_LINE = re.compile(r"^(\d+)\s+(.*)$")
CALL = re.compile(r"^(\w+)\((?:(\d+)<(.*?)>(?=\s*[,)]))?(.*)$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
RETURN = re.compile(r"\)\s+=\s+(-?\d+)(.*)$")
ACK_TEXT = re.compile(r'"ack (\d+) (\d+) (\d+) (\d+) (\d+)\\n"')
SEGMENT_OPEN = re.compile(r"/seg-(\d{8})\.wal\.open$")


@dataclass(frozen=True, slots=True)
class Call:
    """One system call from an `strace -f -y` trace: where it started and ended in the
    output (strace prints events in the order it handles them, so a thread blocked in
    a syscall-exit stop cannot act before that exit is printed: line order is causal)."""

    start: int
    end: int
    name: str
    path: str | None
    text: str
    result: int | None


def parse_trace(lines: Sequence[str]) -> list[Call]:
    calls: list[Call] = []
    pending: dict[str, tuple[int, str]] = {}
    for index, raw in enumerate(lines):
        m = STRACE_LINE.match(raw)
        if not m:
            continue
        pid, rest = m.groups()
        start, text = index, rest
        resumed = RESUMED.match(rest)
        if resumed:
            if pid not in pending:
                continue
            start, head = pending.pop(pid)
            text = head + resumed.group(2)
        elif rest.endswith("<unfinished ...>"):
            pending[pid] = (index, rest[: -len("<unfinished ...>")])
            continue
        call = CALL.match(text)
        if not call:
            continue  # signals, exits
        ret = RETURN.search(text)
        calls.append(
            Call(
                start,
                index,
                call.group(1),
                call.group(3),
                text,
                int(ret.group(1)) if ret else None,
            )
        )
    return calls


@dataclass
class Audit:
    acks: int = 0
    fdatasyncs: int = 0
    segment_writes: int = 0
    violations: int = 0
    samples: list[str] = field(default_factory=list)


def audit(calls: Sequence[Call]) -> Audit:
    """Every ack-log write must start after an fdatasync (= 0) on its segment ended,
    and that fdatasync must have started after the acknowledged bytes were written."""
    result = Audit()
    events: list[tuple[int, int, Call]] = []
    for c in calls:
        events.append((c.start, 0, c))
        events.append((c.end, 1, c))
    events.sort(key=lambda e: (e[0], e[1]))
    written: dict[str, int] = {}  # bytes whose write() returned, per segment path
    covered: dict[Call, int] = {}  # an fdatasync → bytes written when it started
    synced: dict[str, int] = {}  # bytes covered by an fdatasync that returned 0
    for _, phase, c in events:
        seg = c.path if c.path and SEGMENT_OPEN.search(c.path) else None
        if c.name == "fdatasync" and seg:
            if phase == 0:
                covered[c] = written.get(seg, 0)
            elif c.result == 0:
                result.fdatasyncs += 1
                synced[seg] = max(synced.get(seg, 0), covered[c])
        elif c.name == "write" and seg and phase == 1 and (c.result or 0) > 0:
            result.segment_writes += 1
            written[seg] = written.get(seg, 0) + (c.result or 0)
        elif c.name == "write" and phase == 0 and (m := ACK_TEXT.search(c.text)):
            seq, offset, nbytes = (int(x) for x in m.groups()[:3])
            result.acks += 1
            have = max(
                (n for p, n in synced.items() if p.endswith(f"/seg-{seq:08d}.wal.open")),
                default=0,
            )
            if have < offset + nbytes:
                result.violations += 1
                if len(result.samples) < 5:
                    result.samples.append(
                        f"line {c.start}: ack of seg {seq} bytes [{offset}, {offset + nbytes}) "
                        f"with only {have} bytes fsynced"
                    )
    return result


def _traced_run(tmp_path: Path, name: str, *, eatmydata: bool, run_s: float) -> Audit:
    trace = tmp_path / f"{name}.strace"
    wal_dir = tmp_path / name / "wal"
    prefix = [
        "strace",
        "-f",
        "--seccomp-bpf",
        "-y",
        "-qq",
        "-s",
        "96",
        "-e",
        "signal=none",
        "-e",
        "trace=write,pwrite64,writev,fdatasync,fsync",
        "-o",
        str(trace),
    ]
    if eatmydata:
        prefix.append("eatmydata")
    child = WalChild(wal_dir, tmp_path / f"{name}.acks", 0, prefix=prefix, pause_ms=1.0)
    try:
        child.wait_ready()
        child.wait_first_ack()
        time.sleep(run_s)  # how long the writer runs under the tracer
    finally:
        stderr = child.stop()
    acks_logged = len(read_acks(tmp_path / f"{name}.acks"))
    result = audit(parse_trace(trace.read_text(errors="replace").splitlines()))
    assert result.acks > 0, f"the trace shows no acknowledgement:\n{stderr}"
    # The trace stops at the kill: acks whose write was in flight may be missing.
    assert acks_logged - 16 <= result.acks <= acks_logged, (result.acks, acks_logged)
    return result


async def test_every_acknowledgement_follows_the_fdatasync_that_covers_it(
    tmp_path: Path,
) -> None:
    """PWR-03, for a WAL writer (its ack-log lines) and for the node (its HTTP 200s).
    Each negative control runs the same thing under eatmydata: no fdatasync reaches
    the kernel, and the audit must flag every acknowledgement."""
    _skip_without("strace", "eatmydata")
    started = time.monotonic()
    wal = await asyncio.to_thread(_traced_run, tmp_path, "wal", eatmydata=False, run_s=1.5)
    wal_control = await asyncio.to_thread(
        _traced_run, tmp_path, "wal-control", eatmydata=True, run_s=0.5
    )
    node = await _traced_node_run(tmp_path, 3.0, eatmydata=False)
    node_control = await _traced_node_run(tmp_path, 1.0, eatmydata=True)
    report(
        "PWR-03",
        wal_acks_audited=wal.acks,
        wal_fdatasyncs=wal.fdatasyncs,
        wal_violations=wal.violations,
        node_200s_audited=node.responses_200,
        node_records_audited=node.records_audited,
        node_fdatasyncs=node.fdatasyncs,
        node_violations=node.violations,
        control_wal_violations=f"{wal_control.violations} of {wal_control.acks} acks",
        control_node_violations=(
            f"{node_control.violations} of {node_control.records_audited} records"
        ),
        runtime_s=round(time.monotonic() - started, 1),
    )
    assert wal.violations == 0, wal.samples
    assert wal.fdatasyncs > 0
    assert wal.acks > 100
    assert wal_control.fdatasyncs == 0
    assert wal_control.violations == wal_control.acks > 0, wal_control.samples
    assert node.violations == 0, node.samples
    assert node.truncated_writes == 0, "raise STRACE_STRING_BYTES: segment writes were cut"
    assert node.responses_200 == node.acked_requests > 50, node
    assert node_control.fdatasyncs == 0
    assert node_control.violations == node_control.records_audited > 0, node_control


# ------------------------------------------------------- the fsync audit, node
HTTP_PORT_FD = re.compile(r"^TCP:\[[^:]+:(\d+)->")
STRACE_STRING_BYTES = 256 * 1024
"""-s for the node trace: longer than any segment write of that light load (asserted)."""
TRUNCATED = re.compile(r'"\.\.\.,')


@dataclass
class NodeAudit:
    acked_requests: int = 0
    responses_200: int = 0
    records_audited: int = 0
    fdatasyncs: int = 0
    violations: int = 0
    truncated_writes: int = 0
    samples: list[str] = field(default_factory=list)

    def flag(self, text: str) -> None:
        self.violations += 1
        if len(self.samples) < 5:
            self.samples.append(text)


def audit_node(calls: Sequence[Call], run: str, http_port: int) -> NodeAudit:
    """Every HTTP 200 written to a client socket must start after, for each record id
    the request carried, the segment write holding that id returned and an fdatasync
    of that segment, started after it, returned 0."""
    id_text = re.compile(re.escape(run) + r'-(\d+)\\"')
    result = NodeAudit()
    events: list[tuple[int, int, Call]] = []
    for c in calls:
        events.append((c.start, 0, c))
        events.append((c.end, 1, c))
    events.sort(key=lambda e: (e[0], e[1]))
    written: dict[str, int] = {}
    covered: dict[Call, int] = {}
    synced: dict[str, int] = {}
    located: dict[int, tuple[str, int]] = {}  # id → (segment, end of the write holding it)
    asked: dict[str, set[int]] = {}  # connection → ids read since its last response
    for _, phase, c in events:
        path = c.path or ""
        seg = path if SEGMENT_OPEN.search(path) else None
        conn = m.group(1) if (m := HTTP_PORT_FD.match(path)) else None
        if c.name == "fdatasync" and seg:
            if phase == 0:
                covered[c] = written.get(seg, 0)
            elif c.result == 0:
                result.fdatasyncs += 1
                synced[seg] = max(synced.get(seg, 0), covered[c])
        elif seg and c.name in ("write", "writev", "pwrite64") and phase == 1:
            if TRUNCATED.search(c.text):
                result.truncated_writes += 1
            end = written.get(seg, 0) + max(c.result or 0, 0)
            written[seg] = end
            for rid in id_text.findall(c.text):
                located.setdefault(int(rid), (seg, end))
        elif conn == str(http_port) and c.name in ("read", "recvfrom", "recvmsg", "readv"):
            if phase == 1:
                asked.setdefault(path, set()).update(int(r) for r in id_text.findall(c.text))
        elif conn == str(http_port) and c.name in ("write", "writev", "sendto", "sendmsg"):
            if phase != 0 or '"HTTP/1.1 ' not in c.text:
                continue
            ids = asked.pop(path, set())
            if '"HTTP/1.1 200 ' not in c.text or not ids:
                continue  # a refusal, or /readyz
            result.responses_200 += 1
            for rid in sorted(ids):
                result.records_audited += 1
                where = located.get(rid)
                if where is None:
                    result.flag(f"line {c.start}: 200 for id {rid}, never written to a segment")
                elif synced.get(where[0], 0) < where[1]:
                    result.flag(
                        f"line {c.start}: 200 for id {rid} at {where[1]} of {where[0]}, "
                        f"only {synced.get(where[0], 0)} bytes fsynced"
                    )
    return result


async def _traced_node_run(tmp_path: Path, run_s: float, *, eatmydata: bool) -> NodeAudit:
    """A node under strace with two writers posting for `run_s`, audited."""
    name = "node-eatmydata" if eatmydata else "node"
    trace = tmp_path / f"{name}.strace"
    (tmp_path / name).mkdir()
    async with control_plane(str(tmp_path / name)) as cp, aiohttp.ClientSession() as session:
        dest = await cp.local_destination(str(tmp_path / name / "objects"))
        endpoint = await cp.endpoint(dest["id"])
        node = Node(
            data_dir=tmp_path / name / "data",
            control_url=cp.url,
            node_key=cp.node_key,
            http_port=free_port(),
        )
        node.prefix = [
            "strace",
            "-f",
            "--seccomp-bpf",
            "-yy",
            "-qq",
            "-s",
            str(STRACE_STRING_BYTES),
            "-e",
            "signal=none",
            "-e",
            "trace=read,readv,recvfrom,recvmsg,write,writev,pwrite64,sendto,sendmsg,fdatasync",
            "-o",
            str(trace),
            *(["eatmydata"] if eatmydata else []),
        ]
        ledger = Ledger()
        url = f"{node.url}/ingest/{endpoint['id']}"
        try:
            node.start()
            await node.wait_ready(session, timeout_s=60)
            deadline = time.monotonic() + run_s

            async def write() -> None:
                while time.monotonic() < deadline:
                    batch = ledger.records(10, lambda n: {"temp": n})
                    await ledger.post(session, url, batch, headers={"X-API-Key": cp.api_key})

            await asyncio.gather(write(), write())
        finally:
            await node.close()
    calls = parse_trace(trace.read_text(errors="replace").splitlines())
    result = audit_node(calls, ledger.run, node.http_port)
    result.acked_requests = ledger.counts()["ok"]
    return result
