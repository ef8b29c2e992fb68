"""A small asyncio HTTP/1.1 fault proxy for tests (S3 behind it: moto's server).

    proxy = FaultProxy("127.0.0.1", moto_port)
    await proxy.start()          # listens on 127.0.0.1, a free port: proxy.url
    proxy.fail_next(1, "error_503", when=lambda method, target: method == "PUT")
    ...
    await proxy.stop()

Each client connection is served one request at a time: the request line, headers and
body (Content-Length or chunked; `Expect: 100-continue` is answered by the proxy) are
read completely, an action is chosen, and the request is forwarded on a fresh upstream
connection (`Connection: close`, body re-framed with Content-Length). The upstream
response is read completely and re-sent with a Content-Length, keeping the client's
connection alive. `target` is the request target as sent (path and query string), so
rules can tell S3 operations apart (`?uploads`, `partNumber=`).

Actions:
    pass          forward and answer
    error_503     answer 503 with an S3 error body (<Code>SlowDown</Code>), not forwarded
    error_500     answer 500 with <Code>InternalError</Code>, not forwarded
    error:<status>:<Code>   answer that status with that S3 error code, not forwarded
                  (e.g. `error:400:ExpiredToken`, `error:403:AccessDenied`)
    delay:<s>     wait <s> seconds, then forward
    blackhole     never answer (the connection stays open until the client gives up)
    reset_before  reset the client connection (RST) without forwarding
    reset_after   forward, read the whole upstream response, then RST the client:
                  the ambiguous PUT, applied upstream but never acknowledged
    truncate      forward, then send the headers and half of the body and close

Choosing the action, first match wins: `fail_next(n, action, when=...)` entries (each
used n times), `set_rule(predicate, action)` rules, the schedule callable
`(method, target, index) -> action` (`set_schedule`, or `random_schedule(seed, rates)`,
which prints its seed), else `pass`. `index` counts requests from 0. Every request is
logged as an Exchange(method, target, action) in `proxy.log`.

Bounded: at most `max_connections` client connections (more are reset), headers up to
`max_header_bytes`, bodies up to `max_body_bytes`, every read and connect under
`io_timeout_s`, a log of at most `log_max` entries. asyncio streams only.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

Schedule = Callable[[str, str, int], str]
Predicate = Callable[[str, str], bool]
SIMPLE_ACTIONS = frozenset(
    {"pass", "error_503", "error_500", "blackhole", "reset_before", "reset_after", "truncate"}
)
_ERRORS = {
    "error_503": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "error_500": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error.",
    ),
}
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "expect", "upgrade"}
)


class ProxyProtocolError(Exception):
    """The peer sent something this proxy does not parse (or beyond a limit)."""


def check_action(action: str) -> str:
    if action in SIMPLE_ACTIONS:
        return action
    if action.startswith("error:"):
        _, status, code = action.split(":", 2)
        if not 400 <= int(status) <= 599 or not code.replace(".", "").isalnum():
            raise ValueError(f"bad error action {action!r}")
        return action
    if action.startswith("delay:"):
        seconds = float(action[len("delay:") :])
        if seconds < 0:
            raise ValueError(f"negative delay in {action!r}")
        return action
    raise ValueError(f"unknown fault proxy action {action!r}")


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    action: str


@dataclass
class _Next:
    remaining: int
    action: str
    when: Predicate | None


@dataclass
class _Message:
    start: str  # request line or status line
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _encode(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class FaultProxy:
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        max_connections: int = 32,
        io_timeout_s: float = 30.0,
        max_header_bytes: int = 64 * 1024,
        max_body_bytes: int = 64 * 1024 * 1024,
        log_max: int = 10_000,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.max_connections = max_connections
        self.io_timeout_s = io_timeout_s
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._log: deque[Exchange] = deque(maxlen=log_max)
        self._next: list[_Next] = []
        self._rules: list[tuple[Predicate, str]] = []
        self._schedule: Schedule | None = None
        self._index = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, limit=self.max_header_bytes
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- schedule --------------------------------------------------------------------

    @property
    def log(self) -> list[Exchange]:
        return list(self._log)

    def fail_next(self, n: int, action: str, *, when: Predicate | None = None) -> None:
        """Apply `action` to the next `n` requests (matching `when`, if given)."""
        if n < 1:
            raise ValueError("n >= 1")
        self._next.append(_Next(n, check_action(action), when))

    def set_rule(self, predicate: Predicate, action: str) -> None:
        """Apply `action` to every request matching `predicate(method, target)`."""
        self._rules.append((predicate, check_action(action)))

    def set_schedule(self, schedule: Schedule | None) -> None:
        self._schedule = schedule

    def random_schedule(
        self, seed: int, rates: Mapping[str, float], *, when: Predicate | None = None
    ) -> None:
        """Each request (matching `when`) gets an action with the given probabilities."""
        for action in rates:
            check_action(action)
        if sum(rates.values()) > 1.0:
            raise ValueError("rates add up to more than 1")
        print(f"fault proxy random schedule: seed={seed} rates={dict(rates)}")
        rng = random.Random(seed)

        def schedule(method: str, target: str, index: int) -> str:
            if when is not None and not when(method, target):
                return "pass"
            x, total = rng.random(), 0.0
            for action, rate in rates.items():
                total += rate
                if x < total:
                    return action
            return "pass"

        self.set_schedule(schedule)

    def clear(self) -> None:
        self._next.clear()
        self._rules.clear()
        self._schedule = None

    def _decide(self, method: str, target: str) -> str:
        index = self._index
        self._index += 1
        for entry in self._next:
            if entry.when is None or entry.when(method, target):
                entry.remaining -= 1
                if entry.remaining == 0:
                    self._next.remove(entry)
                return entry.action
        for predicate, action in self._rules:
            if predicate(method, target):
                return action
        if self._schedule is not None:
            return check_action(self._schedule(method, target, index))
        return "pass"

    # -- HTTP ------------------------------------------------------------------------

    async def _read(self, aw: Awaitable[T]) -> T:
        return await asyncio.wait_for(aw, self.io_timeout_s)

    async def _read_head(self, reader: asyncio.StreamReader) -> _Message | None:
        try:
            raw = await self._read(reader.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError as err:
            if not err.partial:
                return None
            raise ProxyProtocolError("connection closed inside a header") from err
        except asyncio.LimitOverrunError as err:
            raise ProxyProtocolError("header too large") from err
        lines = raw.decode("latin-1").split("\r\n")
        headers = []
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ProxyProtocolError(f"bad header line {line!r}")
                headers.append((name.strip(), value.strip()))
        return _Message(lines[0], headers, b"")

    async def _read_body(
        self, reader: asyncio.StreamReader, message: _Message, *, until_eof: bool
    ) -> bytes:
        encoding = (message.header("transfer-encoding") or "").lower()
        length = message.header("content-length")
        if "chunked" in encoding:
            parts: list[bytes] = []
            total = 0
            while True:
                line = await self._read(reader.readuntil(b"\r\n"))
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while (await self._read(reader.readuntil(b"\r\n"))) != b"\r\n":
                        pass  # trailers are dropped
                    return b"".join(parts)
                total += size
                if total > self.max_body_bytes:
                    raise ProxyProtocolError("body too large")
                parts.append(await self._read(reader.readexactly(size)))
                await self._read(reader.readexactly(2))
        if length is not None:
            size = int(length)
            if size > self.max_body_bytes:
                raise ProxyProtocolError("body too large")
            return await self._read(reader.readexactly(size))
        if until_eof:  # a response framed by the end of the connection
            chunks: list[bytes] = []
            total = 0
            while chunk := await self._read(reader.read(65536)):
                total += len(chunk)
                if total > self.max_body_bytes:
                    raise ProxyProtocolError("body too large")
                chunks.append(chunk)
            return b"".join(chunks)
        return b""

    async def _forward(self, request: _Message) -> _Message:
        """The upstream's response (502 when the upstream cannot be reached)."""
        method = request.start.split(" ", 1)[0]
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.upstream_host, self.upstream_port, limit=self.max_header_bytes
                ),
                self.io_timeout_s,
            )
        except (OSError, TimeoutError):
            return self._error_response(502, "Bad Gateway", "BadGateway", "upstream down")
        try:
            headers = [(k, v) for k, v in request.headers if k.lower() not in _HOP_BY_HOP]
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            if request.body or request.header("content-length") is not None:
                headers.append(("Content-Length", str(len(request.body))))
            headers.append(("Connection", "close"))
            writer.write(_encode(request.start, headers, request.body))
            await asyncio.wait_for(writer.drain(), self.io_timeout_s)
            response = await self._read_head(reader)
            if response is None:
                raise ProxyProtocolError("upstream closed without answering")
            status = int(response.start.split(" ", 2)[1])
            if method != "HEAD" and status not in (204, 304) and status >= 200:
                response.body = await self._read_body(reader, response, until_eof=True)
            return response
        finally:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    @staticmethod
    def _error_response(status: int, reason: str, code: str, message: str) -> _Message:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        return _Message(f"HTTP/1.1 {status} {reason}", headers, body)

    def _client_bytes(self, method: str, response: _Message, keep_alive: bool) -> bytes:
        headers = [(k, v) for k, v in response.headers if k.lower() not in _HOP_BY_HOP]
        if method != "HEAD":
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(response.body))))
        headers.append(("Connection", "keep-alive" if keep_alive else "close"))
        return _encode(response.start, headers)

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection stays open for another."""
        request = await self._read_head(reader)
        if request is None:
            return False
        method, target, *version = request.start.split(" ")
        if (request.header("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await asyncio.wait_for(writer.drain(), self.io_timeout_s)
        request.body = await self._read_body(reader, request, until_eof=False)
        keep_alive = (request.header("connection") or "").lower() != "close" and version != [
            "HTTP/1.0"
        ]
        action = self._decide(method, target)
        self._log.append(Exchange(method, target, action))

        if action.startswith("delay:"):
            await asyncio.sleep(float(action[len("delay:") :]))
            action = "pass"
        if action == "blackhole":
            while await reader.read(65536):
                pass
            return False
        if action == "reset_before":
            _reset(writer)
            return False
        if action in _ERRORS:
            response = self._error_response(*_ERRORS[action])
        elif action.startswith("error:"):
            _, status, code = action.split(":", 2)
            response = self._error_response(int(status), "Error", code, "injected by the proxy")
        else:
            response = await self._forward(request)
        if action == "reset_after":
            _reset(writer)
            return False
        head = self._client_bytes(method, response, keep_alive)
        if action == "truncate":
            writer.write(head + response.body[: len(response.body) // 2])
            await asyncio.wait_for(writer.drain(), self.io_timeout_s)
            return False
        writer.write(head + (b"" if method == "HEAD" else response.body))
        await asyncio.wait_for(writer.drain(), self.io_timeout_s)
        return keep_alive

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.max_connections:
            _reset(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, OSError, TimeoutError, ProxyProtocolError, ValueError):
            pass  # the connection ends; the client sees the close
        except asyncio.IncompleteReadError:
            pass
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
