"""Overload and slow clients against a node process (docs/RELIABILITY.md, OVL-01,
OVL-03 and OVL-04). The node runs as `edgemq node` (tests/support/processes.py); its
RSS, CPU time and open descriptors are read from /proc.

OVL-01, open-loop overload: the node's capacity is measured first (closed loop, the
same ~256 KiB requests), then an open-loop generator starts requests at a fixed rate
whatever the answers do, at 0.5x, 1x, 2x and 5x that capacity, and a last burst starts
2,000 requests at once (more connections than the node's cap on any machine). At every
level every answer is 200 or 503 with Retry-After and a reason (no other status, no
timeout, no reset), the 503s' p99 is not above the 200s', the node's RSS grows with the
level by no more than the in-flight limit plus a buffer allowance per admitted
connection, of which there are at most `--http-connections-max` (256 here; more get a
503 `connections` before anything of theirs is buffered), and stays under a fixed cap
while few requests are open at once; after the load the node drains and the committed
output is reconciled with the ledger (lost_acked 0, nothing refused is present). Each
answer has two latencies: from the instant it was due (a generator that falls behind
shows up there: no coordinated omission; reported) and from the instant it was sent
(the service time the assertions use). The control plane runs as its own process so
commit reports never wait on the busy test process.

OVL-03, slowloris and slow bodies: hundreds of connections dribble their request heads
or their bodies against a node with 2 s header and body deadlines
(`--header-timeout-s`, `--body-timeout-s`); every one is closed by the deadline (slow
heads without an answer, slow bodies with a 408 first), the node's open file
descriptors come back down, nothing is written, and a normal client keeps getting 200s
with a reasonable latency meanwhile.

OVL-04, big bodies at once (RSS measured; no memory cgroup): 150 authenticated clients
send 1 MiB bodies together against a 4 MiB in-flight limit; the node holds at most
that much of them (the rest get their 503 before their body is read).

Set EDGEMQ_TEST_SEED to replay OVL-03's dribble timings.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from control.server import open_context
from control.services import keys
from control.services.common import ControlSettings
from tests.fault.harness import REPORTS
from tests.support.ledger import (
    FAIL,
    INDETERMINATE,
    OK,
    Ledger,
    LocalReader,
    Record,
    reconcile_async,
)
from tests.support.postgres import free_port
from tests.support.processes import ControlChild, NodeChild
from tests.support.report import report
from tests.support.stack import SEGMENT_BYTES_MIN, ControlPlane, control_plane, wait_for

KIB = 1024
MIB = 1024 * KIB
NDJSON = "application/x-ndjson"

# OVL-01 ---------------------------------------------------------------------------
RECORDS_PER_REQUEST = 16
RECORD_PAD_BYTES = 16_000
"""~256 KiB per request: bytes, not request count, are what the limits below bound, and
big requests keep the generator's cost per offered byte low (two shared CPUs)."""
INFLIGHT_BYTES_MAX = 2 * MIB
"""About 8 requests being read or waiting for their fsync across the node."""
UNSHIPPED_BYTES_MAX = 8 * MIB
SEGMENT_BYTES = 1 * MIB
CAPACITY_WRITERS = 16
CAPACITY_S = 4.0
LEVELS = (0.5, 1.0, 2.0, 5.0)
LEVEL_S = 6.0
LEVEL_REQUESTS_MAX = 12_000
"""Bound on one level's requests whatever the measured capacity."""
REQUEST_TIMEOUT_S = 30.0
"""Generous: an answer later than this is a failure of the scenario."""
OUTSTANDING_MAX = 2_000
"""Requests in flight at once, a guard for the test process only: a level that hits it
(the node answering seconds late) shows it as `outstanding_peak` and `late_starts`."""
RSS_CAP_BYTES = 400 * MIB
HTTP_CONNECTIONS_MAX = 256
"""The node's `--http-connections-max`: connections beyond it get a 503 `connections`
before anything of theirs is buffered (ADR 0014)."""
CONNECTION_BUFFER_BYTES = 256 * KIB
"""Allowance per open (admitted) connection for the HTTP server's own read buffers
(aiohttp pauses reading at 2 x 64 KiB) and the sockets."""
RSS_SLACK_BYTES = 112 * MIB
"""RSS may grow from the 0.5x level's peak by the in-flight limit, the connection
allowance for the connections admitted at once (at most HTTP_CONNECTIONS_MAX), and
this. With the cap the most measured beyond the first two was 38 MiB (4 runs, 2 vCPUs
shared); the slack is about 3x that because CI machines are loaded (allocator and GC
timing move the peak, and a single figure is no bound). It stays under the 160 MiB a
loaded CI run once needed without the cap (940 MiB peak with ~2,000 connections open),
so memory that follows the open connections instead of the cap still fails here.
docs/reliability.md has the figures."""
RSS_CAP_CONNECTIONS = 512
"""The fixed RSS cap applies to levels that kept at most this many requests open."""
RSS_SAMPLE_S = 0.05
BURST_REQUESTS = OUTSTANDING_MAX
"""OVL-01's last level: this many requests started at once, so that more connections
than HTTP_CONNECTIONS_MAX are open whatever the machine's speed (the open-loop levels
reach that only on a fast one)."""
LATENCY_RATIO = 1.25
SMALL_MS = 50.0
"""The 503s' p99 service time stays under LATENCY_RATIO x the 200s' p99 + SMALL_MS."""
REFUSAL_REASONS = {"inflight", "backlog", "wal_full", "connections"}

