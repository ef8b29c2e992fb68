#!/usr/bin/env python
"""Control API — token exchanges/s and GET /v1/endpoints latency with 10,000 endpoints,
on SQLite and on PostgreSQL, against a plain aiohttp app in the same run.

System under test: the control plane as its own process,
`python -m edgemq control --database-url URL --port P`, pinned to one core with
`taskset -c S` (S = the first CPU this process may use), so the load generator (this
process: an asyncio + aiohttp client, uvloop when importable) runs on the other core
(`os.sched_setaffinity`) and does not share the server's CPU. `--no-pin` turns this off.
Each server runs in its own session (so its own scheduler autogroup: on a shared
machine it competes with other sessions' processes as one group, like the baseline).

Store set-up, before the server starts, directly in the store (`control.server.
open_context`): one account (`keys.create_account`), one admin API key
(`keys.insert_key`), one destination (status `valid`), 2 nodes in each of 4 regions
(heartbeat set a week ahead so they stay healthy during the run, applied epoch at 90 %
of the endpoints' config epochs), `--endpoints` endpoints (default 10,000) spread
round-robin over the regions, inserted with direct INSERTs of the same columns
`endpoints.create` writes (one transaction; config_epoch 2..N+1 as if each had been
created through the API; settings.config_epoch set to match) and a delivery error
reported for 1 % of them. So a page of the list mixes `active` (≈89 %), `deploying`
(≈10 %) and `degraded` (≈1 %) endpoints and the status code runs in full
(`region_health` per region on the page). SQLite: a file in a temp dir under the
current directory (`--dir`), no ANALYZE (the project never runs one). PostgreSQL:
`tests.support.postgres.start_postgres` (Debian's binaries, fsync on) in its own temp
dir, started from this process after pinning, so its processes share the load
generator's core, not the server's; one ANALYZE after the inserts (what autovacuum
would have done on a live database).

Baseline, in the same run: a plain aiohttp app (this script with `--serve-baseline`),
also its own process on the same core, same default asyncio loop as `edgemq control`.
POST /v1/token/exchange reads and parses the JSON body and signs one RS256 JWT with
the same claims (PyJWT, RSA 2048); GET /v1/endpoints answers, for each query string
used, a fixed body: the exact bytes the control plane answered for that query once
before the rounds.

Workloads, per round, each run on both sides (alternating which goes first):
* exchange: `--exchange-clients` closed-loop clients (default 16) POST
  {"api_key", "scope": "admin"} for `--exchange-seconds` (default 5) → req/s, p50/p99;
* list: GET /v1/endpoints?limit=50&offset=O for each of `--offsets`
  (default 0,2500,5000,7500,9950), `--list-requests` requests (default 1000) at
  `--list-concurrency` (default 4) with a Bearer token → p50/p99 and req/s;
* status filter: GET /v1/endpoints?status=active&limit=50, `--status-requests`
  (default 20) at concurrency 1 (that path renders every endpoint of the account).
Latency is request start → full body read, in the client. Ratios: control req/s ÷
baseline req/s (exchange), control latency ÷ baseline latency (list); each the median
of the per-round ratios. Absolute percentiles are pooled over the rounds. Per side,
from /proc: the server's CPU per request (and PostgreSQL's, all its processes), cores
used (CPU seconds ÷ wall), the client's CPU (a saturated generator shows), and the CPU
that other processes on the machine used meanwhile (the summary warns when it reached
0.2 cores). Server CPU per request is the figure least disturbed by other load:
1000 ÷ (ms per request) is what one core sustains when the server has all of it; the
exchange summary also gives that "CPU-bound capacity" and its ratio to the baseline.
Targets (issue): ≥ 500 token exchanges/s on one core; list p99 ≤ 20 ms (the worst
offset is what counts).

`--profile` (= `--profile cprofile`) adds, per store, three profiled server runs
(exchange; list at the deepest offset; status filter; not in the figures): cProfile
sees only the server's event-loop thread, and SQLite's queries run in the store's
worker thread. `--profile py-spy` (`--py-spy-bin PATH` when it is not on PATH)
samples every thread instead and prints samples per thread and the hottest frames.

    .venv/bin/python benchmarks/control_api.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SCRIPT = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(SCRIPT))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from _servers import Server, free_port, median, spawn  # noqa: E402 (after the sys.path set-up)

REGIONS = ("fra", "iad", "sin", "syd")
NODES_PER_REGION = 2
APPLIED_FRACTION = 0.9  # nodes have applied this share of the endpoints' epochs
FAILING_EVERY = 100  # one endpoint in 100 has a delivery error on a healthy node
LIST_LIMIT = 50
STATUS_QUERY = "status=active&limit=50"
LIST_P99_TARGET_MS = 20.0
EXCHANGE_TARGET_S = 500.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIDES = ("baseline", "control")


# ---------------------------------------------------------------------- helpers
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime+stime seconds) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its live direct children (PostgreSQL's backends)."""
    own = _proc_stat(pid)
    total = own[1] if own else 0.0
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != pid:
            st = _proc_stat(int(name))
            if st is not None and st[0] == pid:
                total += st[1]
    return total


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def _pg_facts(root: str, bindir: str) -> tuple[int, str]:
    """The postmaster's pid and the server version."""
    with open(os.path.join(root, "data", "postmaster.pid")) as f:
        pid = int(f.readline())
    version = subprocess.run(
        [f"{bindir}/postgres", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return pid, version


def _write_json(path: str, doc: Any) -> None:
    with open(path, "w") as f:
        json.dump(doc, f)


# --------------------------------------------------------------------- baseline
def serve_baseline(port: int, bodies_path: str) -> int:
    """The plain aiohttp app: one RS256 sign per exchange, fixed bodies for the list."""
    import jwt
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(bodies_path) as f:
        spec = json.load(f)
    bodies = {q: body.encode() for q, body in spec["bodies"].items()}
    subject, actor = spec["account_id"], spec["actor"]

    async def exchange(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        now = int(time.time())
        claims = {
            "iss": "edgemq",
            "sub": subject,
            "scopes": [data["scope"]],
            "iat": now,
            "exp": now + 900,
            "jti": uuid.uuid4().hex,
            "act": actor,
        }
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "0123456789abcdef"})
        out = {"access_token": token, "token_type": "Bearer", "expires_in": 900}
        return web.Response(
            body=json.dumps(out, separators=(",", ":")).encode(), content_type="application/json"
        )

    async def endpoints(request: web.Request) -> web.Response:
        body = bodies.get(request.query_string)
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/token/exchange", exchange)
    app.router.add_get("/v1/endpoints", endpoints)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    return 0


# ----------------------------------------------------------------------- servers
def start_process(
    name: str, argv: list[str], cpu: int | None, workdir: str, timeout_s: float = 60.0
) -> Server:
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    # Own session = own scheduler autogroup: the server competes with other sessions'
    # processes as one group, like the baseline, not inside the benchmark's group.
    server = spawn(name, argv, cpu=cpu, workdir=workdir, port=port)
    proc = server.proc
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise SystemExit(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return server
        time.sleep(0.05)
    server.stop()
    raise SystemExit(f"{name} did not listen within {timeout_s} s:\n{server.log_tail()}")


# --------------------------------------------------------------------- the store
async def populate(url: str, n_endpoints: int) -> dict[str, Any]:
    from control.server import open_context
    from control.services import keys
    from control.services.endpoints import MQTT_DEFAULTS, SEGMENT_BYTES_DEFAULT

    t0 = time.perf_counter()
    async with open_context(url) as ctx:
        account = await keys.create_account(ctx, "bench")
        key = await keys.insert_key(
            ctx, account_id=account["id"], name="bench-admin", owner=None, scopes=["admin"]
        )
        now = int(time.time() * 1000)
        base = now - n_endpoints - 1000
        dest_id = str(uuid.uuid4())
        max_epoch = n_endpoints + 1
        applied = 1 + int(n_endpoints * APPLIED_FRACTION)
        heartbeat = now + 7 * 24 * 3600 * 1000  # healthy for the whole run
        ids = [str(uuid.uuid4()) for _ in range(n_endpoints)]
        async with ctx.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO destinations (id, account_id, name, bucket, prefix, region, "
                "role_arn, kms_key_arn, path_style, endpoint_url, status, validated_at, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'valid', ?, ?, ?)",
                (
                    dest_id,
                    account["id"],
                    "bench-bucket",
                    "bench-bucket",
                    "edgemq/",
                    "eu-central-1",
                    "arn:aws:iam::123456789012:role/edgemq-bench",
                    None,
                    0,
                    None,
                    base,
                    base,
                    base,
                ),
            )
            node_ids: dict[str, list[str]] = {}
            for r, region in enumerate(REGIONS):
                for k in range(NODES_PER_REGION):
                    node_id = str(uuid.uuid4())
                    node_ids.setdefault(region, []).append(node_id)
                    await tx.execute(
                        "INSERT INTO nodes (id, region, http_url, mqtt_url, ipv4, ipv6, version, "
                        "registered_at, last_heartbeat_at, applied_epoch, draining) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                        (
                            node_id,
                            region,
                            f"http://10.0.{r}.{k + 1}:8080",
                            f"mqtt://10.0.{r}.{k + 1}:1883",
                            json.dumps([f"192.0.2.{r * 10 + k + 1}"]),
                            json.dumps([f"2001:db8::{r:x}:{k + 1}"]),
                            "bench",
                            base,
                            heartbeat,
                            applied,
                        ),
                    )
            mqtt = json.dumps(MQTT_DEFAULTS)
            formats = json.dumps(["segments", "parquet"])
            for i, endpoint_id in enumerate(ids):
                created = base + i
                await tx.execute(
                    "INSERT INTO endpoints (id, account_id, region, destination_id, "
                    "segment_bytes, segment_max_age_seconds, output_formats, mqtt_config, "
                    "config_epoch, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        endpoint_id,
                        account["id"],
                        REGIONS[i % len(REGIONS)],
                        dest_id,
                        SEGMENT_BYTES_DEFAULT,
                        60,
                        formats,
                        mqtt if i % 2 else None,
                        2 + i,
                        created,
                        created,
                    ),
                )
            for i in range(0, n_endpoints, FAILING_EVERY):
                region = REGIONS[i % len(REGIONS)]
                await tx.execute(
                    "INSERT INTO node_endpoint_state (node_id, endpoint_id, unshipped_bytes, "
                    "delivery_error, updated_at) VALUES (?, ?, ?, ?, ?)",
                    (node_ids[region][0], ids[i], 4096, "AccessDenied: bench", now),
                )
            await tx.execute(
                "UPDATE settings SET value = ? WHERE name = 'config_epoch'", (max_epoch,)
            )
        if ctx.db.dialect == "postgresql":
            await ctx.db.execute("ANALYZE")
        dialect = ctx.db.dialect
    return {
        "account_id": account["id"],
        "api_key": key["api_key"],
        "actor": "bench-admin",
        "dialect": dialect,
        "setup_s": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------- the load
@dataclass
class Load:
    side: str
    what: str
    requests: int
    elapsed_s: float
    lat_s: list[float] = field(repr=False)
    errors: dict[str, int]
    server_cpu_s: float
    store_cpu_s: float | None
    client_cpu_s: float
    other_cpu_s: float  # busy CPU of the machine not used by server, client or store
    steal_s: float  # CPU time the hypervisor gave to other guests
    complete: bool = True

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.lat_s, q) * 1e3

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("lat_s")
        el = max(self.elapsed_s, 1e-9)
        d.update(
            req_s=self.rate,
            p50_ms=self.p(50),
            p99_ms=self.p(99),
            max_ms=self.p(100),
            server_cores=self.server_cpu_s / el,
            client_cores=self.client_cpu_s / el,
            other_cores=self.other_cpu_s / el,
            steal_cores=self.steal_s / el,
            server_cpu_ms_per_req=self.server_cpu_s / max(self.requests, 1) * 1e3,
        )
        return d

    def line(self) -> str:
        s = self.summary()
        out = (
            f"{self.side:8s} {s['req_s']:7.0f} req/s  p50 {s['p50_ms']:7.2f} ms  "
            f"p99 {s['p99_ms']:7.2f} ms  n {self.requests:5d}  "
            f"server {s['server_cores']:.2f} cores ({s['server_cpu_ms_per_req']:.2f} ms CPU/req)"
        )
        if self.store_cpu_s is not None:
            out += (
                f"  postgres {self.store_cpu_s / max(self.elapsed_s, 1e-9):.2f} cores "
                f"({self.store_cpu_s / max(self.requests, 1) * 1e3:.2f} ms CPU/req)"
            )
        out += f"  client {s['client_cores']:.2f} cores"
        if s["other_cores"] >= 0.05 or s["steal_cores"] >= 0.05:
            out += f"  [other processes {s['other_cores']:.2f} cores, steal {s['steal_cores']:.2f}]"
        if self.errors:
            out += f"  ERRORS {self.errors}"
        if not self.complete:
            out += "  (stopped by --phase-timeout)"
        return out


