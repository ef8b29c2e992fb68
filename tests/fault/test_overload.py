"""Overload and slow clients against a node process (docs/RELIABILITY.md, OVL-01 and
OVL-03).

OVL-01, open-loop overload: the node's capacity is measured first (closed loop, the
same requests), then an open-loop generator starts requests at a fixed rate whatever
the answers do, at 0.5x, 1x, 2x and 5x that capacity. At every level every answer is
200 or 503 with Retry-After (no other status, no timeout, no reset), 503s are answered
fast, the node's RSS stays under a fixed cap and does not grow with the level; after
the load the node drains and the committed output is reconciled with the ledger
(lost_acked 0, nothing refused is present). Latencies are measured from the instant a
request was due, so a generator that falls behind shows up as latency (no coordinated
omission), and how far it fell behind is reported.

OVL-03, slowloris and slow bodies: hundreds of connections dribble their request heads
or their bodies against a node with 2 s header and body deadlines
(`--header-timeout-s`, `--body-timeout-s`); every one is closed by the deadline (slow
bodies get a 408 first), the node's open file descriptors come back down, nothing is
written, and a normal client keeps getting 200s with a reasonable latency meanwhile.

Set EDGEMQ_TEST_SEED to replay a run's record contents and dribble timings.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
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
from tests.integration.ingest.node_process import ROOT, NodeProcess
from tests.support.ledger import FAIL, INDETERMINATE, OK, Ledger, LocalReader, reconcile_async
from tests.support.postgres import free_port
from tests.support.report import report
from tests.support.stack import SEGMENT_BYTES_MIN, ControlPlane, control_plane, wait_for

KIB = 1024
MIB = 1024 * KIB
NDJSON = "application/x-ndjson"

# OVL-01 ---------------------------------------------------------------------------
RECORDS_PER_REQUEST = int(os.environ.get("X_RPR", 16))
RECORD_PAD_BYTES = int(os.environ.get("X_PAD", 900))
"""~16 KiB per request: bytes, not request count, are what the limits below bound."""
INFLIGHT_BYTES_MAX = int(os.environ.get("X_INF", 256 * KIB))
"""About 16 requests waiting for their fsync across the node."""
UNSHIPPED_BYTES_MAX = int(os.environ.get("X_UNS", 3 * MIB))
SEGMENT_BYTES = 1 * MIB
CAPACITY_WRITERS = 16
CAPACITY_S = 4.0
LEVELS = (0.5, 1.0, 2.0, 5.0)
LEVEL_S = float(os.environ.get("X_LS", 6.0))
LEVEL_REQUESTS_MAX = 12_000
"""Bound on one level's requests whatever the measured capacity."""
REQUEST_TIMEOUT_S = 30.0
"""Generous: an answer later than this is a failure of the scenario."""
OUTSTANDING_MAX = 2_000
"""Requests in flight at once, a guard for the test process only (reported if hit)."""
RSS_CAP_BYTES = 400 * MIB
RSS_GROWTH_MAX_BYTES = 96 * MIB
"""Peak RSS at 5x may exceed the 0.5x peak by at most this much."""
RSS_SAMPLE_S = 0.05
FAST_503_P99_S = 0.5
"""503s skip the body: their p99 stays under this, and under the 200s' p99 (plus a
scheduling allowance) at the overloaded levels."""
REFUSAL_REASONS = {"inflight", "backlog", "wal_full"}

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


