"""A one-line progress bar on stderr for long reads (no dependency): manifests read while
planning, then segments done of total, bytes done of total, rate and a bar, redrawn at
most every `interval_s`. The rate counts from `start_reading` (planning, which lists
and reads the manifests, moves no segment bytes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    def __init__(
        self,
        stream: TextIO,
        *,
        total_segments: int,
        total_bytes: int,
        enabled: bool,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total_segments = total_segments
        self.total_bytes = total_bytes
        self.enabled = enabled
        self.interval_s = interval_s
        self.clock = clock
        self.segments = 0
        self.bytes = 0
        self.started = clock()
        """When reading started (reset by start_reading): the rate's time base."""
        self._drawn_at: float | None = None
        self._width = 0

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        if self.total_bytes:
            fraction = min(1.0, self.bytes / self.total_bytes)
        else:
            fraction = self.segments / self.total_segments if self.total_segments else 1.0
        filled = int(fraction * BAR_WIDTH)
        return (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}%  "
            f"{self.segments}/{self.total_segments} segments  "
            f"{human_bytes(self.bytes)}/{human_bytes(self.total_bytes)}  "
            f"{human_bytes(self.bytes / elapsed)}/s"
        )

    def _draw(self, force: bool) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if not force and self._drawn_at is not None and now - self._drawn_at < self.interval_s:
            return
        self._drawn_at = now
        self._write(self.line())

    def manifests_read(self, done: int, total: int) -> None:
        """Before the segments: how many manifests have been read."""
        if not self.enabled:
            return
        now = self.clock()
        if done < total and self._drawn_at is not None and now - self._drawn_at < self.interval_s:
            return
        self._drawn_at = now
        self._write(f"reading manifests {done}/{total}")

    def start_reading(self, total_segments: int, total_bytes: int) -> None:
        """Planning is done: what is to be read, and the rate's clock starts now."""
        self.total_segments = total_segments
        self.total_bytes = total_bytes
        self.started = self.clock()

    def _write(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        self._draw(False)

    def segment_done(self) -> None:
        self.segments += 1
        self._draw(False)

    def close(self) -> None:
        if self.enabled:
            self._draw(True)
            self.stream.write("\n")
            self.stream.flush()