async def run_load(
    session: Any,
    *,
    side: str,
    what: str,
    method: str,
    url: str,
    data: bytes | None,
    headers: dict[str, str],
    concurrency: int,
    count: int,
    duration_s: float,
    server_pid: int,
    store_pid: int | None,
) -> Load:
    """Closed loop: `concurrency` tasks, until `count` requests or `duration_s` pass."""
    import aiohttp

    pc = time.perf_counter
    lat: list[float] = []
    errors: dict[str, int] = {}
    remaining = [count]
    last = [0.0]
    stop_at = 0.0

    async def worker() -> None:
        while remaining[0] > 0 and pc() < stop_at:
            remaining[0] -= 1
            t0 = pc()
            try:
                async with session.request(method, url, data=data, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as err:
                status = type(err).__name__
            t1 = pc()
            last[0] = t1
            if status == 200:
                lat.append(t1 - t0)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
                if sum(errors.values()) > 100:
                    remaining[0] = -1  # give up: something is broken

    cpu0 = _proc_stat(server_pid)
    store0 = tree_cpu(store_pid) if store_pid else None
    ccpu0 = time.process_time()
    sys0, steal0 = system_cpu()
    t_start = last[0] = pc()
    stop_at = t_start + duration_s
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = last[0] - t_start
    ccpu = time.process_time() - ccpu0
    sys1, steal1 = system_cpu()
    cpu1 = _proc_stat(server_pid)
    server_cpu = (cpu1[1] - cpu0[1]) if cpu0 and cpu1 else float("nan")
    store_cpu = (tree_cpu(store_pid) - store0) if store_pid and store0 is not None else None
    lat.sort()
    complete = what == "exchange" or remaining[0] == 0
    other = (sys1 - sys0) - ccpu - (server_cpu if server_cpu == server_cpu else 0.0)
    other -= store_cpu or 0.0
    return Load(
        side,
        what,
        len(lat),
        elapsed,
        lat,
        errors,
        server_cpu,
        store_cpu,
        ccpu,
        max(other, 0.0),
        steal1 - steal0,
        complete,
    )


# ------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--stores", default="sqlite,postgresql", help="comma-separated (sqlite,postgresql)"
    )
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per store (3)")
    p.add_argument("--endpoints", type=int, default=10_000, help="endpoints in the store")
    p.add_argument("--exchange-clients", type=int, default=16, help="concurrent clients (16)")
    p.add_argument("--exchange-seconds", type=float, default=5.0, help="per side per round (5)")
    p.add_argument("--exchange-max", type=int, default=200_000, help="request cap per side")
    p.add_argument(
        "--offsets",
        default="0,2500,5000,7500,9950",
        help="list offsets (default 0,2500,5000,7500,9950; capped to endpoints-limit)",
    )
    p.add_argument("--list-requests", type=int, default=1000, help="per offset/side/round")
    p.add_argument("--list-concurrency", type=int, default=4, help="list clients (4)")
    p.add_argument("--status-requests", type=int, default=20, help="status=active requests")
    p.add_argument("--phase-timeout", type=float, default=120.0, help="per side/phase, seconds")
    p.add_argument("--dir", default=None, help="parent directory of the SQLite temp dir (cwd)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and client cores")
    p.add_argument(
        "--profile",
        nargs="?",
        const="cprofile",
        choices=("cprofile", "py-spy"),
        default=None,
        help="per store, profile the server on each workload (not in the figures): "
        "cprofile (event-loop thread, exact) or py-spy (sampling, every thread)",
    )
    p.add_argument(
        "--py-spy-bin",
        default=shutil.which("py-spy") or "py-spy",
        help="py-spy executable for --profile py-spy",
    )
    p.add_argument(
        "--profile-dir",
        default=os.path.join(REPO, "benchmarks", "results"),
        help="where --profile writes .prof / .txt files (benchmarks/results)",
    )
    p.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--bodies", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_baseline:
        return args
    if args.rounds < 1 or args.endpoints < LIST_LIMIT or args.exchange_clients < 1:
        p.error("--rounds and --exchange-clients must be positive, --endpoints >= 50")
    if args.list_requests < 1 or args.list_concurrency < 1 or args.status_requests < 1:
        p.error("--list-requests, --list-concurrency and --status-requests must be positive")
    args.store_list = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not args.store_list or any(s not in ("sqlite", "postgresql") for s in args.store_list):
        p.error("--stores: sqlite and/or postgresql")
    try:
        offsets = [int(x) for x in args.offsets.split(",") if x.strip()]
    except ValueError:
        p.error("--offsets: comma-separated integers")
    if args.profile == "py-spy" and not shutil.which(args.py_spy_bin):
        p.error(f"--profile py-spy: {args.py_spy_bin!r} not found (give --py-spy-bin PATH)")
    args.offset_list = sorted({min(max(o, 0), args.endpoints - LIST_LIMIT) for o in offsets})
    return args