def _seed() -> int:
    seed = int(os.environ.get("EDGEMQ_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed} (replay with EDGEMQ_TEST_SEED={seed})")
    return seed


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


async def drained(node: NodeProcess, endpoint_id: str, timeout_s: float = 120.0) -> None:
    async def empty() -> bool:
        return not await asyncio.to_thread(leftovers, node.data_dir, endpoint_id)

    try:
        await wait_for(empty, timeout_s=timeout_s, what="the node to deliver everything")
    except AssertionError as err:
        held = await asyncio.to_thread(leftovers, node.data_dir, endpoint_id)
        raise AssertionError(f"{err}; still held: {held}\n{node.log_tail()}") from None


CONTROL_MAIN = """
import asyncio, sys
from control.server import serve
from control.services.common import ControlSettings
url, port, segment_bytes_min = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
settings = ControlSettings(
    segment_bytes_min=segment_bytes_min, public_url=f"http://127.0.0.1:{port}"
)
asyncio.run(serve(url, "127.0.0.1", port, settings))
"""


def _spawn_control(database_url: str, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", CONTROL_MAIN, database_url, str(port), str(SEGMENT_BYTES_MIN)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@asynccontextmanager
async def control_process(tmp: Path) -> AsyncIterator[ControlPlane]:
    """The control plane as its own process (SQLite), with the same tenant, keys and
    client as `tests.support.stack.control_plane`: under load the test process's event
    loop is busy generating requests, and the node's commit reports must not wait on it."""
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
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await asyncio.to_thread(_spawn_control, database_url, port, tmp / "control.log")
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                assert proc.poll() is None, (tmp / "control.log").read_text()[-2000:]
                try:
                    async with session.get(url + "/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(healthy, timeout_s=30, what="the control plane process")
            yield ControlPlane(
                url, database_url, session, account["id"], key["api_key"], node_key["api_key"]
            )
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)


@asynccontextmanager
async def node_process(
    cp: ControlPlane, data_dir: Path, env: dict[str, str]
) -> AsyncIterator[NodeProcess]:
    node = NodeProcess(
        data_dir=data_dir,
        control_url=cp.url,
        node_key=cp.node_key,
        http_port=free_port(),
        env={"EDGEMQ_MQTT_PORT": str(free_port()), **env},
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
    retry_after: str | None = None
    reason: str | None = None
    error: str | None = None


@dataclass
class Load:
    ledger: Ledger
    session: aiohttp.ClientSession
    url: str
    api_key: str
    rng: random.Random
    answers: list[Answer] = field(default_factory=list)

    def batch(self) -> list[Any]:
        pad = "x" * RECORD_PAD_BYTES
        return self.ledger.records(
            RECORDS_PER_REQUEST, lambda n: {"n": n, "v": self.rng.random(), "pad": pad}
        )

    async def one(self, due: float) -> Answer:
        loop = asyncio.get_running_loop()
        batch = self.batch()
        status: int | None = None
        try:
            async with self.session.post(
                self.url,
                data=Ledger.ndjson(batch),
                headers={"X-API-Key": self.api_key, "Content-Type": NDJSON},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as r:
                text = await r.text()
                status = r.status
                answer = Answer(status, loop.time() - due, r.headers.get("Retry-After"))
                if status != 200:
                    try:
                        answer.reason = json.loads(text)["error"].get("reason")
                    except (ValueError, KeyError, TypeError, AttributeError):
                        answer.error = f"not the JSON error shape: {text[:200]!r}"
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            self.ledger.note(batch, None, err)
            answer = Answer(None, loop.time() - due, error=f"{type(err).__name__}: {err}")
        else:
            self.ledger.note(batch, status)
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
    factor: float
    offered_rps: float
    started: int
    duration_s: float
    answers: list[Answer]
    late_starts: int
    outstanding_peak: int
    rss_peak_bytes: int
    node_cpu_share: float
    client_cpu_share: float

    def figures(self) -> dict[str, Any]:
        by_status = Counter(a.status for a in self.answers)
        ok = [a.latency_s for a in self.answers if a.status == 200]
        refused = [a.latency_s for a in self.answers if a.status == 503]
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
            "late_starts": self.late_starts,
            "outstanding_peak": self.outstanding_peak,
            "rss_peak_mib": round(self.rss_peak_bytes / MIB, 1),
            "node_cpu": round(self.node_cpu_share, 2),
            "client_cpu": round(self.client_cpu_share, 2),
            "reasons_503": dict(Counter(a.reason for a in self.answers if a.status == 503)),
        }


async def open_loop(load: Load, factor: float, rate: float, rss: RssSampler) -> LevelResult:
    """Start requests at `rate` per second for LEVEL_S whatever the answers do."""
    loop = asyncio.get_running_loop()
    total = min(LEVEL_REQUESTS_MAX, max(1, int(rate * LEVEL_S)))
    first = len(load.answers)
    tasks: set[asyncio.Task[Answer]] = set()
    late = outstanding_peak = started = 0
    rss.reset()
    node_cpu, client_cpu = cpu_s(rss.pid), time.process_time()
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
    )


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
    rng = random.Random(_seed())
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
        }
        async with node_process(cp, tmp_path / "node", env) as node:
            assert node.proc is not None
            pid = node.proc.pid
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                load = Load(
                    Ledger(), session, f"{node.url}/ingest/{endpoint['id']}", cp.api_key, rng
                )
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
            assert await node.terminate() == 0, node.log_tail()
        commits = await cp.commits(endpoint["id"])
        result = await reconcile_async(
            load.ledger, LocalReader(out / "lake"), commits={endpoint["id"]: commits}
        )
    print(result.line())
    figures = [level.figures() for level in levels]
    for f in figures:
        print(f"level {json.dumps(f)}")
    report(
        "OVL-01",
        capacity_rps=round(capacity, 1),
        capacity_request_bytes=RECORDS_PER_REQUEST * (RECORD_PAD_BYTES + 60),
        capacity_503=capacity_503,
        limits={
            "inflight_bytes_max": INFLIGHT_BYTES_MAX,
            "unshipped_bytes_max": UNSHIPPED_BYTES_MAX,
        },
        idle_rss_mib=round(idle_rss / MIB, 1),
        levels=figures,
        requests=result.requests,
        acked_records=result.ok,
        lost_acked=result.lost_acked,
        refused_but_present=result.refused_but_present,
        duplicates=result.duplicates,
        must_be_zero=result.must_be_zero(),
    )

    violations = [v for level in levels for v in level_violations(level)]
    assert violations == [], violations
    assert result.requests[INDETERMINATE] == 0, result.line()
    assert result.must_be_zero() == {}, result.line()
    assert result.ok > 0
    overloaded = levels[-1]
    share_5x = figures[-1]["share_503"]
    # The load did overload the node: at 5x a good part was refused, and the node
    # still acknowledged work at every level (shedding, not collapsing).
    assert share_5x >= 0.3, figures[-1]
    for level, f in zip(levels, figures, strict=True):
        assert f["ok_per_s"] >= 0.25 * min(capacity, level.offered_rps), f
    # 503s are cheap: fast in absolute terms and not slower than what is accepted.
    for f in figures:
        if f["p99_503_ms"] is not None and f["share_503"] >= 0.05:
            assert f["p99_503_ms"] <= FAST_503_P99_S * 1000, f
            if f["p99_200_ms"] is not None:
                assert f["p99_503_ms"] <= f["p99_200_ms"] + 50, f
    # Memory is bounded and does not grow with the offered load.
    peaks = [level.rss_peak_bytes for level in levels]
    assert max(peaks) < RSS_CAP_BYTES, figures
    assert peaks[-1] <= peaks[0] + RSS_GROWTH_MAX_BYTES, figures
    assert overloaded.outstanding_peak < OUTSTANDING_MAX, "the client guard throttled the load"


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
    tmp_path: Path,
) -> None:
    """OVL-03."""
    rng = random.Random(_seed())
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
            assert node.proc is not None
            pid = node.proc.pid
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
    report("OVL-03", **figures)

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
