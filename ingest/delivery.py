"""Delivery of one endpoint's sealed segments: artifacts → object store → manifest
(last) → durable commit report. Segments of an endpoint go strictly in order, one at a
time; endpoints deliver concurrently and share the conversion threads.

Per segment, until it succeeds (the local segment is deleted later, when the control
plane acknowledges the report — see ingest/outbox.py):
1. a report for it is already in the outbox (an earlier run stored the manifest):
   nothing to do;
2. build the artifacts off the loop with the endpoint config *as of sealing*
   (output formats, destination, bindings whose canary start is before the seal);
3. upload every artifact (deterministic keys: a retry overwrites identical bytes);
4. store the manifest, which names exactly the artifacts just stored;
5. queue the commit report durably.
Errors: a transient store error retries with capped, jittered backoff; a permanent one
(AccessDenied, NoSuchBucket) marks the endpoint's delivery failing (heartbeats carry it
to the control plane, which shows the endpoint `degraded`) and retries slowly, keeping
the data; a required view that fails blocks the commit and retries; a corrupt sealed
segment is moved to `<data>/quarantine/` and reported in logs and metrics, never
silently skipped.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from compiler.sandbox import SandboxLimits
from shared import failpoints
from shared.backoff import Backoff
from shared.clock import Clock
from wal import SealedSegment, WriteAheadLog

from .artifacts import RequiredViewFailed, SegmentArtifacts, SegmentCorrupt, build_artifacts
from .layout import manifest_key
from .manifest import build_manifest, encode_manifest
from .metrics import NodeMetrics
from .objectstore.base import PermanentStoreError, StoreError, TransientStoreError
from .outbox import Outbox
from .settings import DeliverySettings
from .snapshot import Endpoint
from .stores import StoreCache

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed segment and the endpoint config as of its sealing."""

    segment: SealedSegment
    endpoint: Endpoint
    sealed_at_ms: int


@dataclass(slots=True)
class DeliveryDeps:
    """What every endpoint's delivery shares."""

    node_id: str
    region: str
    data_dir: str
    settings: DeliverySettings
    stores: StoreCache
    outbox: Outbox
    executor: Executor
    build_slots: asyncio.Semaphore
    metrics: NodeMetrics
    clock: Clock
    current: Callable[[str], Endpoint | None]
    """The endpoint's latest config (used when the sealed config had no destination)."""


