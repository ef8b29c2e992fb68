"""`edgemq admin` account and key commands as subprocesses, on SQLite and on a real
PostgreSQL server: create, list (no secrets), revoke (idempotent; an account key bumps
the config epoch and stops authenticating, a node key stops at once), and the errors
an operator can make (exit 2, nothing created by accident)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.server import open_context
from control.services import keys
from control.store import open_database
from tests.support.postgres import PostgresServer, pg_bin, start_postgres
from tests.support.processes import admin, run_cli


@pytest.fixture(scope="module", name="postgres")
def postgres_fixture() -> Iterator[PostgresServer | None]:
    """A PostgreSQL server for this module (test_status_cmd.py imports it too)."""
    if pg_bin() is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must run the PostgreSQL suite: install the postgresql package")
        yield None
        return
    server = start_postgres(tempfile.mkdtemp(prefix="edgemq-pg-admin-"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"], name="database_url")
async def database_url_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer | None
) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'control.db'}"
    else:
        if postgres is None:
            pytest.skip("PostgreSQL binaries not installed (CI requires them)")
        url = postgres.url(postgres.create_database())
    db = await open_database(url)  # the schema, as a control plane's first start makes it
    await db.close()
    return url


def _run_sync(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("admin", "--database-url", database_url, *args)


async def _run(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_run_sync, database_url, *args)


async def _epoch(database_url: str) -> int:
    async with open_context(database_url) as ctx:
        return await ctx.config_epoch()


async def _authenticates(database_url: str, api_key: str) -> bool:
    async with open_context(database_url) as ctx:
        return await keys.authenticate_key(ctx, api_key) is not None


async def test_accounts_and_keys_are_listed_without_secrets_and_revoked(database_url: str) -> None:
    # Writes one after another (operators do not race themselves); reads in parallel.
    acme = await admin(database_url, "create-account", "acme")
    other = await admin(database_url, "create-account", "globex")
    ingest = await admin(
        database_url, "create-key", "--account", acme["id"], "--scopes", "ingest,metrics"
    )
    reader = await admin(
        database_url, "create-key", "--account", acme["id"], "--scopes", "metrics", "--name", "r"
    )
    await admin(database_url, "create-key", "--account", other["id"], "--scopes", "admin")

    accounts, listed, acme_keys = await asyncio.gather(
        admin(database_url, "list-accounts"),
        _run(database_url, "list-keys", "--account", acme["id"]),
        admin(database_url, "list-keys", "--account", acme["id"]),
    )
    by_id = {a["id"]: a for a in accounts["items"]}
    assert accounts["total"] == 2
    assert (by_id[acme["id"]]["name"], by_id[acme["id"]]["active_keys"]) == ("acme", 2)
    assert by_id[acme["id"]]["tenant"] == acme["tenant"]
    assert (by_id[other["id"]]["active_keys"], by_id[other["id"]]["endpoints"]) == (1, 0)
    assert listed.returncode == 0, listed.stderr
    assert ingest["api_key"] not in listed.stdout
    assert reader["api_key"] not in listed.stdout
    assert {k["id"] for k in acme_keys["items"]} == {ingest["id"], reader["id"]}
    assert all("api_key" not in k and k["revoked_at"] is None for k in acme_keys["items"])
    assert {k["prefix"] for k in acme_keys["items"]} == {ingest["prefix"], reader["prefix"]}

    # Revoking an ingest key bumps the epoch once (nodes drop it); again changes nothing.
    before = await _epoch(database_url)
    assert await _authenticates(database_url, ingest["api_key"])
    revoked = await admin(database_url, "revoke-key", "--key-id", ingest["id"])
    assert revoked["id"] == ingest["id"]
    assert revoked["revoked_at"] is not None
    assert revoked["config_epoch"] == before + 1 == await _epoch(database_url)
    assert not await _authenticates(database_url, ingest["api_key"])
    assert await _authenticates(database_url, reader["api_key"])
    again = await admin(database_url, "revoke-key", "--key-id", ingest["id"])
    assert (again["revoked_at"], again["config_epoch"]) == (revoked["revoked_at"], before + 1)
    acme_keys = await admin(database_url, "list-keys", "--account", acme["id"])
    state = {k["id"]: k["revoked_at"] for k in acme_keys["items"]}
    assert state == {ingest["id"]: revoked["revoked_at"], reader["id"]: None}
    accounts = await admin(database_url, "list-accounts")
    assert {a["id"]: a["active_keys"] for a in accounts["items"]}[acme["id"]] == 1


async def test_node_keys_are_listed_and_revoked_at_once(database_url: str) -> None:
    node_key = await admin(database_url, "create-node-key", "edge-fleet")
    listed = await admin(database_url, "list-keys", "--node-keys")
    assert [(k["id"], k["scopes"]) for k in listed["items"]] == [(node_key["id"], ["node"])]
    before = await _epoch(database_url)
    assert await _authenticates(database_url, node_key["api_key"])
    revoked = await admin(database_url, "revoke-key", "--key-id", node_key["id"])
    assert revoked["revoked_at"] is not None
    assert revoked["account_id"] is None
    assert revoked["config_epoch"] == before  # node keys are not in snapshots
    assert not await _authenticates(database_url, node_key["api_key"])


MISTAKES = [
    (("list-keys", "--account", "00000000-0000-0000-0000-000000000000"), "no account"),
    (("list-keys",), "exactly one of"),
    (("revoke-key", "--key-id", "00000000-0000-0000-0000-000000000000"), "no API key"),
    (("revoke-key", "--key-id", "not-a-key"), "no API key"),
]


async def test_operator_mistakes_exit_2_with_a_message(database_url: str) -> None:
    runs = await asyncio.gather(*(_run(database_url, *args) for args, _ in MISTAKES))
    for (args, message), done in zip(MISTAKES, runs, strict=True):
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, args
        assert done.stdout == ""


async def test_listing_a_store_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "control.db"
    done = await _run(f"sqlite:///{missing}", "list-accounts")
    assert done.returncode == 2
    assert "no control store" in done.stderr
    assert not missing.parent.exists()


async def _store_state(database_url: str) -> tuple[list[int], int, int]:
    """(applied migrations, signing keys, shared secrets), read without opening a
    control plane (which would migrate and create them)."""
    from control.store.db import PostgresDatabase, SqliteDatabase, sqlite_path

    path = sqlite_path(database_url)
    db = PostgresDatabase(database_url) if path is None else SqliteDatabase(path)
    await db.connect()
    try:
        versions = [
            int(r["version"])
            for r in await db.fetchall("SELECT version FROM schema_migrations ORDER BY version")
        ]
        signing = await db.fetchall("SELECT kid FROM signing_keys")
        secrets = await db.fetchall("SELECT name FROM shared_secrets")
        return versions, len(signing), len(secrets)
    finally:
        await db.close()


async def set_schema_version(database_url: str, version: int) -> None:
    """Make the store look like another release's: drop the newest migration's table
    and record (older), or record one migration more than this binary knows (newer)."""
    from control.store.db import PostgresDatabase, SqliteDatabase, sqlite_path
    from control.store.schema import MIGRATIONS

    path = sqlite_path(database_url)
    db = PostgresDatabase(database_url) if path is None else SqliteDatabase(path)
    await db.connect()
    try:
        if version < len(MIGRATIONS):
            await db.execute("DELETE FROM schema_migrations WHERE version > ?", (version,))
        else:
            await db.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)", (version,)
            )
    finally:
        await db.close()


async def test_listing_reads_the_store_as_it_is_and_creates_nothing(database_url: str) -> None:
    """Found in review: list-* opened the store like a control plane (migrations, a
    signing key, the download-link secret). The fixture's store is migrated only."""
    before = await _store_state(database_url)
    assert before[1:] == (0, 0)
    for args in (("list-accounts",), ("list-keys", "--node-keys")):
        done = await _run(database_url, *args)
        assert done.returncode == 0, done.stderr
    assert await _store_state(database_url) == before


@pytest.mark.parametrize("relation", ["older", "newer"])
async def test_listing_refuses_a_store_of_another_schema_version_and_leaves_it(
    database_url: str, relation: str
) -> None:
    """A newer CLI must not migrate a production store under older replicas; an older
    one cannot read a newer store. Exit 2, a message naming both versions."""
    from control.store.schema import MIGRATIONS

    known = len(MIGRATIONS)
    version = known - 1 if relation == "older" else known + 1
    await set_schema_version(database_url, version)
    before = await _store_state(database_url)

    done = await _run(database_url, "list-accounts")

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"schema version {version}, {relation}" in done.stderr, done.stderr
    assert f"version {known} this edgemq knows" in done.stderr, done.stderr
    assert done.stdout == ""
    assert await _store_state(database_url) == before


async def test_listing_a_plain_path_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    """A plain path is a SQLite store, as for `edgemq control`: a typo is refused."""
    missing = tmp_path / "nope" / "control.db"
    done = await _run(str(missing), "list-keys", "--node-keys")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "no control store" in done.stderr
    assert not missing.parent.exists()
