#!/usr/bin/env python
"""R2 — restart with 1 GiB of unshipped WAL: ready to ingest in ≤ 2 s.

System under test: the ingest node as the real command line (`python -m edgemq node`),
configured by a control plane running in this process (`tests.support.stack.
control_plane`, SQLite under the temp dir). The endpoint's destination is an S3 URL on
a closed loopback port, as in a store outage: delivery builds a segment's artifacts,
fails the upload (transient, with backoff) and keeps the segment, so every
acknowledged byte stays in the WAL as unshipped. (The API requires a destination;
delivery's attempts after a restart compete for the CPU, as they would in an outage.)
`--unshipped-bytes-max` is raised to 4× the fill so ingest is never refused with a
backlog 503. Segments are `--segment-mib` (64) and never sealed by age (900 s).

Fill: `--connections` (8) keep-alive connections post NDJSON bodies of `--body-kib`
(1024) KiB of 300-byte records until `--wal-mib` (1024) MiB of records are
acknowledged (each 200 is durable: after fdatasync). The node's own
`edgemq_wal_unshipped_bytes` is read back before the kill and after every restart.

Rounds: the node is stopped with SIGKILL (no drain, no clean close), then started
again on the same data directory. Timed from just before the exec to (a) the first
200 of `GET /readyz` and (b) the first 200 (durable) of a one-record `POST /ingest`.
Both are polled every `--poll-ms` (5) ms. Baseline, side by side in the same run: a
second data directory whose WAL holds one record ("empty WAL"), restarted the same
way; the rounds alternate which goes first. Ratio = median time to the first durable
ingest with the full WAL ÷ the same with the empty WAL. Target: the full WAL's time to
the first durable ingest ≤ 2 s (median; the max is reported too).

The WAL's files are in the page cache after the fill (dropping caches would need root
and would disturb other users of the machine), so this measures the node's recovery
work, not a cold disk read.

Run. Temp directory under the current directory (or `--dir PARENT`), removed at the
end (`--keep` keeps it). The free space is checked first (the fill plus 2 GiB).

    .venv/bin/python benchmarks/restart_recovery.py
    .venv/bin/python benchmarks/restart_recovery.py --wal-mib 256 --rounds 3 --json benchmarks/results/r2.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

SCRIPT = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(SCRIPT))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from _servers import (  # noqa: E402 (after the sys.path set-up above)
    Server,
    free_port,
    fs_type,
    loadavg,
    median,
    save_json,
    spawn,
    temp_root,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
RECORD_BYTES = 300
REGION = "loc"
TARGET_S = 2.0
SIDES = ("full", "empty")


def make_body(rng: random.Random, body_bytes: int) -> bytes:
    """An NDJSON body of 300-byte JSON records, one per line."""
    lines = []
    for _ in range(max(1, body_bytes // (RECORD_BYTES + 1))):
        head = (
            f'{{"device":"dev-{rng.randrange(100_000):05d}","temp":{rng.uniform(-20, 45):.2f},'
            f'"ok":true,"msg":"'
        )
        pad = RECORD_BYTES - len(head) - 2
        lines.append(head + rng.randbytes(pad // 2 + 1).hex()[:pad] + '"}')
    return ("\n".join(lines) + "\n").encode()


class Bench:
    def __init__(self, args: argparse.Namespace, root: str, cp: Any, endpoint: str) -> None:
        self.args = args
        self.root = root
        self.cp = cp
        self.endpoint = endpoint
        self.headers = {"X-API-Key": cp.api_key, "Content-Type": "application/x-ndjson"}
        self.one = make_body(random.Random(args.seed + 1), RECORD_BYTES)

    def start(self, side: str) -> Server:
        port = free_port()
        data_dir = os.path.join(self.root, side)
        cli = ["--log-level", "WARNING", "node", "--control-url", self.cp.url]
        cli += ["--node-key", self.cp.node_key, "--region", REGION, "--data-dir", data_dir]
        cli += ["--host", "127.0.0.1", "--http-port", str(port), "--mqtt-port", str(free_port())]
        cli += ["--unshipped-bytes-max", str(max(4 * self.args.wal_mib * MIB, 4 * GIB))]
        argv = [sys.executable, "-m", "edgemq", *cli]
        server = spawn(f"node-{side}", argv, cpu=None, workdir=self.root, port=port)
        server.stop_signal = signal.SIGKILL
        return server

    async def poll(self, session: Any, server: Server, method: str, path: str) -> float:
        """Seconds until `method path` answers 200 (perf_counter), bounded by
        --ready-timeout; raises SystemExit when the node exits or the bound passes."""
        deadline = time.perf_counter() + self.args.ready_timeout
        url = server.base + path
        body = self.one if method == "POST" else None
        headers = self.headers if method == "POST" else None
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=5)
        while time.perf_counter() < deadline:
            if server.proc.poll() is not None:
                raise SystemExit(f"{server.name} exited:\n{server.log_tail()}")
            try:
                async with session.request(
                    method, url, data=body, headers=headers, timeout=timeout
                ) as r:
                    await r.read()
                    if r.status == 200:
                        return time.perf_counter()
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(self.args.poll_ms / 1000)
        raise SystemExit(f"{server.name}: {method} {path} not 200 within the bound")

    async def unshipped(self, session: Any, server: Server) -> float:
        async with session.get(server.base + "/metrics") as r:
            text = await r.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("edgemq_wal_unshipped_bytes{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def fill(self, session: Any, server: Server, target: int) -> dict[str, Any]:
        rng = random.Random(self.args.seed)
        bodies = [make_body(rng, self.args.body_kib * 1024) for _ in range(8)]
        url = f"{server.base}/ingest/{self.endpoint}"
        state = {"sent": 0, "requests": 0, "non_200": 0}
        t0 = time.perf_counter()
        deadline = t0 + self.args.fill_timeout

        async def worker(w: int) -> None:
            i = w
            while state["sent"] < target and time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += 1
                async with session.post(url, data=body, headers=self.headers) as r:
                    await r.read()
                    if r.status == 200:
                        state["sent"] += len(body)
                        state["requests"] += 1
                    else:
                        state["non_200"] += 1
                        await asyncio.sleep(0.1)

        await asyncio.gather(*(worker(w) for w in range(self.args.connections)))
        elapsed = time.perf_counter() - t0
        if state["sent"] < target:
            raise SystemExit(f"fill reached {state['sent']} of {target} B within the bound")
        return {**state, "seconds": elapsed, "mb_s": state["sent"] / elapsed / 1e6}

    async def restart(self, session: Any, side: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        server = self.start(side)
        try:
            ready = await self.poll(session, server, "GET", "/readyz")
            ingest = await self.poll(session, server, "POST", f"/ingest/{self.endpoint}")
            unshipped = await self.unshipped(session, server)
        finally:
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(30)
            server.log_file.close()
        return {"ready_s": ready - t0, "ingest_s": ingest - t0, "unshipped_bytes": unshipped}


def du_bytes(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(d, f)).st_blocks * 512
    return total


async def amain(args: argparse.Namespace, root: str) -> dict[str, Any]:
    import aiohttp

    from tests.support.stack import control_plane

    target = int(args.wal_mib * MIB)
    load_start = loadavg()
    async with control_plane(root) as cp:
        # An S3 destination nobody listens on (a closed loopback port): every upload
        # fails as transient, so the segments stay unshipped, as in a store outage.
        dest = await cp.call(
            "POST",
            "/v1/destinations",
            {
                "name": "unreachable",
                "bucket": "lake",
                "prefix": "",
                "region": "local",
                "role_arn": "arn:aws:iam::000000000000:role/local",
                "endpoint_url": f"http://127.0.0.1:{free_port()}",
            },
        )
        e = await cp.endpoint(
            dest["id"],
            segment_bytes=args.segment_mib * MIB,
            segment_max_age_seconds=900,
            output_formats=["segments"],
        )
        bench = Bench(args, root, cp, e["id"])
        connector = aiohttp.TCPConnector(limit=args.connections + 4)
        async with aiohttp.ClientSession(connector=connector) as session:
            # Prepare both data directories: the full one with `target` bytes of records,
            # the empty one with one record; each ends with SIGKILL.
            prep: dict[str, Any] = {}
            for side in SIDES:
                server = bench.start(side)
                try:
                    await bench.poll(session, server, "GET", "/readyz")
                    if side == "full":
                        prep["fill"] = await bench.fill(session, server, target)
                        f = prep["fill"]
                        print(
                            f"filled {f['sent'] / MIB:.0f} MiB in {f['seconds']:.1f} s "
                            f"({f['mb_s']:.0f} MB/s, {f['requests']} requests, "
                            f"{f['non_200']} non-200)",
                            flush=True,
                        )
                    else:
                        await bench.poll(session, server, "POST", f"/ingest/{e['id']}")
                    prep[f"{side}_unshipped_before_kill"] = await bench.unshipped(session, server)
                finally:
                    server.proc.send_signal(signal.SIGKILL)
                    server.proc.wait(30)
                    server.log_file.close()
                prep[f"{side}_data_dir_bytes"] = du_bytes(os.path.join(root, side))
            print(
                f"WAL before the rounds: full {prep['full_unshipped_before_kill'] / MIB:.0f} MiB "
                f"unshipped ({prep['full_data_dir_bytes'] / MIB:.0f} MiB on disk), empty "
                f"{prep['empty_unshipped_before_kill'] / 1024:.1f} KiB unshipped",
                flush=True,
            )
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
            for r in range(args.rounds):
                order = SIDES if r % 2 == 0 else SIDES[::-1]
                for side in order:
                    res = await bench.restart(session, side)
                    runs[side].append(res)
                    print(
                        f"round {r + 1}/{args.rounds} {side:5s}: ready {res['ready_s']:.3f} s, "
                        f"first durable ingest {res['ingest_s']:.3f} s, unshipped "
                        f"{res['unshipped_bytes'] / MIB:.0f} MiB",
                        flush=True,
                    )
    summary: dict[str, Any] = {}
    for side in SIDES:
        for k in ("ready_s", "ingest_s"):
            vals = [x[k] for x in runs[side]]
            summary[f"{side}_{k}_median"] = median(vals)
            summary[f"{side}_{k}_max"] = max(vals)
    ratio = summary["full_ingest_s_median"] / summary["empty_ingest_s_median"]
    recovered = min(x["unshipped_bytes"] for x in runs["full"])
    met = summary["full_ingest_s_median"] <= TARGET_S
    line = (
        f"R2 restart_recovery: ratio {ratio:.2f} (full WAL {args.wal_mib:g} MiB: first durable "
        f"ingest median {summary['full_ingest_s_median']:.2f} s max "
        f"{summary['full_ingest_s_max']:.2f} s, ready {summary['full_ready_s_median']:.2f} s; "
        f"empty WAL: ingest {summary['empty_ingest_s_median']:.2f} s, ready "
        f"{summary['empty_ready_s_median']:.2f} s; {args.rounds} rounds, unshipped after "
        f"restart {recovered / MIB:.0f} MiB) target ≤ {TARGET_S:g} s: "
        f"{'met' if met else 'NOT met'}"
    )
    print(line, flush=True)
    return {
        "benchmark": "R2 restart_recovery",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "config": {
            "wal_mib": args.wal_mib,
            "segment_mib": args.segment_mib,
            "body_kib": args.body_kib,
            "connections": args.connections,
            "rounds": args.rounds,
            "poll_ms": args.poll_ms,
            "fs_type": fs_type(root),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "prepare": prep,
        "median": {**summary, "ratio": ratio, "full_unshipped_after_restart_min": recovered},
        "target_s": TARGET_S,
        "met": met,
        "rounds": runs,
        "line": line,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wal-mib", type=float, default=1024, help="unshipped WAL to fill (1024)")
    p.add_argument("--rounds", type=int, default=5, help="restarts per side (5)")
    p.add_argument("--segment-mib", type=int, default=64, help="endpoint segment_bytes (64)")
    p.add_argument("--body-kib", type=int, default=1024, help="fill body size, KiB (1024)")
    p.add_argument("--connections", type=int, default=8, help="fill connections (8)")
    p.add_argument("--poll-ms", type=float, default=5.0, help="readiness poll interval (5)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="per restart, s (120)")
    p.add_argument("--fill-timeout", type=float, default=600.0, help="the fill's bound, s")
    p.add_argument("--dir", default=None, help="parent directory for the temp dir (cwd)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, WAL)")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parent = os.path.abspath(args.dir or os.getcwd())
    need = int(args.wal_mib * MIB) + 2 * GIB
    free = shutil.disk_usage(parent).free
    if free < need:
        print(f"R2: {free / GIB:.1f} GiB free under {parent}, need {need / GIB:.1f} GiB")
        return 1
    with temp_root(args.dir, ".r2-restart-", keep=args.keep) as root:
        results = asyncio.run(amain(args, root))
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