# OVL-03 ---------------------------------------------------------------------------
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
SLOW_HEAD_CONNECTIONS = 200
SLOW_BODY_CONNECTIONS = 50
DRIBBLE_S = 0.25
"""Interval between the bytes a slow client sends."""
NORMAL_INTERVAL_S = 0.05
NORMAL_P99_S = 1.0
CLOSE_SLACK_S = 4.0
"""A slow connection must be closed within its deadline plus this (2 vCPUs shared)."""


def report_line(scenario: str, **figures: Any) -> dict[str, Any]:
    """The scenario's REPORT line, also repeated in the session's terminal summary."""
    line = report(scenario, **figures)
    REPORTS.append(line)
    return line


# --------------------------------------------------------------------- node process
def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
    except FileNotFoundError:
        return 0
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (schedstat):
    how much the machine, not the node, decided its latency."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (FileNotFoundError, IndexError, ValueError):
            continue
    return total / 1e9


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


def wal_bytes(data_dir: Path, endpoint_id: str) -> int:
    """Bytes of every file in the endpoint's WAL directory (0 when there is none)."""
    directory = data_dir / "wal" / endpoint_id
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def leftovers(data_dir: Path, endpoint_id: str) -> list[str]:
    """Sealed segments, non-empty open segments and queued commit reports still held."""
    held = []
    wal_dir = data_dir / "wal" / endpoint_id
    for path in sorted(wal_dir.iterdir()) if wal_dir.is_dir() else []:
        if path.name.endswith(".wal") or (
            path.name.endswith(".wal.open") and path.stat().st_size > 0
        ):
            held.append(path.name)
    outbox = data_dir / "outbox"
    held += [p.name for p in sorted(outbox.iterdir())] if outbox.is_dir() else []
    return held


async def drained(node: NodeChild, endpoint_id: str, timeout_s: float = 120.0) -> None:
    async def empty() -> bool:
        return not await asyncio.to_thread(leftovers, node.data_dir, endpoint_id)

    try:
        await wait_for(empty, timeout_s=timeout_s, what="the node to deliver everything")
    except AssertionError as err:
        held = await asyncio.to_thread(leftovers, node.data_dir, endpoint_id)
        raise AssertionError(f"{err}; still held: {held}\n{node.log_tail()}") from None


@asynccontextmanager
async def control_process(tmp: Path) -> AsyncIterator[ControlPlane]:
    """The control plane as its own process (SQLite; tests/support/processes.py), with
    the tenant, keys and client of `tests.support.stack.control_plane`: under load the
    test process's event loop is busy generating requests, and the node's commit
    reports must not wait on it."""
    database_url = f"sqlite:///{tmp / 'control.db'}"
    async with open_context(database_url, ControlSettings()) as ctx:
        account = await keys.create_account(ctx, "acme")
        key = await keys.insert_key(
            ctx,
            account_id=account["id"],
            name="test",
            owner=None,
            scopes=["ingest", "metrics", "admin"],
        )
        node_key = await keys.create_node_key(ctx, "test-nodes")
    control = ControlChild(
        log_path=tmp / "control.log",
        database_url=database_url,
        port=free_port(),
        overrides={"control": {"segment_bytes_min": SEGMENT_BYTES_MIN}},
    )
    try:
        control.start()
        async with aiohttp.ClientSession() as session:
            await control.wait_ready(session)
            yield ControlPlane(
                control.url,
                database_url,
                session,
                account["id"],
                key["api_key"],
                node_key["api_key"],
            )
        assert await control.terminate(timeout_s=30) == 0, control.log_tail()
    finally:
        await control.close()


