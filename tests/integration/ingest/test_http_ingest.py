"""HTTP ingest edge cases against a running node and control plane (DESIGN.md §3,
RELIABILITY.md INP / AUTH / OVL): every refusal answers its status in the one JSON error
shape and writes nothing to the WAL; every accepted request answers the right counts
and its records land in the raw Parquet; overload answers 503 with Retry-After; slow
clients are cut off by deadlines; /metrics, /healthz and /readyz.

One control plane and one node (small limits, 1 s header and body deadlines) serve the
whole module; tests that need other node settings start their own node against the
same control plane. Refused requests go to an endpoint that never accepts anything, so
"nothing written" is exact: its WAL holds zero bytes."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
import pytest
import pytest_asyncio
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from control.server import open_context
from control.services import keys
from control.services.common import ControlSettings
from ingest.node import Node
from ingest.runtime import WAL_DIR
from ingest.settings import Limits
from tests.support.postgres import free_port
from tests.support.stack import (
    ControlPlane,
    control_plane,
    node_settings,
    running_node,
    wait_for,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

KIB = 1024
BODY_BYTES_MAX = 64 * KIB
RECORD_BYTES_MAX = 16 * KIB
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
LIMITS = Limits(
    body_bytes_max=BODY_BYTES_MAX,
    record_bytes_max=RECORD_BYTES_MAX,
    header_timeout_s=HEADER_TIMEOUT_S,
    body_timeout_s=BODY_TIMEOUT_S,
    disk_reserve_bytes=16 * 1024 * 1024,
)
NDJSON = "application/x-ndjson"


@dataclass
class Stack:
    cp: ControlPlane
    node: Node
    http: aiohttp.ClientSession
    tmp: Path
    out: Path
    accepting: str
    """Endpoint with a local destination: accepted requests go here."""
    refusing: str
    """Endpoint that only ever receives refused requests: its WAL must stay empty."""
    foreign: str
    """Another account's endpoint."""
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.node.http_url


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("http-ingest")
    out = tmp / "objects"
    async with control_plane(str(tmp)) as cp:
        dest = await cp.local_destination(str(out))
        accepting = await cp.endpoint(dest["id"])
        refusing = await cp.endpoint(dest["id"])
        other = await _other_account(cp)
        foreign = await other.endpoint((await other.local_destination(str(tmp / "globex")))["id"])
        tokens = {scope: await cp.token(scope) for scope in ("ingest", "metrics")}
        settings = node_settings(cp, str(tmp / "node"), limits=LIMITS, long_poll_s=1)
        async with running_node(settings) as node:
            await wait_for(
                lambda: node.endpoints.snapshot.endpoint(foreign["id"]),
                what="the snapshot with every endpoint",
            )
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as http:
                yield Stack(
                    cp,
                    node,
                    http,
                    tmp,
                    out,
                    accepting["id"],
                    refusing["id"],
                    foreign["id"],
                    tokens,
                )


async def broken_destination(cp: ControlPlane, root: Path) -> str:
    """A local destination whose root is a file: every store call fails (permanently),
    so whatever an endpoint of it takes stays in the node's WAL."""
    await asyncio.to_thread(root.write_bytes, b"not a directory")
    dest = await cp.call(
        "POST",
        "/v1/destinations",
        {
            "name": f"broken-{root.name}",
            "bucket": "lake",
            "region": "local",
            "role_arn": "arn:aws:iam::000000000000:role/local",
            "endpoint_url": f"file://{root}",
        },
    )
    return str(dest["id"])


async def _other_account(cp: ControlPlane) -> ControlPlane:
    """A second tenant with its own admin key, created in the control plane's store the
    way the operator CLI does it."""
    async with open_context(cp.database_url, ControlSettings()) as ctx:
        account = await keys.create_account(ctx, "globex")
        key = await keys.insert_key(
            ctx,
            account_id=account["id"],
            name="globex",
            owner=None,
            scopes=["ingest", "metrics", "admin"],
        )
    return ControlPlane(cp.url, cp.database_url, cp.session, account["id"], key["api_key"])


