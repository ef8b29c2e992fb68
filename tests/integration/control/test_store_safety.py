"""The store's safety nets (docs/adr/0009), each forced directly: a unique violation
that slipped past a service's check answers 409, a lock PostgreSQL will not grant in
time and SQLite's write lock held by another process answer 503 with Retry-After
(never a hang, never a 500), and migration 3 upgrades a store that already holds the
duplicate bindings the old race produced."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from control.services.views import lineage_lock
from control.store.db import (
    Contention,
    DuplicateKey,
    PostgresDatabase,
    SqliteDatabase,
    lock_key,
    sqlite_path,
)
from control.store.schema import MIGRATIONS, migrate
from tests.integration.control.conftest import Api
from tests.integration.control.test_views import create_endpoint, create_view, published_view

HANG_GUARD_S = 60  # far above the store's lock timeout (5 s): "answered", not "fast"


def assert_busy(status: int, body: Any, headers: Any) -> None:
    assert status == 503, body
    assert body["error"]["status"] == 503, body
    assert body["error"]["message"], body
    assert headers.get("Retry-After") == "1", dict(headers)


async def test_a_unique_violation_past_the_services_check_answers_409(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attach's own check is blinded, so the insert meets the `bindings_active` index:
    the store's DuplicateKey must come back as the API's 409, not a 500."""
    endpoint = await create_endpoint(api)
    view = await published_view(api)
    path = f"/v1/endpoints/{endpoint['id']}/views"
    status, first = await api.call("POST", path, json={"view_id": view["id"]})
    assert status == 201, first
    real_transaction = api.ctx.db.transaction

    @asynccontextmanager
    async def blind_transaction() -> Any:
        async with real_transaction() as tx:
            real_fetchone = tx.fetchone

            async def fetchone(sql: str, params: Any = ()) -> Any:
                if sql.startswith("SELECT id FROM bindings"):
                    return None  # "no active binding": the check is skipped
                return await real_fetchone(sql, params)

            tx.fetchone = fetchone
            yield tx

    monkeypatch.setattr(api.ctx.db, "transaction", blind_transaction)
    status, body = await api.call("POST", path, json={"view_id": view["id"]})
    monkeypatch.undo()
    assert status == 409, body
    assert body["error"]["code"] == "conflict", body
    active = await api.ctx.db.fetchall(
        "SELECT id FROM bindings WHERE view_id = ? AND deactivated_at IS NULL", (view["id"],)
    )
    assert [r["id"] for r in active] == [first["id"]]


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_a_lock_held_elsewhere_on_postgresql_answers_503_instead_of_hanging(
    api: Api, store_url: str
) -> None:
    """Found in review: pg_advisory_xact_lock waited forever, so one stalled lock holder
    tied up requests and pooled connections. Another session holds the lock a new view
    version needs; the request must give up (lock_timeout) and answer 503."""
    view = await create_view(api, "orders")
    holder = await psycopg.AsyncConnection.connect(store_url, autocommit=True)
    try:
        await holder.execute(
            "SELECT pg_advisory_lock(%s)", (lock_key(lineage_lock(api.account_id, "orders")),)
        )
        async with asyncio.timeout(HANG_GUARD_S):
            resp = await api.client.post(
                f"/v1/views/{view['id']}/versions", json={}, headers=await api.headers()
            )
            assert_busy(resp.status, await resp.json(), resp.headers)
    finally:
        await holder.close()  # releases the lock
    status, body = await api.call("POST", f"/v1/views/{view['id']}/versions", json={})
    assert status == 201, body
    assert body["version"] == 2


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_sqlite_locked_by_another_process_answers_503_and_works_once_released(
    api: Api, store_url: str
) -> None:
    """SQLite's write lock held past busy_timeout by another connection (another
    process in production): "database is locked" must become 503 + Retry-After."""
    path = sqlite_path(store_url)
    assert path is not None
    quick = SqliteDatabase(path, busy_timeout_ms=200)
    await quick.connect()
    real_db, api.ctx.db = api.ctx.db, quick
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(Contention):
            await quick.execute("UPDATE settings SET value = value WHERE name = 'config_epoch'")
        async with asyncio.timeout(HANG_GUARD_S):
            resp = await api.client.post(
                "/v1/endpoints", json={"region": "iad"}, headers=await api.headers()
            )
            assert_busy(resp.status, await resp.json(), resp.headers)
        holder.execute("ROLLBACK")
        await create_endpoint(api)
    finally:
        holder.close()
        api.ctx.db = real_db
        await quick.close()


