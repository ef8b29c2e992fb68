"""View-to-endpoint bindings: attach (published views only), list, detach (soft)."""

from __future__ import annotations

from typing import Any

from ..auth import Principal
from ..errors import Conflict, Invalid, problem
from ..store.db import Executor
from . import views
from .common import (
    Context,
    account_of,
    body_object,
    check_id,
    fmt_ts,
    is_uuid,
    new_id,
    not_found,
    now_ms,
    parse_ts,
    raise_if,
    require_scope,
    ts_to_ms,
    unknown_fields,
)

_SELECT = (
    "SELECT b.*, v.name AS view_name, v.version AS view_version FROM bindings b "
    "JOIN views v ON v.id = b.view_id"
)


def render(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "endpoint_id": row["endpoint_id"],
        "view_id": row["view_id"],
        "view_name": row["view_name"],
        "view_version": int(row["view_version"]),
        "is_required": bool(row["is_required"]),
        "activated_at": fmt_ts(row["activated_at"]),
        "activated_by": row["activated_by"],
        "deactivated_at": fmt_ts(row["deactivated_at"]),
        "canary_start_ts": fmt_ts(row["canary_start_ts"]),
        "status": "active" if row["deactivated_at"] is None else "inactive",
    }


async def _endpoint(
    ctx: Context, account_id: str, endpoint_id: str, tx: Executor | None = None
) -> None:
    row = await (tx or ctx.db).fetchone(
        "SELECT id FROM endpoints WHERE id = ? AND account_id = ? AND deleted_at IS NULL",
        (endpoint_id, account_id),
    )
    if row is None:
        raise not_found("endpoint")


async def attach(
    ctx: Context, principal: Principal, endpoint_id: str, body: object
) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    endpoint_id = check_id(endpoint_id, "endpoint")
    await _endpoint(ctx, account_id, endpoint_id)
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(data, {"view_id", "is_required", "canary_start_ts"}, problems)
    view_id = data.get("view_id")
    if not is_uuid(view_id):
        problems.append(problem("body.view_id", "must be a view id"))
    is_required = data.get("is_required", False)
    if not isinstance(is_required, bool):
        problems.append(problem("body.is_required", "must be true or false"))
    canary: int | None = None
    if data.get("canary_start_ts") is not None:
        try:
            canary = ts_to_ms(parse_ts(data["canary_start_ts"]))
        except ValueError as err:
            problems.append(problem("body.canary_start_ts", str(err)))
    raise_if(problems)
    assert isinstance(view_id, str)
    view = await views.fetch(ctx.db, account_id, view_id.lower())
    if view["status"] != "published":
        raise Invalid(
            [
                problem(
                    "body.view_id",
                    f"only published views can be attached (this one is {view['status']})",
                )
            ]
        )
    binding_id = new_id()
    async with ctx.db.transaction() as tx:
        # The checks above are repeated under the locks archive and endpoint delete
        # take: neither can land between them and the insert (docs/adr/0009).
        await tx.lock(f"endpoint:{endpoint_id}")
        await tx.lock(f"view:{view['id']}")
        await _endpoint(ctx, account_id, endpoint_id, tx)
        again = await tx.fetchone("SELECT status FROM views WHERE id = ?", (view["id"],))
        if again is None or again["status"] != "published":
            status = again["status"] if again else "deleted"
            raise Invalid(
                [
                    problem(
                        "body.view_id",
                        f"only published views can be attached (this one is {status})",
                    )
                ]
            )
        active = await tx.fetchone(
            "SELECT id FROM bindings WHERE endpoint_id = ? AND view_id = ? AND deactivated_at IS NULL",
            (endpoint_id, view["id"]),
        )
        if active is not None:
            raise Conflict("the view is already attached to this endpoint")
        epoch = await ctx.bump_epoch(tx)
        await tx.execute(
            "INSERT INTO bindings (id, account_id, endpoint_id, view_id, is_required, canary_start_ts, "
            "activated_at, activated_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                binding_id,
                account_id,
                endpoint_id,
                view["id"],
                int(is_required),
                canary,
                now_ms(),
                principal.actor,
            ),
        )
        await tx.execute("UPDATE endpoints SET config_epoch = ? WHERE id = ?", (epoch, endpoint_id))
    row = await ctx.db.fetchone(f"{_SELECT} WHERE b.id = ?", (binding_id,))
    assert row is not None
    return render(row)


async def list_(ctx: Context, principal: Principal, endpoint_id: str) -> dict[str, Any]:
    require_scope(principal, "admin", "metrics")
    account_id = account_of(principal)
    endpoint_id = check_id(endpoint_id, "endpoint")
    await _endpoint(ctx, account_id, endpoint_id)
    rows = await ctx.db.fetchall(
        f"{_SELECT} WHERE b.endpoint_id = ? AND b.account_id = ? ORDER BY b.activated_at, b.id",
        (endpoint_id, account_id),
    )
    return {"items": [render(r) for r in rows]}


async def detach(ctx: Context, principal: Principal, endpoint_id: str, binding_id: str) -> None:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    endpoint_id = check_id(endpoint_id, "endpoint")
    binding_id = check_id(binding_id, "binding")
    await _endpoint(ctx, account_id, endpoint_id)
    async with ctx.db.transaction() as tx:
        row = await tx.fetchone(
            "SELECT id, deactivated_at FROM bindings WHERE id = ? AND endpoint_id = ? AND account_id = ?",
            (binding_id, endpoint_id, account_id),
        )
        if row is None:
            raise not_found("binding")
        if row["deactivated_at"] is None:
            epoch = await ctx.bump_epoch(tx)
            await tx.execute(
                "UPDATE bindings SET deactivated_at = ? WHERE id = ?", (now_ms(), binding_id)
            )
            await tx.execute(
                "UPDATE endpoints SET config_epoch = ? WHERE id = ?", (epoch, endpoint_id)
            )