def list_query(offset: int) -> str:
    return f"limit={LIST_LIMIT}&offset={offset}"


@dataclass
class Env:
    args: argparse.Namespace
    server_cpu: int | None
    client_cpu: int | None
    workdir: str


def control_argv(url: str, profile_path: str | None = None) -> list[str]:
    head = [sys.executable]
    if profile_path:
        head += ["-m", "cProfile", "-o", profile_path]
    return [*head, "-m", "edgemq", "control", "--database-url", url, "--port", "{port}"]


async def _json_request(
    session: Any, method: str, url: str, **kw: Any
) -> tuple[int, bytes, dict[str, Any] | None]:
    async with session.request(method, url, **kw) as resp:
        raw = await resp.read()
        try:
            return resp.status, raw, json.loads(raw)
        except ValueError:
            return resp.status, raw, None


async def run_store(env: Env, store: str) -> dict[str, Any]:
    import aiohttp

    args = env.args
    workdir = tempfile.mkdtemp(prefix=f"{store}-", dir=env.workdir)
    pg = None
    pg_root: str | None = None
    store_pid: int | None = None
    servers: list[Server] = []
    try:
        if store == "sqlite":
            url = f"sqlite:///{os.path.join(workdir, 'control.db')}"
            store_info = "SQLite file (WAL, synchronous=FULL)"
        else:
            from tests.support.postgres import start_postgres

            pg_root = tempfile.mkdtemp(prefix="edgemq-bench-pg-")
            pg = await asyncio.to_thread(start_postgres, pg_root)
            url = pg.url(await asyncio.to_thread(pg.create_database))
            store_pid, version = await asyncio.to_thread(_pg_facts, pg_root, pg.bindir)
            store_info = f"{version}, fsync on, pool of ≤ 10 connections"
        seed = await populate(url, args.endpoints)
        print(
            f"[{store}] store ready in {seed['setup_s']:.1f} s: {args.endpoints} endpoints, "
            f"{len(REGIONS)} regions x {NODES_PER_REGION} nodes; {store_info}",
            flush=True,
        )

        control = start_process("control", control_argv(url), env.server_cpu, workdir)
        servers.append(control)
        timeout = aiohttp.ClientTimeout(total=60)
        limit = max(args.exchange_clients, args.list_concurrency)
        async with contextlib.AsyncExitStack() as stack:
            sessions = {}
            for side in ("baseline", "control"):
                sessions[side] = await stack.enter_async_context(
                    aiohttp.ClientSession(
                        timeout=timeout, connector=aiohttp.TCPConnector(limit=limit)
                    )
                )
            exchange_body = json.dumps({"api_key": seed["api_key"], "scope": "admin"}).encode()
            json_headers = {"Content-Type": "application/json"}
            st, raw, doc = await _json_request(
                sessions["control"],
                "POST",
                f"{control.base}/v1/token/exchange",
                data=json.dumps(
                    {"api_key": seed["api_key"], "scope": "admin", "ttl": "2h"}
                ).encode(),
                headers=json_headers,
            )
            if st != 200 or doc is None:
                raise SystemExit(f"token exchange failed: {st} {raw[:300]!r}")
            auth = {"Authorization": f"Bearer {doc['access_token']}"}

            # One answer per query, checked, and handed to the baseline as its fixed body.
            queries = [list_query(o) for o in args.offset_list] + [STATUS_QUERY]
            bodies: dict[str, str] = {}
            status_total = 0
            for q in queries:
                st, raw, doc = await _json_request(
                    sessions["control"], "GET", f"{control.base}/v1/endpoints?{q}", headers=auth
                )
                if st != 200 or doc is None or len(doc["items"]) != LIST_LIMIT:
                    raise SystemExit(f"GET /v1/endpoints?{q} failed: {st} {raw[:300]!r}")
                if q == STATUS_QUERY:
                    status_total = int(doc["total"])
                elif doc["total"] != args.endpoints:
                    raise SystemExit(f"expected {args.endpoints} endpoints, got {doc['total']}")
                bodies[q] = raw.decode()
            statuses: dict[str, int] = {}
            for item in json.loads(bodies[list_query(args.offset_list[0])])["items"]:
                statuses[item["status"]] = statuses.get(item["status"], 0) + 1
            body_sizes = {q: len(b) for q, b in bodies.items()}
            print(
                f"[{store}] list body sizes: "
                + ", ".join(f"{q}: {n} B" for q, n in body_sizes.items())
                + f"; status=active total {status_total}; first page {statuses}",
                flush=True,
            )
            spec_path = os.path.join(workdir, "baseline-bodies.json")
            spec = {"bodies": bodies, "account_id": seed["account_id"], "actor": seed["actor"]}
            await asyncio.to_thread(_write_json, spec_path, spec)
            baseline = start_process(
                "baseline",
                [
                    sys.executable,
                    SCRIPT,
                    "--serve-baseline",
                    "--port",
                    "{port}",
                    "--bodies",
                    spec_path,
                ],
                env.server_cpu,
                workdir,
            )
            servers.append(baseline)
            srv = {"baseline": baseline, "control": control}

            async def exchange(side: str, seconds: float) -> Load:
                return await run_load(
                    sessions[side],
                    side=side,
                    what="exchange",
                    method="POST",
                    url=f"{srv[side].base}/v1/token/exchange",
                    data=exchange_body,
                    headers=json_headers,
                    concurrency=args.exchange_clients,
                    count=args.exchange_max,
                    duration_s=seconds,
                    server_pid=srv[side].proc.pid,
                    store_pid=store_pid if side == "control" else None,
                )

            async def listing(side: str, query: str, n: int, conc: int) -> Load:
                return await run_load(
                    sessions[side],
                    side=side,
                    what=query,
                    method="GET",
                    url=f"{srv[side].base}/v1/endpoints?{query}",
                    data=None,
                    headers=auth,
                    concurrency=conc,
                    count=n,
                    duration_s=args.phase_timeout,
                    server_pid=srv[side].proc.pid,
                    store_pid=store_pid if side == "control" else None,
                )

            # Warm-up (not measured): connections, caches, both sides.
            for side in ("baseline", "control"):
                await exchange(side, 1.0)
                for q in queries[:-1]:
                    await listing(side, q, 50, args.list_concurrency)
                await listing(side, STATUS_QUERY, 2, 1)

            rounds: list[dict[str, Any]] = []
            for r in range(args.rounds):
                order = ("baseline", "control") if r % 2 == 0 else ("control", "baseline")
                print(f"[{store}] round {r + 1}/{args.rounds} ({' first, '.join(order)} second)")
                rnd: dict[str, Any] = {"exchange": {}, "list": {}, "status": {}}
                loads: dict[str, Load] = {}
                for side in order:
                    loads[side] = await exchange(side, args.exchange_seconds)
                ratio = loads["control"].rate / loads["baseline"].rate
                print(f"  exchange ({args.exchange_clients} clients)  ratio {ratio:.2f}")
                for side in ("baseline", "control"):
                    print("    " + loads[side].line())
                    rnd["exchange"][side] = loads[side]
                rnd["exchange"]["ratio"] = ratio
                for q in [*queries[:-1], STATUS_QUERY]:
                    is_status = q == STATUS_QUERY
                    n = args.status_requests if is_status else args.list_requests
                    conc = 1 if is_status else args.list_concurrency
                    loads = {}
                    for side in order:
                        loads[side] = await listing(side, q, n, conc)
                    b, c = loads["baseline"], loads["control"]
                    entry = {
                        "baseline": b,
                        "control": c,
                        "p50_ratio": c.p(50) / b.p(50),
                        "p99_ratio": c.p(99) / b.p(99),
                        "rate_ratio": c.rate / b.rate,
                    }
                    print(
                        f"  GET ?{q} (concurrency {conc})  p50 x{entry['p50_ratio']:.1f} "
                        f"p99 x{entry['p99_ratio']:.1f} req/s x{entry['rate_ratio']:.2f}"
                    )
                    print("    " + b.line())
                    print("    " + c.line(), flush=True)
                    (rnd["status"] if is_status else rnd["list"])[q] = entry
                rounds.append(rnd)

            profiles: dict[str, str] = {}
            if args.profile is not None:
                profiles = await profile_store(env, store, url, exchange_body, auth)
    finally:
        for s in reversed(servers):
            s.stop()
        if pg is not None:
            await asyncio.to_thread(pg.stop)  # also removes its directory
        elif pg_root is not None:
            shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)

    return summarize(store, args, rounds, body_sizes, status_total, store_info, profiles)


