"""Operator commands that work on the store directly (`edgemq admin …`).

Listing (`list-*`) opens the store read-only (`server.open_read_only`): no migration,
nothing created; a missing store or one at another schema version is refused (exit 2).
The mutating commands (`create-*`, `revoke-key`) open it like a control plane does and
apply missing migrations first, so run them with the edgemq version of the control
plane. Listing and revoking go through the same services as the API (`services.keys`), acting
as an admin of the key's account, so the rules are the API's: revoking an account key
bumps the config epoch and nodes drop its digest with their next snapshot. Node keys
(no account) are not in snapshots: the control plane checks them on every request, so
revoking one takes effect at once without an epoch bump.
"""

from __future__ import annotations

import os
from typing import Any

from shared.apikeys import SCOPES

from .auth import Principal
from .server import open_context, open_read_only
from .services import keys
from .services.common import LIMIT_MAX, Context, fmt_ts, now_ms
from .store.db import sqlite_path


def check_store(database_url: str) -> None:
    """ValueError when a SQLite store (`sqlite:///path` or a plain path) does not exist:
    operator commands other than create-* never create an empty store by accident (a
    mistyped path)."""
    path = sqlite_path(database_url)
    if path is not None and not os.path.isfile(path):
        raise ValueError(f"no control store at {path}")


def _acting_admin(account_id: str) -> Principal:
    return Principal(account_id=account_id, scopes=frozenset({"admin"}), actor="edgemq admin")


async def create_account(database_url: str, name: str) -> dict[str, Any]:
    async with open_context(database_url) as ctx:
        return await keys.create_account(ctx, name)


async def create_key(
    database_url: str, account_id: str, scopes: list[str], name: str, owner: str | None
) -> dict[str, Any]:
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}")
    async with open_context(database_url) as ctx:
        row = await ctx.db.fetchone("SELECT id FROM accounts WHERE id = ?", (account_id,))
        if row is None:
            raise ValueError(f"no account {account_id}")
        return await keys.insert_key(
            ctx, account_id=account_id, name=name, owner=owner, scopes=scopes
        )


async def create_node_key(database_url: str, name: str) -> dict[str, Any]:
    async with open_context(database_url) as ctx:
        return await keys.create_node_key(ctx, name)


async def list_accounts(database_url: str) -> dict[str, Any]:
    async with open_read_only(database_url) as ctx:
        rows = await ctx.db.fetchall(
            "SELECT a.id, a.name, a.tenant, a.created_at, "
            "(SELECT COUNT(*) FROM api_keys k WHERE k.account_id = a.id "
            "AND k.revoked_at IS NULL) AS active_keys, "
            "(SELECT COUNT(*) FROM endpoints e WHERE e.account_id = a.id "
            "AND e.deleted_at IS NULL) AS endpoints "
            "FROM accounts a ORDER BY a.created_at, a.id"
        )
    items = [
        {
            "id": r["id"],
            "name": r["name"],
            "tenant": int(r["tenant"]),
            "created_at": fmt_ts(int(r["created_at"])),
            "active_keys": int(r["active_keys"]),
            "endpoints": int(r["endpoints"]),
        }
        for r in rows
    ]
    return {"items": items, "total": len(items)}


async def _account_keys(ctx: Context, account_id: str) -> list[dict[str, Any]]:
    """Every key of the account through the API's own listing, page by page."""
    items: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = await keys.list_keys(
            ctx,
            _acting_admin(account_id),
            {"limit": [str(LIMIT_MAX)], "offset": [str(offset)]},
        )
        items += page["items"]
        offset = page["next_offset"]
    return items


async def _node_keys(ctx: Context) -> list[dict[str, Any]]:
    rows = await ctx.db.fetchall(
        "SELECT id, name, owner, scopes, prefix, created_at, revoked_at FROM api_keys "
        "WHERE account_id IS NULL ORDER BY created_at, id"
    )
    return [keys.render_key(r) for r in rows]


async def list_keys(database_url: str, account_id: str | None) -> dict[str, Any]:
    """The keys of an account (no secrets), or the node keys when `account_id` is None."""
    async with open_read_only(database_url) as ctx:
        if account_id is None:
            items = await _node_keys(ctx)
        else:
            row = await ctx.db.fetchone("SELECT id FROM accounts WHERE id = ?", (account_id,))
            if row is None:
                raise ValueError(f"no account {account_id}")
            items = await _account_keys(ctx, account_id)
    return {"items": items, "total": len(items)}


async def revoke_key(database_url: str, key_id: str) -> dict[str, Any]:
    """Revoke a key (idempotent); the key as listed afterwards and the config epoch."""
    check_store(database_url)
    async with open_context(database_url) as ctx:
        row = await ctx.db.fetchone("SELECT id, account_id FROM api_keys WHERE id = ?", (key_id,))
        if row is None:
            raise ValueError(f"no API key {key_id}")
        if row["account_id"] is not None:
            await keys.revoke_key(ctx, _acting_admin(row["account_id"]), key_id)
            listed = await _account_keys(ctx, row["account_id"])
        else:
            async with ctx.db.transaction() as tx:
                await tx.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (now_ms(), key_id),
                )
            listed = await _node_keys(ctx)
        key = next(k for k in listed if k["id"] == key_id)
        return {**key, "account_id": row["account_id"], "config_epoch": await ctx.config_epoch()}
