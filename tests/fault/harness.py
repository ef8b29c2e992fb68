"""The fault-test harness (issue #7): the control plane, an ingest node and moto's S3
server as real processes on 127.0.0.1, a fault proxy in front of S3 and one in front
of the control plane, a ledger client writing over HTTP, a drain step, the reconciler
and one report line per scenario.

    async with Harness(tmp_path, moto, "S3-01", seed=seed, fast_retries=True) as h:
        await h.start_node()
        async with h.traffic() as t:
            h.s3_proxy.random_schedule(seed, {"error_503": 0.2}, when=h.s3_puts_only)
            await t.more_acked(200)
        await h.drain()                      # faults off; WALs, outbox empty; all reported
        result = await h.reconcile()
        h.report(result, faults=...)         # the REPORT line: every invariant's count
        h.assert_clean(result)               # lost_acked, phantoms, ... 0; no dup commit rows

Topology (every arrow is real HTTP on 127.0.0.1):

    writers ──► node (python -m edgemq node) ──► s3_proxy ──► moto_server (S3, STS, IAM)
                  └────────────────────────────► cp_proxy ──► control (python -m edgemq control)
    the test's own API calls ──────────────────────────────► control (direct, no faults)

Set up once per scenario: `edgemq admin` creates the account, an ingest+admin key and a
node key in a fresh SQLite store; the control plane runs on a fixed port (restarts land
on the same one); a bucket and a role trusting the destination's external id are made
in moto; the destination (endpoint_url = the S3 proxy) is validated; one endpoint in
region `loc` with small segments (128 KiB or 1 s, whichever first) and, unless
`views=False`, a bound view. The node's options travel through EDGEMQ_* (see
tests/support/processes.py; `fast_retries=True` shortens its delivery retry timings,
which the CLI does not expose).

Every request is classified ok / fail / indeterminate in a `Ledger`
(tests/support/ledger.py). Writers pace themselves (`pace_s` after a 200, Retry-After
capped at 1 s after a 503, 20 ms after anything else): that is load shaping, not waiting
for something to settle. Every wait polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import pytest

from tests.support.fault_proxy import FaultProxy
from tests.support.ledger import (
    FAIL,
    OK,
    Ledger,
    Reconciliation,
    Record,
    S3Reader,
    classify,
    load_manifests,
    reconcile_async,
)
from tests.support.moto_server import ACCOUNT, MotoServer
from tests.support.postgres import free_port
from tests.support.processes import ControlChild, NodeChild, admin
from tests.support.report import report
from tests.support.stack import ControlPlane, wait_for

PREFIX = "lake/edgemq"
REGION = "loc"
SEGMENT_BYTES = 128 * 1024
CONTROL_SEGMENT_BYTES_MIN = 16 * 1024
BATCH_RECORDS = 20
PACE_S = 0.01
"""A writer's pause after a 200 (about 100 requests a second each on an idle machine)."""
PAUSE_AFTER_FAILURE_S = 0.02
RETRY_AFTER_CAP_S = 1.0
REQUEST_TIMEOUT_S = 10.0
FAST_RETRIES: dict[str, Any] = {
    "delivery": {"retry_base_s": 0.1, "retry_cap_s": 1.0, "permanent_retry_s": 1.0},
    "node": {"control_timeout_s": 3.0},
}
"""Overrides for `fast_retries=True`: backoff 0.1 s..1 s (store and commit reports), a
permanent store error retried every second, control-plane calls cut after 3 s."""
VIEW = {
    "columns": [
        {"name": "device", "type": "VARCHAR", "path": "$.device", "required": True},
        {"name": "temp", "type": "DOUBLE", "path": "$.temp", "cast_failures": "dlq"},
    ],
    "filters": [{"condition": "temp < 100"}],
}
LONG_TESTS = os.environ.get("EDGEMQ_LONG_TESTS") == "1"
long_tier = pytest.mark.skipif(
    not LONG_TESTS,
    reason="long tier (hundreds of kill cycles, soak): set EDGEMQ_LONG_TESTS=1 to run it",
)
REPORTS: list[dict[str, Any]] = []
"""Every report line of this pytest session (conftest.py prints them at the end)."""


