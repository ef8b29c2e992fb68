"""Fixtures: a control plane per test on SQLite and on a real PostgreSQL server, with
an account, an admin key and helpers to mint tokens and make second accounts."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from control.http.app import create_app
from control.server import open_context
from control.services import keys
from control.services.common import Context, ControlSettings
from control.store import open_database
from tests.support.postgres import PostgresServer, pg_bin, start_postgres

SETTINGS = ControlSettings(segment_bytes_min=1024, validate_interval_s=30.0)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    if pg_bin() is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must run the PostgreSQL suite: install the postgresql package")
        yield None
        return
    root = tempfile.mkdtemp(prefix="edgemq-pg-")
    server = start_postgres(root)
    try:
        template = server.create_database()

        async def migrate() -> None:
            db = await open_database(server.url(template))
            await db.close()

        asyncio.run(migrate())
        server.template = template  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()


@dataclass
class Api:
    """A running control plane and a client for it."""

    client: TestClient[Any, Any]
    ctx: Context
    account_id: str
    admin_key: str
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    async def token(self, scope: str = "admin", key: str | None = None) -> str:
        key = key or self.admin_key
        if (key, scope) not in self.tokens:
            resp = await self.client.post(
                "/v1/token/exchange", json={"api_key": key, "scope": scope}
            )
            assert resp.status == 200, await resp.text()
            self.tokens[(key, scope)] = (await resp.json())["access_token"]
        return self.tokens[(key, scope)]

    async def headers(self, scope: str = "admin", key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(scope, key)}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        scope: str = "admin",
        key: str | None = None,
        json: Any = None,
        params: Any = None,
    ) -> tuple[int, Any]:
        resp = await self.client.request(
            method, path, json=json, params=params, headers=await self.headers(scope, key)
        )
        body = await resp.json() if resp.content_type == "application/json" else await resp.read()
        return resp.status, body

    async def new_account(
        self, name: str = "other", scopes: tuple[str, ...] = ("admin", "metrics", "ingest")
    ) -> str:
        account = await keys.create_account(self.ctx, name)
        key = await keys.insert_key(
            self.ctx,
            account_id=account["id"],
            name=f"{name}-key",
            owner=f"ops@{name}.example",
            scopes=list(scopes),
        )
        return str(key["api_key"])

    async def key_with(self, *scopes: str) -> str:
        key = await keys.insert_key(
            self.ctx, account_id=self.account_id, name="scoped", owner=None, scopes=list(scopes)
        )
        return str(key["api_key"])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest, tmp_path: Any, postgres: PostgresServer | None
) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/control.db"
    if postgres is None:
        pytest.skip("PostgreSQL server binaries not installed (./dev test installs them)")
    return postgres.url(postgres.create_database(postgres.template))  # type: ignore[attr-defined]


@pytest.fixture
async def api(store_url: str) -> AsyncIterator[Api]:
    async with open_context(store_url, SETTINGS) as ctx:
        server = TestServer(create_app(ctx))
        client = TestClient(server)
        await client.start_server()
        ctx.settings = replace(ctx.settings, public_url=str(server.make_url("")).rstrip("/"))
        try:
            account = await keys.create_account(ctx, "acme")
            key = await keys.insert_key(
                ctx,
                account_id=account["id"],
                name="admin-key",
                owner="admin@example.com",
                scopes=["admin", "metrics", "ingest"],
            )
            yield Api(client, ctx, account["id"], str(key["api_key"]))
        finally:
            await client.close()
