"""A node process (`python -m edgemq node`) restarted in the middle of a stream.

Writers post records continuously, each with a unique id in a ledger
(tests/support/ledger.py); the node is SIGKILLed at seeded random instants and started
again on the same data directory and port; at the end the committed output (local
store) is reconciled with what the writers were told. kill -9 tests recovery (the
killed process's page cache still reaches disk), not fsync: see docs/RELIABILITY.md.
Set EDGEMQ_TEST_SEED to replay a run's kill instants.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import duckdb

from tests.support.ledger import (
    Ledger,
    LocalReader,
    Reconciliation,
    load_manifests,
    reconcile_async,
)
from tests.support.postgres import free_port
from tests.support.processes import NodeChild
from tests.support.stack import (
    SEGMENT_BYTES_MIN,
    ControlPlane,
    control_plane,
    node_settings,
    running_node,
    wait_for,
)

KILL_CYCLES = 20 if os.environ.get("EDGEMQ_LONG_TESTS") == "1" else 3
BATCH_RECORDS = 20
PAUSE_AFTER_REFUSAL_S = 0.02
"""Pacing of a writer whose request failed (node down or draining), not a settle-wait."""
VIEW = {
    "columns": [
        {"name": "device", "type": "VARCHAR", "path": "$.device", "required": True},
        {"name": "temp", "type": "DOUBLE", "path": "$.temp", "cast_failures": "dlq"},
    ],
    "filters": [{"condition": "temp < 100"}],
}


def _seed() -> int:
    seed = int(os.environ.get("EDGEMQ_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed} (replay with EDGEMQ_TEST_SEED={seed})")
    return seed


@dataclass
class Writer:
    """Posts batches until told to stop; counts the acknowledged requests."""

    ledger: Ledger
    session: aiohttp.ClientSession
    url: str
    api_key: str
    acked: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = self.ledger.records(
                BATCH_RECORDS, lambda n: {"device": f"d{n % 7}", "temp": n % 120}
            )
            status = await self.ledger.post(
                self.session, self.url, batch, headers={"X-API-Key": self.api_key}, timeout_s=5.0
            )
            if status == 200:
                self.acked += 1
            else:
                await asyncio.sleep(PAUSE_AFTER_REFUSAL_S)


@dataclass
class Stream:
    node: NodeChild
    writers: list[Writer]
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]

    def acked(self) -> int:
        return sum(w.acked for w in self.writers)

    async def more_acked(self, n: int) -> None:
        """Wait until `n` more requests have been acknowledged (the stream is flowing)."""
        target = self.acked() + n
        await wait_for(lambda: self.acked() >= target, what=f"{n} more acknowledged requests")

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def _setup(cp: ControlPlane, out: Path) -> dict[str, Any]:
    dest = await cp.local_destination(str(out))
    endpoint = await cp.endpoint(dest["id"])
    view = await cp.published_view("readings", VIEW)
    await cp.bind(endpoint["id"], view["id"])
    return endpoint


def _leftovers(data_dir: Path, endpoint_id: str) -> list[str]:
    """What the node still holds: sealed segments, non-empty open segments, queued
    commit reports (blocking)."""
    held = []
    wal_dir = data_dir / "wal" / endpoint_id
    for path in sorted(wal_dir.iterdir()) if wal_dir.is_dir() else []:
        if path.name.endswith(".wal") or (
            path.name.endswith(".wal.open") and path.stat().st_size > 0
        ):
            held.append(str(path.relative_to(data_dir)))
    outbox = data_dir / "outbox"
    for path in sorted(outbox.iterdir()) if outbox.is_dir() else []:
        held.append(str(path.relative_to(data_dir)))
    return held


async def _drained(
    data_dir: Path, endpoint_id: str, *, timeout_s: float = 120.0, node: NodeChild | None = None
) -> None:
    async def empty() -> bool:
        return not await asyncio.to_thread(_leftovers, data_dir, endpoint_id)

    try:
        await wait_for(empty, timeout_s=timeout_s, what="the node to deliver everything")
    except AssertionError as err:
        held = await asyncio.to_thread(_leftovers, data_dir, endpoint_id)
        log = node.log_tail() if node is not None else ""
        raise AssertionError(f"{err}; still held: {held}\n{log}") from None


async def _reconcile(
    ledger: Ledger, cp: ControlPlane, out: Path, endpoint_id: str
) -> Reconciliation:
    commits = await cp.commits(endpoint_id)
    result = await reconcile_async(
        ledger, LocalReader(out / "lake"), commits={endpoint_id: commits}
    )
    print(result.line())
    return result


async def _start_stream(
    node: NodeChild, session: aiohttp.ClientSession, endpoint_id: str, api_key: str
) -> Stream:
    ledger = Ledger()
    url = f"{node.url}/ingest/{endpoint_id}"
    writers = [Writer(ledger, session, url, api_key) for _ in range(2)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in writers]
    return Stream(node, writers, stop, tasks)


@asynccontextmanager
async def _streaming(
    cp: ControlPlane, tmp_path: Path, session: aiohttp.ClientSession, endpoint_id: str
) -> AsyncIterator[Stream]:
    """`edgemq node` (a child process on `tmp_path / "node"`) started and ready, with the
    writers posting to it; afterwards the writers are stopped and the node is gone,
    whatever happened."""
    node = NodeChild(
        data_dir=tmp_path / "node", control_url=cp.url, node_key=cp.node_key, http_port=free_port()
    )
    stream: Stream | None = None
    try:
        node.start()
        await node.wait_ready(session)
        stream = await _start_stream(node, session, endpoint_id, cp.api_key)
        yield stream
    finally:
        if stream is not None:
            await stream.finish()
        await node.close()


async def test_a_node_killed_at_random_instants_mid_stream_loses_no_acknowledged_record(
    tmp_path: Path,
) -> None:
    rng = random.Random(_seed())
    out = tmp_path / "objects"
    async with control_plane(str(tmp_path)) as cp, aiohttp.ClientSession() as session:
        endpoint = await _setup(cp, out)
        async with _streaming(cp, tmp_path, session, endpoint["id"]) as stream:
            node = stream.node
            kills = []
            for _ in range(KILL_CYCLES):
                await stream.more_acked(10)
                instant_s = rng.uniform(0.05, 1.5)
                await asyncio.sleep(instant_s)  # the random kill instant (seeded)
                assert await node.kill() == -9
                kills.append(round(instant_s, 3))
                node.start()
                await node.wait_ready(session)
            await stream.more_acked(10)
            await stream.finish()
            await _drained(node.data_dir, endpoint["id"], node=node)
            assert await node.terminate() == 0, node.log_tail()
        ledger = stream.writers[0].ledger
        result = await _reconcile(ledger, cp, out, endpoint["id"])
        print(f"kills after {kills} s; {result.ok} acked records across {KILL_CYCLES} cycles")
        assert result.must_be_zero() == {}, result.line()
        assert (result.unlisted, result.unreported) == (0, 0), result.line()
        assert result.ok >= 4 * 10 * BATCH_RECORDS, result.line()


async def test_sigterm_mid_stream_drains_everything_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "objects"
    async with control_plane(str(tmp_path)) as cp, aiohttp.ClientSession() as session:
        endpoint = await _setup(cp, out)
        async with _streaming(cp, tmp_path, session, endpoint["id"]) as stream:
            node = stream.node
            await stream.more_acked(30)
            code = await node.terminate(timeout_s=60)  # the writers keep sending meanwhile
            await stream.finish()
        assert code == 0, node.log_tail()
        assert await asyncio.to_thread(_leftovers, node.data_dir, endpoint["id"]) == []
        result = await _reconcile(stream.writers[0].ledger, cp, out, endpoint["id"])
        assert result.must_be_zero() == {}, result.line()
        assert (result.unlisted, result.unreported, result.duplicates) == (0, 0, 0), result.line()
        assert result.ok >= 30 * BATCH_RECORDS, result.line()
        assert result.failed > 0, "requests during the drain were refused (503 / no connection)"


async def test_the_reconciler_reports_tampered_output_as_loss_corruption_gaps_and_orphans(
    tmp_path: Path,
) -> None:
    """Negative control for the verdicts above: take a real node's clean output, damage
    it in known ways, and the reconciler must count exactly that damage."""
    out = tmp_path / "objects"
    ledger = Ledger()
    async with control_plane(str(tmp_path)) as cp:
        dest = await cp.local_destination(str(out))
        endpoint = await cp.endpoint(dest["id"], segment_bytes=SEGMENT_BYTES_MIN)
        async with (
            running_node(node_settings(cp, str(tmp_path / "node"))) as node,
            aiohttp.ClientSession() as session,
        ):
            await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint["id"]), what="config")
            url = f"{node.http_url}/ingest/{endpoint['id']}"
            for _ in range(4):
                batch = ledger.records(250, lambda n: {"device": f"d{n % 7}", "temp": n % 120})
                assert (
                    await ledger.post(session, url, batch, headers={"X-API-Key": cp.api_key}) == 200
                )
            await _drained(tmp_path / "node", endpoint["id"])
        clean = await _reconcile(ledger, cp, out, endpoint["id"])
        assert clean.must_be_zero() == {}, clean.line()
        assert clean.manifests >= 3, clean.line()

        root = out / "lake"
        reader = LocalReader(root)
        manifests = sorted(
            (await asyncio.to_thread(load_manifests, reader)).items(), key=lambda kv: kv[1].seq
        )
        first, (middle_key, middle) = manifests[0][1], manifests[1]
        # 1. The middle segment's manifest is gone: its records are lost, its seq is a
        #    gap, its commit row has no manifest, its objects are named by nothing.
        (root / middle_key).unlink()
        # 2. The first segment's raw Parquet: one payload changed, one row twice, a
        #    payload nobody sent and one from a request that was refused.
        (raw_key,) = first.keys("parquet")
        refused = ledger.records(1)
        ledger.note(refused, 400)
        raw = root / raw_key
        tampered = tmp_path / "tampered.parquet"
        rows = "SELECT * FROM read_parquet($raw)"
        with duckdb.connect() as db:
            db.execute(
                f"""COPY (
                    SELECT * REPLACE (CASE WHEN frame_index = 0
                        THEN replace(payload, '"temp":', '"temp":9') ELSE payload END AS payload)
                    FROM read_parquet($raw)
                    UNION ALL SELECT * FROM ({rows}) WHERE frame_index = 1
                    UNION ALL SELECT * REPLACE ('{{"id":"nobody-1"}}' AS payload)
                        FROM ({rows}) WHERE frame_index = 2
                    UNION ALL SELECT * REPLACE ($refused AS payload)
                        FROM ({rows}) WHERE frame_index = 3
                ) TO '{tampered}' (FORMAT parquet)""",
                {"raw": str(raw), "refused": refused[0].payload.decode()},
            )
        tampered.replace(raw)
        # 3. An object of the last manifest is missing; a stray object lies around.
        last_key, last = manifests[-1]
        (root / last.keys("segment")[0]).unlink()
        (root / PurePosixPath(last_key).parent / "stray.bin").write_bytes(b"x")

        result = await _reconcile(ledger, cp, out, endpoint["id"])
        middle_rows = sum(a.rows or 0 for a in middle.artifacts if a.kind == "parquet")
        assert {
            "lost_acked": result.lost_acked,
            "corrupt": result.corrupt,
            "duplicates": result.duplicates,
            "phantoms": result.phantoms,
            "failed_but_present": result.failed_but_present,
            "seq_gaps": result.seq_gaps,
            "orphans": result.orphans,
            "bad_objects": result.bad_objects,
            "unlisted": result.unlisted,
        } == {
            "lost_acked": middle_rows,
            "corrupt": 1,
            "duplicates": 1,
            "phantoms": 1,
            "failed_but_present": 1,
            "seq_gaps": 1,  # in the manifests; the commit list is whole
            "orphans": 2,  # the commit row without manifest, the missing segment object
            "bad_objects": 1,  # the rewritten raw Parquet
            "unlisted": len(middle.artifacts) + 1,
        }, result.line()