def scenario_seed() -> int:
    """EDGEMQ_TEST_SEED, else a fresh one; printed so a failure can be replayed."""
    seed = int(os.environ.get("EDGEMQ_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed} (replay with EDGEMQ_TEST_SEED={seed})")
    return seed


def percentile(values: Iterable[float], pct: float) -> float | None:
    """Nearest-rank percentile (None for no values), rounded to milliseconds."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil
    return round(ordered[int(rank) - 1], 3)


def _readings(n: int) -> dict[str, Any]:
    return {"device": f"d{n % 7}", "temp": n % 120}


# ------------------------------------------------------------------ the ledger client
@dataclass(frozen=True, slots=True)
class Outcome:
    """One ingest request as the client saw it."""

    started: float  # loop time
    ended: float
    records: int
    outcome: str  # ok / fail / indeterminate
    status: int | None
    code: str | None = None  # the JSON error code of a refusal
    reason: str | None = None  # its `reason` (503: draining, backlog, ...)
    retry_after: str | None = None
    error: str | None = None  # the exception when no answer arrived


class IngestClient:
    """Posts NDJSON batches to one endpoint and notes every outcome in the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        session: aiohttp.ClientSession,
        url: str,
        api_key: str,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.ledger = ledger
        self.session = session
        self.url = url
        self.api_key = api_key
        self.timeout_s = timeout_s

    async def post(self, batch: list[Record]) -> Outcome:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self.session.post(
                self.url,
                data=Ledger.ndjson(batch),
                headers={"X-API-Key": self.api_key, "Content-Type": "application/x-ndjson"},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as r:
                text = await r.text()
                status, retry_after = r.status, r.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            outcome = self.ledger.note(batch, None, err)
            return Outcome(
                started,
                loop.time(),
                len(batch),
                outcome,
                None,
                error=f"{type(err).__name__}: {err}",
            )
        code = reason = None
        if status >= 400:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                error = json.loads(text)["error"]
                code, reason = error.get("code"), error.get("reason")
        outcome = self.ledger.note(batch, status)
        assert outcome == classify(status)
        return Outcome(started, loop.time(), len(batch), outcome, status, code, reason, retry_after)


class Traffic:
    """Writers posting batches until stopped; waits on what they see, with deadlines."""

    def __init__(
        self,
        client: IngestClient,
        *,
        writers: int = 2,
        batch_records: int = BATCH_RECORDS,
        pace_s: float = PACE_S,
        make: Callable[[int], Mapping[str, Any]] = _readings,
    ) -> None:
        self.client = client
        self.writers = writers
        self.batch_records = batch_records
        self.pace_s = pace_s
        self.make = make
        self.outcomes: list[Outcome] = []
        self.acked = 0
        self.last_ok = float("-inf")
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Traffic:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        assert not self._tasks, "already started"
        self._stop.clear()
        self._tasks = [
            asyncio.create_task(self._write(), name=f"writer-{i}") for i in range(self.writers)
        ]

    async def stop(self) -> None:
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*tasks)

    async def _write(self) -> None:
        ledger = self.client.ledger
        while not self._stop.is_set():
            out = await self.client.post(ledger.records(self.batch_records, self.make))
            self.outcomes.append(out)
            if out.outcome == OK:
                self.acked += 1
                self.last_ok = max(self.last_ok, out.ended)
            self._changed.set()
            if out.outcome == OK:
                pause = self.pace_s
            elif out.status == 503 and out.retry_after:
                pause = min(float(out.retry_after), RETRY_AFTER_CAP_S)
            else:
                pause = PAUSE_AFTER_FAILURE_S
            if pause:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._stop.wait()

    async def until(
        self, predicate: Callable[[], bool], *, timeout_s: float = 60.0, what: str
    ) -> None:
        """Wait until `predicate()` holds, re-checked whenever a request finishes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate():
            crashed = [t for t in self._tasks if t.done()]
            if crashed:
                crashed[0].result()  # a writer's own bug surfaces here
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout_s}s waiting for {what}; "
                    f"statuses so far {dict(self.statuses())}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._changed.wait()

    async def more_acked(self, n: int, *, timeout_s: float = 60.0) -> None:
        target = self.acked + n
        await self.until(
            lambda: self.acked >= target, timeout_s=timeout_s, what=f"{n} more acknowledgements"
        )

    async def ok_after(self, t0: float, *, timeout_s: float = 60.0) -> float:
        """Seconds from loop time `t0` to the first 200 that ended after it."""
        await self.until(
            lambda: self.last_ok > t0, timeout_s=timeout_s, what="a 200 after the restart"
        )
        return min(o.ended for o in self.outcomes if o.outcome == OK and o.ended > t0) - t0

    def count(self, predicate: Callable[[Outcome], bool]) -> int:
        return sum(1 for o in self.outcomes if predicate(o))

    async def refusals(self, reason: str, n: int, *, timeout_s: float = 60.0) -> None:
        """Wait until `n` requests were refused with 503 `reason`."""
        await self.until(
            lambda: self.count(lambda o: o.status == 503 and o.reason == reason) >= n,
            timeout_s=timeout_s,
            what=f"{n} refusals with reason {reason!r}",
        )

    def statuses(self) -> collections.Counter[str]:
        return collections.Counter(
            str(o.status) if o.status is not None else (o.error or "?").split(":")[0]
            for o in self.outcomes
        )


# ------------------------------------------------------------------------ the harness
@dataclass
class Lake:
    bucket: str
    destination: dict[str, Any]
    endpoint: dict[str, Any]

    @property
    def endpoint_id(self) -> str:
        return str(self.endpoint["id"])


def _trust(principal: str, external_id: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": principal},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
                }
            ],
        }
    )


def _name(kind: str) -> str:
    return f"edgemq-{kind}-{uuid.uuid4().hex[:12]}"


class Harness:
    """One scenario's processes, proxies, ledger and figures (an async context manager:
    everything it started is killed on the way out, whatever happened)."""

    def __init__(
        self,
        tmp: Path,
        moto: MotoServer,
        scenario: str,
        *,
        seed: int | None = None,
        fast_retries: bool = False,
        views: bool = True,
        segment_bytes: int = SEGMENT_BYTES,
        unshipped_bytes_max: int | None = None,
        drain_deadline_s: float = 20.0,
    ) -> None:
        self.tmp = tmp
        self.moto = moto
        self.scenario = scenario
        self.seed = seed
        self.fast_retries = fast_retries
        self.views = views
        self.segment_bytes = segment_bytes
        self.unshipped_bytes_max = unshipped_bytes_max
        self.drain_deadline_s = drain_deadline_s
        self.ledger = Ledger()
        self.started_at = time.monotonic()
        self.session: aiohttp.ClientSession | None = None
        self.control: ControlChild | None = None
        self.node: NodeChild | None = None
        self.cp_proxy: FaultProxy | None = None
        self.s3_proxy: FaultProxy | None = None
        self.api: ControlPlane
        self.lake: Lake
        self.client: IngestClient
        self.commit_rows: list[dict[str, Any]] = []
        self.head_gaps = 0
        self._traffic: list[Traffic] = []

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Harness:
        try:
            await self._setup()
        except BaseException:
            await self._cleanup()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cleanup()
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            print(self.logs())

    async def _setup(self) -> None:
        self.session = aiohttp.ClientSession()
        database_url = f"sqlite:///{self.tmp / 'control.db'}"
        account = await admin(database_url, "create-account", "acme")
        key = await admin(
            database_url,
            "create-key",
            "--account",
            account["id"],
            "--scopes",
            "ingest,metrics,admin",
        )
        node_key = await admin(database_url, "create-node-key", "fault-nodes")
        self.control = ControlChild(
            log_path=self.tmp / "control.log",
            database_url=database_url,
            port=free_port(),
            overrides={"control": {"segment_bytes_min": CONTROL_SEGMENT_BYTES_MIN}},
        )
        self.control.start()
        await self.control.wait_ready(self.session)
        self.cp_proxy = FaultProxy("127.0.0.1", self.control.port)
        await self.cp_proxy.start()
        moto = urllib.parse.urlsplit(self.moto.url)
        assert moto.hostname is not None
        assert moto.port is not None
        self.s3_proxy = FaultProxy(moto.hostname, moto.port)
        await self.s3_proxy.start()
        self.api = ControlPlane(
            self.control.url,
            database_url,
            self.session,
            account["id"],
            key["api_key"],
            node_key["api_key"],
        )
        self.lake = await self._lake()
        self.node = NodeChild(
            data_dir=self.tmp / "node",
            control_url=self.cp_proxy.url,
            node_key=self.api.node_key,
            http_port=free_port(),
            drain_deadline_s=self.drain_deadline_s,
            unshipped_bytes_max=self.unshipped_bytes_max,
            overrides=FAST_RETRIES if self.fast_retries else None,
        )
        self.client = IngestClient(
            self.ledger,
            self.session,
            f"{self.node.url}/ingest/{self.lake.endpoint_id}",
            self.api.api_key,
        )

    async def _lake(self) -> Lake:
        """Bucket, role, validated destination (through the S3 proxy), endpoint, view."""
        assert self.s3_proxy is not None
        bucket = _name("bucket")
        s3, iam = self.moto.client("s3"), self.moto.client("iam")
        await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
        role = _name("role")
        role_arn = f"arn:aws:iam::{ACCOUNT}:role/{role}"
        dest = await self.api.call(
            "POST",
            "/v1/destinations",
            {
                "name": _name("dest"),
                "bucket": bucket,
                "prefix": PREFIX,
                "region": "us-east-1",
                "role_arn": role_arn,
                "endpoint_url": self.s3_proxy.url,
                "path_style": True,
            },
        )
        external_id = (await self.api.call("GET", f"/v1/destinations/{dest['id']}"))["external_id"]
        await asyncio.to_thread(
            iam.create_role,
            RoleName=role,
            AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:root", external_id),
        )
        validated = await self.api.call("POST", f"/v1/destinations/{dest['id']}/validate")
        assert (validated["status"], validated["last_error"]) == ("valid", None), validated
        formats = (
            ["segments", "parquet", "parquet_views"] if self.views else ["segments", "parquet"]
        )
        endpoint = await self.api.endpoint(
            dest["id"],
            region=REGION,
            output_formats=formats,
            segment_bytes=self.segment_bytes,
            segment_max_age_seconds=1,
        )
        if self.views:
            view = await self.api.published_view(_name("view").replace("-", "_"), VIEW)
            await self.api.bind(endpoint["id"], view["id"])
        return Lake(bucket, dict(dest), endpoint)

    async def _cleanup(self) -> None:
        for traffic in self._traffic:
            with contextlib.suppress(Exception):
                await traffic.stop()
        for child in (self.node, self.control):
            if child is not None:
                await child.close()
        for proxy in (self.s3_proxy, self.cp_proxy):
            if proxy is not None:
                await proxy.stop()
        if self.session is not None:
            await self.session.close()

    # -------------------------------------------------------------------- the node
    async def start_node(self, *, failpoints: str | None = None, ready: bool = True) -> float:
        """Start the node (failpoints for this start only); seconds until /readyz."""
        assert self.node is not None
        assert self.session is not None
        started = time.monotonic()
        self.node.start(failpoints=failpoints, failpoints_seed=self.seed)
        if ready:
            await self.node.wait_ready(self.session)
        return time.monotonic() - started

    def traffic(self, **kwargs: Any) -> Traffic:
        traffic = Traffic(self.client, **kwargs)
        self._traffic.append(traffic)
        return traffic

    @property
    def data_dir(self) -> Path:
        assert self.node is not None
        return self.node.data_dir

    def held(self) -> list[str]:
        """What the node still holds (blocking): sealed segments, open segments with
        data, queued commit reports."""
        held = []
        wal_root = self.data_dir / "wal"
        for wal_dir in sorted(wal_root.iterdir()) if wal_root.is_dir() else []:
            for path in sorted(wal_dir.iterdir()):
                if path.name.endswith(".wal") or (
                    path.name.endswith(".wal.open") and path.stat().st_size > 0
                ):
                    held.append(str(path.relative_to(self.data_dir)))
        outbox = self.data_dir / "outbox"
        for path in sorted(outbox.iterdir()) if outbox.is_dir() else []:
            held.append(str(path.relative_to(self.data_dir)))
        return held

    def wal_bytes(self) -> int:
        """Bytes of the endpoint's segment files on disk (blocking)."""
        wal_dir = self.data_dir / "wal" / self.lake.endpoint_id
        if not wal_dir.is_dir():
            return 0
        return sum(p.stat().st_size for p in wal_dir.iterdir() if ".wal" in p.name)

    def sealed_segments(self) -> list[int]:
        wal_dir = self.data_dir / "wal" / self.lake.endpoint_id
        if not wal_dir.is_dir():
            return []
        return sorted(int(p.name[4:12]) for p in wal_dir.iterdir() if p.name.endswith(".wal"))

    def queued_reports(self) -> set[str]:
        """File names of the commit reports waiting in the outbox (blocking)."""
        outbox = self.data_dir / "outbox"
        return {n for n in os.listdir(outbox) if n.endswith(".json")} if outbox.is_dir() else set()

    def reports_without_segment(self) -> tuple[set[str], list[str]]:
        """(queued reports, the ones whose local segment is already gone) — blocking.
        The WAL directory is listed before the outbox: a report acknowledged in between
        loses its segment and then its file, never the other way round."""
        wal_dir = self.data_dir / "wal" / self.lake.endpoint_id
        names = set(os.listdir(wal_dir)) if wal_dir.is_dir() else set()
        reports = self.queued_reports()
        missing = []
        for name in sorted(reports):
            _, _, seq = name.removesuffix(".json").split("~")
            if f"seg-{int(seq):08d}.wal" not in names:
                missing.append(name)
        return reports, missing

    def node_id(self) -> str:
        return (self.data_dir / "node_id").read_text().strip()

    def db_commit_dups(self) -> int:
        """Rows beyond the first per (endpoint, node, epoch, seq) in the control plane's
        SQLite `commits` table, read directly (blocking)."""
        path = self.api.database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM commits "
                "GROUP BY endpoint_id, node_id, epoch, seq)"
            ).fetchone()
        return int(row[0])

    async def endpoint_status(self) -> str:
        got = await self.api.call("GET", f"/v1/endpoints/{self.lake.endpoint_id}")
        return str(got["status"])

    async def wait_status(self, status: str, *, timeout_s: float = 60.0) -> float:
        """Seconds until GET /v1/endpoints/{id} shows `status`."""
        started = time.monotonic()

        async def shows() -> bool:
            return await self.endpoint_status() == status

        await wait_for(shows, timeout_s=timeout_s, what=f"the endpoint to be {status}")
        return time.monotonic() - started

    # ---------------------------------------------------------------- the outside
    def s3_puts(self) -> collections.Counter[str]:
        """Object keys PUT into this scenario's bucket, with counts (moto's recorder)."""
        puts: collections.Counter[str] = collections.Counter()
        for r in self.moto.requests():
            if r.method == "PUT" and r.path.startswith(f"/{self.lake.bucket}/"):
                key = urllib.parse.unquote(r.path)[len(self.lake.bucket) + 2 :]
                puts[key] += 1
        return puts

    def node_assume_roles(self) -> int:
        """AssumeRole calls the node made for this scenario's role (moto's recorder)."""
        role_arn = self.lake.destination["role_arn"]
        return sum(
            1
            for r in self.moto.requests()
            if r.method == "POST"
            and r.body.startswith(b"Action=AssumeRole")
            and r.form().get("RoleSessionName") == "edgemq-node"
            and r.form().get("RoleArn") == role_arn
        )

    def is_bucket_put(self, method: str, target: str) -> bool:
        return method == "PUT" and target.startswith(f"/{self.lake.bucket}/{PREFIX}/")

    def bucket_put(self, part: str) -> Callable[[str, str], bool]:
        """A proxy predicate: PUTs of this bucket's objects whose key has `part`."""

        def when(method: str, target: str) -> bool:
            return self.is_bucket_put(method, target) and part in target

        return when

    @staticmethod
    def is_commit_report(method: str, target: str) -> bool:
        return method == "POST" and target.startswith("/v1/nodes/") and "/commits" in target

    @staticmethod
    def injected(proxy: FaultProxy | None, *actions: str, path: str = "") -> int:
        """Requests the proxy answered with one of `actions` (a prefix match)."""
        assert proxy is not None
        return sum(1 for e in proxy.log if e.action.startswith(actions) and path in e.path)

    def node_log_count(self, needle: str) -> int:
        assert self.node is not None
        return self.node.log_count(needle)

    def retries_seen(self) -> dict[str, int]:
        """Retries the node logged: store attempts and commit reports."""
        return {
            "store_retries": self.node_log_count("(retry in "),
            "report_retries": self.node_log_count("commit report failed"),
        }

    def logs(self) -> str:
        parts = []
        for child in (self.node, self.control):
            if child is not None:
                parts.append(f"--- {child.name} log ({child.log_path}):\n{child.log_tail()}")
        return "\n".join(parts)

    # --------------------------------------------------------------------- drain
    async def drain(self, *, timeout_s: float = 120.0) -> float:
        """Faults off, control plane and node up, then wait until every WAL directory
        holds no data, the outbox is empty and every manifest has its commit row.
        Seconds it took."""
        assert self.s3_proxy is not None
        assert self.cp_proxy is not None
        assert self.control is not None
        assert self.node is not None
        assert self.session is not None
        self.s3_proxy.clear()
        self.cp_proxy.clear()
        if self.control.paused:
            self.control.resume()
        if not self.control.running:
            self.control.start()
            await self.control.wait_ready(self.session)
        if not self.node.running:
            await self.start_node()
        started = time.monotonic()

        async def nothing_held() -> bool:
            assert self.node is not None
            if not self.node.running:
                raise AssertionError(f"the node died while draining:\n{self.logs()}")
            return not await asyncio.to_thread(self.held)

        try:
            await wait_for(nothing_held, timeout_s=timeout_s, what="the node to deliver all")
        except AssertionError as err:
            held = await asyncio.to_thread(self.held)
            raise AssertionError(f"{err}; still held: {held[:20]}\n{self.logs()}") from None
        await wait_for(
            self._manifests_reported, timeout_s=30, what="a commit row for every manifest"
        )
        return time.monotonic() - started

    def reader(self) -> S3Reader:
        return S3Reader(self.moto.client("s3"), self.lake.bucket, PREFIX + "/")

    async def _manifests_reported(self) -> bool:
        manifests = await asyncio.to_thread(load_manifests, self.reader())
        rows = await self.api.commits(self.lake.endpoint_id)
        reported = {(str(c["node_id"]), int(c["epoch"]), int(c["seq"])) for c in rows}
        return all((m.node_id, m.epoch, m.seq) in reported for m in manifests.values())

    # ----------------------------------------------------------------- verdicts
    async def reconcile(self) -> Reconciliation:
        self.commit_rows = await self.api.commits(self.lake.endpoint_id)
        reader = self.reader()
        manifests = await asyncio.to_thread(load_manifests, reader)
        result = await reconcile_async(
            self.ledger,
            reader,
            commits={self.lake.endpoint_id: self.commit_rows},
            manifests=manifests,
        )
        self.head_gaps = _head_gaps(
            [(m.node_id, m.epoch, m.seq) for m in manifests.values()]
        ) + _head_gaps(
            [(str(c["node_id"]), int(c["epoch"]), int(c["seq"])) for c in self.commit_rows]
        )
        print(result.line(), f"seq_head_gaps={self.head_gaps}")
        return result

    def commit_dup_rows(self) -> int:
        """Commit rows beyond the first per (node, epoch, seq) in the commits list."""
        seen = collections.Counter(
            (str(c["node_id"]), int(c["epoch"]), int(c["seq"])) for c in self.commit_rows
        )
        return sum(n - 1 for n in seen.values())

    def report(self, result: Reconciliation, **figures: Any) -> dict[str, Any]:
        """The scenario's one JSON report line: every invariant, then its own figures."""
        line = report(
            self.scenario,
            seed=self.seed,
            lost_acked=result.lost_acked,
            duplicates=result.duplicates,
            phantoms=result.phantoms,
            corrupt=result.corrupt,
            failed_but_present=result.failed_but_present,
            refused_but_present=result.refused_but_present,
            seq_gaps=result.seq_gaps,
            seq_head_gaps=self.head_gaps,
            orphans=result.orphans,
            bad_objects=result.bad_objects,
            unlisted=result.unlisted,
            unreported=result.unreported,
            commit_dup_rows=self.commit_dup_rows(),
            acked=result.ok,
            sent=result.sent,
            failed=result.failed,
            indeterminate=result.indeterminate,
            requests=result.requests,
            segments=result.manifests,
            rows=result.rows,
            **figures,
            elapsed_s=round(time.monotonic() - self.started_at, 1),
        )
        REPORTS.append(line)
        return line

    def assert_clean(self, result: Reconciliation, *, duplicates: bool = True) -> None:
        """The promise: nothing acknowledged lost, nothing invented or damaged, no gap,
        no orphan, no stray object, every manifest reported once. `duplicates=False`
        also demands no duplicate record (where nothing could have re-sent one)."""
        assert result.must_be_zero() == {}, result.line()
        assert self.head_gaps == 0, f"segments missing before the first one seen: {result.line()}"
        assert (result.unlisted, result.unreported) == (0, 0), result.line()
        assert self.commit_dup_rows() == 0, f"duplicate commit rows: {self.commit_rows}"
        assert result.ok > 0, result.line()
        assert result.manifests > 0, result.line()
        if not duplicates:
            assert result.duplicates == 0, result.line()


def _head_gaps(segments: Iterable[tuple[str, int, int]]) -> int:
    """Sequence numbers missing *before* the lowest one seen, per (node, epoch): a WAL
    numbers its segments from 1 in every epoch (wal/recovery.py), and the reconciler's
    `seq_gaps` only looks between the lowest and the highest number it saw."""
    lowest: dict[tuple[str, int], int] = {}
    for node_id, epoch, seq in segments:
        lowest[(node_id, epoch)] = min(seq, lowest.get((node_id, epoch), seq))
    return sum(seq - 1 for seq in lowest.values())


def failed_statuses(outcomes: Iterable[Outcome]) -> collections.Counter[str]:
    return collections.Counter(
        f"{o.status} {o.code or ''}".strip() if o.status else (o.error or "?").split(":")[0]
        for o in outcomes
        if o.outcome != OK
    )


__all__ = [
    "FAIL",
    "FAST_RETRIES",
    "LONG_TESTS",
    "OK",
    "REPORTS",
    "Harness",
    "IngestClient",
    "Outcome",
    "Traffic",
    "failed_statuses",
    "long_tier",
    "percentile",
    "scenario_seed",
]
