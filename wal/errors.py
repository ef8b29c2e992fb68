"""The WAL's error tree.

WalError
├── FrameError            bytes that are not a valid frame (reader)
│   ├── CorruptFrame      CRC mismatch, bad FMT, impossible length
│   └── TruncatedFrame    the frame runs past the end of the data
├── WalStateError         the directory's contents contradict the WAL's invariants
├── WalFull               pending (not yet fsynced) bytes would pass the bound: back off
├── WalFailed             a write or fsync failed; sticky and fatal for this WAL
└── WalClosed             append after close()
"""

from __future__ import annotations


class WalError(Exception):
    """Base class of every error this package raises on purpose."""


class FrameError(WalError):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"bad frame at offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class CorruptFrame(FrameError):
    """The bytes at `offset` are not a valid frame."""


class TruncatedFrame(FrameError):
    """A frame starts at `offset` but its declared length runs past the end."""


class WalStateError(WalError):
    """The WAL directory is in a state the WAL never produces (outside damage)."""


class WalFull(WalError):
    """Appending would pass `pending_bytes_max`; the caller should answer 503."""

    def __init__(self, pending_bytes: int, pending_bytes_max: int, retry_after_s: int) -> None:
        super().__init__(
            f"WAL has {pending_bytes} bytes waiting for fsync (max {pending_bytes_max})"
        )
        self.pending_bytes = pending_bytes
        self.pending_bytes_max = pending_bytes_max
        self.retry_after_s = retry_after_s


class WalFailed(WalError):
    """A write or fsync failed. The WAL accepts nothing more until it is reopened.

    `maybe_written` is True for the appends of the batch that was being written or
    synced when it failed: their bytes may have reached the disk and be kept by
    recovery, so for a client the outcome is unknown (not a refusal). Appends that
    were still queued get `maybe_written=False`: they were certainly not written."""

    def __init__(self, message: str, *, maybe_written: bool = False) -> None:
        super().__init__(message)
        self.maybe_written = maybe_written


class WalClosed(WalError):
    """The WAL was closed."""