# --------------------------------------------------------------------- helpers
def segment_bytes_on_disk(node: Node, endpoint_id: str) -> int:
    directory = Path(node.settings.data_dir) / WAL_DIR / endpoint_id
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.glob("seg-*"))


def wal_dirs(node: Node) -> set[str]:
    root = Path(node.settings.data_dir) / WAL_DIR
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def unshipped(node: Node, endpoint_id: str) -> int:
    runtime = node.endpoints.get(endpoint_id)
    return 0 if runtime is None else runtime.wal.unshipped_bytes


async def post(
    stack: Stack,
    path: str,
    body: bytes | Any = b"",
    *,
    headers: dict[str, str] | None = None,
    key: str | None = "default",
    method: str = "POST",
    content_type: str | None = NDJSON,
) -> tuple[int, dict[str, str], Any]:
    sent = dict(headers or {})
    if key == "default":
        sent.setdefault("X-API-Key", stack.cp.api_key)
    elif key is not None:
        sent["X-API-Key"] = key
    skip = []
    if content_type is None:
        skip.append("Content-Type")
    else:
        sent["Content-Type"] = content_type
    async with stack.http.request(
        method, stack.url + path, data=body, headers=sent, skip_auto_headers=skip
    ) as resp:
        text = await resp.text()
        return resp.status, dict(resp.headers), json.loads(text) if text else None


def assert_error_shape(status: int, headers: dict[str, str], body: Any) -> dict[str, Any]:
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert (
        {"status", "code", "message"}
        <= set(error)
        <= {
            "status",
            "code",
            "message",
            "line",
            "reason",
        }
    ), error
    assert error["status"] == status
    assert isinstance(error["code"], str)
    assert error["code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return dict(error)


def raw_records(out: Path, endpoint_id: str) -> list[bytes]:
    """Every record of the endpoint's raw Parquet files, as the bytes that were sent."""
    records: list[bytes] = []
    for path in sorted((out / "lake" / "loc" / endpoint_id / "parquet").glob("*/*.parquet")):
        table = pq.read_table(path, columns=["payload", "payload_bytes"]).to_pydict()
        for text, raw in zip(table["payload"], table["payload_bytes"], strict=True):
            records.append(text.encode() if text is not None else raw)
    return records


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6)


def zstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def ndjson(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def recordio(records: list[bytes]) -> bytes:
    return b"".join(b"%d\n%s\n" % (len(r), r) for r in records)


# ------------------------------------------------------------------- refusals
@dataclass(frozen=True)
class Refusal:
    name: str
    status: int
    code: str
    body: Callable[[], bytes] = lambda: ndjson([b'{"a": 1}'])
    path: str = "/ingest/{refusing}"
    headers: dict[str, str] | None = None
    key: str | None = "default"
    content_type: str | None = NDJSON
    method: str = "POST"
    line: int | None = None
    message: str = ""


def _lines_with_a_bad_third() -> bytes:
    return ndjson([b'{"n": 1}', b'{"n": 2}', b'{"n": 3', b'{"n": 4}'])


REFUSALS = [
    Refusal("an unknown endpoint is 404", 404, "endpoint_not_found", path="/ingest/nosuch"),
    Refusal(
        "an unknown endpoint named in Host is 404",
        404,
        "endpoint_not_found",
        path="/ingest",
        headers={"Host": "nosuch.ingest.local"},
    ),
    Refusal("no key is 401", 401, "unauthorized", key=None),
    Refusal("a bad key is 401", 401, "unauthorized", key="emq_live_" + "x" * 32),
    Refusal(
        "a Basic Authorization header is 401",
        401,
        "unauthorized",
        key=None,
        headers={"Authorization": "Basic dXNlcjpwYXNz"},
    ),
    Refusal(
        "a metrics-scope token is 403",
        403,
        "forbidden",
        key=None,
        headers={"Authorization": "Bearer {metrics_token}"},
    ),
    Refusal(
        "a wrong content type is 415",
        415,
        "unsupported_media_type",
        content_type="text/plain",
    ),
    Refusal("a missing content type is 415", 415, "unsupported_media_type", content_type=None),
    Refusal(
        "an unknown content encoding is 415",
        415,
        "unsupported_encoding",
        headers={"Content-Encoding": "br"},
    ),
    Refusal(
        "a bad JSON line is 400 naming it", 400, "invalid_json", _lines_with_a_bad_third, line=3
    ),
    Refusal(
        "invalid UTF-8 in a JSON record is 400",
        400,
        "invalid_json",
        lambda: ndjson([b'{"ok": 1}', b'{"s": "\xff\xfe"}']),
        line=2,
    ),
    Refusal(
        "JSON nested 8000 deep is 400",
        400,
        "invalid_json",
        lambda: b"[" * 8_000 + b"]" * 8_000,
        content_type="application/json",
    ),
    Refusal("an empty body is 400", 400, "empty_body", lambda: b"\n\n"),
    Refusal(
        "a declared body over the limit is 413",
        413,
        "body_too_large",
        lambda: b"x" * (BODY_BYTES_MAX + 1),
        content_type="application/octet-stream",
    ),
    Refusal(
        "a record over the limit is 413",
        413,
        "record_too_large",
        lambda: ndjson([b'{"n": 1}', b'{"pad": "' + b"p" * RECORD_BYTES_MAX + b'"}']),
        line=2,
    ),
    Refusal(
        "a gzip bomb is 413",
        413,
        "body_too_large",
        lambda: gzip_bytes(b"\n" * (16 * 1024 * 1024)),
        headers={"Content-Encoding": "gzip"},
        message="decoded body",
    ),
    Refusal(
        "a zstd bomb is 413",
        413,
        "body_too_large",
        lambda: zstd_bytes(b"\n" * (64 * 1024 * 1024)),
        headers={"Content-Encoding": "zstd"},
        message="decoded body",
    ),
    Refusal(
        "a truncated gzip stream is 400",
        400,
        "bad_encoding",
        lambda: gzip_bytes(ndjson([b'{"n": 1}'] * 100))[:-12],
        headers={"Content-Encoding": "gzip"},
    ),
    Refusal(
        "a bad RecordIO framing is 400",
        400,
        "bad_recordio",
        lambda: b"5\nabc",
        content_type="application/x-recordio",
    ),
    Refusal("GET is 405", 405, "method_not_allowed", method="GET", content_type=None),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.name for c in REFUSALS])
async def test_a_refused_request_answers_the_json_error_shape_and_writes_nothing(
    stack: Stack, case: Refusal
) -> None:
    node = stack.node
    dirs_before = wal_dirs(node)
    fill = {"refusing": stack.refusing, "metrics_token": stack.tokens["metrics"]}
    headers = {k: v.format(**fill) for k, v in (case.headers or {}).items()}
    status, got_headers, body = await post(
        stack,
        case.path.format(**fill),
        case.body() if case.method == "POST" else None,
        headers=headers,
        key=case.key,
        content_type=case.content_type,
        method=case.method,
    )
    assert status == case.status, body
    error = assert_error_shape(status, got_headers, body)
    assert error["code"] == case.code, error
    assert case.message in error["message"]
    if case.line is not None:
        assert error["line"] == case.line
        assert f"line {case.line}" in error["message"]
    if status == 405:
        assert "POST" in got_headers.get("Allow", "")
    if status == 401:
        assert stack.cp.api_key not in error["message"]
    # Nothing reached a WAL: the refusing endpoint is empty, no WAL appeared for a
    # name the caller made up.
    assert unshipped(node, stack.refusing) == 0
    assert segment_bytes_on_disk(node, stack.refusing) == 0
    assert wal_dirs(node) - dirs_before <= {stack.refusing}


