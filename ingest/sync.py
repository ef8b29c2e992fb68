"""Config sync with the control plane (DESIGN.md §8): register, long-poll the config
snapshot, heartbeat. Ingest never waits for any of it: the node serves on the last
snapshot it applied (persisted in the data directory) while the control plane is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from shared.backoff import Backoff

from . import snapshot as snapshots
from .control_client import ControlClient, ControlRejected, ControlUnavailable
from .metrics import NodeMetrics
from .snapshot import Snapshot, SnapshotError

log = logging.getLogger(__name__)


class ConfigSync:
    def __init__(
        self,
        client: ControlClient,
        *,
        node_id: str,
        registration: dict[str, Any],
        data_dir: str,
        apply: Callable[[Snapshot], None],
        heartbeat_body: Callable[[], dict[str, Any]],
        metrics: NodeMetrics,
        long_poll_s: int = 25,
        heartbeat_interval_s: float = 5.0,
        applied_epoch: int = 0,
    ) -> None:
        self._client = client
        self.node_id = node_id
        self._registration = registration
        self._data_dir = data_dir
        self._apply = apply
        self._heartbeat_body = heartbeat_body
        self._metrics = metrics
        self._long_poll_s = long_poll_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self.applied_epoch = applied_epoch
        self.registered = asyncio.Event()
        self.first_snapshot = asyncio.Event()
        if applied_epoch > 0:
            self.first_snapshot.set()
        self.last_error: str | None = None

    async def _register(self) -> None:
        backoff = Backoff(base_s=0.2, cap_s=10.0)
        while True:
            try:
                answer = await self._client.register(
                    {"node_id": self.node_id, **self._registration}
                )
                self._heartbeat_interval_s = float(
                    answer.get("heartbeat_interval_s", self._heartbeat_interval_s)
                )
                self.registered.set()
                self.last_error = None
                return
            except (ControlUnavailable, ControlRejected) as err:
                self._failed("register", err)
                await asyncio.sleep(backoff.next_delay_s())

    def _failed(self, call: str, err: Exception) -> None:
        self._metrics.control_errors.labels(call).inc()
        if self.last_error != str(err):
            log.warning("control plane %s failed: %s", call, err)
        self.last_error = str(err)

    async def _accept(self, data: dict[str, Any]) -> None:
        snapshot = snapshots.parse(data)
        await asyncio.to_thread(snapshots.save, snapshot, self._data_dir)
        self._apply(snapshot)
        self.applied_epoch = snapshot.config_epoch
        self._metrics.config_epoch.set(snapshot.config_epoch)
        self.first_snapshot.set()

    async def poll_forever(self) -> None:
        await self._register()
        backoff = Backoff(base_s=0.2, cap_s=10.0)
        # The first call returns at once (after_epoch=0 if we have nothing yet).
        wait_s = 0
        while True:
            try:
                data = await self._client.config(
                    self.node_id, after_epoch=self.applied_epoch, wait_s=wait_s
                )
                if (
                    int(data.get("config_epoch", 0)) != self.applied_epoch
                    or not self.first_snapshot.is_set()
                ):
                    await self._accept(data)
                wait_s = self._long_poll_s
                backoff.reset()
                self.last_error = None
            except ControlRejected as err:
                self._failed("config", err)
                if err.status == 404:  # the control plane forgot us (store reset)
                    await self._register()
                await asyncio.sleep(backoff.next_delay_s())
            except (ControlUnavailable, SnapshotError) as err:
                self._failed("config", err)
                await asyncio.sleep(backoff.next_delay_s())

    async def heartbeat_once(self) -> None:
        body = {"applied_epoch": self.applied_epoch, **self._heartbeat_body()}
        await self._client.heartbeat(self.node_id, body)

    async def heartbeat_forever(self) -> None:
        await self.registered.wait()
        while True:
            try:
                await self.heartbeat_once()
            except (ControlUnavailable, ControlRejected) as err:
                self._failed("heartbeat", err)
            await asyncio.sleep(self._heartbeat_interval_s)
