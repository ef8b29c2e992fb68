"""The node over its life (DESIGN.md §1, §8; RELIABILITY.md CP, DUR-05): serving on the
last snapshot while the control plane is away, restarts in the middle of a stream,
drain, config changes arriving by long poll, endpoint status, and a permanent store
error that degrades the endpoint without losing data.

Loss is always checked on the raw Parquet of the local store: every acknowledged record
must be there (duplicates are allowed and printed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq

from control.server import serve
from control.services.common import ControlSettings
from ingest.node import Node
from ingest.runtime import WAL_DIR
from tests.support.stack import (
    SEGMENT_BYTES_MIN,
    ControlPlane,
    control_plane,
    node_settings,
    running_node,
    wait_for,
)

NDJSON = "application/x-ndjson"
VIEW = {
    "columns": [
        {"name": "id", "type": "VARCHAR", "path": "$.id", "required": True},
        {"name": "n", "type": "BIGINT", "path": "$.n"},
    ],
}


# --------------------------------------------------------------------- helpers
def raw_records(out: Path, endpoint_id: str) -> list[bytes]:
    """Every record in the endpoint's raw Parquet files, as sent."""
    records: list[bytes] = []
    for path in sorted((out / "lake" / "loc" / endpoint_id / "parquet").glob("*/*.parquet")):
        table = pq.read_table(path, columns=["payload", "payload_bytes"]).to_pydict()
        for text, raw in zip(table["payload"], table["payload_bytes"], strict=True):
            records.append(text.encode() if text is not None else raw)
    return records


def wal_files(node_dir: Path, endpoint_id: str) -> dict[str, int]:
    directory = node_dir / WAL_DIR / endpoint_id
    return {p.name: p.stat().st_size for p in directory.glob("seg-*")}


async def post_lines(
    http: aiohttp.ClientSession, url: str, key: str, lines: list[bytes]
) -> tuple[int, Any]:
    body = b"\n".join(lines) + b"\n"
    async with http.post(url, data=body, headers={"X-API-Key": key, "Content-Type": NDJSON}) as r:
        return r.status, await r.json(content_type=None)


def records(prefix: str, count: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"id": f"{prefix}-{i}", "n": i}).encode() for i in range(start, count)]


async def endpoint_status(cp: ControlPlane, endpoint_id: str) -> dict[str, Any]:
    return dict(await cp.call("GET", f"/v1/endpoints/{endpoint_id}"))


@contextlib.asynccontextmanager
async def control_at(cp: ControlPlane) -> AsyncIterator[None]:
    """The control plane started again on the same store and address."""
    port = int(cp.url.rsplit(":", 1)[1])
    settings = ControlSettings(segment_bytes_min=SEGMENT_BYTES_MIN, public_url=cp.url)
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(
            cp.database_url,
            "127.0.0.1",
            port,
            settings,
            ready=ready,
            stop=stop,
            handle_signals=False,
        )
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()
    try:
        yield
    finally:
        stop.set()
        await task


def reconnected(cp: ControlPlane, session: aiohttp.ClientSession) -> ControlPlane:
    """The same account and keys, through a new HTTP session."""
    return ControlPlane(cp.url, cp.database_url, session, cp.account_id, cp.api_key, cp.node_key)


@dataclass
class Ledger:
    """Client-side record of a stream: what was sent, what was acknowledged."""

    sent: set[bytes] = field(default_factory=set)
    acked: list[bytes] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    indeterminate: int = 0

    def check(self, landed: list[bytes]) -> tuple[int, int]:
        """(lost, duplicates); asserts there are no phantoms."""
        counts = Counter(landed)
        phantoms = set(counts) - self.sent
        assert not phantoms, f"{len(phantoms)} records nobody sent"
        lost = [r for r in self.acked if r not in counts]
        duplicates = sum(n - 1 for n in counts.values())
        return len(lost), duplicates