async def test_another_accounts_endpoint_answers_exactly_like_an_unknown_one(
    stack: Stack,
) -> None:
    unknown = await post(stack, f"/ingest/{uuid.uuid4()}", ndjson([b'{"a": 1}']))
    foreign = await post(stack, f"/ingest/{stack.foreign}", ndjson([b'{"a": 1}']))
    assert foreign[0] == unknown[0] == 404
    assert foreign[2] == unknown[2]
    assert foreign[1]["Content-Type"] == unknown[1]["Content-Type"]
    by_host = await post(
        stack, "/ingest", ndjson([b'{"a": 1}']), headers={"Host": f"{stack.foreign}.ingest.local"}
    )
    assert by_host[0] == 404
    assert by_host[2] == unknown[2]
    assert unshipped(stack.node, stack.foreign) == 0
    assert segment_bytes_on_disk(stack.node, stack.foreign) == 0


async def test_one_bad_line_among_a_thousand_fails_the_whole_request_and_writes_nothing(
    stack: Stack,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    lines = [json.dumps({"n": i, "v": rng.random()}).encode() for i in range(1000)]
    bad = rng.randrange(1000)
    lines[bad] = lines[bad][:-1]  # drop the closing brace
    status, headers, body = await post(stack, f"/ingest/{stack.refusing}", ndjson(lines))
    assert status == 400
    error = assert_error_shape(status, headers, body)
    assert error["line"] == bad + 1
    assert unshipped(stack.node, stack.refusing) == 0
    assert segment_bytes_on_disk(stack.node, stack.refusing) == 0


async def test_a_chunked_body_over_the_limit_is_413_and_writes_nothing(stack: Stack) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        line = b'{"pad": "' + b"c" * 1000 + b'"}\n'
        for _ in range(BODY_BYTES_MAX // len(line) + 8):
            yield line

    status, headers, body = await post(stack, f"/ingest/{stack.refusing}", chunks())
    assert status == 413
    assert assert_error_shape(status, headers, body)["code"] == "body_too_large"
    assert unshipped(stack.node, stack.refusing) == 0
    assert segment_bytes_on_disk(stack.node, stack.refusing) == 0


# ------------------------------------------------------ malformed HTTP
def _head(stack: Stack, extra: str) -> str:
    return (
        f"POST /ingest/{stack.refusing} HTTP/1.1\r\nHost: x\r\nX-API-Key: {stack.cp.api_key}\r\n"
        f"Content-Type: {NDJSON}\r\nConnection: close\r\n{extra}"
    )


MALFORMED: dict[str, Callable[[Stack], str]] = {
    "Content-Length with Transfer-Encoding": lambda s: _head(
        s, 'Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{"a": 1}\r\n0\r\n\r\n'
    ),
    "two Content-Lengths": lambda s: _head(
        s, 'Content-Length: 8\r\nContent-Length: 3\r\n\r\n{"a": 1}'
    ),
    "a 20 KB header": lambda s: _head(s, f"X-Big: {'b' * 20_000}\r\nContent-Length: 2\r\n\r\n{{}}"),
    "200 headers": lambda s: _head(
        s, "".join(f"X-H{i}: v\r\n" for i in range(200)) + "Content-Length: 2\r\n\r\n{}"
    ),
}


async def _raw_answer(stack: Stack, request: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.node.bound_port)
    try:
        writer.write(request.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("name", MALFORMED)
async def test_malformed_http_is_refused_with_400_and_writes_nothing(
    stack: Stack, name: str
) -> None:
    status, _, _ = await _raw_answer(stack, MALFORMED[name](stack))
    assert status == 400
    assert unshipped(stack.node, stack.refusing) == 0
    assert segment_bytes_on_disk(stack.node, stack.refusing) == 0


async def test_malformed_http_is_answered_in_the_json_error_shape(stack: Stack) -> None:
    status, headers, body = await _raw_answer(stack, MALFORMED["a 20 KB header"](stack))
    assert status == 400
    assert_error_shape(status, headers, json.loads(body))


# ------------------------------------------------------------------ acceptance
@dataclass(frozen=True)
class Accepted:
    name: str
    content_type: str
    encode: Callable[[list[bytes]], bytes]
    records: Callable[[str], list[bytes]]
    encoding: str | None = None
    auth: str = "key"
    by_host: bool = False


def _json_lines(tag: str) -> list[bytes]:
    return [json.dumps({"tag": tag, "i": i}).encode() for i in range(25)]


def _opaque(tag: str) -> list[bytes]:
    rng = random.Random(tag)
    return [tag.encode() + b"\x00" + rng.randbytes(rng.randrange(1, 300)) for _ in range(7)]


ACCEPTED = [
    Accepted("NDJSON", NDJSON, ndjson, _json_lines),
    Accepted("JSON Lines", "application/jsonl", ndjson, _json_lines),
    Accepted("gzip NDJSON", NDJSON, lambda r: gzip_bytes(ndjson(r)), _json_lines, "gzip"),
    Accepted("zstd NDJSON", NDJSON, lambda r: zstd_bytes(ndjson(r)), _json_lines, "zstd"),
    Accepted(
        "one JSON value",
        "application/json; charset=utf-8",
        lambda r: b"  " + r[0] + b"\n",
        lambda tag: [json.dumps({"tag": tag, "list": [1, 2, {"x": None}]}).encode()],
    ),
    Accepted("RecordIO", "application/x-recordio", recordio, _opaque),
    Accepted(
        "octet-stream",
        "application/octet-stream",
        lambda r: r[0],
        lambda tag: [tag.encode() + b"\x00" + random.Random(tag).randbytes(5000)],
    ),
    Accepted("NDJSON with an ingest token", NDJSON, ndjson, _json_lines, auth="jwt"),
    Accepted("NDJSON addressed by Host", NDJSON, ndjson, _json_lines, by_host=True),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.name for c in ACCEPTED])
async def test_an_accepted_request_answers_its_counts_and_its_records_land_in_raw_parquet(
    stack: Stack, case: Accepted
) -> None:
    tag = f"{case.name}-{uuid.uuid4()}"
    records = case.records(tag)
    headers: dict[str, str] = {}
    if case.encoding:
        headers["Content-Encoding"] = case.encoding
    key: str | None = "default"
    if case.auth == "jwt":
        key = None
        headers["Authorization"] = f"Bearer {stack.tokens['ingest']}"
    path = f"/ingest/{stack.accepting}"
    if case.by_host:
        path = "/ingest"
        headers["Host"] = f"{stack.accepting}.ingest.local:{stack.node.bound_port}"
    status, _, answer = await post(
        stack,
        path,
        case.encode(records),
        headers=headers,
        key=key,
        content_type=case.content_type,
    )
    assert status == 200, answer
    assert answer["accepted"] == len(records)
    assert answer["bytes"] == sum(map(len, records))

    def landed() -> list[bytes]:
        return [r for r in raw_records(stack.out, stack.accepting) if tag.encode() in r]

    found = await wait_for(
        lambda: len(landed()) >= len(records) and landed(), what=f"{case.name} in raw Parquet"
    )
    assert Counter(found) == Counter(records)


# ------------------------------------------------------------- deleted endpoint
async def test_a_deleted_endpoint_answers_404_once_the_node_has_the_snapshot_and_keeps_its_data(
    stack: Stack,
) -> None:
    cp, node = stack.cp, stack.node
    endpoint = await cp.endpoint(await broken_destination(cp, stack.tmp / "deleted-root"))
    await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint["id"]), what="the endpoint")
    status, _, answer = await post(stack, f"/ingest/{endpoint['id']}", ndjson([b'{"k": 1}']))
    assert status == 200, answer
    held = unshipped(node, endpoint["id"])
    assert held > 0
    await node.sync.heartbeat_once()  # the control plane learns the node holds data
    epoch = node.config_epoch
    await cp.call("DELETE", f"/v1/endpoints/{endpoint['id']}", expect=204)
    await wait_for(lambda: node.config_epoch > epoch, what="the snapshot after the delete")
    kept = node.endpoints.snapshot.endpoint(endpoint["id"])
    assert kept is None or not kept.accepting
    gone = await post(stack, f"/ingest/{endpoint['id']}", ndjson([b'{"k": 2}']))
    unknown = await post(stack, f"/ingest/{uuid.uuid4()}", ndjson([b'{"k": 2}']))
    assert gone[0] == 404
    assert gone[2] == unknown[2]
    assert unshipped(node, endpoint["id"]) == held, "the acknowledged record is kept"