def summarize(
    store: str,
    args: argparse.Namespace,
    rounds: list[dict[str, Any]],
    body_sizes: dict[str, int],
    status_total: int,
    store_info: str,
    profiles: dict[str, str],
) -> dict[str, Any]:
    def pooled(loads: list[Load]) -> dict[str, float]:
        lat = sorted(x for ld in loads for x in ld.lat_s)
        return {
            "req_s_median": median([ld.rate for ld in loads]),
            "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3,
            "n": len(lat),
            "server_cpu_ms_per_req": median(
                [ld.server_cpu_s / max(ld.requests, 1) * 1e3 for ld in loads]
            ),
            "errors": sum(sum(ld.errors.values()) for ld in loads),
            "server_cores_median": median([ld.server_cpu_s / ld.elapsed_s for ld in loads]),
            "store_cpu_ms_per_req": median(
                [(ld.store_cpu_s or 0.0) / max(ld.requests, 1) * 1e3 for ld in loads]
            ),
            "other_cores_max": max(ld.other_cpu_s / ld.elapsed_s for ld in loads),
        }

    ex: dict[str, Any] = {side: pooled([r["exchange"][side] for r in rounds]) for side in SIDES}
    ex["ratio"] = median([r["exchange"]["ratio"] for r in rounds])
    # Server CPU per request is robust to other load on the machine: 1000 / (ms per
    # request) is what one core would sustain if the server got all of it.
    ex["cpu_ratio"] = (
        ex["baseline"]["server_cpu_ms_per_req"] / ex["control"]["server_cpu_ms_per_req"]
    )
    lists: dict[str, Any] = {}
    for q in [list_query(o) for o in args.offset_list] + [STATUS_QUERY]:
        part = "status" if q == STATUS_QUERY else "list"
        entries = [r[part][q] for r in rounds]
        lists[q] = {
            "baseline": pooled([e["baseline"] for e in entries]),
            "control": pooled([e["control"] for e in entries]),
            "p50_ratio": median([e["p50_ratio"] for e in entries]),
            "p99_ratio": median([e["p99_ratio"] for e in entries]),
            "rate_ratio": median([e["rate_ratio"] for e in entries]),
            "body_bytes": body_sizes[q],
        }
    plain = [q for q in lists if q != STATUS_QUERY]
    worst = max(plain, key=lambda q: lists[q]["control"]["p99_ms"])
    exchange_ok = ex["control"]["req_s_median"] >= EXCHANGE_TARGET_S
    list_ok = lists[worst]["control"]["p99_ms"] <= LIST_P99_TARGET_MS
    errors = ex["control"]["errors"] + sum(v["control"]["errors"] for v in lists.values())
    parts = [ex["baseline"], ex["control"]] + [
        v[s] for v in lists.values() for s in v if s in SIDES
    ]
    background = max(x["other_cores_max"] for x in parts)

    print(f"[{store}] medians / pooled over {args.rounds} rounds:")
    print(
        f"  exchange: control {ex['control']['req_s_median']:.0f}/s "
        f"p50 {ex['control']['p50_ms']:.1f} ms p99 {ex['control']['p99_ms']:.1f} ms "
        f"({ex['control']['server_cpu_ms_per_req']:.2f} ms server CPU/req); baseline "
        f"{ex['baseline']['req_s_median']:.0f}/s ({ex['baseline']['server_cpu_ms_per_req']:.2f} "
        f"ms CPU/req); ratio {ex['ratio']:.2f}; CPU-bound capacity of one core "
        f"{1000 / ex['control']['server_cpu_ms_per_req']:.0f}/s vs "
        f"{1000 / ex['baseline']['server_cpu_ms_per_req']:.0f}/s (ratio {ex['cpu_ratio']:.2f})"
    )
    for q, v in lists.items():
        c, b = v["control"], v["baseline"]
        print(
            f"  ?{q:26s} control p50 {c['p50_ms']:7.2f} p99 {c['p99_ms']:7.2f} ms "
            f"{c['req_s_median']:6.0f}/s {c['server_cpu_ms_per_req']:6.2f} ms CPU/req"
            + (f" (+pg {c['store_cpu_ms_per_req']:.2f})" if store == "postgresql" else "")
            + " | "
            f"baseline p50 {b['p50_ms']:5.2f} p99 {b['p99_ms']:5.2f} ms "
            f"{b['req_s_median']:6.0f}/s | x{v['p50_ratio']:.1f} / x{v['p99_ratio']:.1f}"
        )
    st = lists[STATUS_QUERY]
    summary = (
        f"control_api {store}: exchange {ex['control']['req_s_median']:.0f}/s = "
        f"{ex['ratio']:.2f} of baseline {ex['baseline']['req_s_median']:.0f}/s "
        f"[{'met' if exchange_ok else 'MISSED'} >=500/s] "
        f"({ex['control']['server_cpu_ms_per_req']:.2f} ms CPU/req); list limit=50 worst p99 "
        f"{lists[worst]['control']['p99_ms']:.1f} ms at offset {worst.rsplit('=', 1)[1]} "
        f"(p50 {lists[worst]['control']['p50_ms']:.1f} ms, x{lists[worst]['p99_ratio']:.1f} "
        f"baseline p99, {lists[worst]['control']['server_cpu_ms_per_req']:.1f} ms CPU/req"
        + (
            f" + postgres {lists[worst]['control']['store_cpu_ms_per_req']:.1f}"
            if store == "postgresql"
            else ""
        )
        + ") "
        f"[{'met' if list_ok else 'MISSED'} <=20 ms]; status=active p50 "
        f"{st['control']['p50_ms']:.0f} ms p99 {st['control']['p99_ms']:.0f} ms "
        f"(x{st['p50_ratio']:.0f} baseline, {st['control']['server_cpu_ms_per_req']:.0f} ms CPU/req)"
    )
    if errors:
        summary += f"; {errors} ERRORS"
    if background >= 0.2:
        summary += f"; WARNING other processes used up to {background:.1f} cores"
    return {
        "store": store,
        "store_info": store_info,
        "status_active_total": status_total,
        "exchange": ex,
        "list": lists,
        "worst_list_query": worst,
        "background_cores_max": background,
        "targets": {
            "exchange_req_s": EXCHANGE_TARGET_S,
            "exchange_met": exchange_ok,
            "list_p99_ms": LIST_P99_TARGET_MS,
            "list_met": list_ok,
        },
        "rounds": [
            {
                "exchange": {
                    "ratio": r["exchange"]["ratio"],
                    **{s: r["exchange"][s].summary() for s in ("baseline", "control")},
                },
                **{
                    part: {
                        q: {
                            **{k: v for k, v in e.items() if k not in ("baseline", "control")},
                            "baseline": e["baseline"].summary(),
                            "control": e["control"].summary(),
                        }
                        for q, e in r[part].items()
                    }
                    for part in ("list", "status")
                },
            }
            for r in rounds
        ],
        "profiles": profiles,
        "summary": summary,
    }


