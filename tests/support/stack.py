"""A control plane and ingest nodes on 127.0.0.1 for end-to-end tests.

`ControlPlane` runs `control.server.serve` in this process on a free port (SQLite in a
temp dir) and talks to it over real HTTP like a user: account, keys, tokens,
destinations, endpoints, views, bindings. `start_node` runs an `ingest.node.Node` in
this process; subprocess variants for kill tests live with those tests.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from control.server import open_context, serve
from control.services import keys
from control.services.common import ControlSettings
from ingest.node import Node
from ingest.settings import DeliverySettings, Limits, NodeSettings
from tests.support.postgres import free_port

SEGMENT_BYTES_MIN = 16 * 1024


@dataclass
class ControlPlane:
    url: str
    database_url: str
    session: aiohttp.ClientSession
    account_id: str = ""
    api_key: str = ""
    node_key: str = ""
    _tokens: dict[str, str] = field(default_factory=dict)

    async def token(self, scope: str = "admin") -> str:
        if scope not in self._tokens:
            answer = await self.call(
                "POST",
                "/v1/token/exchange",
                {"api_key": self.api_key, "scope": scope},
                auth=False,
            )
            self._tokens[scope] = answer["access_token"]
        return self._tokens[scope]

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        expect: int | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {await self.token()}"} if auth else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as r:
            text = await r.text()
            if expect is not None:
                assert r.status == expect, f"{method} {path}: {r.status} {text}"
            elif r.status >= 400:
                raise AssertionError(f"{method} {path}: {r.status} {text}")
            return json.loads(text) if text else None

    async def local_destination(self, output_dir: str, *, prefix: str = "") -> dict[str, Any]:
        dest = await self.call(
            "POST",
            "/v1/destinations",
            {
                "name": f"local-{os.path.basename(output_dir)}",
                "bucket": "lake",
                "prefix": prefix,
                "region": "local",
                "role_arn": "arn:aws:iam::000000000000:role/local",
                "endpoint_url": f"file://{output_dir}",
            },
        )
        await self.call("POST", f"/v1/destinations/{dest['id']}/validate")
        return dict(dest)

    async def endpoint(self, destination_id: str | None, **fields: Any) -> dict[str, Any]:
        body = {
            "region": "loc",
            "destination_id": destination_id,
            "segment_bytes": SEGMENT_BYTES_MIN * 4,
            "segment_max_age_seconds": 1,
            "output_formats": ["segments", "parquet", "parquet_views"],
            **fields,
        }
        return dict(await self.call("POST", "/v1/endpoints", body))

    async def published_view(self, name: str, definition: dict[str, Any]) -> dict[str, Any]:
        view = await self.call(
            "POST", "/v1/views", {"name": name, "definition": definition, "format": "json"}
        )
        await self.call("POST", f"/v1/views/{view['id']}/publish")
        return dict(view)

    async def bind(self, endpoint_id: str, view_id: str, **fields: Any) -> dict[str, Any]:
        return dict(
            await self.call(
                "POST", f"/v1/endpoints/{endpoint_id}/views", {"view_id": view_id, **fields}
            )
        )

    async def commits(self, endpoint_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        path = f"/v1/endpoints/{endpoint_id}/commits?limit=100"
        while True:
            page = await self.call("GET", path)
            items += page["items"]
            if not page.get("next_cursor"):
                return items
            path = f"/v1/endpoints/{endpoint_id}/commits?limit=100&before={page['next_cursor']}"


@asynccontextmanager
async def control_plane(
    tmp_dir: str, *, database_url: str | None = None
) -> AsyncIterator[ControlPlane]:
    port = free_port()
    database_url = database_url or f"sqlite:///{os.path.join(tmp_dir, 'control.db')}"
    settings = ControlSettings(
        segment_bytes_min=SEGMENT_BYTES_MIN, public_url=f"http://127.0.0.1:{port}"
    )
    async with open_context(database_url, settings) as ctx:
        account = await keys.create_account(ctx, "acme")
        key = await keys.insert_key(
            ctx,
            account_id=account["id"],
            name="test",
            owner=None,
            scopes=["ingest", "metrics", "admin"],
        )
        node_key = await keys.create_node_key(ctx, "test-nodes")
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(
            database_url, "127.0.0.1", port, settings, ready=ready, stop=stop, handle_signals=False
        )
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()
    async with aiohttp.ClientSession() as session:
        try:
            yield ControlPlane(
                f"http://127.0.0.1:{port}",
                database_url,
                session,
                account["id"],
                key["api_key"],
                node_key["api_key"],
            )
        finally:
            stop.set()
            await task


def node_settings(cp: ControlPlane, data_dir: str, **overrides: Any) -> NodeSettings:
    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "control_url": cp.url,
        "node_key": cp.node_key,
        "region": "loc",
        "http_port": 0,
        "segment_bytes_min": SEGMENT_BYTES_MIN,
        "drain_deadline_s": 20.0,
        "long_poll_s": 5,
        "heartbeat_interval_s": 0.5,
        "limits": Limits(disk_reserve_bytes=16 * 1024 * 1024),
        "delivery": DeliverySettings(retry_base_s=0.05, retry_cap_s=0.5, permanent_retry_s=0.5),
    }
    fields.update(overrides)
    return NodeSettings(**fields)


@asynccontextmanager
async def running_node(settings: NodeSettings) -> AsyncIterator[Node]:
    node = Node(settings)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def wait_for(predicate: Any, *, timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll an async or plain predicate until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_config(node: Node, epoch_at_least: int = 1) -> None:
    await wait_for(lambda: node.config_epoch >= epoch_at_least, what="config snapshot")