# -------------------------------------------------------------- 503 overload
async def _started(stack: Stack, name: str, **overrides: Any) -> Node:
    settings = node_settings(stack.cp, str(stack.tmp / name), long_poll_s=1, **overrides)
    node = Node(settings)
    await node.start()
    return node


async def post_to(
    http: aiohttp.ClientSession, url: str, key: str, body: bytes
) -> tuple[int, dict[str, str], Any]:
    headers = {"X-API-Key": key, "Content-Type": NDJSON}
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


def assert_overloaded(
    status: int, headers: dict[str, str], body: Any, reason: str, code: str = "overloaded"
) -> None:
    assert status == 503, body
    error = assert_error_shape(status, headers, body)
    assert (error["code"], error["reason"]) == (code, reason)
    assert headers["Retry-After"] == "1"


async def test_an_endpoint_over_its_unshipped_quota_answers_503_backlog_and_keeps_what_it_took(
    stack: Stack,
) -> None:
    endpoint = await stack.cp.endpoint(await broken_destination(stack.cp, stack.tmp / "full-root"))
    limits = Limits(unshipped_bytes_max=8 * KIB, disk_reserve_bytes=16 * 1024 * 1024)
    node = await _started(stack, "backlog-node", limits=limits, drain_deadline_s=0.5)
    try:
        await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint["id"]), what="config")
        url = f"{node.http_url}/ingest/{endpoint['id']}"
        body = ndjson([json.dumps({"pad": "b" * 1000, "i": i}).encode() for i in range(3)])
        accepted_bytes = 0
        for _ in range(20):
            status, headers, answer = await post_to(stack.http, url, stack.cp.api_key, body)
            if status != 200:
                break
            accepted_bytes += answer["bytes"]
        assert_overloaded(status, headers, answer, "backlog")
        assert accepted_bytes > limits.unshipped_bytes_max
        assert unshipped(node, endpoint["id"]) >= accepted_bytes
        text = await _metrics_text(stack.http, node.http_url)
        assert _sample(text, "edgemq_ingest_rejected_total", reason="backlog") == 1
    finally:
        await node.stop()


