"""The node's endpoints at run time: one WAL and one delivery task per endpoint.

WALs live in `<data>/wal/<endpoint_id>/`. At start every WAL directory on disk is
opened (recovery runs, sealed-but-uncommitted segments are queued for delivery); other
endpoints get their WAL on first use. A config change reaches a WAL at its next
rotation (`reconfigure`); a sealed segment is delivered with the config current when it
was sealed. Segments found sealed at start are delivered with the config current then
(their seal time is the file's mtime, which decides which canary bindings apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from dataclasses import dataclass

from shared.clock import Clock
from wal import BatchStats, SealedSegment, WalSettings, WriteAheadLog

from .delivery import DeliveryDeps, EndpointDelivery, Sealed
from .metrics import NodeMetrics
from .outbox import Report
from .settings import NodeSettings
from .snapshot import EMPTY, Endpoint, Snapshot

log = logging.getLogger(__name__)

WAL_DIR = "wal"
SEGMENT_BYTES_MAX = 1024 * 1024 * 1024
SEGMENT_AGE_S_RANGE = (1, 900)
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_safe_id(endpoint_id: str) -> bool:
    """Endpoint ids become directory names: allow only what cannot escape."""
    return bool(_SAFE_ID.match(endpoint_id))


@dataclass(slots=True)
class EndpointRuntime:
    endpoint_id: str
    wal: WriteAheadLog
    delivery: EndpointDelivery
    task: asyncio.Task[None]


class Endpoints:
    def __init__(
        self,
        settings: NodeSettings,
        deps: DeliveryDeps,
        metrics: NodeMetrics,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._deps = deps
        self._metrics = metrics
        self._clock = clock
        self.snapshot: Snapshot = EMPTY
        self._by_id: dict[str, Endpoint] = {}
        self._last_known: dict[str, Endpoint] = {}
        self._runtimes: dict[str, EndpointRuntime] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._waiting_config: set[str] = set()
        self._closing = False

    # ---------------------------------------------------------------- config
    def lookup(self, endpoint_id: str) -> Endpoint | None:
        """The endpoint in the applied snapshot (O(1))."""
        return self._by_id.get(endpoint_id)

    def current(self, endpoint_id: str) -> Endpoint | None:
        return self._by_id.get(endpoint_id) or self._last_known.get(endpoint_id)

    def wal_settings(self, endpoint: Endpoint) -> WalSettings:
        limits = self._settings.limits
        segment_bytes = min(
            SEGMENT_BYTES_MAX, max(self._settings.segment_bytes_min, endpoint.segment_bytes)
        )
        low, high = SEGMENT_AGE_S_RANGE
        return WalSettings(
            segment_bytes=segment_bytes,
            segment_max_age_s=float(min(high, max(low, endpoint.segment_max_age_seconds))),
            pending_bytes_max=limits.inflight_bytes_max,
            retry_after_s=limits.retry_after_s,
        )

    def apply(self, snapshot: Snapshot) -> None:
        """A new snapshot: remember it; sealing thresholds change at the next rotation."""
        self.snapshot = snapshot
        self._by_id = {e.id: e for e in snapshot.endpoints}
        for endpoint in snapshot.endpoints:
            self._last_known[endpoint.id] = endpoint
            runtime = self._runtimes.get(endpoint.id)
            if runtime is not None and endpoint.id in self._waiting_config:
                self._waiting_config.discard(endpoint.id)
                now_ms = self._clock.time_ms()
                for segment in runtime.wal.sealed_segments():
                    runtime.delivery.enqueue(Sealed(segment, endpoint, now_ms))
            if runtime is not None:
                wal_settings = self.wal_settings(endpoint)
                runtime.wal.reconfigure(
                    segment_bytes=wal_settings.segment_bytes,
                    segment_max_age_s=wal_settings.segment_max_age_s,
                )

    # ------------------------------------------------------------------- WALs
    def runtimes(self) -> list[EndpointRuntime]:
        return list(self._runtimes.values())

    def get(self, endpoint_id: str) -> EndpointRuntime | None:
        return self._runtimes.get(endpoint_id)

    async def open_existing(self) -> None:
        """Open every WAL directory found on disk (recovery), queue its sealed segments."""
        root = os.path.join(self._settings.data_dir, WAL_DIR)
        names = await asyncio.to_thread(
            lambda: sorted(os.listdir(root)) if os.path.isdir(root) else []
        )
        for name in names:
            if is_safe_id(name):
                await self.open(name)

    async def open(self, endpoint_id: str) -> EndpointRuntime:
        runtime = self._runtimes.get(endpoint_id)
        if runtime is not None:
            return runtime
        if not is_safe_id(endpoint_id):
            raise ValueError(f"unsafe endpoint id {endpoint_id!r}")
        lock = self._opening.setdefault(endpoint_id, asyncio.Lock())
        async with lock:
            runtime = self._runtimes.get(endpoint_id)
            if runtime is None:
                runtime = await self._open(endpoint_id)
                self._runtimes[endpoint_id] = runtime
        return runtime

    async def _open(self, endpoint_id: str) -> EndpointRuntime:
        directory = os.path.join(self._settings.data_dir, WAL_DIR, endpoint_id)
        endpoint = self.current(endpoint_id)
        settings = self.wal_settings(endpoint) if endpoint is not None else WalSettings()
        holder: list[EndpointDelivery] = []
        metrics = self._metrics

        def on_sealed(segment: SealedSegment) -> None:
            config = self.current(endpoint_id)
            if config is None:  # no config known yet: queued when a snapshot names it
                log.warning(
                    "endpoint %s: sealed segment %d waits for config", endpoint_id, segment.seq
                )
                self._waiting_config.add(endpoint_id)
                return
            holder[0].enqueue(Sealed(segment, config, self._clock.time_ms()))

        def on_batch(stats: BatchStats) -> None:
            metrics.group_commit_appends.observe(stats.appends)
            metrics.fsync_seconds.observe(stats.sync_s)

        wal = await WriteAheadLog.open(
            directory,
            settings=settings,
            clock=self._clock,
            on_sealed=on_sealed,
            on_batch=on_batch,
        )
        report = wal.recovery
        level = logging.WARNING if report.bytes_cut else logging.INFO
        log.log(level, "endpoint %s WAL recovery: %s", endpoint_id, report.summary())
        metrics.recovery_bytes_cut.inc(report.bytes_cut)
        delivery = EndpointDelivery(endpoint_id, wal, self._deps)
        holder.append(delivery)
        for segment in wal.sealed_segments():
            config = self.current(endpoint_id)
            if config is None:
                log.warning(
                    "endpoint %s: %d sealed segment(s) wait for config",
                    endpoint_id,
                    len(wal.sealed_segments()),
                )
                self._waiting_config.add(endpoint_id)
                break  # queued by `apply` once a snapshot names the endpoint
            mtime = await asyncio.to_thread(os.path.getmtime, segment.path)
            delivery.enqueue(Sealed(segment, config, int(mtime * 1000)))
        task = asyncio.create_task(delivery.run(), name=f"delivery:{endpoint_id}")
        return EndpointRuntime(endpoint_id, wal, delivery, task)

    async def on_report_acked(self, report: Report) -> None:
        """The control plane has the commit: the local segment can go."""
        runtime = self._runtimes.get(report.endpoint_id)
        if runtime is None or runtime.wal.epoch != report.epoch:
            return  # from an earlier epoch of this WAL: that segment is gone already
        if report.seq in {s.seq for s in runtime.wal.sealed_segments()}:
            await runtime.wal.mark_committed(report.seq)

    # -------------------------------------------------------------- shutdown
    async def seal_all(self) -> None:
        """Stop every WAL after sealing what it holds (queued for delivery)."""
        self._closing = True
        for runtime in self.runtimes():
            await runtime.wal.close(seal=True)

    def all_delivered(self) -> bool:
        return all(r.delivery.idle for r in self._runtimes.values())

    async def stop(self) -> None:
        for runtime in self.runtimes():
            runtime.task.cancel()
        for runtime in self.runtimes():
            with contextlib.suppress(asyncio.CancelledError):
                await runtime.task
            await runtime.wal.close()
