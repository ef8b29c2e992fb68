"""Admission control shared by HTTP and MQTT ingest: the three 503 conditions of
DESIGN.md §3, checked before anything is appended.

- `inflight`: bytes accepted but not yet fsynced across the node would pass
  `inflight_bytes_max`;
- `backlog`: the endpoint's WAL holds more than `unshipped_bytes_max` bytes not yet
  committed to the object store (e.g. S3 is down);
- `disk`: free space on the WAL's file system is under `disk_reserve_bytes` (sampled
  once a second off the loop by `watch_disk`);
- `draining`: the node is shutting down; `wal_failed`: the endpoint's WAL is
  fail-stopped (restart recovers);
- `connections`: `http_connections_max` HTTP connections are open already (decided
  when a connection is accepted, before anything is read; ingest/http_server.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from wal import WriteAheadLog

from .metrics import NodeMetrics
from .settings import Limits

DISK_SAMPLE_S = 1.0


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Admission:
    def __init__(self, limits: Limits, metrics: NodeMetrics) -> None:
        self.limits = limits
        self._metrics = metrics
        self.inflight_bytes = 0
        metrics.inflight_bytes.set_function(lambda: self.inflight_bytes)  # read at scrape
        metrics.http_connections.set_function(lambda: self.http_connections)
        self.free_disk_bytes: int | None = None
        self.draining = False
        self.http_connections = 0
        """Open HTTP connections counted against `http_connections_max`."""

    def refuse_reason(self, wal: WriteAheadLog | None, nbytes: int) -> str | None:
        """Why `nbytes` more cannot be taken now, None when they can."""
        limits = self.limits
        if self.draining:
            return "draining"
        if wal is not None and wal.failed is not None:
            return "wal_failed"
        if self.free_disk_bytes is not None and self.free_disk_bytes < limits.disk_reserve_bytes:
            return "disk"
        if wal is not None and wal.unshipped_bytes > limits.unshipped_bytes_max:
            return "backlog"
        if self.inflight_bytes + nbytes > limits.inflight_bytes_max:
            return "inflight"
        return None

    def refused(self, reason: str) -> None:
        self._metrics.rejected.labels(reason).inc()

    def open_connection(self) -> bool:
        """Count a new HTTP connection; False (not counted) when the cap is reached."""
        if self.http_connections >= self.limits.http_connections_max:
            return False
        self.http_connections += 1
        return True

    def close_connection(self) -> None:
        self.http_connections -= 1

    def add_inflight(self, nbytes: int) -> None:
        self.inflight_bytes += nbytes

    def done_inflight(self, nbytes: int) -> None:
        self.inflight_bytes -= nbytes

    async def watch_disk(
        self,
        path: str,
        *,
        sample: Callable[[str], int] = free_bytes,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Sample free space forever (cancel to stop)."""
        while True:
            try:
                self.free_disk_bytes = await asyncio.to_thread(sample, path)
            except OSError:
                self.free_disk_bytes = None
            await sleep(DISK_SAMPLE_S)
