"""Commit reports queued durably on the node until the control plane acknowledges them.

Each report is one small JSON file `<data>/outbox/<endpoint>~<epoch>~<seq>.json`,
written atomically (temp file, fsync, rename, fsync the directory) right after the
segment's manifest is stored. The reporter task sends them in batches, oldest first,
retrying with capped backoff while the control plane is down; on acknowledgement it
calls `on_acked` (which deletes the local segment) and only then removes the file.
A crash between the two re-sends the report after restart: reports are idempotent on
(endpoint, node, epoch, seq), and deleting an already deleted segment is a no-op.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shared import failpoints
from shared.backoff import Backoff

from .control_client import ControlClient, ControlRejected, ControlUnavailable

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"


@dataclass(frozen=True, slots=True)
class Report:
    endpoint_id: str
    epoch: int
    seq: int
    body: dict[str, Any]

    @property
    def file_name(self) -> str:
        return f"{self.endpoint_id}~{self.epoch}~{self.seq:08d}.json"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    def __init__(
        self,
        data_dir: str,
        client: ControlClient,
        node_id: str,
        *,
        on_acked: Callable[[Report], Awaitable[None]],
        batch_max: int = 100,
        backoff: Backoff | None = None,
        on_size: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = os.path.join(data_dir, OUTBOX_DIR)
        self._client = client
        self._node_id = node_id
        self._on_acked = on_acked
        self._batch_max = batch_max
        self._backoff = backoff or Backoff(base_s=0.5, cap_s=30.0)
        self._on_size = on_size
        self._pending: dict[str, Report] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.last_error: str | None = None

    # ------------------------------------------------------------------ state
    def load(self) -> list[Report]:
        """Read the reports left by an earlier run (blocking; call before `run`)."""
        os.makedirs(self.directory, exist_ok=True)
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if not name.endswith(".json"):
                os.unlink(path)  # an interrupted temp file: its report was never queued
                continue
            with open(path, "rb") as f:
                data = json.loads(f.read())
            report = Report(data["endpoint_id"], int(data["epoch"]), int(data["seq"]), data)
            self._pending[report.file_name] = report
        self._changed()
        return list(self._pending.values())

    def has(self, endpoint_id: str, epoch: int, seq: int) -> bool:
        return Report(endpoint_id, epoch, seq, {}).file_name in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def _changed(self) -> None:
        if self._on_size is not None:
            self._on_size(len(self._pending))
        if self._pending:
            self._idle.clear()
            self._wakeup.set()
        else:
            self._idle.set()

    # ---------------------------------------------------------------- enqueue
    def _write_sync(self, report: Report) -> None:
        path = os.path.join(self.directory, report.file_name)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(json.dumps(report.body, separators=(",", ":")).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)

    async def put(self, body: dict[str, Any]) -> None:
        """Queue one commit report durably (returns once it is on disk)."""
        report = Report(body["endpoint_id"], int(body["epoch"]), int(body["seq"]), body)
        await asyncio.to_thread(self._write_sync, report)
        self._pending[report.file_name] = report
        self._changed()

    async def wait_empty(self) -> None:
        await self._idle.wait()

    # ------------------------------------------------------------------- send
    def _remove_sync(self, report: Report) -> None:
        try:
            os.unlink(os.path.join(self.directory, report.file_name))
        except FileNotFoundError:
            return
        _fsync_dir(self.directory)

    async def _send_once(self) -> bool:
        """One batch. True when something was acknowledged."""
        batch = [self._pending[k] for k in sorted(self._pending)[: self._batch_max]]
        if not batch:
            return False
        await self._client.report_commits(self._node_id, [r.body for r in batch])
        failpoints.hit("outbox.after_ack")
        try:
            for report in batch:
                await self._on_acked(report)
                failpoints.hit("outbox.mid_delete")
                await asyncio.to_thread(self._remove_sync, report)
                self._pending.pop(report.file_name, None)
        finally:
            self._changed()
        return True

    async def run(self) -> None:
        """Send reports until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                try:
                    await self._send_once()
                    self._backoff.reset()
                    self.last_error = None
                except (ControlUnavailable, ControlRejected, OSError) as err:
                    # A 4xx is a bug on one side; an OSError is the local delete of an
                    # acknowledged segment failing. Either way the report stays queued
                    # (re-sending is idempotent) and we keep trying slowly.
                    self.last_error = str(err)
                    log.warning("commit report failed (%d queued): %s", len(self._pending), err)
                    await asyncio.sleep(self._backoff.next_delay_s())