async def test_a_node_under_its_disk_reserve_answers_503_disk(stack: Stack) -> None:
    node = await _started(stack, "disk-node", limits=Limits(disk_reserve_bytes=1 << 60))
    try:
        await wait_for(lambda: node.admission.free_disk_bytes is not None, what="a disk sample")
        await wait_for(lambda: node.config_epoch > 0, what="config")
        url = f"{node.http_url}/ingest/{stack.accepting}"
        status, headers, answer = await post_to(
            stack.http, url, stack.cp.api_key, ndjson([b'{"d": 1}'])
        )
        assert_overloaded(status, headers, answer, "disk")
        assert unshipped(node, stack.accepting) == 0
        text = await _metrics_text(stack.http, node.http_url)
        assert _sample(text, "edgemq_ingest_rejected_total", reason="disk") == 1
    finally:
        await node.stop()


async def test_a_draining_node_answers_503_draining_and_is_not_ready(stack: Stack) -> None:
    dest = await stack.cp.local_destination(str(stack.tmp / "drain-objects"))
    endpoint = await stack.cp.endpoint(dest["id"])
    node = await _started(stack, "drain-node")
    try:
        await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint["id"]), what="config")
        url = f"{node.http_url}/ingest/{endpoint['id']}"
        status, _, answer = await post_to(
            stack.http, url, stack.cp.api_key, ndjson([b'{"before": 1}'])
        )
        assert status == 200, answer
        assert await node.drain()
        status, headers, answer = await post_to(
            stack.http, url, stack.cp.api_key, ndjson([b'{"after": 1}'])
        )
        assert_overloaded(status, headers, answer, "draining", code="draining")
        async with stack.http.get(f"{node.http_url}/readyz") as resp:
            assert resp.status == 503
            assert "draining" in (await resp.json())["problems"]
    finally:
        await node.stop()


