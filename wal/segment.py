"""Segment files: names, the epoch file, and what a sealed segment is."""

from __future__ import annotations

import re
from dataclasses import dataclass

SEALED_SUFFIX = ".wal"
OPEN_SUFFIX = ".wal.open"
EPOCH_FILE = "EPOCH"
_NAME = re.compile(r"^seg-(\d{8,})\.wal(\.open)?$")


def sealed_name(seq: int) -> str:
    return f"seg-{seq:08d}{SEALED_SUFFIX}"


def open_name(seq: int) -> str:
    return f"seg-{seq:08d}{OPEN_SUFFIX}"


def parse_name(name: str) -> tuple[int, bool] | None:
    """(seq, is_open) for a segment file name, None for anything else."""
    match = _NAME.match(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) is not None


@dataclass(frozen=True, slots=True)
class SealedSegment:
    """A sealed segment waiting for delivery. `frames` and the timestamps are known
    when this process sealed it, None when it was found sealed on disk at start."""

    seq: int
    epoch: int
    path: str
    size_bytes: int
    frames: int | None = None
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None

    @property
    def name(self) -> str:
        return sealed_name(self.seq)