def _frame_name(frame: str) -> str:
    """`func (path/file.py:123)` → `func (path/file.py)`: one name per function."""
    head, _, rest = frame.rpartition(" (")
    return f"{head} ({rest.rsplit(':', 1)[0]})" if head else frame


def summarize_py_spy(path: str, top: int = 25) -> str:
    """Samples per thread, the hottest frames (self) and functions (inclusive)."""
    threads: dict[str, int] = {}
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n_text = line.rstrip("\n").rpartition(" ")
            if not stack or not n_text.isdigit():
                continue
            n = int(n_text)
            frames = stack.split(";")
            total += n
            thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
            threads[thread] = threads.get(thread, 0) + n
            leaf = frames[-1]
            own[leaf] = own.get(leaf, 0) + n
            for name in {_frame_name(fr) for fr in frames[1:]}:
                incl[name] = incl.get(name, 0) + n
    if not total:
        return "(no samples)\n"
    out = [f"{total} samples (only when a thread was running; idle threads not sampled)"]
    out.append("per thread: " + ", ".join(f"{t} {c / total:.0%}" for t, c in threads.items()))
    out.append(f"top {top} frames by own samples:")
    for fr, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {c / total:6.1%}  {fr}")
    boring = ("<module>", "run_module", "_run_code", "run_until_complete", "run_forever")
    out.append(f"top {top} functions by inclusive samples:")
    ranked = [
        kv for kv in sorted(incl.items(), key=lambda kv: -kv[1]) if not kv[0].startswith(boring)
    ]
    for fr, c in ranked[:top]:
        out.append(f"  {c / total:6.1%}  {fr}")
    return "\n".join(out) + "\n"