def iso_ms(ts_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def _s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


class EndpointDelivery:
    def __init__(self, endpoint_id: str, wal: WriteAheadLog, deps: DeliveryDeps) -> None:
        self.endpoint_id = endpoint_id
        self.wal = wal
        self._deps = deps
        self._queue: collections.deque[Sealed] = collections.deque()
        self._wakeup = asyncio.Event()
        self._busy = False
        self.error: str | None = None
        """The latest delivery error, None while delivery works (sent in heartbeats)."""

    # ------------------------------------------------------------------ queue
    def enqueue(self, sealed: Sealed) -> None:
        if any(q.segment.seq == sealed.segment.seq for q in self._queue):
            return
        self._queue.append(sealed)
        self._wakeup.set()
        self._update_gauges()

    @property
    def backlog(self) -> int:
        return len(self._queue) + (1 if self._busy else 0)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._busy

    def _update_gauges(self) -> None:
        m, label = self._deps.metrics, self.endpoint_id
        m.backlog_segments.labels(label).set(len(self._queue))
        m.backlog_bytes.labels(label).set(sum(s.segment.size_bytes for s in self._queue))
        oldest = self._queue[0].sealed_at_ms if self._queue else None
        lag = 0.0 if oldest is None else max(0.0, self._deps.clock.time_ms() - oldest) / 1000
        m.commit_lag_s.labels(label).set(lag)

    # ------------------------------------------------------------------- loop
    async def run(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            sealed = self._queue[0]
            self._busy = True
            try:
                await self._deliver_until_done(sealed)
            finally:
                self._busy = False
            self._queue.popleft()
            self._update_gauges()

    async def _deliver_until_done(self, sealed: Sealed) -> None:
        deps = self._deps
        backoff = Backoff(base_s=deps.settings.retry_base_s, cap_s=deps.settings.retry_cap_s)
        segment = sealed.segment
        while True:
            if deps.outbox.has(self.endpoint_id, segment.epoch, segment.seq) or not any(
                s.seq == segment.seq for s in self.wal.sealed_segments()
            ):  # delivered already (its report is queued or acknowledged)
                self.error = None
                return
            try:
                await self._deliver_once(sealed)
                self.error = None
                return
            except TransientStoreError as err:
                kind, delay = "transient", backoff.next_delay_s()
                self.error = f"store: {err}"
            except PermanentStoreError as err:
                kind, delay = "permanent", deps.settings.permanent_retry_s
                self.error = f"store: {err.code or 'error'}: {err}"
            except StoreError as err:
                kind, delay = "store", backoff.next_delay_s()
                self.error = f"store: {err}"
            except RequiredViewFailed as err:
                deps.metrics.view_failures.labels(err.view_id, "true").inc()
                kind, delay = "required_view", backoff.next_delay_s()
                self.error = f"required view failed: {err}"
            except _NoDestination:
                kind, delay = "no_destination", deps.settings.permanent_retry_s
                self.error = "the endpoint has no destination"
            except SegmentCorrupt as err:
                await self._quarantine(segment, err)
                return
            deps.metrics.upload_retries.labels(kind).inc()
            self._update_gauges()
            log.warning(
                "endpoint %s segment %d/%d: %s (retry in %.1fs)",
                self.endpoint_id,
                segment.epoch,
                segment.seq,
                self.error,
                delay,
            )
            await asyncio.sleep(delay)

    def _work_dir(self, segment: SealedSegment) -> str:
        return os.path.join(
            self._deps.data_dir, "work", self.endpoint_id, f"{segment.epoch}-{segment.seq:08d}"
        )

    async def _build(self, sealed: Sealed, prefix: str, work_dir: str) -> SegmentArtifacts:
        deps, endpoint, segment = self._deps, sealed.endpoint, sealed.segment
        settings = deps.settings
        limits = SandboxLimits(
            threads=settings.view_threads,
            memory_limit_mib=settings.view_memory_mib,
            deadline_s=settings.view_deadline_s,
        )

        def build() -> SegmentArtifacts:
            shutil.rmtree(work_dir, ignore_errors=True)
            os.makedirs(work_dir)
            return build_artifacts(
                segment,
                endpoint=endpoint,
                bindings=endpoint.bindings_at(sealed.sealed_at_ms),
                output_formats=endpoint.output_formats,
                node_id=deps.node_id,
                region=deps.region,
                prefix=prefix,
                work_dir=work_dir,
                limits=limits,
                zstd_level=settings.zstd_level,
            )

        async with deps.build_slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(deps.executor, build)

    async def _deliver_once(self, sealed: Sealed) -> None:
        deps, segment = self._deps, sealed.segment
        destination = sealed.endpoint.destination
        if destination is None:
            latest = deps.current(self.endpoint_id)
            destination = latest.destination if latest is not None else None
        if destination is None:
            raise _NoDestination
        started = time.perf_counter()
        work_dir = self._work_dir(segment)
        try:
            built = await self._build(sealed, destination.prefix, work_dir)
            built_at = time.perf_counter()
            deps.metrics.stage_seconds.labels("build").observe(built_at - started)
            for stage in ("decode", "segments", "parquet", "views"):
                if stage in built.timings_ms:
                    deps.metrics.stage_seconds.labels(stage).observe(built.timings_ms[stage] / 1000)
            for outcome in built.views:
                if outcome.error_code is not None:
                    deps.metrics.view_failures.labels(outcome.view_id, "false").inc()
            failpoints.hit("delivery.after_build")
            store = await deps.stores.get(destination)
            for artifact in built.artifacts:
                await store.put_file(
                    artifact.key,
                    artifact.path,
                    content_type=artifact.content_type,
                    metadata=dict(artifact.metadata),
                )
                failpoints.hit("delivery.mid_upload")
            failpoints.hit("delivery.before_manifest")
            uploaded_at = time.perf_counter()
            deps.metrics.stage_seconds.labels("upload").observe(uploaded_at - built_at)
            committed_ms = deps.clock.time_ms()
            timings = {
                **built.timings_ms,
                "upload": round((uploaded_at - built_at) * 1000, 3),
            }
            key = manifest_key(
                destination.prefix,
                deps.region,
                self.endpoint_id,
                deps.node_id,
                segment.epoch,
                segment.seq,
            )
            manifest = build_manifest(
                endpoint_id=self.endpoint_id,
                node_id=deps.node_id,
                region=deps.region,
                epoch=segment.epoch,
                seq=segment.seq,
                built=built,
                committed_at=iso_ms(committed_ms),
                timings_ms=timings,
            )
            encoded = encode_manifest(manifest)
            await store.put_bytes(key, encoded, content_type="application/json")
            failpoints.hit("delivery.after_manifest")
            done = time.perf_counter()
            deps.metrics.stage_seconds.labels("manifest").observe(done - uploaded_at)
            report = self._report(
                sealed, built, destination.bucket, destination.region, key, len(encoded)
            )
            report["duration_ms"] = round((done - started) * 1000)
            report["uploaded_at"] = iso_ms(committed_ms)
            await deps.outbox.put(report)
            deps.metrics.commits.labels(self.endpoint_id).inc()
        finally:
            await asyncio.to_thread(shutil.rmtree, work_dir, True)

    def _report(
        self,
        sealed: Sealed,
        built: SegmentArtifacts,
        bucket: str,
        bucket_region: str,
        key: str,
        manifest_bytes: int,
    ) -> dict[str, Any]:
        segment = sealed.segment
        artifacts: dict[str, Any] = {
            "manifest": {"key": _s3_url(bucket, key), "bytes": manifest_bytes}
        }
        view_files = [a for a in built.artifacts if a.kind == "view"]
        for a in built.artifacts:
            if a.kind == "segment":
                artifacts["segments"] = {"key": _s3_url(bucket, a.key), "bytes": a.bytes}
            elif a.kind == "parquet":
                artifacts["parquet"] = {
                    "key": _s3_url(bucket, a.key),
                    "bytes": a.bytes,
                    "rows": a.rows,
                }
        if view_files:
            artifacts["parquet_views"] = {
                "files": len(view_files),
                "bytes": sum(a.bytes for a in view_files),
            }
        views = []
        for v in built.views:
            outcome: dict[str, Any] = {
                "view_id": v.view_id,
                "processed": v.processed,
                "accepted": v.accepted,
                "dropped": v.dropped,
                "dlq": v.dlq,
                "error_code": v.error_code,
                "error_message": v.error_message,
            }
            if v.dlq_key is not None:
                outcome["dlq_file"] = {
                    "key": v.dlq_key,
                    "bucket": bucket,
                    "region": bucket_region,
                    "bytes": v.dlq_bytes or 0,
                }
            views.append(outcome)
        return {
            "endpoint_id": self.endpoint_id,
            "epoch": segment.epoch,
            "seq": segment.seq,
            "wal_bytes": built.wal_bytes,
            "frames": built.frames,
            "manifest_key": key,
            "artifacts": artifacts,
            "views": views,
        }

    async def _quarantine(self, segment: SealedSegment, err: SegmentCorrupt) -> None:
        """Keep the bytes for an operator, alert, and let the WAL move on."""
        target_dir = os.path.join(self._deps.data_dir, "quarantine", self.endpoint_id)
        target = os.path.join(target_dir, f"{segment.epoch}-{os.path.basename(segment.path)}")

        def copy() -> None:
            os.makedirs(target_dir, exist_ok=True)
            shutil.copy2(segment.path, target)

        await asyncio.to_thread(copy)
        self._deps.metrics.quarantined.inc()
        log.error(
            "endpoint %s: sealed segment %d/%d is corrupt (%s); moved to %s",
            self.endpoint_id,
            segment.epoch,
            segment.seq,
            err,
            target,
        )
        await self.wal.mark_committed(segment.seq)


class _NoDestination(Exception):
    pass
