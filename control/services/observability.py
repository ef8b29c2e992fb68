"""Commits, DLQ files and view metrics, all derived from the nodes' commit reports."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from ..auth import Principal
from ..errors import problem
from . import views
from .common import (
    Context,
    account_of,
    check_id,
    fmt_ts,
    fmt_ts_us,
    not_found,
    now_ms,
    parse_int_param,
    parse_ts,
    raise_if,
    require_scope,
)
from .presign import presign_get

READ = ("admin", "metrics")
DAY_MS = 24 * 3600 * 1000
DOWNLOAD_TTL_S = 3600


async def commits(
    ctx: Context, principal: Principal, endpoint_id: str, query: dict[str, list[str]]
) -> dict[str, Any]:
    require_scope(principal, *READ)
    account_id = account_of(principal)
    endpoint_id = check_id(endpoint_id, "endpoint")
    problems: list[dict[str, str]] = []
    limit = parse_int_param(query, "limit", problems, default=50, low=1, high=200)
    before_us: int | None = None
    if "before" in query:
        try:
            before_us = int(parse_ts(query["before"][-1]).timestamp() * 1_000_000)
        except ValueError as err:
            problems.append(problem("query.before", str(err)))
    raise_if(problems)
    owner = await ctx.db.fetchone(
        "SELECT id FROM endpoints WHERE id = ? AND account_id = ? AND deleted_at IS NULL",
        (endpoint_id, account_id),
    )
    if owner is None:
        raise not_found("endpoint")
    where = "endpoint_id = ?"
    params: list[object] = [endpoint_id]
    if before_us is not None:
        where += " AND uploaded_at_us < ?"
        params.append(before_us)
    rows = await ctx.db.fetchall(
        f"SELECT * FROM commits WHERE {where} ORDER BY uploaded_at_us DESC, id DESC LIMIT ?",
        (*params, limit + 1),
    )
    more = len(rows) > limit
    page = rows[:limit]
    if more and rows[limit]["uploaded_at_us"] == page[-1]["uploaded_at_us"]:
        # The cursor is a time, so a page must not end inside a group of commits
        # uploaded at the same instant (the next page would skip the rest of the group):
        # end the page before the group or, when the whole page is that group, return
        # all of it.
        boundary = int(page[-1]["uploaded_at_us"])
        page = [r for r in page if int(r["uploaded_at_us"]) != boundary]
        if not page:
            page = await ctx.db.fetchall(
                "SELECT * FROM commits WHERE endpoint_id = ? AND uploaded_at_us = ? "
                "ORDER BY id DESC",
                (endpoint_id, boundary),
            )
            older = await ctx.db.fetchone(
                "SELECT id FROM commits WHERE endpoint_id = ? AND uploaded_at_us < ? LIMIT 1",
                (endpoint_id, boundary),
            )
            more = older is not None
    rows = page
    items = [
        {
            "id": str(r["id"]),
            "node_id": r["node_id"],
            "epoch": int(r["epoch"]),
            "seq": int(r["seq"]),
            "wal_bytes": int(r["wal_bytes"]),
            "frames": int(r["frames"]),
            "duration_ms": int(r["duration_ms"]),
            "uploaded_at": fmt_ts(int(r["uploaded_at_us"]) // 1000),
            "manifest_key": r["manifest_key"],
            "artifacts": json.loads(r["artifacts"]),
        }
        for r in rows
    ]
    cursor = fmt_ts_us(int(rows[-1]["uploaded_at_us"])) if more and rows else None
    return {"items": items, "next_cursor": cursor}


# ----------------------------------------------------------------- downloads
def sign_download(ctx: Context, destination_id: str, key: str, expires_at: int) -> str:
    payload = json.dumps([destination_id, key, expires_at], separators=(",", ":")).encode()
    mac = hmac.new(ctx.settings.download_secret, payload, hashlib.sha256).digest()
    token = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return f"{token}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def verify_download(ctx: Context, token: str) -> tuple[str, str] | None:
    try:
        body, _, sig = token.partition(".")
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        mac = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    except (ValueError, TypeError):
        return None
    expected = hmac.new(ctx.settings.download_secret, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        return None
    destination_id, key, expires_at = json.loads(payload)
    if expires_at < time.time():
        return None
    return str(destination_id), str(key)


async def dlq_files(
    ctx: Context, principal: Principal, view_id: str, query: dict[str, list[str]]
) -> dict[str, Any]:
    require_scope(principal, *READ)
    account_id = account_of(principal)
    view = await views.fetch(ctx.db, account_id, check_id(view_id, "view"))
    problems: list[dict[str, str]] = []
    limit = parse_int_param(query, "limit", problems, default=50, low=1, high=200)
    offset = parse_int_param(query, "offset", problems, default=0, low=0, high=None)
    raise_if(problems)
    total = await ctx.db.fetchone(
        "SELECT COUNT(*) AS n FROM view_outcomes WHERE view_id = ? AND dlq_key IS NOT NULL",
        (view["id"],),
    )
    rows = await ctx.db.fetchall(
        "SELECT o.*, e.destination_id FROM view_outcomes o JOIN endpoints e ON e.id = o.endpoint_id "
        "WHERE o.view_id = ? AND o.dlq_key IS NOT NULL ORDER BY o.at DESC, o.seq DESC LIMIT ? OFFSET ?",
        (view["id"], limit, offset),
    )
    expires_at = int(time.time()) + DOWNLOAD_TTL_S
    destinations: dict[str, dict[str, Any] | None] = {}
    files = []
    for r in rows:
        dest_id = r["destination_id"]
        if dest_id not in destinations:
            destinations[dest_id] = (
                await ctx.db.fetchone(
                    "SELECT d.*, a.external_id FROM destinations d JOIN accounts a ON a.id = d.account_id "
                    "WHERE d.id = ?",
                    (dest_id,),
                )
                if dest_id
                else None
            )
        dest = destinations[dest_id]
        url = None
        if dest is not None:
            if (dest["endpoint_url"] or "").startswith("file://"):
                token = sign_download(ctx, dest["id"], r["dlq_key"], expires_at)
                url = f"{ctx.settings.public_url}/v1/downloads/{token}"
            else:
                url = await presign_get(dest, r["dlq_key"], DOWNLOAD_TTL_S)
        files.append(
            {
                "endpoint_id": r["endpoint_id"],
                "endpoint_name": r["endpoint_id"],
                "node_id": r["node_id"],
                "segment_seq": int(r["seq"]),
                "s3_key": r["dlq_key"],
                "s3_bucket": r["dlq_bucket"],
                "region": r["dlq_region"],
                "bytes": int(r["dlq_bytes"] or 0),
                "rows": int(r["dlq"]),
                "created_at": fmt_ts(r["at"]),
                "download_url": url,
            }
        )
    return {
        "view_id": view["id"],
        "view_name": view["name"],
        "view_version": int(view["version"]),
        "files": files,
        "total": int(total["n"]) if total else 0,
    }


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(int(r[k]) for r in rows) for k in ("processed", "accepted", "dropped", "dlq")}


def error_rate(counts: dict[str, int]) -> float:
    if not counts["processed"]:
        return 0.0
    return round((counts["dropped"] + counts["dlq"]) / counts["processed"] * 100, 2)


async def metrics(ctx: Context, principal: Principal, view_id: str) -> dict[str, Any]:
    require_scope(principal, *READ)
    account_id = account_of(principal)
    view = await views.fetch(ctx.db, account_id, check_id(view_id, "view"))
    rows = await ctx.db.fetchall(
        "SELECT endpoint_id, processed, accepted, dropped, dlq, error_code, error_message, at "
        "FROM view_outcomes WHERE view_id = ? ORDER BY at",
        (view["id"],),
    )
    since = now_ms() - DAY_MS
    by_endpoint: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_endpoint.setdefault(r["endpoint_id"], []).append(r)
    endpoints: list[dict[str, Any]] = []
    for endpoint_id, items in by_endpoint.items():
        recent = [r for r in items if r["at"] >= since]
        errors = [r for r in items if r["error_code"] is not None]
        recent_errors = [r for r in errors if r["at"] >= since]
        last_error = errors[-1] if errors else None
        day = _counts(recent)
        endpoints.append(
            {
                "endpoint_id": endpoint_id,
                "endpoint_name": endpoint_id,
                "last_24h": day,
                "all_time": _counts(items),
                "error_rate_pct": error_rate(day),
                "has_errors": bool(recent_errors),
                "error_count_24h": len(recent_errors),
                "total_error_count": len(errors),
                "last_error_at": fmt_ts(last_error["at"]) if last_error else None,
                "last_error_code": last_error["error_code"] if last_error else None,
                "last_error_message": last_error["error_message"] if last_error else None,
                "last_updated_at": fmt_ts(items[-1]["at"]),
            }
        )
    day_all = _counts([r for r in rows if r["at"] >= since])
    errors_24h = sum(int(e["error_count_24h"]) for e in endpoints)
    return {
        "view_id": view["id"],
        "view_name": view["name"],
        "view_version": int(view["version"]),
        "endpoints": endpoints,
        "aggregated": {
            "last_24h": day_all,
            "all_time": _counts(rows),
            "error_rate_pct": error_rate(day_all),
            "has_errors": errors_24h > 0,
            "total_error_count_24h": errors_24h,
        },
    }