def start_py_spy(binary: str, out_path: str, pid: int) -> subprocess.Popen[bytes]:
    argv = [binary, "record", "--threads", "--nonblocking", "-r", "250", "-f", "raw"]
    return subprocess.Popen(
        [*argv, "-o", out_path, "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    """SIGINT makes py-spy write its output."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(10)


async def profile_store(
    env: Env,
    store: str,
    url: str,
    exchange_body: bytes,
    auth: dict[str, str],
) -> dict[str, str]:
    """One profiled control process per workload; returns the printed summaries."""
    import aiohttp

    args = env.args
    os.makedirs(args.profile_dir, exist_ok=True)
    deepest = list_query(args.offset_list[-1])
    work = {
        "exchange": ("POST", "/v1/token/exchange", exchange_body, args.exchange_clients, 10**6),
        "list": ("GET", f"/v1/endpoints?{deepest}", None, args.list_concurrency, 2000),
        "status": ("GET", f"/v1/endpoints?{STATUS_QUERY}", None, 1, args.status_requests),
    }
    out: dict[str, str] = {}
    for name, (method, path, data, conc, count) in work.items():
        stem = os.path.join(args.profile_dir, f"control_api-{store}-{name}")
        use_spy = args.profile == "py-spy"
        prof_path = stem + (".py-spy.txt" if use_spy else ".prof")
        argv = control_argv(url, None if use_spy else prof_path)
        server = start_process(f"profiled-{name}", argv, env.server_cpu, env.workdir)
        spy: subprocess.Popen[bytes] | None = None
        try:
            if use_spy:
                spy = start_py_spy(args.py_spy_bin, prof_path, server.proc.pid)
                await asyncio.sleep(1.0)  # attached
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=conc),
                timeout=aiohttp.ClientTimeout(total=60),
            ) as session:
                headers = {"Content-Type": "application/json"} if data else auth
                load = await run_load(
                    session,
                    side="profiled",
                    what=name,
                    method=method,
                    url=server.base + path,
                    data=data,
                    headers=headers,
                    concurrency=conc,
                    count=count,
                    duration_s=args.exchange_seconds if name == "exchange" else args.phase_timeout,
                    server_pid=server.proc.pid,
                    store_pid=None,
                )
        finally:
            if spy is not None:
                stop_py_spy(spy)
            server.stop()
        if use_spy:
            text = await asyncio.to_thread(summarize_py_spy, prof_path)
        else:
            buf = io.StringIO()
            stats = pstats.Stats(prof_path, stream=buf).strip_dirs()
            stats.sort_stats("tottime").print_stats(22)
            stats.sort_stats("cumulative").print_stats(30)
            text = buf.getvalue()
        out[name] = text
        print(f"\n[{store}] profiled control, {name} (not in the figures): {load.line()}")
        print(f"  {prof_path}")
        print(text)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_baseline:
        return serve_baseline(args.port, args.bodies)

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = client_cpu = None
    if not args.no_pin and len(cpus) >= 2 and shutil.which("taskset"):
        server_cpu, client_cpu = cpus[0], cpus[1]
        os.sched_setaffinity(0, {client_cpu})  # before any thread or child process
        pin = f"control plane and baseline on CPU {server_cpu} (taskset -c {server_cpu}), "
        pin += f"load generator and PostgreSQL on CPU {client_cpu}"
    else:
        pin = "not pinned (--no-pin, one CPU, or no taskset)"
    if "postgresql" in args.store_list:
        from tests.support.postgres import pg_bin

        if pg_bin() is None:
            print("note: PostgreSQL binaries not found; skipping postgresql", file=sys.stderr)
            args.store_list = [s for s in args.store_list if s != "postgresql"]
            if not args.store_list:
                return 1
    loop_factory = None
    try:
        import uvloop
    except ImportError:
        loop_name = "asyncio"
    else:
        loop_factory, loop_name = uvloop.new_event_loop, "uvloop"

    print(
        f"control_api setup: {args.endpoints} endpoints, {args.rounds} rounds; exchange "
        f"{args.exchange_clients} clients x {args.exchange_seconds} s; list limit={LIST_LIMIT} "
        f"offsets {args.offset_list}, {args.list_requests} req at concurrency "
        f"{args.list_concurrency}; status=active {args.status_requests} req at concurrency 1; "
        f"{pin}; client loop {loop_name}",
        flush=True,
    )
    parent = os.path.abspath(args.dir or os.getcwd())
    workdir = tempfile.mkdtemp(prefix=".control-api-", dir=parent)
    env = Env(args, server_cpu, client_cpu, workdir)
    results: dict[str, Any] = {}
    try:
        for store in args.store_list:
            try:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    results[store] = runner.run(run_store(env, store))
            except Exception as err:  # e.g. PostgreSQL did not start: the other store still runs
                traceback.print_exc()
                results[store] = {"store": store, "error": repr(err), "summary": ""}
                results[store]["summary"] = f"control_api {store}: FAILED: {err!r}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    doc = {
        "benchmark": "control_api",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "config": {
            k: v
            for k, v in vars(args).items()
            if k not in ("serve_baseline", "port", "bodies", "store_list")
        }
        | {
            "pinning": pin,
            "client_loop": loop_name,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "stores": results,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    for store in args.store_list:
        print(results[store]["summary"])
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
