#!/usr/bin/env python
"""M0/M1/M2/R1 — MQTT ingest into the node (PUBACK after fsync) against Mosquitto and
the amqtt broker in the same run, with the same pipelined raw-socket generator; and the
memory of idle MQTT connections.

System under test: the ingest node as the real command line, `python -m edgemq node`
(uvloop, default `NodeSettings` apart from data dir, control URL, node key, region,
ports and `--drain-deadline-s 1`), a fresh process with a fresh data dir per side-round.
A control plane runs as its own process (this script with `--serve control`:
`tests.support.stack.control_plane` on SQLite). It creates the account, an ingest API
key, a node key, one `file://` destination under the temp dir and one endpoint:
`output_formats ["segments"]`, `segment_bytes` 1 GiB (the API's maximum),
`segment_max_age_seconds` 900 and `mqtt_config {enabled: true, max_connections: 50000,
keepalive_max_s: 900, qos_max: 2}`. A side-round writes less than 1 GiB, so nothing
seals and delivery stays idle: the figures are ingest alone, with a real WAL (a
QoS 1 PUBACK leaves only after the fdatasync covering the message). Publishers log in
with user name `bench@<endpoint_id>` and the ingest API key as password.

Baselines, each a fresh process per side-round:
* Mosquitto (Debian's `mosquitto -c CONF`): a listener on a free port of 127.0.0.1,
  `allow_anonymous true`, `persistence false`, `max_inflight_messages 1000`,
  `max_queued_messages 1000`, `sys_interval 0`, errors and warnings to the log only.
  Nobody subscribes, so Mosquitto reads, acknowledges and drops every message.
* The amqtt broker (`amqtt -c CONF`, the package's CLI): one TCP listener on a free port
  of 127.0.0.1 and only the `AnonymousAuthPlugin` (`allow_anonymous: true`).
Both get the same CONNECT as the node (user name and password included; they accept
any). Nothing is persisted on their side.

Generator: `--publishers` (4) processes (this script with `--serve publisher`), each
with `--connections` (4) MQTT 3.1.1 connections (clean session, keep-alive 300 s) from
a raw asyncio `Protocol` (uvloop). All packets are prebuilt: topic
`sensors/bench/temp`, 200-byte JSON payloads (225-byte QoS 1 packets, one per packet
id 1..65535 in one buffer, so a run of consecutive ids is one slice and one write).
* QoS 1 (M1, M2): each connection keeps `--window` (128) PUBLISHes unacknowledged;
  every read of PUBACKs sends as many new ones. msg/s = PUBACKs received ÷ (last
  PUBACK − start), over all publishers (CLOCK_MONOTONIC is shared by processes).
* QoS 0 (M0): each connection writes its share of QoS 0 PUBLISHes (256-packet chunks)
  as fast as the transport takes them (write-buffer flow control), then one trailing
  QoS 1 PUBLISH, and stops the clock at its PUBACK. Both servers handle a connection's
  packets in order, so that PUBACK means the server has read every QoS 0 message
  before it; for the node it also means they are fsynced (the trailer's append follows
  theirs in the same WAL), which is stricter than Mosquitto's "read and dropped".
  msg/s = QoS 0 messages ÷ (last trailer PUBACK − start). For the node the script also
  reads `edgemq_ingest_records_total{transport="mqtt"}` from /metrics after each phase
  and checks it against everything sent (warm-up, measured, trailers): nothing lost.
Messages per side-round: `--messages` (400,000) at QoS 1 for the node and Mosquitto,
`--amqtt-messages` (20,000) at QoS 1 for amqtt (it manages ≈4k msg/s),
`--qos0-messages` (2,000,000) at QoS 0; each phase after an untimed warm-up of
`--warmup-share` (0.25) of its count on the same connections.

Run. With two or more CPUs and `taskset` on PATH, the control plane and every server
run under `taskset -c S` (S = the first CPU this process may use) and the generator
processes on the next CPU (this process pins itself before starting them);
`--no-pin` turns this off. `--rounds` (3) rounds; each round runs the sides its
benchmarks need (node: QoS 1 and/or QoS 0; Mosquitto: the same; amqtt: QoS 1) one
after the other, and odd rounds reverse the order. Every phase is bounded by its
message count and by `--round-timeout` (120 s): publishers stop sending at the
deadline and the parent gives up on them 60 s later. Server CPU from /proc (all
threads, its kernel part, and the node's event-loop thread), generator CPU from the
publishers, and how busy each pinned CPU was (/proc/stat: every process plus irq and
softirq, where loopback TCP does much of its work). When the publishers used ≥ 0.9
cores, or their CPU was ≥ 95 % busy while the server's was under 90 %, the generator
may be the limit and the summary says so. Peak RSS = VmHWM. The load average is
printed at the start, after each round and at the end (other engineers' runs may
share the machine).

R1: a fresh node; after the readiness probe (which opens the endpoint's WAL) and 1 s,
VmRSS is read; then the publishers open `--r1-connections` (10,000) connections in
total, at most `--r1-concurrency` (128) connecting per publisher (the node closes
sockets beyond `connecting_max` = 1024 that have not sent CONNECT), each CONNECT +
CONNACK 0 with its own client id and keep-alive 900 s, then idle. After
`--r1-settle-s` (3) VmRSS is read again: RSS per connection = (VmRSS after − before)
÷ connections. The node's `edgemq_mqtt_connections{transport="tcp"}` must show them
all. RLIMIT_NOFILE: this process raises its soft limit to the hard limit (children
inherit it) and the script prints the node's limit from /proc/PID/limits. The same
is measured on Mosquitto for context (`--no-r1-mosquitto` skips it); it is no target.

Output: per round and side msg/s, elapsed, server cores and CPU µs per message (its
kernel part; node: also its loop thread), generator cores, CPU busy shares, and for the
node the /metrics check; then medians and one summary line per benchmark:

    M1 mqtt_ingest: ratio 0.85 (node 62.1k msg/s vs mosquitto 73.0k msg/s, QoS 1 ...)
    M0 mqtt_ingest: ratio 1.05 (node 190k msg/s vs mosquitto 181k msg/s, QoS 0 ...)
    M2 mqtt_ingest: ratio 14.1x (node 62.1k msg/s vs amqtt 4.4k msg/s, QoS 1 ...)
    R1 mqtt_ingest: 12.3 KiB RSS per connection (10000 idle connections ...)

`ratio` = median node msg/s ÷ median baseline msg/s (the median of the per-round
ratios is printed too). M2 uses the node's QoS 1 rounds of the same run (the same
workload as M1). Targets (shared/docs/BENCHMARKS.md): M1 ≥ 0.80, M0 ≥ 1.00, M2 ≥ 10×,
R1 ≤ 30 KiB per connection.

`--profile` adds one node side-round for the selected M0/M1/M2 with the node under
cProfile (this script's `--serve node` wrapper around `edgemq.cli.main`, enabled by
SIGUSR1 just before each measured phase and dumped on SIGUSR2 just after it; the
event-loop thread only; not in the figures) and prints the top functions.

    .venv/bin/python benchmarks/mqtt_ingest.py --json benchmarks/results/mqtt_ingest.json
    .venv/bin/python benchmarks/mqtt_ingest.py --only m1 --rounds 5
    .venv/bin/python benchmarks/mqtt_ingest.py --only r1
    .venv/bin/python benchmarks/mqtt_ingest.py --only m1 --rounds 1 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
    loadavg,
    main_thread_cpu_s,
    proc_cpu_s,
    proc_status_bytes,
    proc_user_sys_s,
    save_json,
    spawn,
    temp_root,
)
from _servers import fmt_k as _fmt_k  # noqa: E402
from _servers import loop_factory as _loop_factory  # noqa: E402
from _servers import median as _median  # noqa: E402
from _servers import read_json as _read_json  # noqa: E402
from _servers import write_json as _write_json  # noqa: E402

KIB = 1024
MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
REGION = "loc"
TOPIC = "sensors/bench/temp"
PAYLOAD_BYTES = 200
FRAME_BYTES = 21 + 2 + len(TOPIC) + PAYLOAD_BYTES  # WAL FMT 1 frame of one message
SEGMENT_BYTES = 1024 * MIB  # the API's maximum: no seal within a side-round
SEGMENT_AGE_S = 900
MQTT_CONFIG = {"enabled": True, "max_connections": 50_000, "keepalive_max_s": 900, "qos_max": 2}
KEEPALIVE_S = 300
R1_KEEPALIVE_S = 900
MAX_PID = 65535
QOS0_CHUNK = 256
PROFILE_ENV = "MQTT_INGEST_PROFILE"
TARGETS = {"m1": 0.80, "m0": 1.00, "m2": 10.0, "r1_kib_per_connection": 30.0}
BENCHES = ("m0", "m1", "m2", "r1")
SIDE_ORDER = ("node", "mosquitto", "amqtt")


# ---------------------------------------------------------------------- helpers
def nofile_limit(pid: int) -> str:
    """The 'Max open files' soft/hard limits of a process (from /proc/PID/limits)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                return f"{parts[3]}/{parts[4]}"
    return "unknown"


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat; busy includes irq and softirq time,
    which loopback TCP charges to no process."""
    out: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError), open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                total = sum(v)
                out[int(name[3:])] = (total - v[3] - v[4], total)
    return out


def cpu_busy(before: dict[int, tuple[int, int]], cpu: int | None) -> float | None:
    """Share of `cpu` busy since `before` (None when unknown or not pinned)."""
    if cpu is None or cpu not in before:
        return None
    after = cpu_times().get(cpu)
    if after is None:
        return None
    busy, total = after[0] - before[cpu][0], after[1] - before[cpu][1]
    return busy / total if total > 0 else None


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; the limits afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def make_payload(i: int) -> bytes:
    """A 200-byte JSON object; `i` varies the content."""
    head = (
        f'{{"seq":{i:010d},"device":"dev-{i % 100_000:05d}","temp":{(i % 6500) / 100 - 20:.2f},'
        f'"ok":true,"msg":"'
    ).encode()
    pad = PAYLOAD_BYTES - len(head) - 2
    body = head + (b"%x" % (i * 2654435761 % (1 << 64))).rjust(pad, b"0")[:pad] + b'"}'
    assert len(body) == PAYLOAD_BYTES
    return body


# ---------------------------------------------------------------- control plane
async def serve_control(root: str, info_path: str) -> None:
    from tests.support.stack import control_plane

    store_dir = os.path.join(root, "store")
    os.makedirs(store_dir, exist_ok=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with control_plane(root) as cp:
        dest = await cp.local_destination(store_dir)
        e = await cp.endpoint(
            dest["id"],
            segment_bytes=SEGMENT_BYTES,
            segment_max_age_seconds=SEGMENT_AGE_S,
            output_formats=["segments"],
            mqtt_config=MQTT_CONFIG,
        )
        _write_json(
            info_path,
            {
                "control_url": cp.url,
                "api_key": cp.api_key,
                "node_key": cp.node_key,
                "endpoint": e["id"],
            },
        )
        print(f"control plane on {cp.url}", flush=True)
        await stop.wait()


def serve_node_profiled(cli_args: list[str]) -> int:
    """`edgemq node` under cProfile: SIGUSR1 enables it, SIGUSR2 disables it and dumps
    to $MQTT_INGEST_PROFILE (then a fresh profile waits for the next SIGUSR1)."""
    path = os.environ[PROFILE_ENV]
    box = [cProfile.Profile()]

    def enable(*_: Any) -> None:
        box[0].enable()

    def dump(*_: Any) -> None:
        box[0].disable()
        box[0].dump_stats(path + ".tmp")
        os.replace(path + ".tmp", path)
        box[0] = cProfile.Profile()

    signal.signal(signal.SIGUSR1, enable)
    signal.signal(signal.SIGUSR2, dump)
    from edgemq.cli import main as cli_main

    try:
        cli_main(cli_args)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


# ------------------------------------------------------------ server processes
def probe(server: Server, username: str, password: str, timeout_s: float = 60.0) -> None:
    """Until a CONNECT on the server's MQTT port gets CONNACK 0 (for the node: the
    endpoint is in its config snapshot and its WAL is open)."""
    from ingest.mqtt import client_codec as cc

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2.0) as s:
                s.sendall(cc.connect("bench-probe", username=username, password=password))
                data = b""
                while len(data) < 4:
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    data += chunk
                if len(data) >= 4 and data[0] == 0x20 and data[3] == 0:
                    s.sendall(cc.disconnect())
                    return
                last = f"CONNACK {data.hex()}"
        except OSError as err:
            last = repr(err)
        time.sleep(0.1)
    server.stop()
    raise SystemExit(f"{server.name} not ready within {timeout_s} s ({last}):\n{server.log_tail()}")


def node_metrics(server: Server) -> dict[str, float]:
    """MQTT records acknowledged and open TCP MQTT sockets, from the node's /metrics."""
    url = f"http://127.0.0.1:{server.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    records = 0.0
    conns = 0.0
    for line in text.splitlines():
        if line.startswith("edgemq_ingest_records_total{") and 'transport="mqtt"' in line:
            records += float(line.rsplit(" ", 1)[1])
        elif line.startswith('edgemq_mqtt_connections{transport="tcp"}'):
            conns = float(line.rsplit(" ", 1)[1])
    return {"records": records, "tcp_connections": conns}


