"""The node's aiohttp runner, adjusted for an ingest edge:

- request bodies are not decompressed by aiohttp (`auto_decompress=False`): the
  handler does it with a bound (ingest/body.py), and unsupported codings get a JSON 415;
- errors aiohttp's HTTP parser answers itself (malformed request line, huge headers,
  Content-Length + Transfer-Encoding, …) use the JSON error shape of every other answer
  instead of plain text, and are logged at debug level (they are the client's fault);
- `lingering_time` is short: after a 408/413 the unread rest of a body is not waited
  for longer than a second.

aiohttp builds one `RequestHandler` per connection from its `Server`; overriding
`handle_error` needs our own `Server.__call__`, which `JsonErrorRunner._make_server`
installs. A test (tests/integration/ingest/test_http_ingest.py) pins the behaviour.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

log = logging.getLogger(__name__)


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


class _JsonErrorServer(Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("auto_decompress", False)
        kwargs.setdefault("lingering_time", 1.0)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server
