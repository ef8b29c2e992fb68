"""Accounts, API keys and token exchange."""

from __future__ import annotations

import secrets
from typing import Any

from shared.apikeys import (
    NODE_SCOPE,
    SCOPES,
    digests_equal,
    display_prefix,
    generate_key,
    key_digest,
    looks_like_key,
)
from shared.tokens import TTL_DEFAULT_S, parse_ttl

from ..auth import Principal
from ..errors import Forbidden, Unauthorized, problem
from ..store.db import DuplicateKey
from .common import (
    Context,
    account_of,
    body_object,
    check_id,
    fmt_ts,
    new_id,
    not_found,
    now_ms,
    parse_page,
    raise_if,
    require_scope,
    unknown_fields,
)

TENANT_MAX = 0xFFFF_FFFF


async def create_account(ctx: Context, name: str) -> dict[str, Any]:
    """Operator action (CLI): a new account with its tenant number and external id."""
    if not name or len(name) > 200:
        raise ValueError("an account needs a name of 1..200 characters")
    account_id = new_id()
    for _ in range(16):
        tenant = secrets.randbelow(TENANT_MAX) + 1
        try:
            async with ctx.db.transaction() as tx:
                if await tx.fetchone("SELECT id FROM accounts WHERE tenant = ?", (tenant,)):
                    continue
                await tx.execute(
                    "INSERT INTO accounts (id, name, tenant, external_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (account_id, name, tenant, f"edgemq-{secrets.token_hex(8)}", now_ms()),
                )
        except DuplicateKey:
            continue  # another writer took this tenant number in the meantime
        return {"id": account_id, "name": name, "tenant": tenant}
    raise RuntimeError("could not find a free tenant number")


async def insert_key(
    ctx: Context, *, account_id: str | None, name: str, owner: str | None, scopes: list[str]
) -> dict[str, Any]:
    key = generate_key()
    key_id = new_id()
    now = now_ms()
    async with ctx.db.transaction() as tx:
        await tx.execute(
            "INSERT INTO api_keys (id, account_id, name, owner, digest, prefix, scopes, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key_id,
                account_id,
                name,
                owner,
                key_digest(key),
                display_prefix(key),
                ",".join(scopes),
                now,
            ),
        )
        if "ingest" in scopes:
            await ctx.bump_epoch(tx)  # nodes learn the digest from their next snapshot
    return {
        "id": key_id,
        "name": name,
        "owner": owner,
        "scopes": scopes,
        "prefix": display_prefix(key),
        "created_at": fmt_ts(now),
        "revoked_at": None,
        "api_key": key,
    }


async def authenticate_key(ctx: Context, key: object) -> Principal | None:
    """The principal behind an API key, or None (unknown, revoked, malformed)."""
    if not isinstance(key, str) or not looks_like_key(key):
        return None
    digest = key_digest(key)
    row = await ctx.db.fetchone(
        "SELECT id, account_id, name, owner, digest, scopes FROM api_keys "
        "WHERE digest = ? AND revoked_at IS NULL",
        (digest,),
    )
    if row is None or not digests_equal(row["digest"], digest):
        return None
    return Principal(
        account_id=row["account_id"],
        scopes=frozenset(row["scopes"].split(",")),
        actor=row["owner"] or row["name"],
        key_id=row["id"],
    )


async def exchange(ctx: Context, body: object) -> dict[str, Any]:
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(data, {"api_key", "scope", "ttl"}, problems)
    if not isinstance(data.get("api_key"), str) or not data["api_key"]:
        problems.append(problem("body.api_key", "is required"))
    scope = data.get("scope")
    if scope not in SCOPES:
        problems.append(problem("body.scope", f"must be one of {', '.join(SCOPES)}"))
    ttl_s = TTL_DEFAULT_S
    if "ttl" in data and data["ttl"] is not None:
        try:
            ttl_s = parse_ttl(data["ttl"])
        except ValueError as err:
            problems.append(problem("body.ttl", str(err)))
    raise_if(problems)
    principal = await authenticate_key(ctx, data["api_key"])
    if principal is None or principal.account_id is None:
        raise Unauthorized("invalid API key")
    if scope not in principal.scopes:
        raise Forbidden("scope not permitted for this API key")
    token, expires_in = ctx.signer.issue(
        account_id=principal.account_id, scope=str(scope), ttl_s=ttl_s, actor=principal.actor
    )
    return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}


def render_key(row: dict[str, Any]) -> dict[str, Any]:
    """An `api_keys` row as the API shows it (never the secret or its digest)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "owner": row["owner"],
        "scopes": row["scopes"].split(","),
        "prefix": row["prefix"],
        "created_at": fmt_ts(row["created_at"]),
        "revoked_at": fmt_ts(row["revoked_at"]),
    }


async def create_key(ctx: Context, principal: Principal, body: object) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(data, {"name", "owner", "scopes"}, problems)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\x00" in name:
        problems.append(
            problem("body.name", "must be a non-empty string of at most 200 characters")
        )
    owner = data.get("owner")
    if owner is not None and (
        not isinstance(owner, str) or "@" not in owner or len(owner) > 320 or "\x00" in owner
    ):
        problems.append(problem("body.owner", "must be an e-mail address"))
    scopes = data.get("scopes")
    if (
        not isinstance(scopes, list)
        or not scopes
        or any(s not in SCOPES for s in scopes)
        or len(set(scopes)) != len(scopes)
    ):
        problems.append(
            problem("body.scopes", f"must be a non-empty subset of {', '.join(SCOPES)}")
        )
    raise_if(problems)
    assert isinstance(scopes, list)
    return await insert_key(
        ctx, account_id=account_id, name=str(name), owner=owner, scopes=[str(s) for s in scopes]
    )


async def list_keys(
    ctx: Context, principal: Principal, query: dict[str, list[str]]
) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    problems: list[dict[str, str]] = []
    page = parse_page(query, problems)
    raise_if(problems)
    total = await ctx.db.fetchone(
        "SELECT COUNT(*) AS n FROM api_keys WHERE account_id = ?", (account_id,)
    )
    rows = await ctx.db.fetchall(
        "SELECT * FROM api_keys WHERE account_id = ? ORDER BY created_at, id LIMIT ? OFFSET ?",
        (account_id, page.limit, page.offset),
    )
    return page.wrap([render_key(r) for r in rows], int(total["n"]) if total else 0)


async def revoke_key(ctx: Context, principal: Principal, key_id: str) -> None:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    key_id = check_id(key_id, "API key")
    row = await ctx.db.fetchone(
        "SELECT id, revoked_at FROM api_keys WHERE id = ? AND account_id = ?", (key_id, account_id)
    )
    if row is None:
        raise not_found("API key")
    if row["revoked_at"] is None:
        async with ctx.db.transaction() as tx:
            await tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now_ms(), key_id))
            await ctx.bump_epoch(tx)  # nodes drop the digest from their snapshot


async def create_node_key(ctx: Context, name: str) -> dict[str, Any]:
    """Operator action (CLI): a key ingest nodes use for the node protocol."""
    return await insert_key(ctx, account_id=None, name=name, owner=None, scopes=[NODE_SCOPE])