# ------------------------------------------------------- control plane away
async def test_ingest_keeps_working_on_the_last_snapshot_while_the_control_plane_is_down(
    tmp_path: Path,
) -> None:
    out, node_dir = tmp_path / "objects", tmp_path / "node"
    async with contextlib.AsyncExitStack() as control:
        cp = await control.enter_async_context(control_plane(str(tmp_path)))
        endpoint = (await cp.endpoint((await cp.local_destination(str(out)))["id"]))["id"]
        settings = node_settings(cp, str(node_dir), long_poll_s=1, control_timeout_s=1.0)
        node = Node(settings)
        await node.start()
        try:
            await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint), what="config")
            await control.aclose()  # the control plane goes away

            acked: list[bytes] = []
            async with aiohttp.ClientSession() as http:
                batch = records("down", 50)
                status, answer = await post_lines(
                    http, f"{node.http_url}/ingest/{endpoint}", cp.api_key, batch
                )
                assert status == 200, answer
                acked += batch
                await node.stop()

                # A node started while the control plane is still down serves from the
                # snapshot it persisted.
                node = Node(settings)
                await node.start()
                async with http.get(f"{node.http_url}/readyz") as resp:
                    assert resp.status == 200, await resp.text()
                batch = records("restarted", 50)
                status, answer = await post_lines(
                    http, f"{node.http_url}/ingest/{endpoint}", cp.api_key, batch
                )
                assert status == 200, answer
                acked += batch
                await wait_for(
                    lambda: node.sync.last_error is not None, what="a failed control-plane call"
                )

                # The control plane comes back: the reports queued meanwhile reach it and
                # the local segments go.
                async with control_at(cp), aiohttp.ClientSession() as session:
                    api = reconnected(cp, session)
                    await wait_for(
                        lambda: (
                            len(node.outbox) == 0
                            and len(raw_records(out, endpoint)) >= len(acked)
                            and not any(n.endswith(".wal") for n in wal_files(node_dir, endpoint))
                        ),
                        what="delivery and acknowledged reports",
                    )
                    commits = await api.commits(endpoint)
                    assert sum(c["frames"] for c in commits) == len(acked)
            assert Counter(raw_records(out, endpoint)) == Counter(acked)
        finally:
            await node.stop()


# ----------------------------------------------------------------- restarts
async def test_a_node_restarted_in_the_middle_of_a_stream_loses_no_acknowledged_record(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    out, node_dir = tmp_path / "objects", tmp_path / "node"
    ledger = Ledger()
    async with control_plane(str(tmp_path)) as cp:
        endpoint = (await cp.endpoint((await cp.local_destination(str(out)))["id"]))["id"]
        settings = node_settings(cp, str(node_dir), long_poll_s=1)
        node = Node(settings)
        await node.start()
        url = [f"{node.http_url}/ingest/{endpoint}"]
        stop_writing = asyncio.Event()
        progress = asyncio.Event()

        async def writer() -> None:
            connector = aiohttp.TCPConnector(force_close=True)
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                n = 0
                while not stop_writing.is_set():
                    batch = [
                        json.dumps({"id": f"w-{n + i}", "pad": "p" * rng.randrange(200)}).encode()
                        for i in range(rng.randrange(1, 40))
                    ]
                    n += len(batch)
                    ledger.sent.update(batch)
                    try:
                        status, answer = await post_lines(http, url[0], cp.api_key, batch)
                    except (aiohttp.ClientError, TimeoutError):
                        ledger.indeterminate += 1
                        await asyncio.sleep(0.01)  # the node is restarting
                        continue
                    if status == 200:
                        ledger.acked += batch
                        progress.set()
                    elif status >= 500 and status != 503:
                        ledger.indeterminate += 1
                    else:
                        error = answer["error"]
                        ledger.refused[f"{status} {error.get('reason', error['code'])}"] += 1

        async def acked_at_least(count: int) -> None:
            while len(ledger.acked) < count:
                progress.clear()
                async with asyncio.timeout(30):
                    await progress.wait()

        writing = asyncio.create_task(writer())
        try:
            await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint), what="config")
            for cycle in range(3):
                await acked_at_least(len(ledger.acked) + rng.randrange(200, 800))
                await node.stop()
                node = Node(settings)
                await node.start()
                url[0] = f"{node.http_url}/ingest/{endpoint}"
                print(f"restart {cycle + 1}: {len(ledger.acked)} records acknowledged so far")
            await acked_at_least(len(ledger.acked) + 200)
            stop_writing.set()
            await writing
            assert await node.drain(), "drain did not finish"
        finally:
            stop_writing.set()
            await asyncio.gather(writing, return_exceptions=True)
            await node.stop()
        lost, duplicates = ledger.check(raw_records(out, endpoint))
        print(
            f"acked {len(ledger.acked)} of {len(ledger.sent)} sent; lost {lost}; "
            f"duplicates {duplicates}; refused {dict(ledger.refused)}; "
            f"indeterminate {ledger.indeterminate}"
        )
        assert lost == 0
        # Valid requests are only ever asked to retry (503), never refused as bad.
        assert all(outcome.startswith("503 ") for outcome in ledger.refused), ledger.refused
        commits = await cp.commits(endpoint)
        assert sum(c["frames"] for c in commits) == len(raw_records(out, endpoint))
        by_epoch: dict[int, list[int]] = {}
        for c in commits:
            by_epoch.setdefault(c["epoch"], []).append(c["seq"])
        for epoch, seqs in by_epoch.items():
            assert sorted(seqs) == list(range(min(seqs), min(seqs) + len(seqs))), (
                f"sequence gap in epoch {epoch}: {sorted(seqs)}"
            )


