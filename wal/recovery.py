"""Recovery: bring a WAL directory to a clean state when it is opened.

Decision table (what is found → what is done):

| found                                      | action                                          |
|--------------------------------------------|-------------------------------------------------|
| missing directory                          | create it and any missing parents, fsync each   |
|                                            | new entry's parent                              |
| no EPOCH and no segment files              | write EPOCH (atomic), fsync dir                 |
| segment files but no EPOCH                 | WalStateError: outside damage, do not guess     |
| `EPOCH.tmp` left by a crash                | delete it                                       |
| `seg-N.wal` (sealed)                       | keep; listed for delivery (not re-read here)    |
| `seg-N.wal.open` with valid frames         | truncate after the last valid frame and fsync   |
|                                            | (always: its bytes may be in the page cache     |
|                                            | only), rename to `seg-N.wal`; report frames     |
|                                            | kept and bytes cut (trailing zeros, a           |
|                                            | preallocated tail, are reported apart)          |
| `seg-N.wal.open`, no valid frame, highest  | truncate to 0 and keep it: it is the next open  |
| name in the directory                      | segment, and the only trace of the highest      |
|                                            | number ever used when all below were committed  |
| `seg-N.wal.open`, no valid frame, lower    | delete (nothing in it was ever acknowledged)    |
| `seg-N.wal` and `seg-N.wal.open` together  | WalStateError                                   |
| anything else                              | left alone                                      |

The next sequence number is one past the highest sealed segment, unless the highest
name in the directory is an empty open segment: that number was never sealed, so it
is reused (and its file kept, so the number survives even a crash right after). The
writer creates the next open segment (and fsyncs the directory) before a sealed
segment can be committed and deleted, so the highest number ever used is always
visible here and sequence numbers stay contiguous.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import BinaryIO

from shared.clock import Clock

from .errors import WalStateError
from .fileops import FileOps
from .reader import scan_stream
from .segment import EPOCH_FILE, SealedSegment, parse_name, sealed_name

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OpenSegmentRecovery:
    seq: int
    frames_kept: int
    bytes_kept: int
    bytes_cut: int
    reason: str | None  # why the tail was cut, None when nothing was
    zero_tail_bytes: int = 0  # trailing zeros (a preallocated tail, ADR 0016), not "cut"


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    epoch: int
    created: bool
    sealed_pending: int
    open_segments: tuple[OpenSegmentRecovery, ...] = field(default=())

    @property
    def frames_kept(self) -> int:
        return sum(s.frames_kept for s in self.open_segments)

    @property
    def bytes_cut(self) -> int:
        return sum(s.bytes_cut for s in self.open_segments)

    def summary(self) -> str:
        return (
            f"epoch {self.epoch}{' (new)' if self.created else ''}: "
            f"{self.sealed_pending} sealed segment(s) pending delivery, "
            f"{len(self.open_segments)} open segment(s) recovered, "
            f"{self.frames_kept} frame(s) kept, {self.bytes_cut} byte(s) cut"
        )


@dataclass(frozen=True, slots=True)
class RecoveredState:
    epoch: int
    next_seq: int
    sealed: tuple[SealedSegment, ...]
    report: RecoveryReport


def write_epoch(directory: str, epoch: int, fileops: FileOps) -> None:
    """Atomic write: temp file, fsync, rename, fsync directory."""
    tmp = os.path.join(directory, EPOCH_FILE + ".tmp")
    if fileops.exists(tmp):
        fileops.unlink(tmp)
    f = fileops.open_append(tmp)
    try:
        f.write(f"{epoch}\n".encode())
        f.sync()
    finally:
        f.close()
    fileops.rename(tmp, os.path.join(directory, EPOCH_FILE))
    fileops.fsync_dir(directory)


def read_epoch(directory: str, fileops: FileOps) -> int:
    raw = fileops.read_bytes(os.path.join(directory, EPOCH_FILE))
    try:
        epoch = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as err:
        raise WalStateError(f"{directory}/{EPOCH_FILE} does not hold a number: {raw!r}") from err
    if epoch < 0:
        raise WalStateError(f"{directory}/{EPOCH_FILE} holds a negative epoch")
    return epoch


def make_dirs_durably(directory: str, fileops: FileOps) -> None:
    """makedirs, then fsync the parent of every directory it created (top down)."""
    missing: list[str] = []
    path = os.path.abspath(directory)
    while not fileops.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not missing:
        return
    fileops.makedirs(directory)
    for created in reversed(missing):
        fileops.fsync_dir(os.path.dirname(created))


ZERO_CHECK_READ_BYTES = 1024 * 1024


def _zero_tail_bytes(stream: BinaryIO, start: int, size: int) -> int:
    """How many bytes at the end of the file, after `start`, are zeros: a preallocated
    segment's unwritten tail (never acknowledged data, so not counted as cut)."""
    stream.seek(start)
    nonzero_end = start  # one past the last non-zero byte seen
    offset = start
    while offset < size:
        chunk = stream.read(min(ZERO_CHECK_READ_BYTES, size - offset))
        if not chunk:
            break
        stripped = len(chunk.rstrip(b"\0"))
        if stripped:
            nonzero_end = offset + stripped
        offset += len(chunk)
    return size - nonzero_end