# ------------------------------------------------------------ publisher process
CONNECTING, IDLE, QOS1, QOS0, TRAILER = range(5)
ACK_FIRST = b"\x40" * 65536
ACK_SECOND = b"\x02" * 65536


class Run:
    """One phase of one publisher process: the connections report here when done."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conns: int, deadline: float) -> None:
        self.pending = conns
        self.deadline = deadline
        self.done: asyncio.Future[None] = loop.create_future()
        self.messages = 0
        self.errors = 0
        self.timed_out = False
        self.last = 0.0

    def finished(self, messages: int, ok: bool) -> None:
        self.messages += messages
        self.errors += 0 if ok else 1
        self.last = max(self.last, time.monotonic())
        self.pending -= 1
        if self.pending == 0 and not self.done.done():
            self.done.set_result(None)


class PubConn(asyncio.Protocol):
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.mode = CONNECTING
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.paused = False
        self.next_pid = 1
        self.run: Run | None = None
        self.n = 0
        self.sent = 0
        self.acked = 0

    # -- transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp: Any = transport
        tcp.set_write_buffer_limits(high=256 * KIB)
        self.transport = tcp  # uvloop's transport is no asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.connack.done():
            self.connack.set_result(-1)
        if self.run is not None and self.mode in (QOS1, QOS0, TRAILER):
            self._finish(False)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == QOS0:
            self._pump()

    # -- reading
    def data_received(self, data: bytes) -> None:
        if self.mode == CONNECTING:
            self.buf += data
            if len(self.buf) >= 4:
                rc = self.buf[3] if self.buf[0] == 0x20 else -2
                del self.buf[:4]
                self.mode = IDLE
                if not self.connack.done():
                    self.connack.set_result(rc)
            return
        n = len(data)
        if (
            not self.buf
            and not n & 3
            and data[::4] == ACK_FIRST[: n >> 2]
            and data[1::4] == ACK_SECOND[: n >> 2]
        ):
            acks = n >> 2
        else:  # split or not only PUBACKs: parse properly
            from ingest.mqtt import client_codec as cc

            self.buf += data
            acks = 0
            for p in cc.split_packets(self.buf):
                if p.type == 4:
                    acks += 1
                elif p.type == 13:  # PINGRESP
                    continue
                else:
                    self.gen.unexpected += 1
        if acks:
            self._on_acks(acks)

    # -- QoS 1
    def start_qos1(self, run: Run, n: int, window: int) -> None:
        self.run, self.n, self.sent, self.acked = run, n, 0, 0
        self.mode = QOS1
        if n == 0:
            self._finish(True)
            return
        self._send(min(window, n))

    def _send(self, k: int) -> None:
        """PUBLISH QoS 1 with the next `k` packet ids: one or two slices, one write each."""
        assert self.transport is not None
        gen, pid = self.gen, self.next_pid
        length = gen.q1_len
        first = min(k, MAX_PID - pid + 1)
        self.transport.write(gen.q1_view[(pid - 1) * length : (pid - 1 + first) * length])
        if first < k:
            self.transport.write(gen.q1_view[: (k - first) * length])
        self.next_pid = (pid - 1 + k) % MAX_PID + 1
        self.sent += k

    def _on_acks(self, acks: int) -> None:
        run = self.run
        if run is None:
            self.gen.unexpected += acks
            return
        self.acked += acks
        if self.mode == TRAILER:
            self._finish(True)
            return
        if self.mode != QOS1:
            self.gen.unexpected += acks
            return
        more = self.n - self.sent
        if more > 0:
            if time.monotonic() >= run.deadline:
                run.timed_out = True
                self.n = self.sent
            else:
                self._send(min(acks, more))
                return
        if self.acked >= self.sent:
            self._finish(True)

    def _finish(self, ok: bool) -> None:
        run, self.run = self.run, None
        mode, self.mode = self.mode, IDLE
        if run is not None:
            run.finished(self.acked if mode == QOS1 else self.sent, ok)

    # -- QoS 0
    def start_qos0(self, run: Run, n: int) -> None:
        self.run, self.n, self.sent, self.acked = run, n, 0, 0
        self.mode = QOS0
        self._pump()

    def _pump(self) -> None:
        transport, run = self.transport, self.run
        assert transport is not None
        assert run is not None
        gen = self.gen
        length, view = gen.q0_len, gen.q0_view
        while not self.paused and self.sent < self.n and not self.closed:
            if time.monotonic() >= run.deadline:
                run.timed_out = True
                self.n = self.sent
                break
            k = min(QOS0_CHUNK, self.n - self.sent)
            transport.write(view[: k * length])
            self.sent += k
        if self.sent >= self.n and self.mode == QOS0 and not self.closed:
            self.mode = TRAILER  # one QoS 1 message; its PUBACK stops the clock
            pid = self.next_pid
            length = gen.q1_len
            transport.write(gen.q1_view[(pid - 1) * length : pid * length])
            self.next_pid = pid % MAX_PID + 1


class Generator:
    """The publisher process: connections and commands from the parent on stdin."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ingest.mqtt import client_codec as cc

        self.args = args
        self.port = args.port
        self.conns: list[PubConn] = []
        self.unexpected = 0
        self._q1: bytes | None = None
        q0 = [cc.publish(TOPIC, make_payload(i), qos=0) for i in range(QOS0_CHUNK)]
        self.q0_len = len(q0[0])
        assert all(len(p) == self.q0_len for p in q0)
        self.q0_view = memoryview(b"".join(q0))
        self.q1_len = len(cc.publish(TOPIC, make_payload(0), qos=1, packet_id=1))
        self._q1_view: memoryview | None = None

    @property
    def q1_view(self) -> memoryview:
        if self._q1_view is None:
            from ingest.mqtt import client_codec as cc

            packets = [
                cc.publish(TOPIC, make_payload(pid), qos=1, packet_id=pid)
                for pid in range(1, MAX_PID + 1)
            ]
            assert all(len(p) == self.q1_len for p in packets)
            self._q1_view = memoryview(b"".join(packets))
        return self._q1_view

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from ingest.mqtt import client_codec as cc

        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(int(cmd.get("concurrency", 64)))
        keepalive = int(cmd.get("keepalive", KEEPALIVE_S))
        timeout_s = float(cmd.get("timeout", 60.0))
        prefix = cmd["prefix"]
        codes: dict[str, int] = {}
        t0 = time.monotonic()

        async def one(i: int) -> None:
            async with sem:
                try:
                    _, proto = await asyncio.wait_for(
                        loop.create_connection(lambda: PubConn(self), "127.0.0.1", self.port),
                        timeout_s,
                    )
                    assert proto.transport is not None
                    proto.transport.write(
                        cc.connect(
                            f"{prefix}{i}",
                            username=self.args.username,
                            password=self.args.password,
                            keepalive_s=keepalive,
                        )
                    )
                    rc = await asyncio.wait_for(asyncio.shield(proto.connack), timeout_s)
                except (OSError, TimeoutError) as err:
                    codes[type(err).__name__] = codes.get(type(err).__name__, 0) + 1
                    return
                if rc == 0:
                    self.conns.append(proto)
                else:
                    codes[str(rc)] = codes.get(str(rc), 0) + 1
                    if proto.transport is not None:
                        proto.transport.close()

        base = len(self.conns)
        await asyncio.gather(*(one(base + i) for i in range(int(cmd["n"]))))
        return {
            "connected": len(self.conns) - base,
            "total": len(self.conns),
            "failed": codes,
            "elapsed_s": time.monotonic() - t0,
        }

    async def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        qos, total = int(cmd["qos"]), int(cmd["messages"])
        conns = [c for c in self.conns if not c.closed]
        if not conns:
            return {"messages": 0, "errors": 1, "t0": 0.0, "t1": 0.0, "cpu_s": 0.0}
        if qos == 1:
            _ = self.q1_view  # built outside the timed part
        share, extra = divmod(total, len(conns))
        cpu0 = time.process_time()
        t0 = time.monotonic()
        run = Run(loop, len(conns), t0 + float(cmd["timeout"]))
        for i, c in enumerate(conns):
            n = share + (1 if i < extra else 0)
            if qos == 1:
                c.start_qos1(run, n, int(cmd["window"]))
            else:
                c.start_qos0(run, n)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.done), float(cmd["timeout"]) + 30.0)
        return {
            "messages": run.messages,
            "errors": run.errors + run.pending,
            "timed_out": run.timed_out or run.pending > 0,
            "t0": t0,
            "t1": run.last,
            "cpu_s": time.process_time() - cpu0,
            "connections": len(conns),
            "unexpected_packets": self.unexpected,
        }

    def close(self) -> dict[str, Any]:
        from ingest.mqtt import client_codec as cc

        n = 0
        for c in self.conns:
            if c.transport is not None and not c.closed:
                c.transport.write(cc.disconnect())
                c.transport.close()
                n += 1
        self.conns.clear()
        return {"closed": n}


