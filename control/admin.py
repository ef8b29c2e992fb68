"""Operator commands that work on the store directly (`edgemq admin …`)."""

from __future__ import annotations

from typing import Any

from shared.apikeys import SCOPES

from .server import open_context
from .services import keys


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