# ---------------------------------------------------------------- slow clients
async def test_a_client_sending_headers_slower_than_the_header_deadline_is_disconnected(
    stack: Stack,
) -> None:
    head = (
        f"POST /ingest/{stack.refusing} HTTP/1.1\r\nHost: x\r\nX-API-Key: {stack.cp.api_key}\r\n"
        f"Content-Type: {NDJSON}\r\nContent-Length: 9\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.node.bound_port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    eof = asyncio.ensure_future(reader.read())
    sent = 0
    try:
        # One byte every 50 ms: the head would take ~10 s; the node cuts it at ~1 s.
        while sent < len(head) and not eof.done() and loop.time() - started < 10:
            writer.write(head[sent : sent + 1])
            sent += 1
            try:
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait([eof], timeout=0.05)
        answer = await asyncio.wait_for(eof, timeout=5)
        closed_after_s = loop.time() - started
    finally:
        writer.close()
    print(f"closed after {closed_after_s:.2f}s with {sent} of {len(head)} head bytes sent")
    assert sent < len(head), "the whole head went through"
    assert answer == b"" or not answer.startswith(b"HTTP/1.1 200")
    assert HEADER_TIMEOUT_S * 0.8 <= closed_after_s <= HEADER_TIMEOUT_S + 3
    assert unshipped(stack.node, stack.refusing) == 0


async def test_a_body_that_stalls_past_the_body_deadline_gets_408_and_writes_nothing(
    stack: Stack,
) -> None:
    head = (
        f"POST /ingest/{stack.refusing} HTTP/1.1\r\nHost: x\r\nX-API-Key: {stack.cp.api_key}\r\n"
        f"Content-Type: {NDJSON}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.node.bound_port)
    loop = asyncio.get_running_loop()
    try:
        writer.write(head + b'{"stalled": ')
        await writer.drain()
        started = loop.time()
        status_line = await asyncio.wait_for(reader.readline(), timeout=BODY_TIMEOUT_S + 3)
        answered_after_s = loop.time() - started
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip()] = value.strip()
        body = json.loads(await reader.readexactly(int(headers["Content-Length"])))
    finally:
        writer.close()
    assert assert_error_shape(408, headers, body)["code"] == "body_timeout"
    assert BODY_TIMEOUT_S * 0.8 <= answered_after_s <= BODY_TIMEOUT_S + 3
    assert unshipped(stack.node, stack.refusing) == 0
    assert segment_bytes_on_disk(stack.node, stack.refusing) == 0


async def test_a_stalled_body_connection_is_closed_soon_after_its_408(stack: Stack) -> None:
    head = (
        f"POST /ingest/{stack.refusing} HTTP/1.1\r\nHost: x\r\nX-API-Key: {stack.cp.api_key}\r\n"
        f"Content-Type: {NDJSON}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.node.bound_port)
    loop = asyncio.get_running_loop()
    try:
        writer.write(head + b'{"stalled": ')
        await writer.drain()
        started = loop.time()
        status_line = await asyncio.wait_for(reader.readline(), timeout=BODY_TIMEOUT_S + 3)
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        try:
            await asyncio.wait_for(reader.read(), timeout=3)
        except TimeoutError:
            raise AssertionError(
                f"the connection was still open {loop.time() - started:.1f}s after the body "
                "stalled (the node keeps reading a timed-out body)"
            ) from None
    finally:
        writer.close()


async def test_credentials_are_refused_before_the_body_is_read(stack: Stack) -> None:
    head = (
        f"POST /ingest/{stack.refusing} HTTP/1.1\r\nHost: x\r\nX-API-Key: emq_live_{'z' * 32}\r\n"
        f"Content-Type: {NDJSON}\r\nContent-Length: 60000\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.node.bound_port)
    started = time.monotonic()
    try:
        writer.write(head)  # and never the body
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 401"), status_line
    assert time.monotonic() - started < BODY_TIMEOUT_S, "the node waited for the body"


# ------------------------------------------------------- metrics and probes
async def _metrics_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when the labelled child does not exist yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_metrics_expose_the_node_families_and_count_requests(stack: Stack) -> None:
    before = await _metrics_text(stack.http, stack.url)
    families = {f.name for f in text_string_to_metric_families(before)}
    assert {
        "edgemq_http_requests",
        "edgemq_ingest_records",
        "edgemq_ingest_bytes",
        "edgemq_ingest_rejected",
        "edgemq_wal_append_seconds",
        "edgemq_wal_fsync_seconds",
        "edgemq_wal_unshipped_bytes",
        "edgemq_delivery_commits",
        "edgemq_config_epoch",
    } <= families
    lines = [json.dumps({"metrics": i}).encode() for i in range(5)]
    status, _, _ = await post(stack, f"/ingest/{stack.accepting}", ndjson(lines))
    assert status == 200
    status, _, _ = await post(stack, f"/ingest/{stack.accepting}", b"{", content_type="text/csv")
    assert status == 415
    after = await _metrics_text(stack.http, stack.url)
    route = "/ingest/{endpoint_id}"

    def delta(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert delta("edgemq_http_requests_total", route=route, status="200") == 1
    assert delta("edgemq_http_requests_total", route=route, status="415") == 1
    assert delta("edgemq_ingest_records_total", endpoint=stack.accepting, transport="http") == 5
    assert delta("edgemq_ingest_bytes_total", endpoint=stack.accepting, transport="http") == sum(
        map(len, lines)
    )
    assert delta("edgemq_wal_fsync_seconds_count") >= 1
    assert delta("edgemq_wal_append_seconds_count") == 1
    assert _sample(after, "edgemq_config_epoch") == stack.node.config_epoch


async def test_healthz_is_ok_and_readyz_and_ingest_wait_for_the_first_snapshot(
    stack: Stack,
) -> None:
    async with stack.http.get(f"{stack.url}/healthz") as resp:
        assert resp.status == 200
    async with stack.http.get(f"{stack.url}/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["config_epoch"] == stack.node.config_epoch
    # A node that has never reached a control plane is alive but not ready.
    settings = node_settings(
        stack.cp,
        str(stack.tmp / "lonely-node"),
        control_url=f"http://127.0.0.1:{free_port()}",
        control_timeout_s=0.5,
    )
    async with running_node(settings) as lonely:
        async with stack.http.get(f"{lonely.http_url}/healthz") as resp:
            assert resp.status == 200
        async with stack.http.get(f"{lonely.http_url}/readyz") as resp:
            assert resp.status == 503
            assert "no config snapshot yet" in (await resp.json())["problems"]
        # It knows no keys yet: valid credentials get "retry later", not 401.
        status, headers, body = await post_to(
            stack.http,
            f"{lonely.http_url}/ingest/{stack.accepting}",
            stack.cp.api_key,
            ndjson([b"{}"]),
        )
        assert_overloaded(status, headers, body, "no_config", code="not_ready")
    assert not wal_dirs(lonely), "no WAL for a request it could not check"