async def _raw_store(store_url: str) -> SqliteDatabase | PostgresDatabase:
    path = sqlite_path(store_url)
    db: SqliteDatabase | PostgresDatabase
    db = PostgresDatabase(store_url) if path is None else SqliteDatabase(path)
    await db.connect()
    return db


async def test_migration_3_upgrades_a_store_holding_duplicate_active_bindings(
    store_url: str,
) -> None:
    """Found in review: the unique index of migration 3 could not be built on a store
    where the old race left two active bindings of one view on one endpoint, so the
    upgrade failed. The oldest stays active, the others are deactivated."""
    if store_url.startswith("postgresql://"):
        # The fixture's database comes migrated from the template: start empty.
        store_url = store_url.rsplit("/", 1)[0] + "/postgres"
        admin = await psycopg.AsyncConnection.connect(store_url, autocommit=True)
        name = f"upgrade_{uuid.uuid4().hex[:12]}"
        await admin.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type,unused-ignore]
        await admin.close()
        store_url = store_url.rsplit("/", 1)[0] + f"/{name}"
    else:
        store_url = store_url.replace("control.db", "old.db")
    db = await _raw_store(store_url)
    try:
        assert await migrate(db, upto=2) == 2
        rows: list[tuple[str, Any]] = [
            ("INSERT INTO accounts VALUES ('a', 'acme', 1, 'x', 0)", ()),
            (
                "INSERT INTO endpoints (id, account_id, region, segment_bytes, "
                "segment_max_age_seconds, output_formats, config_epoch, created_at, updated_at) "
                "VALUES ('e', 'a', 'iad', 1, 1, '[]', 1, 0, 0)",
                (),
            ),
        ]
        for view in ("v1", "v2"):
            rows.append(
                (
                    "INSERT INTO views (id, account_id, name, version, definition, format, "
                    "status, tags, created_by, created_at) "
                    "VALUES (?, 'a', ?, 1, '{}', 'json', 'published', '[]', 'me', 0)",
                    (view, view),
                )
            )
        bindings = [  # (id, view, activated_at, deactivated_at)
            ("b1", "v1", 300, None),
            ("b2", "v1", 100, None),  # the oldest of v1: stays active
            ("b3", "v1", 200, None),
            ("b4", "v1", 50, 60),  # already inactive: untouched
            ("b5", "v2", 100, None),  # no duplicate: untouched
        ]
        for binding in bindings:
            rows.append(
                (
                    "INSERT INTO bindings (id, account_id, endpoint_id, view_id, is_required, "
                    "activated_at, activated_by, deactivated_at) VALUES (?, 'a', 'e', ?, 0, ?, "
                    "'me', ?)",
                    binding,
                )
            )
        for sql, params in rows:
            await db.execute(sql, params)

        assert await migrate(db) == len(MIGRATIONS)

        after = {
            r["id"]: r["deactivated_at"]
            for r in await db.fetchall("SELECT id, deactivated_at FROM bindings")
        }
        assert [b for b, at in sorted(after.items()) if at is None] == ["b2", "b5"], after
        assert after["b4"] == 60, after
        with pytest.raises(DuplicateKey):
            await db.execute(
                "INSERT INTO bindings (id, account_id, endpoint_id, view_id, is_required, "
                "activated_at, activated_by) VALUES ('b6', 'a', 'e', 'v1', 0, 400, 'me')"
            )
    finally:
        await db.close()