# -------------------------------------------------------------------- drain
async def test_drain_seals_the_open_segment_delivers_it_and_has_its_report_acknowledged(
    tmp_path: Path,
) -> None:
    out, node_dir = tmp_path / "objects", tmp_path / "node"
    async with control_plane(str(tmp_path)) as cp:
        dest = await cp.local_destination(str(out))
        endpoint = (await cp.endpoint(dest["id"], segment_max_age_seconds=900))["id"]
        async with (
            running_node(node_settings(cp, str(node_dir), long_poll_s=1)) as node,
            aiohttp.ClientSession() as http,
        ):
            await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint), what="config")
            sent = records("drain", 300)
            status, answer = await post_lines(
                http, f"{node.http_url}/ingest/{endpoint}", cp.api_key, sent
            )
            assert status == 200, answer
            wal = node.endpoints.get(endpoint)
            assert wal is not None
            assert wal.wal.open_segment_bytes > 0
            assert wal.wal.sealed_segments() == []
            started = time.monotonic()
            assert await node.drain()
            print(f"drained in {time.monotonic() - started:.2f}s")
            assert len(node.outbox) == 0
            files = wal_files(node_dir, endpoint)
            assert not [n for n in files if n.endswith(".wal")], files
            assert all(size == 0 for size in files.values()), files
            commits = await cp.commits(endpoint)
            assert [c["frames"] for c in commits] == [len(sent)]
        assert Counter(raw_records(out, endpoint)) == Counter(sent)


# ------------------------------------------------------------ config change
async def test_a_config_change_reaches_the_node_by_long_poll_and_applies_from_the_next_segment(
    tmp_path: Path,
) -> None:
    out, node_dir = tmp_path / "objects", tmp_path / "node"
    async with control_plane(str(tmp_path)) as cp:
        dest = await cp.local_destination(str(out))
        endpoint = (await cp.endpoint(dest["id"], segment_max_age_seconds=1))["id"]
        view = await cp.published_view("readings", VIEW)
        # A long poll far longer than the test: only a woken poll can deliver the change.
        settings = node_settings(cp, str(node_dir), long_poll_s=25)
        async with running_node(settings) as node, aiohttp.ClientSession() as http:
            url = f"{node.http_url}/ingest/{endpoint}"
            await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint), what="config")
            before = records("before", 40)
            assert (await post_lines(http, url, cp.api_key, before))[0] == 200
            first = await wait_for(lambda: cp.commits(endpoint), what="the first commit")
            assert [c["frames"] for c in first] == [len(before)]
            assert "parquet_views" not in first[0]["artifacts"]

            epoch = node.config_epoch
            changed_at = time.monotonic()
            await cp.call("PATCH", f"/v1/endpoints/{endpoint}", {"segment_max_age_seconds": 2})
            await cp.bind(endpoint, view["id"])

            def applied() -> bool:
                config = node.endpoints.current(endpoint)
                return (
                    config is not None
                    and config.segment_max_age_seconds == 2
                    and [b.view_id for b in config.bindings] == [view["id"]]
                )

            await wait_for(applied, timeout_s=10, what="the change on the node")
            took_s = time.monotonic() - changed_at
            print(f"change applied after {took_s:.2f}s")
            assert node.config_epoch > epoch
            assert took_s < settings.long_poll_s / 2

            after = records("after", 60)
            assert (await post_lines(http, url, cp.api_key, after))[0] == 200
            commits = await wait_for(
                lambda: _commits_with_views(cp, endpoint), what="a commit with view output"
            )
        (commit,) = commits
        assert commit["frames"] == len(after)
        assert commit["artifacts"]["parquet_views"]["files"] >= 1
        metrics = await cp.call("GET", f"/v1/views/{view['id']}/metrics")
        totals = metrics["aggregated"]["all_time"]
        assert (totals["processed"], totals["accepted"]) == (len(after), len(after))
        view_files = list((out / "lake" / "views" / "readings" / "v1").glob("*.parquet"))
        rows = pq.read_table(view_files, columns=["id"]).column("id").to_pylist()
        assert sorted(rows) == sorted(json.loads(r)["id"] for r in after)
        assert Counter(raw_records(out, endpoint)) == Counter(before + after)


