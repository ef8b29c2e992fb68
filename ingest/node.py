"""The ingest node: composition root of `edgemq node` (and the node half of `edgemq up`).

Start: node id (kept in `<data>/node_id`), the last applied snapshot from disk, WAL
recovery for every endpoint directory, the outbox of unacknowledged commit reports,
then HTTP, then the background tasks (config long-poll, heartbeats, the reporter, the
disk sampler). Ingest is served from the first moment on the persisted snapshot.

Drain (SIGTERM): new requests get 503 `draining`, every WAL is sealed and closed,
deliveries and commit reports are finished until `drain_deadline_s`, then the node
stops. Whatever is not delivered by then stays in the WAL for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from shared.backoff import Backoff
from shared.clock import SYSTEM_CLOCK, Clock

from . import snapshot as snapshots
from .admission import Admission
from .auth import IngestAuth
from .body import BodyLimits
from .control_client import ControlClient
from .delivery import DeliveryDeps
from .http_app import build_app
from .http_server import JsonErrorRunner
from .metrics import NodeMetrics
from .mqtt.listener import MqttListener
from .outbox import Outbox
from .runtime import Endpoints
from .settings import NodeSettings
from .snapshot import Snapshot
from .stores import StoreCache
from .sync import ConfigSync

log = logging.getLogger(__name__)

NODE_ID_FILE = "node_id"
VERSION = "0.1.0"


def load_node_id(data_dir: str) -> str:
    """This node's id, created on first start (blocking)."""
    path = os.path.join(data_dir, NODE_ID_FILE)
    try:
        with open(path) as f:
            node_id = f.read().strip()
        if node_id:
            return node_id
    except FileNotFoundError:
        pass
    node_id = uuid.uuid4().hex[:16]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(node_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return node_id


class Node:
    def __init__(self, settings: NodeSettings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = NodeMetrics()
        self.admission = Admission(settings.limits, self.metrics)
        self.auth = IngestAuth()
        self.body_limits = BodyLimits(
            body_bytes_max=settings.limits.body_bytes_max,
            record_bytes_max=settings.limits.record_bytes_max,
        )
        self.client = ControlClient(
            settings.control_url, settings.node_key, timeout_s=settings.control_timeout_s
        )
        self.node_id = ""
        self.http_url = ""
        self._executor = ThreadPoolExecutor(
            max_workers=settings.delivery.build_threads, thread_name_prefix="segment-build"
        )
        self._stores = StoreCache()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.endpoints: Endpoints
        self.mqtt = MqttListener(self)  # TCP/TLS servers start in start(), after HTTP
        self.outbox: Outbox
        self.sync: ConfigSync
        self.started = False

    # ----------------------------------------------------------------- state
    @property
    def config_epoch(self) -> int:
        return self.endpoints.snapshot.config_epoch

    def _apply(self, snapshot: Snapshot) -> None:
        self.endpoints.apply(snapshot)
        self.auth.update(snapshot)

    def readiness_problems(self) -> list[str]:
        problems = []
        if not self.started:
            problems.append("starting")
        if self.admission.draining:
            problems.append("draining")
        if self.config_epoch == 0:
            problems.append("no config snapshot yet")
        for runtime in self.endpoints.runtimes():
            if runtime.wal.failed is not None:
                problems.append(f"endpoint {runtime.endpoint_id}: WAL failed")
        return problems

    def refresh_gauges(self) -> None:
        m = self.metrics
        for runtime in self.endpoints.runtimes():
            wal, label = runtime.wal, runtime.endpoint_id
            m.open_segment_bytes.labels(label).set(wal.open_segment_bytes)
            m.unshipped_bytes.labels(label).set(wal.unshipped_bytes)
            m.wal_failed.labels(label).set(1 if wal.failed is not None else 0)

    def heartbeat_body(self) -> dict[str, Any]:
        states = []
        for runtime in self.endpoints.runtimes():
            error = runtime.delivery.error
            if runtime.wal.failed is not None:
                error = f"WAL failed: {runtime.wal.failed}"
            states.append(
                {
                    "endpoint_id": runtime.endpoint_id,
                    "unshipped_bytes": runtime.wal.unshipped_bytes,
                    "delivery_error": error,
                }
            )
        return {"draining": self.admission.draining, "endpoints": states}

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        s = self.settings
        await asyncio.to_thread(os.makedirs, s.data_dir, exist_ok=True)
        self.node_id = await asyncio.to_thread(load_node_id, s.data_dir)
        deps = DeliveryDeps(
            node_id=self.node_id,
            region=s.region,
            data_dir=s.data_dir,
            settings=s.delivery,
            stores=self._stores,
            outbox=None,  # type: ignore[arg-type]  # set just below
            executor=self._executor,
            build_slots=asyncio.Semaphore(s.delivery.build_threads),
            metrics=self.metrics,
            clock=self.clock,
            current=lambda endpoint_id: self.endpoints.current(endpoint_id),
        )
        self.endpoints = Endpoints(s, deps, self.metrics, self.clock)
        self.outbox = Outbox(
            s.data_dir,
            self.client,
            self.node_id,
            on_acked=self.endpoints.on_report_acked,
            batch_max=s.delivery.report_batch_max,
            backoff=Backoff(base_s=s.delivery.retry_base_s, cap_s=s.delivery.retry_cap_s),
            on_size=self.metrics.outbox_reports.set,
        )
        deps.outbox = self.outbox
        await asyncio.to_thread(self.outbox.load)
        persisted = await asyncio.to_thread(snapshots.load, s.data_dir)
        if persisted is not None:
            self._apply(persisted)
            self.metrics.config_epoch.set(persisted.config_epoch)
        # Scratch space of deliveries a crash interrupted: every unfinished delivery
        # rebuilds from its sealed segment, so whatever is there is garbage.
        await asyncio.to_thread(shutil.rmtree, os.path.join(s.data_dir, "work"), True)
        await self.endpoints.open_existing()

        self._runner = JsonErrorRunner(
            build_app(self),
            access_log=None,
            keepalive_timeout=s.limits.header_timeout_s,
            handle_signals=False,
            shutdown_timeout=2.0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.http_port, backlog=1024)
        await site.start()
        await self.mqtt.start()
        port = self.bound_port
        advertise = s.advertise_host or s.host
        self.http_url = f"http://{advertise}:{port}"
        self.sync = ConfigSync(
            self.client,
            node_id=self.node_id,
            registration={
                "region": s.region,
                "http_url": self.http_url,
                "mqtt_url": self.mqtt.url(advertise),
                "ipv4": [advertise] if _is_ipv4(advertise) else [],
                "version": VERSION,
            },
            data_dir=s.data_dir,
            apply=self._apply,
            heartbeat_body=self.heartbeat_body,
            metrics=self.metrics,
            long_poll_s=s.long_poll_s,
            heartbeat_interval_s=s.heartbeat_interval_s,
            applied_epoch=persisted.config_epoch if persisted is not None else 0,
        )
        for name, coro in (
            ("config-sync", self.sync.poll_forever()),
            ("heartbeat", self.sync.heartbeat_forever()),
            ("outbox", self.outbox.run()),
            ("disk", self.admission.watch_disk(s.data_dir)),
        ):
            self._tasks.append(asyncio.create_task(coro, name=name))
        self.started = True
        log.info("node %s serving %s (region %s)", self.node_id, self.http_url, s.region)

    @property
    def bound_port(self) -> int:
        assert self._runner is not None
        for site in self._runner.sites:
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                return int(server.sockets[0].getsockname()[1])
        return self.settings.http_port

    async def drain(self) -> bool:
        """Stop taking data, seal, deliver and report until the deadline. True when
        everything held was delivered and acknowledged."""
        self.admission.draining = True
        await self.mqtt.drain()  # owed PUBACKs flushed, then DISCONNECT 0x8B
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_deadline_s
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self.sync.heartbeat_once()
        await self.endpoints.seal_all()
        while loop.time() < deadline:
            if self.endpoints.all_delivered() and len(self.outbox) == 0:
                return True
            await asyncio.sleep(0.05)
        log.warning("drain deadline passed; undelivered data stays in the WAL for the next start")
        return False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.mqtt.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if hasattr(self, "endpoints"):
            await self.endpoints.stop()
        await self._stores.close()
        await self.client.close()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts)
