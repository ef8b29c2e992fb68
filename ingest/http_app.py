"""HTTP ingest (DESIGN.md §3) and the node's operational endpoints.

`POST /ingest/{endpoint_id}` and `POST /ingest` (endpoint = first label of `Host`).
Order of checks, cheapest first, so a refused request costs little and writes nothing:
a config snapshot applied (else 503 `not_ready`: a node that knows no keys yet must not
call valid credentials invalid) → auth (401/403) → endpoint known and the caller's (else
404, same for another account's endpoint) → content type (415) → declared length (413)
→ admission (503) → body read under a deadline (408, 413) → decode and validate
(400/413/415) → admission again with the real size → one WAL append for all records →
200 after the fsync covering them.

Header deadline: aiohttp's keep-alive timer also closes a connection that has not
delivered a complete request head within `keepalive_timeout`, so the node sets it to
`header_timeout_s` (idle keep-alive connections are closed after the same time).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import HttpVersion11, hdrs, web

from wal import WalClosed, WalFailed, WalFull

from .auth import AuthError
from .body import BodyError, FramedRecords, content_kind, decode_content, frame_records
from .mqtt.websocket import websocket_handler

if TYPE_CHECKING:
    from .node import Node

_content_kind = functools.lru_cache(maxsize=256)(content_kind)  # bounded; errors not cached
OFFLOAD_BODY_BYTES = 256 * 1024
"""Bodies larger than this are decoded and validated in a thread."""
NODE_KEY: web.AppKey[Node] = web.AppKey("node", object)  # type: ignore[arg-type]


def error_response(
    status: int, code: str, message: str, *, retry_after_s: int | None = None, **extra: object
) -> web.Response:
    body: dict[str, object] = {"status": status, "code": code, "message": message, **extra}
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return web.Response(
        status=status,
        text=json.dumps({"error": body}),
        content_type="application/json",
        headers=headers,
    )


def host_label(host: str | None) -> str | None:
    if not host:
        return None
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    label = name.split(".", 1)[0]
    return label or None


def _refuse(node: Node, reason: str) -> web.Response:
    node.admission.refused(reason)
    messages = {
        "draining": "the node is shutting down",
        "wal_failed": "the endpoint's write-ahead log failed on this node",
        "disk": "the node is low on disk space",
        "backlog": "the endpoint's delivery backlog is full",
        "inflight": "the node is at its in-flight limit",
        "wal_full": "the endpoint's write-ahead log queue is full",
        "no_config": "the node has no configuration from the control plane yet",
    }
    codes = {"draining": "draining", "wal_failed": "wal_failed", "no_config": "not_ready"}
    return error_response(
        503,
        codes.get(reason, "overloaded"),
        messages.get(reason, reason) + "; retry later",
        retry_after_s=node.settings.limits.retry_after_s,
        reason=reason,
    )


async def ingest(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    limits = node.settings.limits
    endpoint_id = request.match_info.get("endpoint_id") or host_label(request.host)
    if node.config_epoch == 0:
        # No snapshot yet (a first start still reaching the control plane): this node
        # knows no keys and no endpoints, which says nothing about the request.
        return _refuse(node, "no_config")
    try:
        # Credentials first: without them nobody learns which endpoint ids exist.
        caller = node.auth.authenticate_headers(
            request.headers.get("X-API-Key"), request.headers.get("Authorization")
        )
        found = node.endpoints.lookup(endpoint_id) if endpoint_id else None
        endpoint = node.auth.authorize(caller, found if found and found.accepting else None)
    except AuthError as err:
        return error_response(err.status, err.code, err.message)
    try:
        kind = _content_kind(request.headers.get("Content-Type"))
    except BodyError as err:
        return web.json_response(err.to_json(), status=err.status)
    declared = request.content_length
    if declared is not None and declared > limits.body_bytes_max:
        return error_response(
            413, "body_too_large", f"the body is larger than {limits.body_bytes_max} bytes"
        )
    # From its read until its fsync a body is in this process's memory, so it counts as
    # in flight from here: the declared length, or the body limit for a chunked body.
    # Without this reservation every request passing this check would read its body at
    # once (memory unbounded by `inflight_bytes_max`) and the excess would get its 503
    # only after reading and parsing it (tests/fault/test_overload.py, OVL-04).
    reserved = declared if declared is not None else limits.body_bytes_max
    admission = node.admission
    # The WAL is opened only for a request that will be appended (refusals open nothing).
    runtime = node.endpoints.get(endpoint.id)
    reason = admission.refuse_reason(runtime.wal if runtime else None, reserved)
    if reason is not None:
        return _refuse(node, reason)
    admission.add_inflight(reserved)
    try:
        try:
            if request.content.is_eof():  # already buffered (small bodies): no timer needed
                data = await request.read()
            else:
                async with asyncio.timeout(limits.body_timeout_s):
                    data = await request.read()
        except TimeoutError:
            return error_response(408, "body_timeout", "the body did not arrive in time")
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                413, "body_too_large", f"the body is larger than {limits.body_bytes_max} bytes"
            )
        encoding = request.headers.get("Content-Encoding")

        # The frames are built with the records (one pass, ingest.body.frame_records),
        # stamped with the time the body was parsed.
        tenant, ts_ms = endpoint.tenant, node.clock.time_ms()

        def parse() -> FramedRecords:
            body = decode_content(data, encoding, node.body_limits)
            return frame_records(body, kind, node.body_limits, tenant=tenant, ts_ms=ts_ms)

        try:
            framed = await asyncio.to_thread(parse) if len(data) > OFFLOAD_BODY_BYTES else parse()
        except BodyError as err:
            return web.json_response(err.to_json(), status=err.status)
        nbytes = framed.nbytes
        if runtime is None:
            if admission.draining:
                return _refuse(node, "draining")
            runtime = await node.endpoints.open(endpoint.id)
    finally:
        # Handed over to the append's own count below, with no await in between.
        admission.done_inflight(reserved)
    wal = runtime.wal
    reason = admission.refuse_reason(wal, nbytes)
    if reason is not None:
        return _refuse(node, reason)
    started = time.perf_counter()
    try:
        future = wal.append_encoded(framed.frames, framed.records)
    except WalFull:
        return _refuse(node, "wal_full")
    except WalFailed:
        return _refuse(node, "wal_failed")
    except WalClosed:
        return _refuse(node, "draining")
    admission.add_inflight(nbytes)
    future.add_done_callback(lambda _: admission.done_inflight(nbytes))
    try:
        ack = await asyncio.shield(future)
    except WalFailed as err:
        if err.maybe_written:
            # Written, fsync failed: recovery may keep these records. Not a refusal:
            # a 500 tells the client the outcome is unknown (retry; duplicates possible).
            node.admission.refused("wal_failed")
            return error_response(
                500,
                "wal_failed",
                "the write-ahead log failed while writing these records; they may or "
                "may not be stored — retry",
            )
        return _refuse(node, "wal_failed")
    except WalClosed:
        return _refuse(node, "draining")
    node.metrics.ingested(
        endpoint.id, "http", framed.records, nbytes, time.perf_counter() - started
    )
    return web.json_response(
        {"accepted": framed.records, "bytes": nbytes, "segment_seq": ack.seq, "epoch": ack.epoch}
    )


async def metrics_handler(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    node.refresh_gauges()
    return web.Response(body=node.metrics.render(), content_type="text/plain", charset="utf-8")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    problems = node.readiness_problems()
    if problems:
        return web.json_response({"status": "not_ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready", "config_epoch": node.config_epoch})


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` is answered as aiohttp's default handler does; any other
    expectation gets its 417 in the JSON error shape (aiohttp's own 417 is plain text
    and, raised before the middleware runs, escapes `count_and_shape_errors`)."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
        return None
    return error_response(417, "expectation_failed", "only Expect: 100-continue is supported")


@web.middleware
async def count_and_shape_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Requests by route and status; aiohttp's own 404/405/413 answers in the JSON shape."""
    node = request.app[NODE_KEY]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as err:
        response = error_response(err.status, err.reason.lower().replace(" ", "_"), err.reason)
        if err.status == 405:
            response.headers["Allow"] = err.headers.get("Allow", "")
    node.metrics.request_done(route, response.status)
    return response


def build_app(node: Node) -> web.Application:
    app = web.Application(
        client_max_size=node.settings.limits.body_bytes_max,
        middlewares=[count_and_shape_errors],
    )
    app[NODE_KEY] = node
    expect = expect_continue
    app.router.add_post("/ingest", ingest, expect_handler=expect)
    app.router.add_post("/ingest/{endpoint_id}", ingest, expect_handler=expect)
    app.router.add_get("/metrics", metrics_handler, expect_handler=expect)
    app.router.add_get("/healthz", healthz, expect_handler=expect)
    app.router.add_get("/readyz", readyz, expect_handler=expect)
    # MQTT over WebSocket (ingest/mqtt)
    app.router.add_get("/mqtt", websocket_handler(node), expect_handler=expect)
    return app
