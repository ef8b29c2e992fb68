#!/usr/bin/env python
"""H1/H2/E1 — HTTP ingest into the node (validated records, durable acks) against a
plain aiohttp app in the same run, and end to end into the local store.

System under test: the ingest node (`ingest.node.Node`, default `NodeSettings` apart
from data dir, control URL, node key, region and port; uvloop) as its own process
(this script with `--serve node`), configured by a control plane that is also its own
process (`--serve control`: `tests.support.stack.control_plane` on SQLite, which
creates the account, an ingest API key and a node key over the API, then one local
`file://` destination under the temp dir and the endpoints below). With two or more
CPUs and `taskset` on PATH, the control plane, the node and the baseline are started
with `taskset -c S` (S = the first CPU this process may use) and the load generator
(this process) pins itself to the next CPU, so the generator does not steal the
server's core; `--no-pin` turns this off. Every server process gets its own session.

* H1/H2 endpoint: `output_formats ["segments"]`, `segment_bytes` 1 GiB (the API's
  maximum), `segment_max_age_seconds` 900. A side-round writes less than 1 GiB, so no
  segment seals and delivery never runs during H1/H2: they measure ingest alone, with a
  real WAL (fdatasync before every 200).
* E1 endpoint: `["segments", "parquet", "parquet_views"]`, `--e1-segment-mib` (32),
  `--e1-segment-age-s` (30), one published 5-column view bound to it (the V1 view of
  `view_materialize.py`: device VARCHAR required, temp DOUBLE with `cast_failures: dlq`,
  count INTEGER, at TIMESTAMP, ok BOOLEAN; filter `temp < 40`).

Baseline: a plain aiohttp app (`--serve plain`, uvloop, same `AppRunner` options as the
node: no access log, keep-alive timeout 10 s, 10 MiB client_max_size), own process,
same CPU pinning. `POST /ingest/{endpoint_id}` reads the body, runs the node's own
validator `ingest.body.split_records(data, BodyKind.NDJSON, BodyLimits())` and answers
200 `{"accepted", "bytes"}`; no auth, no WAL.

`--wal-side` adds a diagnostic third side to every H1/H2 round, "plain+wal": the
baseline app plus one real `wal.WriteAheadLog.append(records)` per request (default
`WalSettings`, 1 GiB segments), answering after the fsync. It splits the gap between
plain and node into "a WAL on the same core" and "the node's handler around it"; it is
printed and written to JSON, never part of a ratio.

Load: `--connections` (64) keep-alive HTTP/1.1 connections from one raw asyncio
client (a `Protocol` writing prebuilt request bytes and parsing status line +
Content-Length; closed loop, one request in flight per connection; uvloop when
importable). Requests carry `X-API-Key` and `Content-Type: application/x-ndjson`.
Records are deterministic (`--seed`) JSON objects of exactly 300 bytes
(`{"ts","device","site","temp","count","ok","msg"}`).
* H1: `--body-kib` (64) bodies, 217 records of 300 B + newline each (65,317 B), from a
  pool of `--bodies` (512, i.e. ≈111k distinct records ≈ one 32 MiB segment), so
  Parquet dictionaries in E1 do not see a handful of repeated rows. `--h1-mib` (640)
  MiB per side and round → records/s, MB/s, latency.
* H2: one record (one 300-byte line + newline) per request, `--h2-requests` (60,000)
  per side and round → req/s, p50/p99 latency.
* E1: H1's bodies for `--e1-seconds` (180) against the E1 endpoint. A 503 (backlog or
  in-flight limit) is counted and that connection waits `--retry-delay-s` before the
  next request. Every `--e1-sample-s` (5) the node's /metrics is sampled:
  `edgemq_delivery_backlog_segments`, `edgemq_delivery_backlog_bytes`,
  `edgemq_wal_unshipped_bytes`, commits. Then the script waits (`--e1-drain-timeout`)
  until the commit manifests in the local store account for every acknowledged record
  and the backlog is empty, and checks that the raw Parquet files the manifests name
  hold exactly the acknowledged records (DuckDB `count(*)` over `read_parquet`).
  Bounded backlog = the unshipped bytes grew by less than 5 % of the ingest byte rate
  over the second half of the run and ended at ≤ 3 segments.

Run. Temp directory under the current directory (or `--dir PARENT`; a tmpfs is warned
about: fsync would cost nothing), removed at the end. Each side of each round is a
fresh server process (the node with a fresh data dir), then per benchmark an untimed
warm-up (`--warmup-s`, 2 s) and the measured phase; `--rounds` (3) rounds alternate
which side goes first. Every phase is bounded by its request count and by
`--round-timeout` (120 s); E1 by `--e1-seconds`. Peak RSS = VmHWM of the server
process (/proc/PID/status) just before it stops; server CPU from /proc/PID/stat (all
threads); generator CPU from this process (≥ 0.9 cores: the generator may be the limit,
and the script says so). E1's ratio is against the median H1 node records/s of the
same run (with `--only e1`, `--rounds` H1 node-only rounds are run first for it).
`--profile` adds one cProfile'd node side (the node's event-loop thread; not in the
figures) for the selected H1/H2 and prints the top functions; `HTTP_INGEST_PROFILE=
PATH` does the same for any server process started by hand with `--serve`.

Output: per round and side the figures above, then one summary line per benchmark:

    H1 http_ingest: ratio 0.93 (node 250k rec/s vs plain 270k rec/s, 64 KiB bodies, ...)
    H2 http_ingest: ratio 0.91 req/s, p99 ratio 1.10 (node 4.1k req/s p50 .. p99 .. ...)
    E1 http_ingest: ratio 0.72 of H1 (e1 180k rec/s vs h1 250k rec/s, 180 s, backlog ...)

Targets (shared/docs/BENCHMARKS.md): H1 ≥ 0.90; H2 ≥ 0.90 of req/s and p99 ≤ 1.3×;
E1 ≥ 0.70 of H1 with the backlog bounded.

    .venv/bin/python benchmarks/http_ingest.py
    .venv/bin/python benchmarks/http_ingest.py --only h1 --rounds 5 --json benchmarks/results/h1.json
    .venv/bin/python benchmarks/http_ingest.py --only e1 --e1-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import random
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SCRIPT = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(SCRIPT))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from _servers import (  # noqa: E402 (after the sys.path set-up above)
    Server,
    free_port,
    fs_type,
    main_thread_cpu_s,
    proc_cpu_s,
    save_json,
    spawn,
    temp_root,
    vm_hwm_bytes,
)
from _servers import fmt_k as _fmt_k  # noqa: E402
from _servers import install_stop as _install_stop  # noqa: E402
from _servers import loop_factory as _loop_factory  # noqa: E402
from _servers import median as _median  # noqa: E402
from _servers import read_json as _read_json  # noqa: E402
from _servers import write_json as _write_json  # noqa: E402

KIB = 1024
MIB = 1024 * 1024
RECORD_BYTES = 300
CLK_TCK = os.sysconf("SC_CLK_TCK")
REGION = "loc"
H_SEGMENT_BYTES = 1024 * MIB  # the API's maximum: no seal within a side-round
H_SEGMENT_AGE_S = 900
PROFILE_ENV = "HTTP_INGEST_PROFILE"
TARGETS = {"h1": 0.90, "h2_rps": 0.90, "h2_p99": 1.30, "e1": 0.70}
BOUNDED_GROWTH_SHARE = 0.05
BOUNDED_END_SEGMENTS = 3
VIEW_DEFINITION: dict[str, Any] = {
    "columns": [
        {"name": "device", "type": "VARCHAR", "path": "$.device", "required": True},
        {"name": "temp", "type": "DOUBLE", "path": "$.temp", "cast_failures": "dlq"},
        {"name": "count", "type": "INTEGER", "path": "$.count"},
        {"name": "at", "type": "TIMESTAMP", "path": "$.ts"},
        {"name": "ok", "type": "BOOLEAN", "path": "$.ok"},
    ],
    "filters": [{"condition": "temp < 40"}],
}
SIDES = ("plain", "node")


# ---------------------------------------------------------------------- helpers
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# ------------------------------------------------------------------------- data
def make_record(rng: random.Random, ts_ms: int) -> bytes:
    """One JSON object of exactly RECORD_BYTES bytes."""
    seconds, ms = divmod(ts_ms, 1000)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"
    head = (
        f'{{"ts":"{iso}","device":"dev-{rng.randrange(100_000):05d}",'
        f'"site":"site-{rng.randrange(64):02d}","temp":{rng.uniform(-20, 45):.2f},'
        f'"count":{rng.randrange(1_000_000)},"ok":{"true" if rng.random() < 0.9 else "false"},'
        f'"msg":"'
    )
    pad = RECORD_BYTES - len(head) - 2
    msg = rng.randbytes(pad // 2 + 1).hex()[:pad]
    record = (head + msg + '"}').encode()
    assert len(record) == RECORD_BYTES
    return record


def make_bodies(n_bodies: int, body_bytes: int, seed: int) -> tuple[list[bytes], int]:
    """`n_bodies` NDJSON bodies of as many records as fit in `body_bytes`; records/body."""
    rng = random.Random(seed)
    per_body = max(1, body_bytes // (RECORD_BYTES + 1))
    ts = int(time.time() * 1000)
    bodies = []
    for b in range(n_bodies):
        lines = [make_record(rng, ts + b * per_body + i) for i in range(per_body)]
        bodies.append(b"\n".join(lines) + b"\n")
    return bodies, per_body


def make_singles(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed + 1)
    ts = int(time.time() * 1000)
    return [make_record(rng, ts + i) + b"\n" for i in range(n)]


def build_requests(bodies: Sequence[bytes], path: str, port: int, api_key: str) -> list[bytes]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {api_key}\r\n"
        "Content-Type: application/x-ndjson\r\n"
    ).encode()
    return [head + b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies]


# ---------------------------------------------------------------- server processes
def _profiler() -> cProfile.Profile | None:
    return cProfile.Profile() if os.environ.get(PROFILE_ENV) else None


def _dump_profile(profiler: cProfile.Profile | None) -> None:
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.environ[PROFILE_ENV])


async def serve_control(root: str, info_path: str, e1_segment_bytes: int, e1_age_s: int) -> None:
    from tests.support.stack import control_plane

    store_dir = os.path.join(root, "store")
    os.makedirs(store_dir, exist_ok=True)
    stop = _install_stop(asyncio.get_running_loop())
    async with control_plane(root) as cp:
        dest = await cp.local_destination(store_dir)
        h = await cp.endpoint(
            dest["id"],
            segment_bytes=H_SEGMENT_BYTES,
            segment_max_age_seconds=H_SEGMENT_AGE_S,
            output_formats=["segments"],
        )
        e = await cp.endpoint(
            dest["id"],
            segment_bytes=e1_segment_bytes,
            segment_max_age_seconds=e1_age_s,
            output_formats=["segments", "parquet", "parquet_views"],
        )
        view = await cp.published_view("e1_readings", VIEW_DEFINITION)
        await cp.bind(e["id"], view["id"])
        _write_json(
            info_path,
            {
                "control_url": cp.url,
                "api_key": cp.api_key,
                "node_key": cp.node_key,
                "h_endpoint": h["id"],
                "e1_endpoint": e["id"],
                "store_dir": store_dir,
                "bucket": "lake",
                "view_id": view["id"],
            },
        )
        print(f"control plane on {cp.url}", flush=True)
        await stop.wait()


async def serve_node(info: dict[str, Any], data_dir: str, port: int) -> None:
    from ingest.node import Node
    from ingest.settings import NodeSettings

    settings = NodeSettings(
        data_dir=data_dir,
        control_url=info["control_url"],
        node_key=info["node_key"],
        region=REGION,
        host="127.0.0.1",
        http_port=port,
    )
    stop = _install_stop(asyncio.get_running_loop())
    node = Node(settings)
    profiler = _profiler()
    try:
        await node.start()
        print(f"node {node.node_id} on {node.http_url}", flush=True)
        if profiler is not None:
            profiler.enable()
        await stop.wait()
        _dump_profile(profiler)
    finally:
        await node.stop()


async def serve_plain(port: int, wal_dir: str | None = None) -> None:
    """The baseline; with `wal_dir` the diagnostic "plain+wal" side: the same app plus
    one `WriteAheadLog.append` per request, answering after the fsync."""
    from aiohttp import web

    from ingest.body import BodyKind, BodyLimits, split_records
    from wal import WalSettings, WriteAheadLog

    limits = BodyLimits()
    wal = None
    if wal_dir is not None:
        settings = WalSettings(segment_bytes=H_SEGMENT_BYTES, segment_max_age_s=H_SEGMENT_AGE_S)
        wal = await WriteAheadLog.open(wal_dir, settings=settings)

    async def ingest(request: web.Request) -> web.Response:
        data = await request.read()
        records = split_records(data, BodyKind.NDJSON, limits)
        if wal is not None:
            await wal.append(records, tenant=1)
        return web.json_response({"accepted": len(records), "bytes": sum(map(len, records))})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application(client_max_size=10 * MIB)
    app.router.add_post("/ingest/{endpoint_id}", ingest)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=10.0, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    stop = _install_stop(asyncio.get_running_loop())
    print(f"plain on http://127.0.0.1:{port}", flush=True)
    profiler = _profiler()
    if profiler is not None:
        profiler.enable()
    await stop.wait()
    _dump_profile(profiler)
    await runner.cleanup()
    if wal is not None:
        await wal.close()


def start_server(
    name: str,
    mode_args: list[str],
    *,
    cpu: int | None,
    workdir: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Server:
    port = port or free_port()
    argv = [sys.executable, SCRIPT, *mode_args, "--port", str(port)]
    return spawn(name, argv, cpu=cpu, workdir=workdir, port=port, env=env)


async def wait_ready(server: Server, session: Any, timeout_s: float = 60.0) -> None:
    """/readyz answers 200 (the node: config snapshot applied)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(Exception):
            async with session.get(server.base + "/readyz") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    server.stop()
    raise SystemExit(f"{server.name} not ready within {timeout_s} s:\n{server.log_tail()}")