def recover(
    directory: str, *, fileops: FileOps, clock: Clock, initial_epoch: int | None = None
) -> RecoveredState:
    """Run the decision table above. Blocking: call it off the event loop."""
    make_dirs_durably(directory, fileops)
    names = fileops.listdir(directory)
    segments: dict[tuple[int, bool], str] = {}
    for name in names:
        parsed = parse_name(name)
        if parsed is not None:
            segments[parsed] = os.path.join(directory, name)

    changed = False
    if EPOCH_FILE + ".tmp" in names:
        fileops.unlink(os.path.join(directory, EPOCH_FILE + ".tmp"))
        changed = True
    created = EPOCH_FILE not in names
    if created:
        if segments:
            raise WalStateError(f"{directory} has segment files but no {EPOCH_FILE} file")
        epoch = initial_epoch if initial_epoch is not None else max(1, clock.time_ms() // 1000)
        write_epoch(directory, epoch, fileops)
    else:
        epoch = read_epoch(directory, fileops)

    for seq, is_open in segments:
        if is_open and (seq, False) in segments:
            raise WalStateError(f"{directory} has both sealed and open segment {seq}")

    highest_seq = max((seq for seq, _ in segments), default=0)
    highest_is_empty_open = False
    recovered_open: list[OpenSegmentRecovery] = []
    sealed: dict[int, SealedSegment] = {}
    for (seq, is_open), path in sorted(segments.items()):
        if not is_open:
            sealed[seq] = SealedSegment(seq, epoch, path, fileops.file_size(path))
            continue
        size = fileops.file_size(path)
        with fileops.open_read(path) as stream:
            scan = scan_stream(stream)
            zeros = _zero_tail_bytes(stream, scan.valid_bytes, size)
        reason = (
            scan.error.reason
            if scan.error is not None and zeros < size - scan.valid_bytes
            else None
        )
        recovered_open.append(
            OpenSegmentRecovery(
                seq, scan.frames, scan.valid_bytes, size - scan.valid_bytes - zeros, reason, zeros
            )
        )
        changed = True
        if scan.frames == 0:
            if seq == highest_seq:
                highest_is_empty_open = True
                if size:
                    fileops.truncate(path, 0)
            else:
                fileops.unlink(path)
            continue
        # Always: also makes durable what only reached the page cache before a crash.
        fileops.truncate(path, scan.valid_bytes)
        target = os.path.join(directory, sealed_name(seq))
        fileops.rename(path, target)
        sealed[seq] = SealedSegment(
            seq, epoch, target, scan.valid_bytes, scan.frames, scan.first_ts_ms, scan.last_ts_ms
        )
    if changed:
        fileops.fsync_dir(directory)

    next_seq = highest_seq if highest_is_empty_open else highest_seq + 1
    report = RecoveryReport(
        epoch=epoch,
        created=created,
        sealed_pending=len(sealed),
        open_segments=tuple(recovered_open),
    )
    level = logging.WARNING if report.bytes_cut else logging.INFO
    log.log(level, "WAL %s recovered: %s", directory, report.summary())
    return RecoveredState(epoch, next_seq, tuple(sealed[s] for s in sorted(sealed)), report)