async def serve_publisher(args: argparse.Namespace) -> None:
    raise_nofile()
    gen = Generator(args)
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "connect":
            out = await gen.connect(cmd)
        elif op == "run":
            out = await gen.run(cmd)
        elif op == "close":
            out = gen.close()
            await asyncio.sleep(0.2)
        elif op == "exit":
            gen.close()
            await asyncio.sleep(0.1)
            print(json.dumps({"bye": True}), flush=True)
            break
        else:
            out = {"error": f"unknown op {op}"}
        print(json.dumps(out), flush=True)


class Publishers:
    """The generator processes, driven over stdin/stdout JSON lines."""

    def __init__(self, n: int, port: int, username: str, password: str, workdir: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.bufs: list[bytes] = []
        self.log = open(os.path.join(workdir, f"publishers-{port}.log"), "ab")  # noqa: SIM115
        for i in range(n):
            argv = [sys.executable, SCRIPT, "--serve", "publisher", "--port", str(port)]
            argv += ["--index", str(i), "--username", username, "--password", password]
            self.procs.append(
                subprocess.Popen(
                    argv,
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self.log,
                    start_new_session=True,
                )
            )
            self.bufs.append(b"")
        self._replies(30.0)  # {"ready": true}

    def _replies(self, timeout_s: float) -> list[dict[str, Any]]:
        """One JSON line from every publisher, within `timeout_s`."""
        out: list[dict[str, Any] | None] = [None] * len(self.procs)
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            for i, p in enumerate(self.procs):
                assert p.stdout is not None
                sel.register(p.stdout, selectors.EVENT_READ, i)
            while any(o is None for o in out):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise SystemExit(f"publishers did not answer within {timeout_s:.0f} s")
                for key, _ in sel.select(min(left, 1.0)):
                    i = key.data
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        self.kill()
                        raise SystemExit(f"publisher {i} exited (see {self.log.name})")
                    self.bufs[i] += chunk
                    if b"\n" in self.bufs[i]:
                        line, self.bufs[i] = self.bufs[i].split(b"\n", 1)
                        out[i] = json.loads(line)
                        sel.unregister(key.fileobj)
        return [o for o in out if o is not None]

    def call(self, cmds: Sequence[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
        for p, cmd in zip(self.procs, cmds, strict=True):
            assert p.stdin is not None
            p.stdin.write(json.dumps(cmd).encode() + b"\n")
            p.stdin.flush()
        return self._replies(timeout_s)

    def connect(
        self,
        total: int,
        prefix: str,
        *,
        keepalive: int = KEEPALIVE_S,
        concurrency: int = 64,
        timeout_s: float = 120.0,
    ) -> list[dict[str, Any]]:
        n = len(self.procs)
        cmds = [
            {
                "op": "connect",
                "n": total // n + (1 if i < total % n else 0),
                "prefix": f"{prefix}p{i}-",
                "keepalive": keepalive,
                "concurrency": concurrency,
                "timeout": 60.0,
            }
            for i in range(n)
        ]
        return self.call(cmds, timeout_s)

    def run(self, qos: int, messages: int, window: int, timeout_s: float) -> Load:
        n = len(self.procs)
        cmds = [
            {
                "op": "run",
                "qos": qos,
                "messages": messages // n + (1 if i < messages % n else 0),
                "window": window,
                "timeout": timeout_s,
            }
            for i in range(n)
        ]
        return Load.of(self.call(cmds, timeout_s + 60.0))

    def close(self) -> None:
        with contextlib.suppress(SystemExit, OSError):
            self.call([{"op": "exit"}] * len(self.procs), 30.0)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.log.close()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()


# --------------------------------------------------------------------- results
@dataclass
class Load:
    messages: int
    elapsed_s: float
    gen_cpu_s: float
    errors: int
    timed_out: bool
    unexpected: int
    trailers: int  # QoS 0 phases: trailing QoS 1 messages (one per connection that finished)

    @classmethod
    def of(cls, replies: list[dict[str, Any]]) -> Load:
        t0 = min(r["t0"] for r in replies)
        t1 = max(r["t1"] for r in replies)
        return cls(
            messages=sum(r["messages"] for r in replies),
            elapsed_s=max(t1 - t0, 1e-9),
            gen_cpu_s=sum(r["cpu_s"] for r in replies),
            errors=sum(r["errors"] for r in replies),
            timed_out=any(r.get("timed_out") for r in replies),
            unexpected=sum(r.get("unexpected_packets", 0) for r in replies),
            trailers=sum(r.get("connections", 0) - r["errors"] for r in replies),
        )

    @property
    def msg_s(self) -> float:
        return self.messages / self.elapsed_s


@dataclass
class Phase:
    load: Load
    server_cpu_s: float
    loop_cpu_s: float | None
    server_cpu_busy: float | None = None  # share of the server's CPU busy (all processes, irq)
    gen_cpu_busy: float | None = None  # share of the generator's CPU busy
    sent_total: int = 0  # node: everything sent so far on this node (warm-ups, trailers)
    counted: float | None = None  # node: edgemq_ingest_records_total{transport="mqtt"}
    server_sys_s: float = 0.0  # kernel share of server_cpu_s

    @property
    def generator_may_limit(self) -> bool:
        """The publishers used ≥ 0.9 cores, or their CPU was saturated (by anyone,
        softirq included) while the server's was not."""
        ld = self.load
        if ld.gen_cpu_s / ld.elapsed_s >= 0.9:
            return True
        if self.server_cpu_busy is None or self.gen_cpu_busy is None:
            return False
        return self.gen_cpu_busy >= 0.95 and self.server_cpu_busy < 0.9

    def line(self, side: str) -> str:
        ld = self.load
        srv = self.server_cpu_s / ld.elapsed_s
        us = self.server_cpu_s / max(ld.messages, 1) * 1e6
        s = (
            f"{side:9s} {ld.msg_s:9.0f} msg/s  {ld.messages:8d} msg {ld.elapsed_s:6.2f} s  "
            f"server {srv:.2f} cores ({us:.1f} µs/msg, "
            f"sys {self.server_sys_s / max(ld.messages, 1) * 1e6:.1f}"
        )
        if self.loop_cpu_s is not None:
            s += f", loop thread {self.loop_cpu_s / max(ld.messages, 1) * 1e6:.1f}"
        s += f")  gen {ld.gen_cpu_s / ld.elapsed_s:.2f} cores"
        if self.server_cpu_busy is not None and self.gen_cpu_busy is not None:
            s += f"  CPU busy: server's {self.server_cpu_busy:.0%}, gen's {self.gen_cpu_busy:.0%}"
        if self.counted is not None:
            ok = "=" if int(self.counted) == self.sent_total else "!="
            s += f"  /metrics records {int(self.counted)} {ok} sent {self.sent_total}"
        if ld.errors or ld.unexpected:
            s += f"  errors {ld.errors} unexpected packets {ld.unexpected}"
        if ld.timed_out:
            s += "  (round timeout hit)"
        return s

    def summary(self) -> dict[str, Any]:
        ld = self.load
        return {
            "messages": ld.messages,
            "elapsed_s": round(ld.elapsed_s, 4),
            "msg_s": round(ld.msg_s, 1),
            "server_cpu_s": round(self.server_cpu_s, 3),
            "server_loop_thread_cpu_s": (
                round(self.loop_cpu_s, 3) if self.loop_cpu_s is not None else None
            ),
            "server_cpu_us_per_msg": round(self.server_cpu_s / max(ld.messages, 1) * 1e6, 2),
            "server_sys_cpu_s": round(self.server_sys_s, 3),
            "generator_cpu_s": round(ld.gen_cpu_s, 3),
            "server_cpu_busy_share": self.server_cpu_busy,
            "generator_cpu_busy_share": self.gen_cpu_busy,
            "errors": ld.errors,
            "unexpected_packets": ld.unexpected,
            "timed_out": ld.timed_out,
            "node_records_counted": self.counted,
            "node_records_sent": self.sent_total if self.counted is not None else None,
        }


@dataclass
class SideRun:
    side: str
    round: int
    phases: dict[str, Phase] = field(default_factory=dict)  # "q1" / "q0"
    rss_bytes: int = 0


# ------------------------------------------------------------------------ runs
class Bench:
    def __init__(self, args: argparse.Namespace, root: str, pin: tuple[int, int] | None) -> None:
        self.args = args
        self.root = root
        self.cpu = pin[0] if pin else None
        self.gen_cpu = pin[1] if pin else None
        self.info: dict[str, Any] = {}
        self.control: Server | None = None
        self.counter = 0

    @property
    def username(self) -> str:
        return f"bench@{self.info['endpoint']}"

    @property
    def password(self) -> str:
        return str(self.info["api_key"])

    def start_control(self) -> None:
        info_path = os.path.join(self.root, "control.json")
        argv = [sys.executable, SCRIPT, "--serve", "control", "--root", self.root]
        argv += ["--info", info_path]
        self.control = spawn("control", argv, cpu=self.cpu, workdir=self.root, port=0)
        deadline = time.monotonic() + 60
        while (info := _read_json(info_path)) is None:
            if self.control.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"control plane did not start:\n{self.control.log_tail()}")
            time.sleep(0.1)
        self.info = info

    def start_side(self, side: str, *, profile_path: str | None = None) -> Server:
        self.counter += 1
        port = free_port()
        if side == "node":
            http_port = free_port()
            data_dir = os.path.join(self.root, f"node-{self.counter:03d}")
            cli = ["--log-level", "WARNING", "node", "--control-url", self.info["control_url"]]
            cli += ["--node-key", self.info["node_key"], "--region", REGION]
            cli += ["--data-dir", data_dir, "--host", "127.0.0.1"]
            cli += ["--http-port", str(http_port), "--mqtt-port", str(port)]
            cli += ["--drain-deadline-s", "1"]
            if profile_path:
                argv = [sys.executable, SCRIPT, "--serve", "node", *cli]
                env = {PROFILE_ENV: profile_path}
            else:
                argv, env = [sys.executable, "-m", "edgemq", *cli], None
            server = spawn("node", argv, cpu=self.cpu, workdir=self.root, port=port, env=env)
            server.http_port, server.data_dir = http_port, data_dir
        elif side == "mosquitto":
            conf = os.path.join(self.root, f"mosquitto-{port}.conf")
            with open(conf, "w") as f:
                f.write(
                    f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 1000\nmax_queued_messages 1000\nsys_interval 0\n"
                    "log_dest stderr\nlog_type error\nlog_type warning\n"
                    "connection_messages false\n"
                )
            argv = [shutil.which("mosquitto") or "mosquitto", "-c", conf]
            server = spawn("mosquitto", argv, cpu=self.cpu, workdir=self.root, port=port)
        elif side == "amqtt":
            conf = os.path.join(self.root, f"amqtt-{port}.yaml")
            with open(conf, "w") as f:
                f.write(
                    "listeners:\n  default:\n    type: tcp\n"
                    f"    bind: 127.0.0.1:{port}\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                    "    allow_anonymous: true\n"
                )
            exe = os.path.join(os.path.dirname(sys.executable), "amqtt")
            server = spawn("amqtt", [exe, "-c", conf], cpu=self.cpu, workdir=self.root, port=port)
            server.stop_signal = signal.SIGINT  # the CLI stops on KeyboardInterrupt
        else:
            raise ValueError(side)
        probe(server, self.username, self.password)
        return server

    def phase(
        self,
        server: Server,
        pubs: Publishers,
        qos: int,
        messages: int,
        *,
        sent_before: int,
        profile: bool = False,
    ) -> Phase:
        """Warm-up (untimed), then the measured run; node: /metrics check."""
        a = self.args
        warm = max(1, round(messages * a.warmup_share))
        w = pubs.run(qos, warm, a.window, a.round_timeout)
        sent = sent_before + w.messages + (w.trailers if qos == 0 else 0)
        if profile:
            os.kill(server.pid, signal.SIGUSR1)
        (user0, sys0), loop0 = proc_user_sys_s(server.pid), main_thread_cpu_s(server.pid)
        stat0 = cpu_times()
        load = pubs.run(qos, messages, a.window, a.round_timeout)
        server_busy, gen_busy = cpu_busy(stat0, self.cpu), cpu_busy(stat0, self.gen_cpu)
        user1, sys1 = proc_user_sys_s(server.pid)
        cpu, sys_cpu = user1 - user0 + sys1 - sys0, sys1 - sys0
        loop_cpu = main_thread_cpu_s(server.pid) - loop0 if server.name == "node" else None
        if profile:
            os.kill(server.pid, signal.SIGUSR2)
        sent += load.messages + (load.trailers if qos == 0 else 0)
        ph = Phase(
            load,
            cpu,
            loop_cpu,
            server_cpu_busy=server_busy,
            gen_cpu_busy=gen_busy,
            sent_total=sent,
            server_sys_s=sys_cpu,
        )
        if server.name == "node":
            ph.counted = node_metrics(server)["records"]
        return ph

    def side_round(
        self, side: str, r: int, qos_list: Sequence[int], *, profile_path: str | None = None
    ) -> SideRun:
        a = self.args
        server = self.start_side(side, profile_path=profile_path)
        run = SideRun(side, r)
        pubs = Publishers(a.publishers, server.port, self.username, self.password, self.root)
        try:
            got = pubs.connect(a.publishers * a.connections, f"{side}-r{r}-")
            if sum(g["connected"] for g in got) != a.publishers * a.connections:
                raise SystemExit(f"{side}: connections failed: {got}\n{server.log_tail()}")
            sent = 0  # the readiness probe publishes nothing
            for qos in qos_list:
                n = a.messages if qos == 1 else a.qos0_messages
                if side == "amqtt":
                    n = a.amqtt_messages
                ph = self.phase(server, pubs, qos, n, sent_before=sent, profile=bool(profile_path))
                sent = ph.sent_total
                run.phases[f"q{qos}"] = ph
                if profile_path:
                    self._collect_profile(profile_path, f"q{qos}")
            run.rss_bytes = proc_status_bytes(server.pid, "VmHWM")
        finally:
            pubs.close()
            server.stop()
        return run

    def _collect_profile(self, path: str, tag: str) -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        if os.path.exists(path):
            os.replace(path, f"{path}.{tag}")

    # -- R1
    def r1(self, side: str) -> dict[str, Any]:
        a = self.args
        server = self.start_side(side)
        pubs = Publishers(a.publishers, server.port, self.username, self.password, self.root)
        try:
            time.sleep(1.0)
            rss0 = proc_status_bytes(server.pid, "VmRSS")
            before = node_metrics(server) if side == "node" else None
            got = pubs.connect(
                a.r1_connections,
                f"r1-{side}-",
                keepalive=R1_KEEPALIVE_S,
                concurrency=a.r1_concurrency,
                timeout_s=a.round_timeout + 60,
            )
            connected = sum(g["connected"] for g in got)
            failed: dict[str, int] = {}
            for g in got:
                for k, v in g["failed"].items():
                    failed[k] = failed.get(k, 0) + v
            connect_s = max(g["elapsed_s"] for g in got)
            time.sleep(a.r1_settle_s)
            rss1 = proc_status_bytes(server.pid, "VmRSS")
            hwm = proc_status_bytes(server.pid, "VmHWM")
            after = node_metrics(server) if side == "node" else None
            limit = nofile_limit(server.pid)
            cpu_s = proc_cpu_s(server.pid)
        finally:
            pubs.close()
            server.stop()
        per = (rss1 - rss0) / connected if connected else float("nan")
        out = {
            "side": side,
            "connections": connected,
            "requested": a.r1_connections,
            "failed": failed,
            "connect_s": round(connect_s, 2),
            "rss_before_bytes": rss0,
            "rss_after_bytes": rss1,
            "hwm_bytes": hwm,
            "bytes_per_connection": per,
            "kib_per_connection": per / KIB,
            "nofile_limit": limit,
            "server_cpu_s_total": cpu_s,
        }
        if after is not None and before is not None:
            out["metrics_tcp_connections"] = after["tcp_connections"]
        print(
            f"R1 {side}: {connected}/{a.r1_connections} connections in {connect_s:.1f} s "
            f"(failed {failed or 'none'}); VmRSS {rss0 / MIB:.1f} → {rss1 / MIB:.1f} MiB "
            f"(+{(rss1 - rss0) / MIB:.1f} MiB, VmHWM {hwm / MIB:.1f}) = {per / KIB:.2f} KiB per "
            f"connection; open files limit {limit}"
            + (
                f"; /metrics edgemq_mqtt_connections{{transport=tcp}} {after['tcp_connections']:.0f}"
                if after
                else ""
            ),
            flush=True,
        )
        return out


def _profile_text(path: str, top: int = 30) -> str:
    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    out.write("\n--- by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", action="append", choices=BENCHES, help="m0, m1, m2, r1 (repeatable)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per benchmark (3)")
    p.add_argument("--publishers", type=int, default=4, help="generator processes (4)")
    p.add_argument("--connections", type=int, default=4, help="connections per publisher (4)")
    p.add_argument("--window", type=int, default=128, help="QoS 1 unacked per connection (128)")
    p.add_argument("--messages", type=int, default=400_000, help="QoS 1 per side-round")
    p.add_argument("--qos0-messages", type=int, default=2_000_000, help="QoS 0 per side-round")
    p.add_argument("--amqtt-messages", type=int, default=20_000, help="QoS 1 per amqtt round")
    p.add_argument("--warmup-share", type=float, default=0.25, help="warm-up / measured (0.25)")
    p.add_argument("--round-timeout", type=float, default=120.0, help="bound per phase, s")
    p.add_argument("--r1-connections", type=int, default=10_000, help="R1 idle connections")
    p.add_argument("--r1-concurrency", type=int, default=128, help="R1 connecting per publisher")
    p.add_argument("--r1-settle-s", type=float, default=3.0, help="R1 wait before VmRSS")
    p.add_argument("--no-r1-mosquitto", action="store_true", help="R1 on the node only")
    p.add_argument("--dir", default=None, help="parent directory for the temp dir (cwd)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    p.add_argument("--no-pin", action="store_true", help="do not pin server/generator CPUs")
    p.add_argument("--profile", action="store_true", help="one extra cProfile'd node side")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    # internal: server and publisher processes
    p.add_argument("--serve", choices=("control", "publisher"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--info", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--username", default="", help=argparse.SUPPRESS)
    p.add_argument("--password", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return args
    if min(args.rounds, args.publishers, args.connections, args.window) < 1:
        p.error("--rounds, --publishers, --connections and --window must be positive")
    if args.window > 1024:
        p.error("--window: the node pauses 3.1.1 readers at receive_maximum (1024)")
    if min(args.messages, args.qos0_messages, args.amqtt_messages, args.r1_connections) < 1:
        p.error("message and connection counts must be positive")
    wal = (1 + args.warmup_share) * (args.messages + args.qos0_messages) * FRAME_BYTES
    if wal > SEGMENT_BYTES * 0.95:
        p.error(
            f"a node side-round would write {wal / MIB:.0f} MiB: keep it under the 1 GiB segment"
        )
    args.benches = sorted(set(args.only or BENCHES), key=BENCHES.index)
    return args


# ------------------------------------------------------------------------ main
def run_all(args: argparse.Namespace, root: str, pin: tuple[int, int] | None) -> dict[str, Any]:
    kind = fs_type(root)
    if kind in ("tmpfs", "ramfs"):
        print(f"warning: {root} is on {kind}; fdatasync costs nothing there", file=sys.stderr)
    nofile = raise_nofile()
    load_start = loadavg()
    pin_text = (
        f"control plane and servers on CPU {pin[0]} (taskset -c {pin[0]}), "
        f"{args.publishers} publisher processes on CPU {pin[1]}"
        if pin
        else "not pinned (--no-pin, one CPU, or no taskset)"
    )
    conns = args.publishers * args.connections
    print(
        f"mqtt_ingest setup: {args.publishers} publishers x {args.connections} connections "
        f"(MQTT 3.1.1), QoS 1 window {args.window}/connection, {PAYLOAD_BYTES} B payloads on "
        f"'{TOPIC}'; per side-round QoS 1 {args.messages} msg (amqtt {args.amqtt_messages}), "
        f"QoS 0 {args.qos0_messages} msg, warm-up {args.warmup_share:g}x; {args.rounds} "
        f"rounds; {pin_text}; dir {root} ({kind}); RLIMIT_NOFILE {nofile[0]}/{nofile[1]}; "
        f"benches {','.join(args.benches)}; load average at start {load_start}",
        flush=True,
    )
    results: dict[str, Any] = {
        "benchmark": "M0/M1/M2/R1 mqtt_ingest",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "loadavg_start": load_start,
        "config": {
            "publishers": args.publishers,
            "connections_per_publisher": args.connections,
            "connections": conns,
            "window": args.window,
            "payload_bytes": PAYLOAD_BYTES,
            "topic": TOPIC,
            "qos1_messages": args.messages,
            "qos0_messages": args.qos0_messages,
            "amqtt_messages": args.amqtt_messages,
            "warmup_share": args.warmup_share,
            "rounds": args.rounds,
            "pinning": pin_text,
            "fs_type": kind,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "mosquitto": _version([shutil.which("mosquitto") or "mosquitto", "-h"]),
            "amqtt": _amqtt_version(),
            "endpoint": {
                "output_formats": ["segments"],
                "segment_bytes": SEGMENT_BYTES,
                "mqtt_config": MQTT_CONFIG,
            },
        },
        "targets": TARGETS,
    }
    bench = Bench(args, root, pin)
    lines: list[str] = []
    bench.start_control()
    try:
        want = set(args.benches)
        plan: dict[str, list[int]] = {}
        if want & {"m1", "m2"}:
            plan.setdefault("node", []).append(1)
        if "m0" in want:
            plan.setdefault("node", []).append(0)
        if "m1" in want:
            plan.setdefault("mosquitto", []).append(1)
        if "m0" in want:
            plan.setdefault("mosquitto", []).append(0)
        if "m2" in want:
            plan["amqtt"] = [1]
        sides = [s for s in SIDE_ORDER if s in plan]
        runs: dict[str, list[SideRun]] = {s: [] for s in sides}
        for r in range(args.rounds if sides else 0):
            order = sides if r % 2 == 0 else sides[::-1]
            got = {}
            for side in order:
                got[side] = bench.side_round(side, r, plan[side])
                runs[side].append(got[side])
            print(f"round {r + 1}/{args.rounds} (load average {loadavg()}):")
            for b, base, q in (
                ("m1", "mosquitto", "q1"),
                ("m0", "mosquitto", "q0"),
                ("m2", "amqtt", "q1"),
            ):
                if b not in want:
                    continue
                n, o = got["node"].phases[q], got[base].phases[q]
                print(f"  {b.upper()} ratio {n.load.msg_s / o.load.msg_s:.3f}")
                print("    " + n.line("node"))
                print("    " + o.line(base), flush=True)
        for b, base, q in (
            ("m1", "mosquitto", "q1"),
            ("m0", "mosquitto", "q0"),
            ("m2", "amqtt", "q1"),
        ):
            if b in want:
                res = _summary(b, base, q, runs, args)
                results[b] = res
                lines.append(res["line"])
        if args.profile and "node" in plan:
            prof = os.path.join(root, "node.prof")
            pr = bench.side_round("node", -1, plan["node"], profile_path=prof)
            texts = {}
            for q, ph in pr.phases.items():
                print(f"\nprofiled node side, {q} (not in the figures): {ph.line('node')}")
                path = f"{prof}.{q}"
                if os.path.exists(path):
                    texts[q] = _profile_text(path)
                    print(texts[q])
                    if args.keep:
                        print(f"profile kept in {path}")
                else:
                    print("no profile written (see the node's log)")
            results["profile_top"] = texts
        if "r1" in want:
            node = bench.r1("node")
            mosq = None if args.no_r1_mosquitto else bench.r1("mosquitto")
            ok = node["kib_per_connection"] <= TARGETS["r1_kib_per_connection"]
            line = (
                f"R1 mqtt_ingest: {node['kib_per_connection']:.1f} KiB RSS per connection "
                f"({node['connections']} idle connections, node VmRSS +"
                f"{(node['rss_after_bytes'] - node['rss_before_bytes']) / MIB:.0f} MiB to "
                f"{node['rss_after_bytes'] / MIB:.0f} MiB, open files limit {node['nofile_limit']})"
                f" target ≤ {TARGETS['r1_kib_per_connection']:.0f} KiB: "
                f"{'met' if ok else 'NOT met'}"
            )
            if mosq is not None:
                line += f"; mosquitto {mosq['kib_per_connection']:.1f} KiB (context)"
            results["r1"] = {"node": node, "mosquitto": mosq, "line": line, "met": ok}
            lines.append(line)
    finally:
        if bench.control is not None:
            bench.control.stop()
    results["loadavg_end"] = loadavg()
    print(f"\nload average at the end {results['loadavg_end']} (start {load_start})")
    for line in lines:
        print(line)
    results["summary_lines"] = lines
    return results


def _version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, timeout=10).stdout.decode()
        return out.splitlines()[0] if out else "unknown"
    return "unknown"


def _amqtt_version() -> str:
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("amqtt")
    return "unknown"


def _summary(
    b: str, base: str, q: str, runs: dict[str, list[SideRun]], args: argparse.Namespace
) -> dict[str, Any]:
    node = [x.phases[q] for x in runs["node"]]
    other = [x.phases[q] for x in runs[base]]
    nmsg = _median([p.load.msg_s for p in node])
    omsg = _median([p.load.msg_s for p in other])
    ratio = nmsg / omsg
    per_round = [n.load.msg_s / o.load.msg_s for n, o in zip(node, other, strict=True)]
    ncores = _median([p.server_cpu_s / p.load.elapsed_s for p in node])
    ocores = _median([p.server_cpu_s / p.load.elapsed_s for p in other])
    nus = _median([p.server_cpu_s / max(p.load.messages, 1) * 1e6 for p in node])
    ous = _median([p.server_cpu_s / max(p.load.messages, 1) * 1e6 for p in other])
    gen = max(p.load.gen_cpu_s / p.load.elapsed_s for p in node + other)
    gen_busy = max((p.gen_cpu_busy or 0.0) for p in node + other)
    gen_limited = any(p.generator_may_limit for p in node + other)
    srv_busy = {
        "node": _median([p.server_cpu_busy or 0.0 for p in node]),
        base: _median([p.server_cpu_busy or 0.0 for p in other]),
    }
    nrss = max(x.rss_bytes for x in runs["node"])
    orss = max(x.rss_bytes for x in runs[base])
    target = TARGETS[b]
    counted_ok = all(p.counted is not None and int(p.counted) == p.sent_total for p in node)
    qos_text = "QoS 1, PUBACK after fsync" if q == "q1" else "QoS 0 received (trailing QoS 1)"
    ratio_text = f"{ratio:.1f}x" if b == "m2" else f"{ratio:.2f}"
    line = (
        f"{b.upper()} mqtt_ingest: ratio {ratio_text} (node {_fmt_k(nmsg)} msg/s vs {base} "
        f"{_fmt_k(omsg)} msg/s, {qos_text}, {PAYLOAD_BYTES} B, "
        f"{args.publishers}x{args.connections} connections"
        + (f", window {args.window}" if q == "q1" else "")
        + f") server {ncores:.2f} vs {ocores:.2f} cores, {nus:.1f} vs {ous:.1f} µs/msg, RSS "
        f"{nrss / MIB:.0f} vs {orss / MIB:.0f} MiB; target ≥ {target:g}"
        f"{'x' if b == 'm2' else ''}: {'met' if ratio >= target else 'NOT met'}"
    )
    if not counted_ok:
        line += " [node /metrics records != sent]"
    if gen_limited:
        line += (
            f" [generator may be the limit: up to {gen:.2f} cores, its CPU up to {gen_busy:.0%} "
            "busy while a server's was not]"
        )
    print(
        f"{b.upper()} medians: node {nmsg:.0f} msg/s, {base} {omsg:.0f} msg/s; median of "
        f"per-round ratios {_median(per_round):.3f}; generator max {gen:.2f} cores (its CPU "
        f"{gen_busy:.0%} busy at most); server CPU busy: node {srv_busy['node']:.0%}, {base} "
        f"{srv_busy[base]:.0%}",
        flush=True,
    )
    return {
        "median": {
            "node_msg_s": nmsg,
            f"{base}_msg_s": omsg,
            "ratio": ratio,
            "median_of_round_ratios": _median(per_round),
            "node_server_cores": ncores,
            f"{base}_server_cores": ocores,
            "node_cpu_us_per_msg": nus,
            f"{base}_cpu_us_per_msg": ous,
            "generator_cores_max": gen,
            "generator_cpu_busy_max": gen_busy,
            "generator_may_limit": gen_limited,
            "server_cpu_busy_median": srv_busy,
            "node_rss_bytes_max": nrss,
            f"{base}_rss_bytes_max": orss,
        },
        "rounds": [
            {"node": n.summary(), base: o.summary(), "ratio": n.load.msg_s / o.load.msg_s}
            for n, o in zip(node, other, strict=True)
        ],
        "node_records_check": counted_ok,
        "met": ratio >= target,
        "line": line,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["--serve", "node"]:  # `edgemq node …` under cProfile (see --profile)
        return serve_node_profiled(argv[2:])
    args = parse_args(argv)
    if args.serve == "control":
        asyncio.run(serve_control(args.root, args.info))
        return 0
    if args.serve == "publisher":
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve_publisher(args))
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    pin = None
    if not args.no_pin and len(cpus) >= 2 and shutil.which("taskset"):
        pin = (cpus[0], cpus[1])
        os.sched_setaffinity(0, {pin[1]})  # before any child: the publishers inherit it
    with temp_root(args.dir, ".mqtt-ingest-", keep=args.keep) as root:
        results = run_all(args, root, pin)
    save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