# ------------------------------------------------------------- load generator
class Phase:
    """One closed-loop phase over the open connections: `total` requests at most,
    until `deadline` (perf_counter) at the latest."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        requests: Sequence[bytes],
        records: int,
        total: int,
        deadline: float,
        *,
        latencies: bool,
        retry_delay_s: float,
    ) -> None:
        self.loop = loop
        self.requests = requests
        self.n = len(requests)
        self.records = records
        self.total = total
        self.deadline = deadline
        self.issued = 0
        self.ok = 0
        self.other: dict[int, int] = {}
        self.errors = 0
        self.lat: list[float] | None = [] if latencies else None
        self.retry_delay_s = retry_delay_s
        self.active = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self.started = 0.0
        self.last = 0.0
        self.timed_out = False

    def take(self) -> int | None:
        if self.issued >= self.total:
            return None
        if time.perf_counter() >= self.deadline:
            self.timed_out = True
            return None
        i = self.issued
        self.issued += 1
        return i % self.n

    def idle(self) -> None:
        self.active -= 1
        if self.active == 0 and not self.done.done():
            self.done.set_result(None)


class Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.phase: Phase | None = None
        self.t0 = 0.0
        self.closed = False
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def start(self, phase: Phase) -> None:
        self.phase = phase
        phase.active += 1
        self.busy = True
        self._next()

    def _next(self) -> None:
        phase = self.phase
        assert phase is not None
        assert self.transport is not None
        i = phase.take() if not self.closed else None
        if i is None:
            self.busy = False
            phase.idle()
            return
        self.t0 = time.perf_counter()
        self.transport.write(phase.requests[i])

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end])
        at = head.find(b"\r\nContent-Length: ")
        length = 0
        if at >= 0:
            stop = head.find(b"\r", at + 18)
            length = int(head[at + 18 : stop if stop >= 0 else len(head)])
        if len(buf) < end + 4 + length:
            return
        del buf[: end + 4 + length]
        status = int(head[9:12])
        now = time.perf_counter()
        phase = self.phase
        assert phase is not None
        phase.last = now
        if status == 200:
            phase.ok += 1
            if phase.lat is not None:
                phase.lat.append(now - self.t0)
            self._next()
        else:
            phase.other[status] = phase.other.get(status, 0) + 1
            if status == 503:
                phase.loop.call_later(phase.retry_delay_s, self._next)
            else:
                self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy and self.phase is not None:
            self.phase.errors += 1
            self.busy = False
            self.phase.idle()


@dataclass
class Load:
    requests: int
    records: int
    elapsed_s: float
    other: dict[int, int]
    errors: int
    timed_out: bool
    latencies_s: list[float]
    body_bytes: int

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def records_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_s(self) -> float:
        return self.body_bytes / self.elapsed_s / 1e6 if self.elapsed_s > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1e3


class Clients:
    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.n = n
        self.conns: list[Conn] = []

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n):
            _, proto = await loop.create_connection(Conn, "127.0.0.1", self.port)
            self.conns.append(proto)

    def close(self) -> None:
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()
        self.conns.clear()

    async def run(
        self,
        requests: Sequence[bytes],
        records_per_request: int,
        body_bytes: int,
        *,
        total: int,
        duration_s: float,
        latencies: bool = True,
        retry_delay_s: float = 0.1,
        on_start: Any = None,
    ) -> tuple[Load, Phase]:
        loop = asyncio.get_running_loop()
        live = [c for c in self.conns if not c.closed]
        if len(live) < self.n:  # the server closed some (idle timeout): reopen
            self.conns = live
            for _ in range(self.n - len(live)):
                _, proto = await loop.create_connection(Conn, "127.0.0.1", self.port)
                self.conns.append(proto)
        phase = Phase(
            loop,
            requests,
            records_per_request,
            total,
            time.perf_counter() + duration_s,
            latencies=latencies,
            retry_delay_s=retry_delay_s,
        )
        phase.started = time.perf_counter()
        if on_start is not None:
            on_start(phase)
        for c in self.conns:
            c.start(phase)
        await asyncio.wait_for(phase.done, duration_s + 60.0)
        elapsed = phase.last - phase.started
        lat = sorted(phase.lat or [])
        load = Load(
            requests=phase.ok,
            records=phase.ok * records_per_request,
            elapsed_s=elapsed,
            other=dict(phase.other),
            errors=phase.errors,
            timed_out=phase.timed_out,
            latencies_s=lat,
            body_bytes=phase.ok * body_bytes,
        )
        return load, phase


# --------------------------------------------------------------------- results
@dataclass
class SideRun:
    side: str
    round: int
    loads: dict[str, Load] = field(default_factory=dict)
    server_cpu_s: dict[str, float] = field(default_factory=dict)
    loop_cpu_s: dict[str, float] = field(default_factory=dict)
    gen_cpu_s: dict[str, float] = field(default_factory=dict)
    rss_bytes: int = 0

    def line(self, bench: str) -> str:
        ld = self.loads[bench]
        srv = self.server_cpu_s[bench] / ld.elapsed_s if ld.elapsed_s else 0.0
        gen = self.gen_cpu_s[bench] / ld.elapsed_s if ld.elapsed_s else 0.0
        s = (
            f"{self.side:9s} {ld.records_s:9.0f} rec/s {ld.rps:7.0f} req/s {ld.mb_s:6.1f} MB/s "
            f"{ld.elapsed_s:6.2f} s  p50 {ld.p(50):6.2f} ms p99 {ld.p(99):6.2f} ms  "
            f"server {srv:.2f} cores ({self.server_cpu_s[bench] / max(ld.requests, 1) * 1e6:.0f}"
            f" µs/req, loop thread {self.loop_cpu_s[bench] / max(ld.requests, 1) * 1e6:.0f})  gen {gen:.2f} cores  RSS {self.rss_bytes / MIB:.0f} MiB"
        )
        if ld.other or ld.errors:
            s += f"  non-200 {ld.other} errors {ld.errors}"
        if ld.timed_out:
            s += "  (round timeout hit)"
        return s

    def summary(self, bench: str) -> dict[str, Any]:
        ld = self.loads[bench]
        return {
            "side": self.side,
            "requests": ld.requests,
            "records": ld.records,
            "elapsed_s": round(ld.elapsed_s, 4),
            "records_s": round(ld.records_s, 1),
            "req_s": round(ld.rps, 1),
            "mb_s": round(ld.mb_s, 2),
            "p50_ms": round(ld.p(50), 3),
            "p99_ms": round(ld.p(99), 3),
            "server_cpu_s": round(self.server_cpu_s[bench], 3),
            "server_loop_thread_cpu_s": round(self.loop_cpu_s[bench], 3),
            "generator_cpu_s": round(self.gen_cpu_s[bench], 3),
            "non_200": {str(k): v for k, v in ld.other.items()},
            "errors": ld.errors,
            "timed_out": ld.timed_out,
            "rss_bytes": self.rss_bytes,
        }


@dataclass
class Workload:
    name: str
    requests: dict[str, list[bytes]]  # side → prebuilt requests
    records_per_request: int
    body_bytes: int
    total: int
    warm_total: int


# ----------------------------------------------------------------------- runs
class Bench:
    def __init__(self, args: argparse.Namespace, root: str, pin: tuple[int, int] | None) -> None:
        self.args = args
        self.root = root
        self.server_cpu = pin[0] if pin else None
        self.info: dict[str, Any] = {}
        self.control: Server | None = None
        self.session: Any = None
        self.counter = 0
        self.bodies, self.per_body = make_bodies(args.bodies, args.body_kib * KIB, args.seed)
        self.body_len = len(self.bodies[0])
        self.singles = make_singles(args.singles, args.seed)

    # -- processes
    async def start_control(self) -> None:
        info_path = os.path.join(self.root, "control.json")
        self.control = start_server(
            "control",
            [
                "--serve",
                "control",
                "--root",
                self.root,
                "--info",
                info_path,
                "--e1-segment-mib",
                str(self.args.e1_segment_mib),
                "--e1-segment-age-s",
                str(self.args.e1_segment_age_s),
            ],
            cpu=self.server_cpu,
            workdir=self.root,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while (info := _read_json(info_path)) is None:  # written atomically by the control
            if self.control.proc.poll() is not None or loop.time() > deadline:
                raise SystemExit(f"control plane did not start:\n{self.control.log_tail()}")
            await asyncio.sleep(0.1)
        self.info = info

    async def start_side(self, side: str, *, profile_path: str | None = None) -> Server:
        self.counter += 1
        env = {PROFILE_ENV: profile_path} if profile_path else {}
        if side == "node":
            data_dir = os.path.join(self.root, f"node-{self.counter:03d}")
            args = [
                "--serve",
                "node",
                "--info",
                os.path.join(self.root, "control.json"),
                "--data-dir",
                data_dir,
            ]
            server = start_server(side, args, cpu=self.server_cpu, workdir=self.root, env=env)
            server.data_dir = data_dir
        elif side == "plain+wal":
            data_dir = os.path.join(self.root, f"plainwal-{self.counter:03d}")
            args = ["--serve", "plainwal", "--data-dir", data_dir]
            server = start_server("plainwal", args, cpu=self.server_cpu, workdir=self.root, env=env)
            server.data_dir = data_dir
        else:
            server = start_server(
                side, ["--serve", "plain"], cpu=self.server_cpu, workdir=self.root, env=env
            )
        await wait_ready(server, self.session)
        return server

    def stop_side(self, server: Server) -> None:
        server.stop()  # removes server.data_dir

    # -- workloads
    def workload(self, name: str, port: int, side: str) -> Workload:
        endpoint = self.info["h_endpoint"]
        path = f"/ingest/{endpoint}"
        key = self.info["api_key"]
        a = self.args
        if name == "h1":
            reqs = build_requests(self.bodies, path, port, key)
            total = max(1, round(a.h1_mib * MIB / self.body_len))
            warm = max(1, round(total / 4))
            return Workload(name, {side: reqs}, self.per_body, self.body_len, total, warm)
        reqs = build_requests(self.singles, path, port, key)
        total = a.h2_requests
        return Workload(name, {side: reqs}, 1, RECORD_BYTES + 1, total, max(1, total // 4))

    async def side_round(
        self, side: str, r: int, benches: Sequence[str], *, profile_path: str | None = None
    ) -> SideRun:
        a = self.args
        server = await self.start_side(side, profile_path=profile_path)
        run = SideRun(side, r)
        clients = Clients(server.port, a.connections)
        try:
            await clients.open()
            for bench in benches:
                w = self.workload(bench, server.port, side)
                reqs = w.requests[side]
                # untimed warm-up
                await clients.run(
                    reqs,
                    w.records_per_request,
                    w.body_bytes,
                    total=w.warm_total,
                    duration_s=a.warmup_s,
                    latencies=False,
                )
                scpu0, gcpu0 = proc_cpu_s(server.pid), time.process_time()
                lcpu0 = main_thread_cpu_s(server.pid)
                load, _ = await clients.run(
                    reqs,
                    w.records_per_request,
                    w.body_bytes,
                    total=w.total,
                    duration_s=a.round_timeout,
                )
                run.server_cpu_s[bench] = proc_cpu_s(server.pid) - scpu0
                run.loop_cpu_s[bench] = main_thread_cpu_s(server.pid) - lcpu0
                run.gen_cpu_s[bench] = time.process_time() - gcpu0
                run.loads[bench] = load
            run.rss_bytes = vm_hwm_bytes(server.pid)
        finally:
            clients.close()
            self.stop_side(server)
        return run

    # -- E1
    async def metrics(self, server: Server, endpoint: str) -> dict[str, float]:
        names = (
            "edgemq_delivery_backlog_segments",
            "edgemq_delivery_backlog_bytes",
            "edgemq_wal_unshipped_bytes",
            "edgemq_delivery_commits_total",
        )
        out: dict[str, float] = {}
        async with self.session.get(server.base + "/metrics") as r:
            text = await r.text()
        label = f'{{endpoint="{endpoint}"}} '
        stage = "edgemq_delivery_stage_seconds_"
        for line in text.splitlines():
            for name in names:
                if line.startswith(name + label):
                    out[name] = float(line.rsplit(" ", 1)[1])
            if line.startswith((stage + "sum{", stage + "count{")):
                key = line.split("{", 1)[0].rsplit("_", 1)[1] + ":" + line.split('"')[1]
                out[key] = float(line.rsplit(" ", 1)[1])
        return out

    def manifests(self, endpoint: str, seen: dict[str, Any]) -> dict[str, Any]:
        from ingest.manifest import parse_manifest

        base = os.path.join(self.info["store_dir"], self.info["bucket"])
        commits = os.path.join(base, REGION, endpoint, "commits")
        for dirpath, _dirs, files in os.walk(commits):
            for name in files:
                if name.endswith(".json") and not name.startswith("."):
                    path = os.path.join(dirpath, name)
                    if path not in seen:
                        with open(path, "rb") as f:
                            seen[path] = parse_manifest(f.read())
        return seen

    async def e1(self) -> dict[str, Any]:
        a = self.args
        endpoint = self.info["e1_endpoint"]
        server = await self.start_side("node")
        clients = Clients(server.port, a.connections)
        reqs = build_requests(self.bodies, f"/ingest/{endpoint}", server.port, self.info["api_key"])
        samples: list[dict[str, float]] = []
        phase_box: list[Phase] = []
        seg_bytes = a.e1_segment_mib * MIB
        print(
            f"E1: {a.e1_seconds:.0f} s of {self.body_len} B bodies on {a.connections} "
            f"connections, segments {a.e1_segment_mib} MiB / {a.e1_segment_age_s} s, "
            f"outputs segments + raw Parquet + 1 view (5 columns), local store",
            flush=True,
        )

        async def sampler() -> None:
            t0 = time.perf_counter()
            prev_rec, prev_t = 0, t0
            while True:
                await asyncio.sleep(a.e1_sample_s)
                try:
                    m = await self.metrics(server, endpoint)
                except Exception as err:
                    print(f"  metrics sample failed: {err}", flush=True)
                    continue
                now = time.perf_counter()
                rec = phase_box[0].ok * self.per_body if phase_box else 0
                rate = (rec - prev_rec) / (now - prev_t)
                prev_rec, prev_t = rec, now
                s = {
                    "t_s": round(now - t0, 2),
                    "records_s": round(rate, 1),
                    "backlog_segments": m.get("edgemq_delivery_backlog_segments", 0.0),
                    "backlog_bytes": m.get("edgemq_delivery_backlog_bytes", 0.0),
                    "unshipped_bytes": m.get("edgemq_wal_unshipped_bytes", 0.0),
                    "commits": m.get("edgemq_delivery_commits_total", 0.0),
                    "server_cpu_s": proc_cpu_s(server.pid),
                }
                samples.append(s)
                print(
                    f"  t={s['t_s']:6.1f}s  {rate:9.0f} rec/s  backlog "
                    f"{s['backlog_segments']:3.0f} seg  unshipped "
                    f"{s['unshipped_bytes'] / MIB:7.1f} MiB  commits {s['commits']:4.0f}",
                    flush=True,
                )

        try:
            await clients.open()
            scpu0, gcpu0 = proc_cpu_s(server.pid), time.process_time()
            task = asyncio.create_task(sampler())
            try:
                load, _ = await clients.run(
                    reqs,
                    self.per_body,
                    self.body_len,
                    total=10**9,
                    duration_s=a.e1_seconds,
                    latencies=True,
                    retry_delay_s=a.retry_delay_s,
                    on_start=phase_box.append,
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            server_cpu = proc_cpu_s(server.pid) - scpu0
            gen_cpu = time.process_time() - gcpu0
            clients.close()
            end_metrics = await self.metrics(server, endpoint)
            load_end_ms = time.time() * 1000
            acked = load.records
            print(
                f"E1 load done: {acked} records acknowledged in {load.elapsed_s:.1f} s "
                f"({load.records_s:.0f} rec/s, {load.mb_s:.1f} MB/s), non-200 {load.other}, "
                f"errors {load.errors}; backlog at the end "
                f"{end_metrics.get('edgemq_delivery_backlog_segments', 0):.0f} segments, "
                f"unshipped {end_metrics.get('edgemq_wal_unshipped_bytes', 0) / MIB:.1f} MiB; "
                f"draining (≤ {a.e1_drain_timeout:.0f} s)",
                flush=True,
            )
            # drain: manifests account for every acked record and the backlog is empty
            seen: dict[str, Any] = {}
            t_drain = time.perf_counter()
            frames = 0
            drained = False
            while time.perf_counter() - t_drain < a.e1_drain_timeout:
                self.manifests(endpoint, seen)
                frames = sum(m.frames for m in seen.values())
                if frames >= acked:
                    m = await self.metrics(server, endpoint)
                    if m.get("edgemq_delivery_backlog_segments", 0) == 0:
                        drained = True
                        break
                await asyncio.sleep(1.0)
            drain_s = time.perf_counter() - t_drain
            rss = vm_hwm_bytes(server.pid)
            after = await self.metrics(server, endpoint)
        finally:
            clients.close()
            self.stop_side(server)

        verify = self.verify(seen, acked)
        # delivery alone (the core free of ingest): WAL bytes committed after the load
        # ended, up to the last-but-one commit (the last segment waits for its age seal)
        late = sorted(
            (_utc_ms(m.committed_at), m.wal_bytes)
            for m in seen.values()
            if _utc_ms(m.committed_at) > load_end_ms
        )
        drain_mb_s = None
        if len(late) >= 3 and late[-2][0] > load_end_ms:
            drain_mb_s = sum(b for _, b in late[:-1]) / ((late[-2][0] - load_end_ms) / 1000) / 1e6
        stages = {}
        for name in ("build", "upload", "manifest", "report"):
            n = after.get(f"count:{name}", 0.0)
            if n:
                stages[name] = round(after.get(f"sum:{name}", 0.0) / n * 1000, 1)
        timings: dict[str, list[float]] = {}
        for m in seen.values():
            for k, v in m.timings_ms.items():
                timings.setdefault(k, []).append(v)
        build_ms = {k: round(statistics.median(v), 1) for k, v in sorted(timings.items())}
        second = [s for s in samples if s["t_s"] >= a.e1_seconds / 2]
        growth_b_s = _slope([(s["t_s"], s["unshipped_bytes"]) for s in second])
        ingest_b_s = load.records_s * (RECORD_BYTES + 1)
        end_backlog = end_metrics.get("edgemq_delivery_backlog_segments", 0.0)
        bounded = (
            len(second) >= 2
            and growth_b_s < BOUNDED_GROWTH_SHARE * ingest_b_s
            and end_backlog <= BOUNDED_END_SEGMENTS
        )
        max_backlog = max((s["backlog_segments"] for s in samples), default=0.0)
        max_unshipped = max((s["unshipped_bytes"] for s in samples), default=0.0)
        return {
            "seconds": a.e1_seconds,
            "segment_bytes": seg_bytes,
            "segment_age_s": a.e1_segment_age_s,
            "acked_records": acked,
            "requests": load.requests,
            "elapsed_s": round(load.elapsed_s, 3),
            "records_s": round(load.records_s, 1),
            "mb_s": round(load.mb_s, 2),
            "p50_ms": round(load.p(50), 3),
            "p99_ms": round(load.p(99), 3),
            "non_200": {str(k): v for k, v in load.other.items()},
            "errors": load.errors,
            "server_cores": round(server_cpu / load.elapsed_s, 3) if load.elapsed_s else 0,
            "generator_cores": round(gen_cpu / load.elapsed_s, 3) if load.elapsed_s else 0,
            "rss_bytes": rss,
            "samples": samples,
            "max_backlog_segments": max_backlog,
            "max_unshipped_bytes": max_unshipped,
            "end_backlog_segments": end_backlog,
            "end_unshipped_bytes": end_metrics.get("edgemq_wal_unshipped_bytes", 0.0),
            "second_half_unshipped_growth_b_s": round(growth_b_s, 1),
            "bounded": bounded,
            "drained": drained,
            "drain_s": round(drain_s, 2),
            "after_drain_unshipped_bytes": after.get("edgemq_wal_unshipped_bytes", 0.0),
            "delivery_only_mb_s": round(drain_mb_s, 2) if drain_mb_s else None,
            "delivery_stage_mean_ms": stages,
            "build_median_ms_per_segment": build_ms,
            "verify": verify,
        }

    def verify(self, manifests: dict[str, Any], acked: int) -> dict[str, Any]:
        import duckdb

        base = os.path.join(self.info["store_dir"], self.info["bucket"])
        raw = [a for m in manifests.values() for a in m.artifacts if a.kind == "parquet"]
        files = [os.path.join(base, a.key) for a in raw]
        rows = 0
        if files:
            con = duckdb.connect(":memory:")
            try:
                row = con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()
                rows = row[0] if row else 0
            finally:
                con.close()
        on_disk = 0
        for dirpath, _dirs, names in os.walk(base):
            if os.sep + "parquet" + os.sep in dirpath + os.sep and "/views/" not in dirpath:
                on_disk += sum(1 for n in names if n.endswith(".parquet"))
        views = [v for m in manifests.values() for v in m.views]
        return {
            "manifests": len(manifests),
            "frames_in_manifests": sum(m.frames for m in manifests.values()),
            "raw_parquet_files": len(files),
            "raw_parquet_files_on_disk": on_disk,
            "raw_parquet_rows_manifest": sum(a.rows or 0 for a in raw),
            "raw_parquet_rows_duckdb": int(rows),
            "acked_records": acked,
            "ok": int(rows) == acked,
            "view_processed": sum(v.processed for v in views),
            "view_accepted": sum(v.accepted for v in views),
            "view_dropped": sum(v.dropped for v in views),
            "view_dlq": sum(v.dlq for v in views),
        }


def _utc_ms(text: str) -> float:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` → epoch milliseconds."""
    import datetime as dt

    moment = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return moment.timestamp() * 1000


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y)."""
    if len(points) < 2:
        return 0.0
    mt = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    den = sum((p[0] - mt) ** 2 for p in points)
    return sum((p[0] - mt) * (p[1] - my) for p in points) / den if den else 0.0


def _profile_text(path: str, top: int = 30) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(path, stream=buf).strip_dirs().sort_stats("tottime")
    stats.print_stats(top)
    buf.write("\n--- by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


# ------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="measured rounds for H1/H2 (3)")
    p.add_argument("--only", choices=("h1", "h2", "e1"), action="append", help="run only these")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections (64)")
    p.add_argument("--body-kib", type=int, default=64, help="H1/E1 body size, KiB (64)")
    p.add_argument("--bodies", type=int, default=512, help="distinct H1/E1 bodies (512)")
    p.add_argument("--singles", type=int, default=4096, help="distinct H2 records (4096)")
    p.add_argument("--h1-mib", type=float, default=640, help="H1 MiB per side and round (640)")
    p.add_argument("--h2-requests", type=int, default=60_000, help="H2 requests per side/round")
    p.add_argument("--warmup-s", type=float, default=2.0, help="untimed warm-up per phase, s")
    p.add_argument("--round-timeout", type=float, default=120.0, help="per measured phase, s")
    p.add_argument("--e1-seconds", type=float, default=180.0, help="E1 load duration (180)")
    p.add_argument("--e1-segment-mib", type=int, default=32, help="E1 segment_bytes, MiB (32)")
    p.add_argument("--e1-segment-age-s", type=int, default=30, help="E1 segment max age (30)")
    p.add_argument("--e1-sample-s", type=float, default=5.0, help="E1 /metrics sampling (5)")
    p.add_argument("--e1-drain-timeout", type=float, default=600.0, help="E1 drain wait, s")
    p.add_argument("--retry-delay-s", type=float, default=0.1, help="wait after a 503 (0.1)")
    p.add_argument("--dir", default=None, help="parent directory for the temp dir (cwd)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    p.add_argument("--no-pin", action="store_true", help="do not pin server/generator CPUs")
    p.add_argument("--profile", action="store_true", help="one extra cProfile'd node side")
    p.add_argument(
        "--wal-side",
        action="store_true",
        help='diagnostic third side "plain+wal" (plain app + WriteAheadLog.append), not in ratios',
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, store)")
    p.add_argument("--seed", type=int, default=1)
    # internal: server processes
    p.add_argument(
        "--serve", choices=("control", "node", "plain", "plainwal"), help=argparse.SUPPRESS
    )
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--info", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.connections < 1 or args.bodies < 1 or args.singles < 1:
        p.error("--rounds, --connections, --bodies and --singles must be positive")
    if args.h1_mib <= 0 or args.h2_requests < 1 or args.e1_seconds <= 0:
        p.error("--h1-mib, --h2-requests and --e1-seconds must be positive")
    if args.h1_mib * 1.25 + 64 > H_SEGMENT_BYTES / MIB:
        p.error("--h1-mib: warm-up + measured H1 must stay under the 1 GiB segment (<= 768)")
    args.benches = sorted(set(args.only), key=("h1", "h2", "e1").index) if args.only else None
    if args.benches is None:
        args.benches = ["h1", "h2", "e1"]
    return args


def serve(args: argparse.Namespace) -> int:
    if args.serve == "control":
        coro = serve_control(args.root, args.info, args.e1_segment_mib * MIB, args.e1_segment_age_s)
        asyncio.run(coro)  # the control plane's own default loop, like `edgemq control`
        return 0
    if args.serve == "node":
        coro = serve_node(_read_json(args.info), args.data_dir, args.port)
    elif args.serve == "plainwal":
        coro = serve_plain(args.port, args.data_dir)
    else:
        coro = serve_plain(args.port)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(coro)
    return 0


async def amain(args: argparse.Namespace, root: str, pin: tuple[int, int] | None) -> dict[str, Any]:
    import aiohttp

    kind = fs_type(root)
    if kind in ("tmpfs", "ramfs"):
        print(f"warning: {root} is on {kind}; fdatasync costs nothing there", file=sys.stderr)
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    pin_text = (
        f"control plane, node and plain on CPU {pin[0]} (taskset -c {pin[0]}), "
        f"load generator on CPU {pin[1]}"
        if pin
        else "not pinned (--no-pin, one CPU, or no taskset)"
    )
    bench = Bench(args, root, pin)
    print(
        f"http_ingest setup: {args.connections} connections, H1 {bench.body_len} B bodies "
        f"({bench.per_body} records of {RECORD_BYTES} B, {args.bodies} distinct), "
        f"{args.h1_mib:g} MiB/side/round; H2 1 record/request, {args.h2_requests} "
        f"requests/side/round; {args.rounds} rounds, warm-up {args.warmup_s:g} s; "
        f"{pin_text}; generator loop {loop_name}; dir {root} ({kind}); benches "
        f"{','.join(args.benches)}",
        flush=True,
    )
    results: dict[str, Any] = {
        "benchmark": "H1/H2/E1 http_ingest",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "config": {
            "connections": args.connections,
            "body_bytes": bench.body_len,
            "records_per_body": bench.per_body,
            "record_bytes": RECORD_BYTES,
            "distinct_bodies": args.bodies,
            "h1_mib": args.h1_mib,
            "h2_requests": args.h2_requests,
            "rounds": args.rounds,
            "warmup_s": args.warmup_s,
            "pinning": pin_text,
            "fs_type": kind,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "h_endpoint": {"output_formats": ["segments"], "segment_bytes": H_SEGMENT_BYTES},
        },
        "targets": TARGETS,
    }
    summary_lines: list[str] = []
    async with aiohttp.ClientSession() as session:
        bench.session = session
        await bench.start_control()
        try:
            hb = [b for b in ("h1", "h2") if b in args.benches]
            runs: dict[str, list[SideRun]] = {s: [] for s in (*SIDES, "plain+wal")}
            if hb:
                sides = (*SIDES, "plain+wal") if args.wal_side else SIDES
                for r in range(args.rounds):
                    order = sides if r % 2 == 0 else sides[::-1]
                    pair = {}
                    for side in order:
                        pair[side] = await bench.side_round(side, r, hb)
                        runs[side].append(pair[side])
                    for b in hb:
                        n, p = pair["node"].loads[b], pair["plain"].loads[b]
                        ratio = (n.records_s / p.records_s) if p.records_s else float("nan")
                        print(f"{b.upper()} round {r + 1}/{args.rounds}: ratio {ratio:.3f}")
                        for side in sides:
                            print("  " + pair[side].line(b), flush=True)
            for b in hb:
                res = _h_summary(b, runs, args.body_kib)
                results[b] = res
                summary_lines.append(res["line"])
            if args.profile and hb:
                prof = os.path.join(root, "node.prof")
                pr = await bench.side_round("node", -1, hb, profile_path=prof)
                text = _profile_text(prof)
                for b in hb:
                    print(f"\nprofiled node side (not in the figures): {pr.line(b)}")
                print(text)
                results["profile_top"] = text
            if "e1" in args.benches:
                h1_node = results.get("h1", {}).get("median", {}).get("node_records_s")
                h1_source = "H1 rounds above"
                if h1_node is None:
                    vals = []
                    for r in range(args.rounds):
                        sr = await bench.side_round("node", r, ["h1"])
                        print("  H1 reference " + sr.line("h1"), flush=True)
                        vals.append(sr.loads["h1"].records_s)
                    h1_node = _median(vals)
                    h1_source = f"{args.rounds} H1 node-only rounds in this run"
                e1 = await bench.e1()
                e1["h1_node_records_s"] = h1_node
                e1["h1_source"] = h1_source
                e1["ratio"] = e1["records_s"] / h1_node if h1_node else float("nan")
                results["e1"] = e1
                v = e1["verify"]
                print(
                    f"E1 verify: {v['manifests']} manifests, {v['raw_parquet_files']} raw Parquet "
                    f"files ({v['raw_parquet_files_on_disk']} on disk), rows {v['raw_parquet_rows_duckdb']}"
                    f" (duckdb) / {v['raw_parquet_rows_manifest']} (manifests) vs acked "
                    f"{v['acked_records']}: {'OK' if v['ok'] else 'MISMATCH'}; view accepted "
                    f"{v['view_accepted']} dropped {v['view_dropped']} dlq {v['view_dlq']}; "
                    f"drained in {e1['drain_s']:.1f} s ({'yes' if e1['drained'] else 'NO'})"
                )
                drain = e1["delivery_only_mb_s"]
                print(
                    "E1 delivery: mean stage ms "
                    + ", ".join(f"{k} {v}" for k, v in e1["delivery_stage_mean_ms"].items())
                    + "; median build ms per segment "
                    + ", ".join(f"{k} {v}" for k, v in e1["build_median_ms_per_segment"].items())
                    + (f"; delivery alone after the load {drain:.1f} MB/s" if drain else "")
                )
                n503 = e1["non_200"].get("503", 0)
                line = (
                    f"E1 http_ingest: ratio {e1['ratio']:.2f} of H1 (e1 "
                    f"{_fmt_k(e1['records_s'])} rec/s {e1['mb_s']:.1f} MB/s vs h1 node "
                    f"{_fmt_k(h1_node)} rec/s, {args.e1_seconds:g} s, raw Parquet + 1 view + "
                    f"segments, {args.e1_segment_mib} MiB segments) backlog "
                    f"{'bounded' if e1['bounded'] else 'NOT bounded'} (max "
                    f"{e1['max_backlog_segments']:.0f} seg / "
                    f"{e1['max_unshipped_bytes'] / MIB:.0f} MiB unshipped, end "
                    f"{e1['end_backlog_segments']:.0f} seg, 2nd-half growth "
                    f"{e1['second_half_unshipped_growth_b_s'] / 1e6:+.1f} MB/s"
                    f"{f', {n503} x 503' if n503 else ''}) rows "
                    f"{'OK' if e1['verify']['ok'] else 'MISMATCH'} "
                    f"RSS {e1['rss_bytes'] / MIB:.0f} MiB"
                )
                e1["line"] = line
                summary_lines.append(line)
        finally:
            if bench.control is not None:
                results["control_rss_bytes"] = vm_hwm_bytes(bench.control.pid)
                bench.control.stop()
    print()
    for line in summary_lines:
        print(line)
    return results


def _h_summary(b: str, runs: dict[str, list[SideRun]], body_kib: int) -> dict[str, Any]:
    node, plain = runs["node"], runs["plain"]
    nrec = _median([x.loads[b].records_s for x in node])
    prec = _median([x.loads[b].records_s for x in plain])
    nrps = _median([x.loads[b].rps for x in node])
    prps = _median([x.loads[b].rps for x in plain])
    nlat = sorted(v for x in node for v in x.loads[b].latencies_s)
    plat = sorted(v for x in plain for v in x.loads[b].latencies_s)
    n50, n99 = percentile(nlat, 50) * 1e3, percentile(nlat, 99) * 1e3
    p50, p99 = percentile(plat, 50) * 1e3, percentile(plat, 99) * 1e3
    round_ratios = [
        n.loads[b].records_s / p.loads[b].records_s for n, p in zip(node, plain, strict=True)
    ]
    nrss = max(x.rss_bytes for x in node)
    prss = max(x.rss_bytes for x in plain)
    ncores = _median([x.server_cpu_s[b] / x.loads[b].elapsed_s for x in node])
    pcores = _median([x.server_cpu_s[b] / x.loads[b].elapsed_s for x in plain])
    gen = max(x.gen_cpu_s[b] / x.loads[b].elapsed_s for x in node + plain)
    ratio = nrec / prec
    if b == "h1":
        line = (
            f"H1 http_ingest: ratio {ratio:.2f} (node {_fmt_k(nrec)} rec/s vs plain "
            f"{_fmt_k(prec)} rec/s; {nrps:.0f} vs {prps:.0f} req/s of {body_kib} KiB) p99 {n99:.1f} vs "
            f"{p99:.1f} ms, server {ncores:.2f} vs {pcores:.2f} cores, RSS {nrss / MIB:.0f} vs "
            f"{prss / MIB:.0f} MiB"
        )
    else:
        line = (
            f"H2 http_ingest: ratio {nrps / prps:.2f} req/s, p99 ratio {n99 / p99:.2f} (node "
            f"{_fmt_k(nrps)} req/s p50 {n50:.1f} p99 {n99:.1f} ms vs plain {_fmt_k(prps)} req/s "
            f"p50 {p50:.1f} p99 {p99:.1f} ms), server {ncores:.2f} vs {pcores:.2f} cores, RSS "
            f"{nrss / MIB:.0f} vs {prss / MIB:.0f} MiB"
        )
    if gen >= 0.9:
        line += f" [generator reached {gen:.2f} cores: it may be the limit]"
    diag: dict[str, Any] = {}
    if runs["plain+wal"]:
        w = runs["plain+wal"]
        diag = {
            "plain_wal_records_s": _median([x.loads[b].records_s for x in w]),
            "plain_wal_req_s": _median([x.loads[b].rps for x in w]),
            "plain_wal_cpu_us_per_req": _median(
                [x.server_cpu_s[b] / x.loads[b].requests * 1e6 for x in w]
            ),
            "plain_wal_rss_bytes_max": max(x.rss_bytes for x in w),
        }
        print(
            f"{b.upper()} diagnostic plain+wal: {diag['plain_wal_records_s']:.0f} rec/s "
            f"{diag['plain_wal_req_s']:.0f} req/s = {diag['plain_wal_records_s'] / prec:.2f} of "
            f"plain; node = {nrec / diag['plain_wal_records_s']:.2f} of plain+wal",
            flush=True,
        )
    print(
        f"{b.upper()} medians: node {nrec:.0f} rec/s {nrps:.0f} req/s, plain {prec:.0f} rec/s "
        f"{prps:.0f} req/s; median of per-round ratios {_median(round_ratios):.3f}; "
        f"generator max {gen:.2f} cores",
        flush=True,
    )
    return {
        "median": {
            "node_records_s": nrec,
            "plain_records_s": prec,
            "node_req_s": nrps,
            "plain_req_s": prps,
            "ratio_records_s": ratio,
            "ratio_req_s": nrps / prps,
            "median_of_round_ratios": _median(round_ratios),
            "node_p50_ms": n50,
            "node_p99_ms": n99,
            "plain_p50_ms": p50,
            "plain_p99_ms": p99,
            "p99_ratio": n99 / p99,
            "node_server_cores": ncores,
            "plain_server_cores": pcores,
            "generator_cores_max": gen,
            "node_rss_bytes_max": nrss,
            "plain_rss_bytes_max": prss,
            "node_cpu_us_per_req": _median(
                [x.server_cpu_s[b] / x.loads[b].requests * 1e6 for x in node]
            ),
            "plain_cpu_us_per_req": _median(
                [x.server_cpu_s[b] / x.loads[b].requests * 1e6 for x in plain]
            ),
            **diag,
        },
        "rounds": [
            {"node": n.summary(b), "plain": p.summary(b)} for n, p in zip(node, plain, strict=True)
        ],
        "line": line,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args)
    cpus = sorted(os.sched_getaffinity(0))
    pin = None
    if not args.no_pin and len(cpus) >= 2 and shutil.which("taskset"):
        pin = (cpus[0], cpus[1])
        os.sched_setaffinity(0, {pin[1]})  # before any thread or child process
    with (
        temp_root(args.dir, ".http-ingest-", keep=args.keep) as root,
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        results = runner.run(amain(args, root, pin))
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
