"""The node's aiohttp runner, adjusted for an ingest edge:

- request bodies are not decompressed by aiohttp (`auto_decompress=False`): the
  handler does it with a bound (ingest/body.py), and unsupported codings get a JSON 415;
- errors aiohttp's HTTP parser answers itself (malformed request line, huge headers,
  Content-Length + Transfer-Encoding, …) use the JSON error shape of every other answer
  instead of plain text, and are logged at debug level (they are the client's fault);
- `lingering_time` is short: after a 408/413 the unread rest of a body is not waited
  for longer than a second;
- at most `http_connections_max` connections are open at once (ADR 0014). The count
  is taken when a connection is accepted; one over the cap gets no aiohttp handler
  (no parser, no read buffers) but a `_Refusal`: it reads at most the request line,
  answers a fixed 503 `connections` (Retry-After, the JSON error shape) and closes.
  What the client sends meanwhile (its body) is discarded unread, and the connection
  is closed `REFUSAL_LINGER_S` after it was accepted at the latest. `GET /healthz`
  is answered 200 even then (the process is up: a liveness probe must not restart an
  overloaded node). A connection that becomes a WebSocket (`/mqtt`) stops counting:
  MQTT's own `connections_max` covers it.

aiohttp builds one `RequestHandler` per connection from its `Server`; overriding
`handle_error` and choosing the protocol per connection needs our own
`Server.__call__`, which `JsonErrorRunner._make_server` installs. Tests
(tests/integration/ingest/test_http_ingest.py, test_http_connections.py) pin the
behaviour.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http_websocket import WebSocketReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from .admission import Admission
from .http_app import NODE_KEY

log = logging.getLogger(__name__)
REFUSAL_LINGER_S = 1.0
"""A refused connection is closed this long after it was accepted at the latest."""
REQUEST_LINE_BYTES_MAX = 1024
"""A refused connection's request line is looked for in this many bytes at most."""
REFUSALS_PER_CONNECTION = 8
"""Refused connections still open (waiting for their request line or for the client to
close after the answer) may number this many times `http_connections_max`; beyond,
a new connection is closed at once without an answer. A refusal holds a few KiB (no
read buffers), so even a burst of 8x the cap costs little memory."""
REFUSAL_MESSAGE = "the node is at its HTTP connection limit; retry later"


def _raw_response(status: str, body: dict[str, Any], *extra_headers: str) -> bytes:
    data = json.dumps(body).encode()
    head = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(data)}",
        *extra_headers,
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def refusal_response(retry_after_s: int) -> bytes:
    """The 503 of a connection over the cap, in the shape of every other 503."""
    error = {"status": 503, "code": "overloaded", "message": REFUSAL_MESSAGE}
    return _raw_response(
        "503 Service Unavailable",
        {"error": {**error, "reason": "connections"}},
        f"Retry-After: {retry_after_s}",
    )


HEALTHZ_RESPONSE = _raw_response("200 OK", {"status": "ok"})


class _JsonErrorHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling request", exc_info=exc)
        else:
            log.debug("refused malformed request: %s", exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        body = {
            "error": {
                "status": status,
                "code": "bad_request" if status == 400 else reason.lower().replace(" ", "_"),
                "message": (message or reason) if status < 500 else reason,
            }
        }
        response = web.Response(
            status=status, text=json.dumps(body), content_type="application/json"
        )
        response.force_close()
        return response


class _CountedHandler(_JsonErrorHandler):
    """A connection under the cap: released when it closes or becomes a WebSocket."""

    def __init__(self, server: Server, admission: Admission, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._admission: Admission | None = admission

    def _release(self) -> None:
        if self._admission is not None:
            self._admission.close_connection()
            self._admission = None

    def set_parser(self, parser: WebSocketReader, data_received_cb: Any = None) -> None:
        # Only a WebSocket upgrade (after its 101) replaces the HTTP parser.
        super().set_parser(parser, data_received_cb)
        self._release()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._release()
        super().connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """A connection over the cap: request line (bounded) → fixed answer → close."""

    def __init__(self, server: _JsonErrorServer, admission: Admission) -> None:
        self._server = server
        self._admission = admission
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._answered = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self._transport = transport = cast(asyncio.Transport, transport)
        refusals = self._server.refusals
        limit = REFUSALS_PER_CONNECTION * self._admission.limits.http_connections_max
        if len(refusals) >= limit:
            # A flood beyond what is worth answering: close without a word.
            self._admission.refused("connections")
            self._answered = True
            transport.close()
            return
        refusals.add(self)
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, self.close)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # the body (or anything else): discarded, never buffered
        self._head += data
        if b"\n" in self._head or len(self._head) >= REQUEST_LINE_BYTES_MAX:
            self._answer()

    def eof_received(self) -> bool:
        self._answer()
        return False  # close our side too once the answer is written

    def _answer(self) -> None:
        if self._answered or self._transport is None:
            return
        self._answered = True
        if self._head.startswith(b"GET /healthz ") or self._head.startswith(b"GET /healthz?"):
            self._transport.write(HEALTHZ_RESPONSE)
        else:
            self._admission.refused("connections")
            self._transport.write(self._server.refusal)
        self._head = b""
        if self._transport.can_write_eof():
            self._transport.write_eof()  # the client reads to EOF; we keep discarding

    def close(self) -> None:
        """The deadline (or shutdown): answer if not done yet, then close."""
        self._answer()
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._server.refusals.discard(self)


class _JsonErrorServer(Server):
    # Set by JsonErrorRunner._make_server (the instance's class is swapped, no __init__).
    admission: Admission | None
    refusal: bytes
    refusals: set[_Refusal]

    def __call__(self) -> RequestHandler:
        admission = self.admission
        if admission is None:
            return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)
        if not admission.open_connection():
            # Not a RequestHandler: the loop only needs an asyncio.Protocol.
            return _Refusal(self, admission)  # type: ignore[return-value]
        return _CountedHandler(self, admission, loop=self._loop, **self._kwargs)

    def pre_shutdown(self) -> None:
        for refusal in list(self.refusals):
            refusal.close()
        super().pre_shutdown()


class JsonErrorRunner(web.AppRunner):
    """The runner of the node's app; connections are capped by the node's admission
    (`Limits.http_connections_max`) when the app carries a node."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("auto_decompress", False)
        kwargs.setdefault("lingering_time", 1.0)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        assert isinstance(server, _JsonErrorServer)
        node = self.app.get(NODE_KEY)
        server.admission = node.admission if node is not None else None
        server.refusal = refusal_response(node.settings.limits.retry_after_s if node else 1)
        server.refusals = set()
        return server