@asynccontextmanager
async def node_process(
    cp: ControlPlane, data_dir: Path, env: dict[str, str]
) -> AsyncIterator[NodeChild]:
    """`edgemq node` as a child process with `env` (EDGEMQ_* options), ready."""
    node = NodeChild(
        data_dir=data_dir, control_url=cp.url, node_key=cp.node_key, http_port=free_port(), env=env
    )
    try:
        node.start()
        async with aiohttp.ClientSession() as session:
            await node.wait_ready(session)
        yield node
    finally:
        await node.close()


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class RssSampler:
    """Samples a process's VmRSS until stopped; `peak` since the last `reset`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        self.peak = rss_bytes(self.pid)
        self.samples = 1

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            await asyncio.sleep(RSS_SAMPLE_S)

    def __enter__(self) -> RssSampler:
        self.reset()
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


# ------------------------------------------------------------------------ OVL-01
@dataclass
class Answer:
    status: int | None
    latency_s: float
    """From the instant the request was due to its answer (or failure)."""
    service_s: float
    """From the instant the request was handed to the client to its answer."""
    retry_after: str | None = None
    reason: str | None = None
    error: str | None = None


class RawClient:
    """A minimal HTTP/1.1 keep-alive client for one node: a request is one write of
    head + body and a read of the answer. Several times cheaper per request than
    aiohttp's client, so the test process can offer 5x the node's capacity on two
    shared CPUs. Idle connections are dropped between levels (`close_idle`), so a
    request never lands on a connection the node closed for idleness."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def request(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened += 1
        try:
            writer.write(data)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return int(status_line.split()[1]), headers, body

    def close_idle(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


PAD = "x" * RECORD_PAD_BYTES


def record_fields(number: int) -> dict[str, Any]:
    """The fields of record `number` (besides its id): a pure function of the number."""
    return {"n": number, "pad": PAD}


class RegeneratedRecords(dict[str, Record | None]):
    """`Ledger.sent` for a high-volume run: holds the ids only and rebuilds a record's
    payload from its id when the reconciler asks (records are pure functions of their
    number, encoded exactly as `Ledger.records` encodes them), so the test process does
    not keep the gigabyte it sent."""

    def __setitem__(self, rid: str, record: Record | None) -> None:
        super().__setitem__(rid, None)

    def get(self, rid: str, default: Any = None) -> Any:  # type: ignore[override]
        if rid not in self:
            return default
        body = {"id": rid, **record_fields(int(rid.rsplit("-", 1)[1]))}
        return Record(rid, json.dumps(body, separators=(",", ":")).encode())


@dataclass
class Load:
    ledger: Ledger
    client: RawClient
    endpoint_id: str
    api_key: str
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ledger.sent = RegeneratedRecords()

    def request(self) -> tuple[list[Record], bytes]:
        batch = self.ledger.records(RECORDS_PER_REQUEST, record_fields)
        regenerated = RegeneratedRecords()
        regenerated[batch[0].id] = None
        assert regenerated.get(batch[0].id) == batch[0], "records are not regenerated exactly"
        body = Ledger.ndjson(batch)
        head = (
            f"POST /ingest/{self.endpoint_id} HTTP/1.1\r\nHost: node\r\n"
            f"X-API-Key: {self.api_key}\r\nContent-Type: {NDJSON}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return batch, head.encode() + body

    async def one(self, due: float) -> Answer:
        loop = asyncio.get_running_loop()
        batch, data = self.request()
        sent = loop.time()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, headers, text = await self.client.request(data)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
            self.ledger.note(batch, None, err)
            now = loop.time()
            answer = Answer(None, now - due, now - sent, error=f"{type(err).__name__}: {err}")
        else:
            self.ledger.note(batch, status)
            now = loop.time()
            answer = Answer(status, now - due, now - sent, headers.get("retry-after"))
            if status != 200:
                try:
                    answer.reason = json.loads(text)["error"].get("reason")
                except (ValueError, KeyError, TypeError, AttributeError):
                    answer.error = f"not the JSON error shape: {text[:200]!r}"
        self.answers.append(answer)
        return answer


async def closed_loop(load: Load, writers: int, duration_s: float) -> float:
    """Requests/s answered 200 by `writers` clients each sending back to back."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    oks = 0

    async def writer() -> None:
        nonlocal oks
        while loop.time() - start < duration_s:
            answer = await load.one(loop.time())
            if answer.status == 200:
                oks += 1
            elif answer.status == 503:
                await asyncio.sleep(0.01)  # pacing after a refusal, not a settle-wait

    await asyncio.gather(*(writer() for _ in range(writers)))
    return oks / (loop.time() - start)


@dataclass
class LevelResult:
    factor: float | str
    offered_rps: float
    started: int
    duration_s: float
    answers: list[Answer]
    late_starts: int
    outstanding_peak: int
    rss_peak_bytes: int
    node_cpu_share: float
    client_cpu_share: float
    node_wait_share: float

    def figures(self) -> dict[str, Any]:
        by_status = Counter(a.status for a in self.answers)
        ok = [a.service_s for a in self.answers if a.status == 200]
        # A 503 `connections` is decided when the connection is accepted: its latency
        # is the node's accept queue plus a TCP handshake (200s ride kept-alive
        # connections), so it is reported apart from the admission 503s.
        refused = [
            a.service_s for a in self.answers if a.status == 503 and a.reason != "connections"
        ]
        at_accept = [a.service_s for a in self.answers if a.reason == "connections"]
        ok_due = [a.latency_s for a in self.answers if a.status == 200]
        refused_due = [a.latency_s for a in self.answers if a.status == 503]
        return {
            "factor": self.factor,
            "offered_rps": round(self.offered_rps, 1),
            "achieved_start_rps": round(self.started / self.duration_s, 1),
            "requests": len(self.answers),
            "ok_per_s": round(len(ok) / self.duration_s, 1),
            "share_503": round(len(refused) / max(1, len(self.answers)), 3),
            "statuses": {str(k): v for k, v in sorted(by_status.items(), key=str)},
            "p50_200_ms": _ms(quantile(ok, 0.5)),
            "p99_200_ms": _ms(quantile(ok, 0.99)),
            "p50_503_ms": _ms(quantile(refused, 0.5)),
            "p99_503_ms": _ms(quantile(refused, 0.99)),
            "admission_503": len(refused),
            "p99_503_connections_ms": _ms(quantile(at_accept, 0.99)),
            "p99_200_from_due_ms": _ms(quantile(ok_due, 0.99)),
            "p99_503_from_due_ms": _ms(quantile(refused_due, 0.99)),
            "late_starts": self.late_starts,
            "outstanding_peak": self.outstanding_peak,
            "rss_peak_mib": round(self.rss_peak_bytes / MIB, 1),
            "node_cpu": round(self.node_cpu_share, 2),
            "client_cpu": round(self.client_cpu_share, 2),
            "node_runqueue_wait": round(self.node_wait_share, 2),
            "reasons_503": dict(Counter(a.reason for a in self.answers if a.status == 503)),
        }


async def open_loop(load: Load, factor: float, rate: float, rss: RssSampler) -> LevelResult:
    """Start requests at `rate` per second for LEVEL_S whatever the answers do."""
    loop = asyncio.get_running_loop()
    total = min(LEVEL_REQUESTS_MAX, max(1, int(rate * LEVEL_S)))
    first = len(load.answers)
    load.client.close_idle()
    tasks: set[asyncio.Task[Answer]] = set()
    late = outstanding_peak = started = 0
    rss.reset()
    node_cpu, client_cpu = cpu_s(rss.pid), time.process_time()
    node_wait = runqueue_wait_s(rss.pid)
    t0 = loop.time()
    while started < total:
        now = loop.time()
        due_count = min(total, int((now - t0) * rate) + 1)
        while started < due_count:
            due = t0 + started / rate
            if len(tasks) >= OUTSTANDING_MAX:
                break
            if now - due > 0.1:
                late += 1
            task = asyncio.create_task(load.one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            started += 1
        outstanding_peak = max(outstanding_peak, len(tasks))
        await asyncio.sleep(0.002)
    duration_s = loop.time() - t0
    if tasks:
        await asyncio.wait(tasks)
    elapsed = loop.time() - t0
    node_cpu = (cpu_s(rss.pid) - node_cpu) / elapsed
    client_cpu = (time.process_time() - client_cpu) / elapsed
    node_wait = (runqueue_wait_s(rss.pid) - node_wait) / elapsed
    return LevelResult(
        factor,
        rate,
        started,
        max(duration_s, total / rate),
        load.answers[first:],
        late,
        outstanding_peak,
        rss.peak,
        node_cpu,
        client_cpu,
        node_wait,
    )


async def burst(load: Load, rss: RssSampler) -> LevelResult:
    """BURST_REQUESTS requests started at once (OVL-01's last level)."""
    loop = asyncio.get_running_loop()
    first = len(load.answers)
    load.client.close_idle()
    rss.reset()
    node_cpu, client_cpu = cpu_s(rss.pid), time.process_time()
    node_wait = runqueue_wait_s(rss.pid)
    t0 = loop.time()
    await asyncio.gather(*(load.one(t0) for _ in range(BURST_REQUESTS)))
    elapsed = loop.time() - t0
    return LevelResult(
        "burst",
        BURST_REQUESTS / elapsed,
        BURST_REQUESTS,
        elapsed,
        load.answers[first:],
        0,
        BURST_REQUESTS,
        rss.peak,
        (cpu_s(rss.pid) - node_cpu) / elapsed,
        (time.process_time() - client_cpu) / elapsed,
        (runqueue_wait_s(rss.pid) - node_wait) / elapsed,
    )


def total_503_share(figures: dict[str, Any]) -> float:
    """503s of every reason (admission and connection cap) over all answers."""
    return int(figures["statuses"].get("503", 0)) / max(1, int(figures["requests"]))


def level_violations(level: LevelResult) -> list[str]:
    out = []
    for a in level.answers:
        if a.status not in (200, 503):
            out.append(f"{level.factor}x: status {a.status} ({a.error})")
        elif a.status == 503:
            if not (a.retry_after and a.retry_after.isdigit()):
                out.append(f"{level.factor}x: 503 without Retry-After")
            if a.error or a.reason not in REFUSAL_REASONS:
                out.append(f"{level.factor}x: 503 reason {a.reason!r} {a.error or ''}")
    return out[:20]


async def test_open_loop_overload_gets_fast_503s_bounded_memory_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """OVL-01."""
    out = tmp_path / "objects"
    async with control_process(tmp_path) as cp:
        dest = await cp.local_destination(str(out))
        endpoint = await cp.endpoint(
            dest["id"],
            segment_bytes=SEGMENT_BYTES,
            output_formats=["segments", "parquet"],
        )
        env = {
            "EDGEMQ_INFLIGHT_BYTES_MAX": str(INFLIGHT_BYTES_MAX),
            "EDGEMQ_UNSHIPPED_BYTES_MAX": str(UNSHIPPED_BYTES_MAX),
            "EDGEMQ_HTTP_CONNECTIONS_MAX": str(HTTP_CONNECTIONS_MAX),
        }
        async with node_process(cp, tmp_path / "node", env) as node:
            pid = node.pid
            load = Load(Ledger(), RawClient(node.http_port), endpoint["id"], cp.api_key)
            try:
                with RssSampler(pid) as rss:
                    idle_rss = rss.peak
                    capacity = await closed_loop(load, CAPACITY_WRITERS, CAPACITY_S)
                    capacity_503 = sum(a.status == 503 for a in load.answers)
                    assert capacity > 0, node.log_tail()
                    levels = []
                    for factor in LEVELS:
                        await drained(node, endpoint["id"])  # each level starts unloaded
                        levels.append(await open_loop(load, factor, factor * capacity, rss))
                    await drained(node, endpoint["id"])
                    burst_level = await burst(load, rss)
            finally:
                load.client.close_idle()
            await drained(node, endpoint["id"])
            assert await node.terminate() == 0, node.log_tail()
        commits = await cp.commits(endpoint["id"])
        result = await reconcile_async(
            load.ledger, LocalReader(out / "lake"), commits={endpoint["id"]: commits}
        )
    print(result.line())
    figures = [level.figures() for level in levels]
    for f in figures:
        print(f"level {json.dumps(f)}")
    report_line(
        "OVL-01",
        capacity_rps=round(capacity, 1),
        capacity_request_bytes=RECORDS_PER_REQUEST * (RECORD_PAD_BYTES + 60),
        capacity_503=capacity_503,
        limits={
            "inflight_bytes_max": INFLIGHT_BYTES_MAX,
            "unshipped_bytes_max": UNSHIPPED_BYTES_MAX,
            "http_connections_max": HTTP_CONNECTIONS_MAX,
        },
        idle_rss_mib=round(idle_rss / MIB, 1),
        levels=figures,
        burst=burst_level.figures(),
        requests=result.requests,
        acked_records=result.ok,
        lost_acked=result.lost_acked,
        refused_but_present=result.refused_but_present,
        duplicates=result.duplicates,
        must_be_zero=result.must_be_zero(),
    )

    violations = [v for level in [*levels, burst_level] for v in level_violations(level)]
    assert violations == [], violations
    assert result.requests[INDETERMINATE] == 0, result.line()
    assert result.must_be_zero() == {}, result.line()
    assert result.ok > 0
    # The load did overload the node: at 5x a part was refused (any reason: the
    # connection cap sheds too), the burst past the connection cap was mostly refused,
    # and the node kept acknowledging work at every level (shedding, not collapsing).
    # How much of 5x is refused depends on how well the closed-loop phase measured the
    # capacity; on a loaded 2-vCPU machine that estimate swings by 1.5-3x (a CI run saw
    # the node accept 3.4x the measured capacity), so the bound is deliberately low.
    shares = [total_503_share(f) for f in figures]
    assert shares[-1] >= 0.1, figures[-1]
    assert shares[0] <= shares[-1], figures
    assert total_503_share(burst_level.figures()) >= 0.5, burst_level.figures()
    for f in figures:
        assert f["ok_per_s"] >= 0.1 * capacity, f
    # 503s are cheap: not slower than what is accepted at the same level (p99 against
    # p99; medians are not comparable: refusals cluster in the congested moments). That
    # they are decided before the body is read is OVL-04's precise check. 503s
    # `connections` are not compared (see LevelResult.figures); that they come before
    # anything is buffered is test_http_connections.py's check.
    for f in figures:
        counts = f["statuses"]
        if f["admission_503"] >= 20 and counts.get("200", 0) >= 20:
            assert f["p99_503_ms"] <= LATENCY_RATIO * f["p99_200_ms"] + SMALL_MS, f
    # Memory: bounded by the in-flight limit plus a buffer per admitted connection (the
    # HTTP server buffers what a connection sent before the handler refuses it; one
    # over the connection cap is refused before anything is buffered), and under the
    # fixed cap while the generator keeps few requests open.
    base = levels[0].rss_peak_bytes
    for level in [*levels, burst_level]:
        admitted = min(level.outstanding_peak, HTTP_CONNECTIONS_MAX)
        allowance = INFLIGHT_BYTES_MAX + admitted * CONNECTION_BUFFER_BYTES + RSS_SLACK_BYTES
        assert level.rss_peak_bytes <= base + allowance, level.figures()
        if level.outstanding_peak <= RSS_CAP_CONNECTIONS:
            assert level.rss_peak_bytes < RSS_CAP_BYTES, level.figures()
    # The burst opened more connections than the cap: the cap, not luck, bounded them.
    assert burst_level.figures()["reasons_503"].get("connections", 0) > 0, burst_level.figures()


# ------------------------------------------------------------------------ OVL-04
BIG_BODY_BYTES = 1 * MIB
BIG_BODY_CONNECTIONS = 150
BIG_INFLIGHT_BYTES_MAX = 4 * MIB
BIG_TAIL_BYTES = 1024
BIG_TAIL_HOLD_S = 1.5
"""Each client holds back the last bytes of its body this long: every body the node
admitted is then in its memory at the same time."""


async def held_tail_request(
    port: int, head: bytes, body: bytes, tail_sent: asyncio.Event
) -> tuple[int, dict[str, Any], bool]:
    """Send head + body but its last BIG_TAIL_BYTES; send those once `tail_sent` is
    set. Returns (status, JSON body, answered before the tail was sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body[:-BIG_TAIL_BYTES])
        await writer.drain()
        answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        waiter = asyncio.ensure_future(tail_sent.wait())
        await asyncio.wait([answer, waiter], return_when=asyncio.FIRST_COMPLETED)
        early = answer.done()
        if not early:
            writer.write(body[-BIG_TAIL_BYTES:])
            await writer.drain()
        waiter.cancel()
        raw = await asyncio.wait_for(answer, timeout=REQUEST_TIMEOUT_S)
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        data = await reader.readexactly(int(headers.get("content-length", "0")))
        status = int(status_line.split()[1])
        payload = json.loads(data) if data else {}
        if status == 503:
            assert headers.get("retry-after", "").isdigit(), headers
        return status, payload, early
    finally:
        writer.close()


async def test_bodies_held_in_memory_at_once_are_bounded_by_the_inflight_limit(
    tmp_path: Path,
) -> None:
    """OVL-04 (big bodies; the node's RSS is measured, no memory cgroup): many
    authenticated clients each send a 1 MiB body at once. The node may hold at most
    `inflight_bytes_max` of bodies (plus a per-connection buffer allowance); the rest
    get their 503 before their body is read."""
    out = tmp_path / "objects"
    async with control_plane(str(tmp_path)) as cp:
        dest = await cp.local_destination(str(out))
        endpoint = await cp.endpoint(dest["id"])
        env = {
            "EDGEMQ_INFLIGHT_BYTES_MAX": str(BIG_INFLIGHT_BYTES_MAX),
            "EDGEMQ_UNSHIPPED_BYTES_MAX": str(256 * MIB),
        }
        async with node_process(cp, tmp_path / "node", env) as node:
            line = b'{"pad": "' + b"m" * 1000 + b'"}\n'
            body = line * (BIG_BODY_BYTES // len(line))
            head = (
                f"POST /ingest/{endpoint['id']} HTTP/1.1\r\nHost: node\r\n"
                f"X-API-Key: {cp.api_key}\r\nContent-Type: {NDJSON}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            tail_sent = asyncio.Event()
            with RssSampler(node.pid) as rss:
                baseline = rss.peak
                requests = [
                    asyncio.ensure_future(held_tail_request(node.http_port, head, body, tail_sent))
                    for _ in range(BIG_BODY_CONNECTIONS)
                ]
                await asyncio.sleep(BIG_TAIL_HOLD_S)  # every body is in flight now
                held_peak = rss.peak
                tail_sent.set()
                answers = await asyncio.gather(*requests)
                peak = rss.peak
            await drained(node, endpoint["id"])
            assert await node.terminate() == 0, node.log_tail()

    statuses = Counter(status for status, _, _ in answers)
    reasons = Counter(
        payload["error"].get("reason") for status, payload, _ in answers if status == 503
    )
    early_503 = sum(1 for status, _, early in answers if status == 503 and early)
    allowance = (
        BIG_INFLIGHT_BYTES_MAX + BIG_BODY_CONNECTIONS * CONNECTION_BUFFER_BYTES + RSS_SLACK_BYTES
    )
    figures = {
        "connections": BIG_BODY_CONNECTIONS,
        "body_bytes": len(body),
        "inflight_bytes_max": BIG_INFLIGHT_BYTES_MAX,
        "statuses": {str(k): v for k, v in statuses.items()},
        "reasons_503": dict(reasons),
        "refused_before_the_body": early_503,
        "refused_after_the_body": statuses[503] - early_503,
        "rss_baseline_mib": round(baseline / MIB, 1),
        "rss_growth_while_held_mib": round((held_peak - baseline) / MIB, 1),
        "rss_growth_peak_mib": round((peak - baseline) / MIB, 1),
        "rss_growth_allowed_mib": round(allowance / MIB, 1),
    }
    report_line("OVL-04", **figures)
    assert set(statuses) <= {200, 503}, figures
    assert statuses[200] >= 1, figures
    assert statuses[503] >= BIG_BODY_CONNECTIONS // 2, figures
    # Reserved bodies are at most inflight_bytes_max / body size at a time; only those
    # may still be refused after their body was read (e.g. `wal_full`: the WAL counts
    # framed bytes against the same limit).
    assert statuses[503] - early_503 <= BIG_INFLIGHT_BYTES_MAX // BIG_BODY_BYTES, figures
    assert peak - baseline <= allowance, figures


# ------------------------------------------------------------------------ OVL-03
@dataclass
class SlowConnection:
    kind: str  # "head" | "body"
    opened_at: float = 0.0
    closed_after_s: float | None = None
    sent_bytes: int = 0
    first_line: bytes = b""
    error: str | None = None


async def dribble(
    port: int, request: bytes, prefix_bytes: int, conn: SlowConnection, rng: random.Random
) -> None:
    """Send `request[:prefix_bytes]` at once, then the rest one byte per DRIBBLE_S
    (jittered) until the node closes the connection or everything is sent."""
    loop = asyncio.get_running_loop()
    conn.opened_at = loop.time()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as err:
        conn.error = f"connect: {err}"
        return
    answer = asyncio.ensure_future(reader.read(65536))
    try:
        writer.write(request[:prefix_bytes])
        conn.sent_bytes = prefix_bytes
        await asyncio.sleep(rng.uniform(0, DRIBBLE_S))
        while conn.sent_bytes < len(request) and not answer.done():
            writer.write(request[conn.sent_bytes : conn.sent_bytes + 1])
            try:
                await writer.drain()
            except ConnectionError:
                break
            conn.sent_bytes += 1
            await asyncio.wait([answer], timeout=DRIBBLE_S * rng.uniform(0.8, 1.2))
        # The answer (for slow bodies: a 408) and then end of file.
        data = await asyncio.wait_for(answer, timeout=HEADER_TIMEOUT_S + CLOSE_SLACK_S + 5)
        conn.first_line = data.split(b"\r\n", 1)[0]
        while data:
            data = await asyncio.wait_for(reader.read(65536), timeout=CLOSE_SLACK_S + 5)
        conn.closed_after_s = loop.time() - conn.opened_at
    except (ConnectionError, OSError):
        conn.closed_after_s = loop.time() - conn.opened_at
    except TimeoutError:
        conn.error = "still open"
    finally:
        answer.cancel()
        writer.close()


async def test_slowloris_and_slow_bodies_are_cut_by_deadlines_while_normal_clients_get_through(
    tmp_path: Path, seed: int
) -> None:
    """OVL-03."""
    rng = random.Random(seed)
    out = tmp_path / "objects"
    async with control_plane(str(tmp_path)) as cp:
        dest = await cp.local_destination(str(out))
        normal = await cp.endpoint(dest["id"])
        target = await cp.endpoint(dest["id"])
        env = {
            "EDGEMQ_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "EDGEMQ_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        }
        async with node_process(cp, tmp_path / "node", env) as node:
            pid = node.pid
            port = node.http_port
            fds_before = await asyncio.to_thread(open_fds, pid)
            slow_head = (
                f"POST /ingest/{target['id']} HTTP/1.1\r\nHost: x\r\n"
                f"X-API-Key: {cp.api_key}\r\nContent-Type: {NDJSON}\r\n"
                + "".join(f"X-Pad-{i}: {'p' * 20}\r\n" for i in range(40))
                + "Content-Length: 2\r\n\r\n{}"
            ).encode()
            body = b'{"slow": "' + b"b" * 4000 + b'"}\n'
            slow_body = (
                f"POST /ingest/{target['id']} HTTP/1.1\r\nHost: x\r\n"
                f"X-API-Key: {cp.api_key}\r\nContent-Type: {NDJSON}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            head_len = slow_body.index(b"\r\n\r\n") + 4
            conns = [SlowConnection("head") for _ in range(SLOW_HEAD_CONNECTIONS)]
            conns += [SlowConnection("body") for _ in range(SLOW_BODY_CONNECTIONS)]
            fds_peak = 0
            normal_latencies: list[float] = []
            normal_statuses: Counter[int | None] = Counter()
            ledger = Ledger()
            attack_done = asyncio.Event()

            async def normal_client(session: aiohttp.ClientSession) -> None:
                url = f"{node.url}/ingest/{normal['id']}"
                while not attack_done.is_set():
                    batch = ledger.records(5, lambda n: {"n": n})
                    started = time.monotonic()
                    status = await ledger.post(
                        session, url, batch, headers={"X-API-Key": cp.api_key}, timeout_s=10
                    )
                    normal_latencies.append(time.monotonic() - started)
                    normal_statuses[status] += 1
                    await asyncio.sleep(NORMAL_INTERVAL_S)

            async def watch_fds() -> None:
                nonlocal fds_peak
                while not attack_done.is_set():
                    fds_peak = max(fds_peak, await asyncio.to_thread(open_fds, pid))
                    await asyncio.sleep(0.1)

            async with aiohttp.ClientSession() as session:
                background = [
                    asyncio.create_task(normal_client(session)),
                    asyncio.create_task(watch_fds()),
                ]
                try:
                    await asyncio.gather(
                        *(
                            dribble(port, slow_head, 12, c, rng)
                            if c.kind == "head"
                            else dribble(port, slow_body, head_len + 10, c, rng)
                            for c in conns
                        )
                    )
                finally:
                    attack_done.set()
                    await asyncio.gather(*background)
            fds_after = await wait_for(
                lambda: (n := open_fds(pid)) <= fds_before + 5 and n,
                timeout_s=10,
                what="the node's file descriptors to come back down",
            )
            target_wal = await asyncio.to_thread(wal_bytes, node.data_dir, target["id"])
            await drained(node, normal["id"])
            assert await node.terminate() == 0, node.log_tail()
        commits = await cp.commits(normal["id"])
        result = await reconcile_async(
            ledger, LocalReader(out / "lake"), commits={normal["id"]: commits}
        )

    heads = [c for c in conns if c.kind == "head"]
    bodies = [c for c in conns if c.kind == "body"]
    head_closed = [c.closed_after_s for c in heads if c.closed_after_s is not None]
    body_closed = [c.closed_after_s for c in bodies if c.closed_after_s is not None]
    figures = {
        "header_timeout_s": HEADER_TIMEOUT_S,
        "body_timeout_s": BODY_TIMEOUT_S,
        "slow_head_connections": len(heads),
        "slow_head_closed": len(head_closed),
        "slow_head_closed_p50_s": quantile(head_closed, 0.5),
        "slow_head_closed_max_s": max(head_closed, default=None),
        "slow_head_bytes_sent_max": max(c.sent_bytes for c in heads),
        "slow_head_answers": dict(Counter(c.first_line.decode(errors="replace") for c in heads)),
        "slow_body_connections": len(bodies),
        "slow_body_closed": len(body_closed),
        "slow_body_closed_max_s": max(body_closed, default=None),
        "slow_body_answers": dict(Counter(c.first_line.decode(errors="replace") for c in bodies)),
        "node_fds": {"before": fds_before, "peak": fds_peak, "after": fds_after},
        "normal_requests": sum(normal_statuses.values()),
        "normal_statuses": {str(k): v for k, v in normal_statuses.items()},
        "normal_p50_ms": _ms(quantile(normal_latencies, 0.5)),
        "normal_p99_ms": _ms(quantile(normal_latencies, 0.99)),
        "target_wal_bytes": target_wal,
        "lost_acked": result.lost_acked,
        "errors": [c.error for c in conns if c.error][:5],
    }
    for k in ("slow_head_closed_p50_s", "slow_head_closed_max_s", "slow_body_closed_max_s"):
        if figures[k] is not None:
            figures[k] = round(figures[k], 2)
    report_line("OVL-03", **figures)

    assert figures["errors"] == [], figures
    # The attack happened: every slow connection was open (the node had them all at
    # once), none got a whole head through, and every one was closed by a deadline.
    assert fds_peak >= fds_before + 0.8 * len(conns), figures
    assert all(c.sent_bytes < slow_head.index(b"\r\n\r\n") for c in heads), figures
    assert len(head_closed) == len(heads), figures
    assert len(body_closed) == len(bodies), figures
    assert min(head_closed) >= HEADER_TIMEOUT_S * 0.8, figures
    assert max(head_closed) <= HEADER_TIMEOUT_S + CLOSE_SLACK_S, figures
    assert all(not c.first_line.startswith(b"HTTP/1.1 2") for c in heads), figures
    assert all(c.first_line.startswith(b"HTTP/1.1 408") for c in bodies), figures
    assert min(body_closed) >= BODY_TIMEOUT_S * 0.8, figures
    assert max(body_closed) <= BODY_TIMEOUT_S + CLOSE_SLACK_S, figures
    # Nothing of theirs was written; the normal client was served throughout.
    assert target_wal == 0, figures
    assert set(normal_statuses) == {200}, figures
    assert figures["normal_requests"] >= 10, figures
    assert figures["normal_p99_ms"] <= NORMAL_P99_S * 1000, figures
    assert result.must_be_zero() == {}, result.line()
    assert result.ok == 5 * figures["normal_requests"], result.line()
    assert (result.requests[OK], result.requests[FAIL]) == (figures["normal_requests"], 0)