async def _commits_with_views(cp: ControlPlane, endpoint_id: str) -> list[dict[str, Any]]:
    return [c for c in await cp.commits(endpoint_id) if "parquet_views" in c["artifacts"]]


# ------------------------------------------------------------------- status
async def test_endpoint_status_goes_from_deploying_to_active_once_its_node_applied_the_epoch(
    tmp_path: Path,
) -> None:
    async with control_plane(str(tmp_path)) as cp:
        dest = await cp.local_destination(str(tmp_path / "objects"))
        endpoint = (await cp.endpoint(dest["id"]))["id"]
        created = await endpoint_status(cp, endpoint)
        assert created["status"] == "deploying"
        assert created["dns_ipv4"] == []
        async with running_node(node_settings(cp, str(tmp_path / "node"), long_poll_s=1)) as node:
            active = await wait_for(
                lambda: _status_is(cp, endpoint, "active", node), what="status active"
            )
            assert active["dns_ipv4"] == ["127.0.0.1"]
            # A change bumps the endpoint's epoch; the node applies it and stays active.
            epoch = node.config_epoch
            await cp.call("PATCH", f"/v1/endpoints/{endpoint}", {"segment_max_age_seconds": 5})
            await wait_for(lambda: node.config_epoch > epoch, what="the new epoch on the node")
            await wait_for(lambda: _status_is(cp, endpoint, "active", node), what="active again")
            # Its only node drains: nobody serves the endpoint any more.
            assert await node.drain()
            await wait_for(
                lambda: _status_is(cp, endpoint, "degraded", node), what="status degraded"
            )


async def _status_is(
    cp: ControlPlane, endpoint_id: str, status: str, node: Node | None = None
) -> dict[str, Any] | None:
    """The endpoint when its status is `status`. With `node`, a heartbeat goes first
    (the control plane asks for one every 5 s; the test does not wait for it)."""
    if node is not None:
        async with asyncio.timeout(30):
            await node.sync.registered.wait()
        await node.sync.heartbeat_once()
    found = await endpoint_status(cp, endpoint_id)
    return found if found["status"] == status else None


# ------------------------------------------------------- permanent store error
async def test_a_permanent_store_error_degrades_the_endpoint_keeps_the_data_and_heals(
    tmp_path: Path,
) -> None:
    out, node_dir = tmp_path / "objects", tmp_path / "node"
    async with control_plane(str(tmp_path)) as cp:
        dest = await cp.local_destination(str(out))
        assert dest["id"]
        endpoint = (await cp.endpoint(dest["id"]))["id"]
        # The destination was valid; now its root is a file, not a directory.
        shutil.rmtree(out)
        out.write_bytes(b"not a directory")
        async with (
            running_node(node_settings(cp, str(node_dir), long_poll_s=1)) as node,
            aiohttp.ClientSession() as http,
        ):
            await wait_for(lambda: _status_is(cp, endpoint, "active", node), what="status active")
            sent = records("kept", 120)
            status, answer = await post_lines(
                http, f"{node.http_url}/ingest/{endpoint}", cp.api_key, sent
            )
            assert status == 200, answer
            degraded = await wait_for(
                lambda: _status_is(cp, endpoint, "degraded", node), what="status degraded"
            )
            assert degraded["destination_status"] == "valid"
            runtime = node.endpoints.get(endpoint)
            assert runtime is not None
            assert runtime.delivery.error is not None
            assert "store" in runtime.delivery.error
            assert runtime.wal.sealed_segments(), "the sealed segment is kept"
            assert runtime.wal.unshipped_bytes >= sum(map(len, sent))
            assert await cp.commits(endpoint) == []

            out.unlink()  # fixed: the store creates its directories again
            await wait_for(
                lambda: _status_is(cp, endpoint, "active", node), what="status active again"
            )
            await wait_for(lambda: cp.commits(endpoint), what="a commit after the fix")
            await wait_for(lambda: runtime.wal.unshipped_bytes == 0, what="the WAL emptied")
        assert Counter(raw_records(out, endpoint)) == Counter(sent)
