"""One schema for SQLite and PostgreSQL, applied as numbered migrations.

Portable choices: ids are TEXT (UUIDs) except `commits.id` (an integer sequence);
timestamps are BIGINT milliseconds (µs for commit upload times, the cursor);
booleans are INTEGER 0/1; JSON values are TEXT. `{serial}` is the only dialect
difference; `{now_ms}` is the time of applying. `schema_migrations` records what has
been applied. Migrations are additive: a replica of the previous release keeps working
on the newer schema during a rolling upgrade.
"""

from __future__ import annotations

import time
from typing import Any

SERIAL = {"sqlite": "INTEGER PRIMARY KEY", "postgresql": "BIGSERIAL PRIMARY KEY"}

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            tenant BIGINT NOT NULL UNIQUE,
            external_id TEXT NOT NULL,
            created_at BIGINT NOT NULL)""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            account_id TEXT REFERENCES accounts(id),
            name TEXT NOT NULL,
            owner TEXT,
            digest TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            scopes TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            revoked_at BIGINT)""",
        "CREATE INDEX api_keys_account ON api_keys (account_id)",
        """CREATE TABLE signing_keys (
            kid TEXT PRIMARY KEY,
            private_pem TEXT NOT NULL,
            public_jwk TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            retired_at BIGINT)""",
        """CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value BIGINT NOT NULL)""",
        "INSERT INTO settings (name, value) VALUES ('config_epoch', 1)",
        """CREATE TABLE destinations (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            name TEXT NOT NULL,
            bucket TEXT NOT NULL,
            prefix TEXT NOT NULL,
            region TEXT NOT NULL,
            role_arn TEXT NOT NULL,
            kms_key_arn TEXT,
            path_style INTEGER NOT NULL,
            endpoint_url TEXT,
            status TEXT NOT NULL,
            validated_at BIGINT,
            last_error TEXT,
            last_validation_at BIGINT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            UNIQUE (account_id, name))""",
        """CREATE TABLE endpoints (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            region TEXT NOT NULL,
            destination_id TEXT REFERENCES destinations(id),
            segment_bytes BIGINT NOT NULL,
            segment_max_age_seconds INTEGER NOT NULL,
            output_formats TEXT NOT NULL,
            mqtt_config TEXT,
            config_epoch BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            deleted_at BIGINT)""",
        "CREATE INDEX endpoints_account ON endpoints (account_id, created_at)",
        "CREATE INDEX endpoints_region ON endpoints (region)",
        """CREATE TABLE views (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            definition TEXT NOT NULL,
            format TEXT NOT NULL,
            status TEXT NOT NULL,
            description TEXT,
            tags TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            published_at BIGINT,
            UNIQUE (account_id, name, version))""",
        """CREATE TABLE view_tags (
            view_id TEXT NOT NULL REFERENCES views(id) ON DELETE CASCADE,
            tag TEXT NOT NULL,
            PRIMARY KEY (view_id, tag))""",
        """CREATE TABLE bindings (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
            view_id TEXT NOT NULL REFERENCES views(id),
            is_required INTEGER NOT NULL,
            canary_start_ts BIGINT,
            activated_at BIGINT NOT NULL,
            activated_by TEXT NOT NULL,
            deactivated_at BIGINT)""",
        "CREATE INDEX bindings_endpoint ON bindings (endpoint_id)",
        "CREATE INDEX bindings_view ON bindings (view_id)",
        """CREATE TABLE nodes (
            id TEXT PRIMARY KEY,
            region TEXT NOT NULL,
            http_url TEXT,
            mqtt_url TEXT,
            ipv4 TEXT NOT NULL,
            ipv6 TEXT NOT NULL,
            version TEXT,
            registered_at BIGINT NOT NULL,
            last_heartbeat_at BIGINT NOT NULL,
            applied_epoch BIGINT NOT NULL,
            draining INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE node_endpoint_state (
            node_id TEXT NOT NULL REFERENCES nodes(id),
            endpoint_id TEXT NOT NULL,
            unshipped_bytes BIGINT NOT NULL,
            delivery_error TEXT,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (node_id, endpoint_id))""",
        """CREATE TABLE commits (
            id {serial},
            account_id TEXT NOT NULL,
            endpoint_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            wal_bytes BIGINT NOT NULL,
            frames BIGINT NOT NULL,
            duration_ms BIGINT NOT NULL,
            uploaded_at_us BIGINT NOT NULL,
            artifacts TEXT NOT NULL,
            manifest_key TEXT NOT NULL,
            UNIQUE (endpoint_id, node_id, epoch, seq))""",
        "CREATE INDEX commits_endpoint_time ON commits (endpoint_id, uploaded_at_us)",
        """CREATE TABLE view_outcomes (
            view_id TEXT NOT NULL,
            account_id TEXT NOT NULL,
            endpoint_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            processed BIGINT NOT NULL,
            accepted BIGINT NOT NULL,
            dropped BIGINT NOT NULL,
            dlq BIGINT NOT NULL,
            error_code TEXT,
            error_message TEXT,
            dlq_key TEXT,
            dlq_bucket TEXT,
            dlq_region TEXT,
            dlq_bytes BIGINT,
            at BIGINT NOT NULL,
            PRIMARY KEY (view_id, endpoint_id, node_id, epoch, seq))""",
        "CREATE INDEX view_outcomes_view_time ON view_outcomes (view_id, at)",
    ],
    [
        # Listing endpoints: count and page over live endpoints from the index alone.
        "CREATE INDEX endpoints_account_live ON endpoints (account_id, created_at, id) "
        "WHERE deleted_at IS NULL",
    ],
    [
        # At most one active binding of a view on an endpoint, whatever races
        # (docs/adr/0009); attach checks first and answers 409 with a reason. Stores
        # that already hold duplicates (the race before this index) keep the oldest
        # active binding of each pair; the others are deactivated now, so the index
        # can be built.
        "UPDATE bindings SET deactivated_at = {now_ms} WHERE deactivated_at IS NULL "
        "AND EXISTS (SELECT 1 FROM bindings o WHERE o.endpoint_id = bindings.endpoint_id "
        "AND o.view_id = bindings.view_id AND o.deactivated_at IS NULL "
        "AND (o.activated_at < bindings.activated_at "
        "OR (o.activated_at = bindings.activated_at AND o.id < bindings.id)))",
        "CREATE UNIQUE INDEX bindings_active ON bindings (endpoint_id, view_id) "
        "WHERE deactivated_at IS NULL",
    ],
    [
        # Secrets every replica must share (the signing key of local download links):
        # created once under a lock by the first replica, read by the others.
        """CREATE TABLE shared_secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            created_at BIGINT NOT NULL)""",
    ],
]


# Migrations may wait for other replicas' migrations and build indexes on big tables:
# longer limits than a request's (control/store/db.py), for their transactions only.
MIGRATION_LOCK_TIMEOUT = "60s"
MIGRATION_STATEMENT_TIMEOUT = "600s"


async def _migration_limits(db: Any, tx: Any) -> None:
    if db.dialect == "postgresql":
        await tx.execute(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'")
        await tx.execute(f"SET LOCAL statement_timeout = '{MIGRATION_STATEMENT_TIMEOUT}'")


async def schema_version(db: Any) -> int:
    """The highest migration applied to the store; 0 when it has none (or no table)."""
    if db.dialect == "postgresql":
        exists = await db.fetchone("SELECT to_regclass('schema_migrations') IS NOT NULL AS ok")
        present = bool(exists and exists["ok"])
    else:
        present = (
            await db.fetchone(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            )
            is not None
        )
    if not present:
        return 0
    row = await db.fetchone("SELECT MAX(version) AS version FROM schema_migrations")
    return int(row["version"]) if row and row["version"] is not None else 0


async def migrate(db: Any, upto: int | None = None) -> int:
    """Apply what is missing (up to migration `upto`, for tests of upgrades); return
    the schema version. Safe to run concurrently (the version row is inserted in the
    same transaction, checked again under the lock)."""
    async with db.transaction() as tx:
        await _migration_limits(db, tx)
        # Replicas starting together: PostgreSQL's CREATE TABLE IF NOT EXISTS is not
        # safe against a concurrent twin (a unique violation in its catalog).
        await tx.lock("schema-migrations")
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "applied_at BIGINT NOT NULL)"
        )
    target = MIGRATIONS if upto is None else MIGRATIONS[:upto]
    for version, statements in enumerate(target, start=1):
        row = await db.fetchone(
            "SELECT version FROM schema_migrations WHERE version = ?", (version,)
        )
        if row is not None:
            continue
        async with db.transaction() as tx:
            # Another process may have applied it between the check and this
            # transaction: look again under the lock (SQLite's BEGIN IMMEDIATE holds the
            # write lock already; PostgreSQL locks the table).
            await _migration_limits(db, tx)
            if db.dialect == "postgresql":
                await tx.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
            again = await tx.fetchone(
                "SELECT version FROM schema_migrations WHERE version = ?", (version,)
            )
            if again is not None:
                continue
            for statement in statements:
                sql = statement.replace("{serial}", SERIAL[db.dialect])
                await tx.execute(sql.replace("{now_ms}", str(int(time.time() * 1000))))
            await tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version, int(time.time() * 1000)),
            )
    return len(target)
