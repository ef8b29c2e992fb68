"""ingest.outbox: commit reports are durable until the control plane acknowledges them.

Most tests use `FakeControl`, which keeps the real client's contract: it raises the
same `ControlUnavailable` / `ControlRejected` and answers what the control plane
answers. One test runs the real `ControlClient` against a small HTTP stub so the
mapping of a 503 to a retry is checked end to end."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ingest.control_client import ControlClient, ControlRejected, ControlUnavailable
from ingest.outbox import OUTBOX_DIR, Outbox, Report
from shared.backoff import Backoff

NODE = "node-1"


def body(endpoint: str, seq: int, epoch: int = 1_700_000_000) -> dict[str, Any]:
    return {
        "endpoint_id": endpoint,
        "epoch": epoch,
        "seq": seq,
        "wal_bytes": 100 * seq,
        "frames": seq,
        "manifest_key": f"loc/{endpoint}/commits/{NODE}/{epoch}/seg-{seq:08d}.json",
        "artifacts": {},
        "views": [],
        "duration_ms": 5,
        "uploaded_at": "2026-01-01T00:00:00.000Z",
    }


class FakeControl:
    """`report_commits` as the control plane answers it; `failures` are raised first,
    one per call. `on_call` sees the outbox directory at the moment of each call."""

    def __init__(
        self,
        failures: list[Exception] | None = None,
        on_call: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.failures = list(failures or [])
        self.calls: list[list[dict[str, Any]]] = []
        self._on_call = on_call

    async def report_commits(self, node_id: str, commits: list[dict[str, Any]]) -> dict[str, Any]:
        assert node_id == NODE
        self.calls.append(commits)
        if self._on_call is not None:
            self._on_call(commits)
        if self.failures:
            raise self.failures.pop(0)
        return {"acknowledged": len(commits), "stored": len(commits)}


class SpyBackoff(Backoff):
    def __init__(self) -> None:
        seed = random.randrange(2**32)
        print(f"backoff seed={seed}")
        super().__init__(base_s=0.001, cap_s=0.004, rng=random.Random(seed))
        self.delays: list[float] = []

    def next_delay_s(self) -> float:
        delay = super().next_delay_s()
        self.delays.append(delay)
        return delay


class Acks:
    """An `on_acked` that records what it saw (and can fail on demand)."""

    def __init__(self, data_dir: Path, fail: int = 0) -> None:
        self.directory = data_dir / OUTBOX_DIR
        self.reports: list[Report] = []
        self.file_present: list[bool] = []
        self.fail = fail

    async def __call__(self, report: Report) -> None:
        self.file_present.append((self.directory / report.file_name).exists())
        if self.fail:
            self.fail -= 1
            raise OSError(5, "Input/output error")  # e.g. deleting the segment failed
        self.reports.append(report)


def outbox_files(data_dir: Path) -> list[str]:
    return sorted(os.listdir(data_dir / OUTBOX_DIR))


def make(
    data_dir: Path,
    client: Any,
    on_acked: Callable[[Report], Awaitable[None]],
    **kwargs: Any,
) -> Outbox:
    outbox = Outbox(str(data_dir), client, NODE, on_acked=on_acked, **kwargs)
    outbox.load()
    return outbox


@asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(outbox.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def drained(outbox: Outbox, task: asyncio.Task[None], timeout_s: float = 10) -> None:
    """Wait until the outbox is empty; fail at once if the reporter task died."""
    async with asyncio.timeout(timeout_s):
        empty = asyncio.ensure_future(outbox.wait_empty())
        await asyncio.wait([empty, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            empty.cancel()
            raise AssertionError(f"the reporter stopped: {task.exception()!r}")


# ------------------------------------------------------------------ durability
async def test_a_queued_report_is_on_disk_and_a_new_outbox_on_the_same_dir_loads_it(
    tmp_path: Path,
) -> None:
    first = make(tmp_path, FakeControl(), Acks(tmp_path))
    bodies = [body("ep-b", 1), body("ep-a", 2), body("ep-a", 1)]
    for b in bodies:
        await first.put(b)
    assert len(first) == 3
    files = outbox_files(tmp_path)
    assert files == [
        "ep-a~1700000000~00000001.json",
        "ep-a~1700000000~00000002.json",
        "ep-b~1700000000~00000001.json",
    ]
    for name in files:
        stored = json.loads((tmp_path / OUTBOX_DIR / name).read_bytes())
        assert stored in bodies

    # A new process: nothing sent yet, everything still there.
    second = Outbox(str(tmp_path), FakeControl(), NODE, on_acked=Acks(tmp_path))
    loaded = second.load()
    assert sorted((r.endpoint_id, r.seq) for r in loaded) == [
        ("ep-a", 1),
        ("ep-a", 2),
        ("ep-b", 1),
    ]
    assert {json.dumps(r.body, sort_keys=True) for r in loaded} == {
        json.dumps(b, sort_keys=True) for b in bodies
    }
    assert second.has("ep-a", 1_700_000_000, 2)
    assert not second.has("ep-a", 1_700_000_000, 3)
    assert len(second) == 3


async def test_loading_removes_a_temp_file_left_by_an_interrupted_put(tmp_path: Path) -> None:
    directory = tmp_path / OUTBOX_DIR
    directory.mkdir()
    (directory / "ep-a~1700000000~00000001.json.tmp").write_bytes(b'{"endpoint_id": "ep-a", "ep')
    outbox = make(tmp_path, FakeControl(), Acks(tmp_path))
    assert len(outbox) == 0
    assert outbox_files(tmp_path) == []


# ------------------------------------------------------------------- sending
async def test_an_acknowledged_report_runs_on_acked_first_and_only_then_loses_its_file(
    tmp_path: Path,
) -> None:
    control, acks = FakeControl(), Acks(tmp_path)
    sizes: list[int] = []
    outbox = make(tmp_path, control, acks, on_size=sizes.append)
    await outbox.put(body("ep-a", 1))
    await outbox.put(body("ep-a", 2))
    async with running(outbox) as task:
        await drained(outbox, task)
    assert [r.seq for r in acks.reports] == [1, 2]
    assert acks.file_present == [True, True], "on_acked ran after the file was removed"
    assert outbox_files(tmp_path) == []
    assert control.calls == [[body("ep-a", 1), body("ep-a", 2)]]
    assert sizes[-1] == 0
    assert max(sizes) == 2


async def test_reports_are_sent_in_batches_oldest_first(tmp_path: Path) -> None:
    control = FakeControl()
    outbox = make(tmp_path, control, Acks(tmp_path), batch_max=2)
    for seq in (5, 3, 1, 4, 2):
        await outbox.put(body("ep-a", seq))
    async with running(outbox) as task:
        await drained(outbox, task)
    assert [[c["seq"] for c in call] for call in control.calls] == [[1, 2], [3, 4], [5]]


async def test_a_report_queued_while_the_reporter_is_idle_is_sent(tmp_path: Path) -> None:
    control = FakeControl()
    outbox = make(tmp_path, control, Acks(tmp_path))
    async with running(outbox) as task:
        await drained(outbox, task)  # nothing to do yet
        await outbox.put(body("ep-a", 7))
        await drained(outbox, task)
    assert [[c["seq"] for c in call] for call in control.calls] == [[7]]


@pytest.mark.parametrize(
    "failure",
    [ControlUnavailable("connection refused"), ControlRejected(409, '{"error": {}}')],
    ids=["unavailable", "rejected"],
)
async def test_a_failed_report_is_kept_on_disk_and_retried_with_backoff(
    tmp_path: Path, failure: Exception
) -> None:
    backoff = SpyBackoff()
    seen_on_disk: list[list[str]] = []
    control = FakeControl(
        failures=[failure] * 3, on_call=lambda _: seen_on_disk.append(outbox_files(tmp_path))
    )
    acks = Acks(tmp_path)
    outbox = make(tmp_path, control, acks, backoff=backoff)
    await outbox.put(body("ep-a", 1))
    async with running(outbox) as task:
        await drained(outbox, task)
    assert len(control.calls) == 4
    assert seen_on_disk == [["ep-a~1700000000~00000001.json"]] * 4, "dropped while failing"
    assert len(backoff.delays) == 3
    assert all(0 < d <= backoff.cap_s for d in backoff.delays)
    assert backoff.delays[0] <= backoff.delays[1] <= backoff.delays[2]  # growing, below cap
    assert backoff.attempts == 0, "the backoff is reset after a success"
    assert outbox.last_error is None
    assert [r.seq for r in acks.reports] == [1]
    assert outbox_files(tmp_path) == []


async def test_a_report_whose_on_acked_fails_stays_queued_and_is_sent_again(
    tmp_path: Path,
) -> None:
    # Deleting the local segment can fail (EIO); the report must survive that: it is
    # idempotent, and losing it would leave the segment on the node for ever.
    control, acks = FakeControl(), Acks(tmp_path, fail=1)
    outbox = make(tmp_path, control, acks, backoff=SpyBackoff())
    await outbox.put(body("ep-a", 1))
    async with running(outbox) as task:
        await drained(outbox, task)
    assert len(control.calls) == 2
    assert [r.seq for r in acks.reports] == [1]
    assert outbox_files(tmp_path) == []


# --------------------------------------------------------------- real client
@asynccontextmanager
async def stub_control(statuses: list[int]) -> AsyncIterator[tuple[str, list[Any]]]:
    """POST /v1/nodes/{id}/commits answering `statuses` in turn, then 200."""
    seen: list[Any] = []

    async def commits(request: web.Request) -> web.Response:
        seen.append(
            (request.match_info["node_id"], request.headers["X-API-Key"], await request.json())
        )
        status = statuses.pop(0) if statuses else 200
        if status != 200:
            return web.json_response({"error": {"status": status}}, status=status)
        return web.json_response({"acknowledged": 1, "stored": 1})

    app = web.Application()
    app.router.add_post("/v1/nodes/{node_id}/commits", commits)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_the_real_client_turns_a_503_into_a_retry_until_the_report_is_stored(
    tmp_path: Path,
) -> None:
    async with stub_control([503, 502]) as (url, seen):
        client = ControlClient(url, "emq_live_nodekey", timeout_s=5)
        try:
            acks = Acks(tmp_path)
            outbox = make(tmp_path, client, acks, backoff=SpyBackoff())
            await outbox.put(body("ep-a", 1))
            async with running(outbox) as task:
                await drained(outbox, task)
        finally:
            await client.close()
    assert [(n, k) for n, k, _ in seen] == [(NODE, "emq_live_nodekey")] * 3
    assert all(b == {"commits": [body("ep-a", 1)]} for _, _, b in seen)
    assert [r.seq for r in acks.reports] == [1]
    assert outbox_files(tmp_path) == []
