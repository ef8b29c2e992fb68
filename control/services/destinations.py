"""S3 destinations: create, list (with ref_count), get, patch, delete, validate."""

from __future__ import annotations

from typing import Any

from ..auth import Principal
from ..errors import Conflict, Throttled, problem
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

READ = ("admin", "metrics")
CRITICAL = ("bucket", "prefix", "region", "role_arn", "kms_key_arn", "path_style", "endpoint_url")
FIELDS = {
    "name",
    "bucket",
    "prefix",
    "region",
    "role_arn",
    "kms_key_arn",
    "path_style",
    "endpoint_url",
}
_COLUMNS = (
    "d.id, d.name, d.bucket, d.prefix, d.region, d.role_arn, d.kms_key_arn, d.path_style, "
    "d.endpoint_url, d.status, d.validated_at, d.last_error, d.created_at, d.updated_at, "
    "d.last_validation_at, a.external_id"
)


def normalise_prefix(prefix: str) -> str:
    return "/".join(part for part in prefix.split("/") if part)


def _check_fields(
    body: dict[str, Any], problems: list[dict[str, str]], *, partial: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def text(name: str, *, required: bool, nullable: bool = False, max_len: int = 1024) -> None:
        if name not in body:
            if required and not partial:
                problems.append(problem(f"body.{name}", "is required"))
            return
        value = body[name]
        if value is None and nullable:
            out[name] = None
        elif not isinstance(value, str) or (not value.strip() and name != "prefix"):
            problems.append(problem(f"body.{name}", "must be a non-empty string"))
        elif len(value) > max_len:
            problems.append(problem(f"body.{name}", f"must be at most {max_len} characters"))
        elif "\x00" in value:  # PostgreSQL text cannot hold NUL (was a 500)
            problems.append(problem(f"body.{name}", "must not contain NUL characters"))
        else:
            out[name] = value

    text("name", required=True, max_len=200)
    text("bucket", required=True, max_len=63)
    text("prefix", required=False, max_len=512)
    text("region", required=True, max_len=64)
    text("role_arn", required=True, max_len=2048)
    text("kms_key_arn", required=False, nullable=True, max_len=2048)
    text("endpoint_url", required=False, nullable=True, max_len=2048)
    if "path_style" in body:
        if isinstance(body["path_style"], bool):
            out["path_style"] = body["path_style"]
        else:
            problems.append(problem("body.path_style", "must be true or false"))
    if "prefix" in out:
        out["prefix"] = normalise_prefix(out["prefix"])
    url = out.get("endpoint_url")
    if isinstance(url, str) and not url.startswith(("http://", "https://", "file://")):
        problems.append(problem("body.endpoint_url", "must be an http(s):// or file:// URL"))
    return out


def render(row: dict[str, Any], *, ref_count: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": row["id"],
        "name": row["name"],
        "bucket": row["bucket"],
        "prefix": row["prefix"],
        "region": row["region"],
        "role_arn": row["role_arn"],
        "external_id": row["external_id"],
        "kms_key_arn": row["kms_key_arn"],
        "path_style": bool(row["path_style"]),
        "endpoint_url": row["endpoint_url"],
        "status": row["status"],
        "validated_at": fmt_ts(row["validated_at"]),
        "last_error": row["last_error"],
        "created_at": fmt_ts(row["created_at"]),
        "updated_at": fmt_ts(row["updated_at"]),
    }
    if ref_count is not None:
        item["ref_count"] = ref_count
    return item


async def _fetch(ctx: Context, account_id: str, destination_id: str) -> dict[str, Any]:
    row = await ctx.db.fetchone(
        f"SELECT {_COLUMNS} FROM destinations d JOIN accounts a ON a.id = d.account_id "
        "WHERE d.id = ? AND d.account_id = ?",
        (destination_id, account_id),
    )
    if row is None:
        raise not_found("destination")
    return row


async def _ref_count(ctx: Context, destination_id: str) -> int:
    row = await ctx.db.fetchone(
        "SELECT COUNT(*) AS n FROM endpoints WHERE destination_id = ? AND deleted_at IS NULL",
        (destination_id,),
    )
    return int(row["n"]) if row else 0


async def create(ctx: Context, principal: Principal, body: object) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(data, FIELDS, problems)
    fields = _check_fields(data, problems, partial=False)
    raise_if(problems)
    now = now_ms()
    destination_id = new_id()
    async with ctx.db.transaction() as tx:
        await tx.lock(f"destination-name:{account_id}:{fields['name']}")
        clash = await tx.fetchone(
            "SELECT id FROM destinations WHERE account_id = ? AND name = ?",
            (account_id, fields["name"]),
        )
        if clash is not None:
            raise Conflict("a destination with this name already exists")
        await tx.execute(
            "INSERT INTO destinations (id, account_id, name, bucket, prefix, region, role_arn, "
            "kms_key_arn, path_style, endpoint_url, status, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
            (
                destination_id,
                account_id,
                fields["name"],
                fields["bucket"],
                fields.get("prefix", ""),
                fields["region"],
                fields["role_arn"],
                fields.get("kms_key_arn"),
                int(fields.get("path_style", False)),
                fields.get("endpoint_url"),
                now,
                now,
            ),
        )
    return render(await _fetch(ctx, account_id, destination_id))


async def list_(ctx: Context, principal: Principal, query: dict[str, list[str]]) -> dict[str, Any]:
    require_scope(principal, *READ)
    account_id = account_of(principal)
    problems: list[dict[str, str]] = []
    page = parse_page(query, problems)
    raise_if(problems)
    total_row = await ctx.db.fetchone(
        "SELECT COUNT(*) AS n FROM destinations WHERE account_id = ?", (account_id,)
    )
    rows = await ctx.db.fetchall(
        f"SELECT {_COLUMNS}, (SELECT COUNT(*) FROM endpoints e WHERE e.destination_id = d.id "
        "AND e.deleted_at IS NULL) AS ref_count "
        "FROM destinations d JOIN accounts a ON a.id = d.account_id WHERE d.account_id = ? "
        "ORDER BY d.created_at, d.id LIMIT ? OFFSET ?",
        (account_id, page.limit, page.offset),
    )
    items = [render(r, ref_count=int(r["ref_count"])) for r in rows]
    return page.wrap(items, int(total_row["n"]) if total_row else 0)


async def get(ctx: Context, principal: Principal, destination_id: str) -> dict[str, Any]:
    require_scope(principal, *READ)
    account_id = account_of(principal)
    row = await _fetch(ctx, account_id, check_id(destination_id, "destination"))
    return render(row, ref_count=await _ref_count(ctx, row["id"]))


async def patch(
    ctx: Context, principal: Principal, destination_id: str, body: object
) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    destination_id = check_id(destination_id, "destination")
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(data, FIELDS, problems)
    fields = _check_fields(data, problems, partial=True)
    raise_if(problems)
    async with ctx.db.transaction() as tx:
        row = await tx.fetchone(
            "SELECT * FROM destinations WHERE id = ? AND account_id = ?",
            (destination_id, account_id),
        )
        if row is None:
            raise not_found("destination")
        if "name" in fields and fields["name"] != row["name"]:
            await tx.lock(f"destination-name:{account_id}:{fields['name']}")
            clash = await tx.fetchone(
                "SELECT id FROM destinations WHERE account_id = ? AND name = ? AND id <> ?",
                (account_id, fields["name"], destination_id),
            )
            if clash is not None:
                raise Conflict("a destination with this name already exists")
        stored = {k: (int(v) if k == "path_style" else v) for k, v in fields.items()}
        critical = any(k in stored and stored[k] != row[k] for k in CRITICAL)
        assignments = [f"{k} = ?" for k in stored]
        values = list(stored.values())
        if critical:
            assignments += ["status = 'pending'", "validated_at = NULL", "last_error = NULL"]
        assignments.append("updated_at = ?")
        values.append(now_ms())
        await tx.execute(
            f"UPDATE destinations SET {', '.join(assignments)} WHERE id = ?",
            (*values, destination_id),
        )
        if critical:
            await ctx.bump_epoch(tx)
            await tx.execute(
                "UPDATE endpoints SET config_epoch = (SELECT value FROM settings WHERE "
                "name = 'config_epoch') WHERE destination_id = ?",
                (destination_id,),
            )
    return render(await _fetch(ctx, account_id, destination_id))


async def delete(ctx: Context, principal: Principal, destination_id: str) -> None:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    destination_id = check_id(destination_id, "destination")
    async with ctx.db.transaction() as tx:
        row = await tx.fetchone(
            "SELECT id FROM destinations WHERE id = ? AND account_id = ?",
            (destination_id, account_id),
        )
        if row is None:
            raise not_found("destination")
        # Same count as `ref_count`: deleted endpoints are hidden and do not pin it...
        refs = await tx.fetchone(
            "SELECT COUNT(*) AS n FROM endpoints WHERE destination_id = ? AND deleted_at IS NULL",
            (destination_id,),
        )
        if refs and int(refs["n"]) > 0:
            raise Conflict("the destination is referenced by endpoints; unbind it first")
        # ...unless nodes are still delivering a deleted endpoint's data to it.
        draining = await tx.fetchone(
            "SELECT COUNT(*) AS n FROM endpoints e WHERE e.destination_id = ? "
            "AND e.deleted_at IS NOT NULL AND EXISTS (SELECT 1 FROM node_endpoint_state s "
            "WHERE s.endpoint_id = e.id AND s.unshipped_bytes > 0)",
            (destination_id,),
        )
        if draining and int(draining["n"]) > 0:
            raise Conflict(
                "a deleted endpoint is still delivering data to this destination; "
                "retry once it has drained"
            )
        # Deleted endpoint rows are kept (late commit reports); they let go of it.
        await tx.execute(
            "UPDATE endpoints SET destination_id = NULL "
            "WHERE destination_id = ? AND deleted_at IS NOT NULL",
            (destination_id,),
        )
        await tx.execute("DELETE FROM destinations WHERE id = ?", (destination_id,))


async def validate(ctx: Context, principal: Principal, destination_id: str) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    destination_id = check_id(destination_id, "destination")
    now = now_ms()
    interval_ms = int(ctx.settings.validate_interval_s * 1000)
    async with ctx.db.transaction() as tx:
        row = await tx.fetchone(
            "SELECT last_validation_at FROM destinations WHERE id = ? AND account_id = ?",
            (destination_id, account_id),
        )
        if row is None:
            raise not_found("destination")
        last = row["last_validation_at"]
        if last is not None and now - last < interval_ms:
            wait_s = max(1, (interval_ms - (now - last) + 999) // 1000)
            raise Throttled(
                f"validation throttled: at most one per {ctx.settings.validate_interval_s:g} s",
                retry_after_s=wait_s,
            )
        await tx.execute(
            "UPDATE destinations SET last_validation_at = ? WHERE id = ?", (now, destination_id)
        )
    row = await _fetch(ctx, account_id, destination_id)
    from .s3check import check_destination

    error = await check_destination(render(row))
    done = now_ms()
    async with ctx.db.transaction() as tx:
        before = await tx.fetchone(
            "SELECT status FROM destinations WHERE id = ?", (destination_id,)
        )
        status = "valid" if error is None else "invalid"
        await tx.execute(
            "UPDATE destinations SET status = ?, validated_at = ?, last_error = ?, updated_at = ? "
            "WHERE id = ?",
            (status, done if error is None else None, error, done, destination_id),
        )
        if before is not None and before["status"] != status:
            await ctx.bump_epoch(tx)
    return render(await _fetch(ctx, account_id, destination_id))


def as_snapshot(row: dict[str, Any]) -> dict[str, Any]:
    """The destination as nodes need it (no secrets are stored, so none are sent)."""
    item = render(row)
    return {
        k: item[k]
        for k in (
            "id",
            "bucket",
            "prefix",
            "region",
            "role_arn",
            "external_id",
            "kms_key_arn",
            "path_style",
            "endpoint_url",
            "status",
        )
    }
