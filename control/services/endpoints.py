"""Ingest endpoints: create, list (status filter), get, patch, delete.

Status is computed when read (DESIGN.md §8, docs/adr/0006):
- `degraded`: the destination is `invalid`, a healthy node of the region reports a
  delivery error for the endpoint, or the region has nodes but none is healthy;
- `active`: a healthy node of the region has applied the endpoint's config epoch;
- `deploying`: otherwise (no node has applied it yet).
`dns_ipv4`/`dns_ipv6` list the healthy nodes' advertised addresses in the region.

Deleting an endpoint never drops data: it stops accepting new records at once, nodes
keep delivering what they hold, and the row is kept (hidden from the API) so commits
reported later still land (docs/adr/0006).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..auth import Principal
from ..errors import problem
from ..store.db import Executor
from .common import (
    Context,
    account_of,
    body_object,
    check_id,
    fmt_ts,
    is_region_code,
    is_uuid,
    new_id,
    not_found,
    now_ms,
    parse_page,
    raise_if,
    require_scope,
    unknown_fields,
)

READ = ("admin", "metrics")
STATUSES = ("deploying", "active", "degraded")
OUTPUT_FORMATS = ("segments", "parquet", "parquet_views")
SEGMENT_BYTES_DEFAULT = 32 * 1024 * 1024
SEGMENT_AGE_DEFAULT_S = 60
SEGMENT_AGE_MAX_S = 900
MQTT_DEFAULTS = {"enabled": True, "max_connections": 5000, "keepalive_max_s": 300, "qos_max": 1}
_COLUMNS = (
    "e.id, e.account_id, e.region, e.destination_id, e.segment_bytes, "
    "e.segment_max_age_seconds, e.output_formats, e.mqtt_config, e.config_epoch, "
    "e.created_at, d.name AS destination_name, d.status AS destination_status"
)
_FROM = "FROM endpoints e LEFT JOIN destinations d ON d.id = e.destination_id"


@dataclass(frozen=True, slots=True)
class RegionHealth:
    nodes_known: bool
    healthy_epochs: tuple[int, ...]
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    failing: frozenset[str]  # endpoint ids with a delivery error on a healthy node


def node_healthy(row: dict[str, Any], horizon_ms: int) -> bool:
    """A node is healthy when it heartbeated since `horizon_ms` and is not draining."""
    return int(row["last_heartbeat_at"]) >= horizon_ms and not row["draining"]


async def regions_health(ctx: Context, db: Executor, regions: set[str]) -> dict[str, RegionHealth]:
    """Node health of several regions in two queries (not two per region)."""
    if not regions:
        return {}
    horizon = now_ms() - int(ctx.settings.node_heartbeat_timeout_s * 1000)
    marks = ",".join("?" for _ in regions)
    rows = await db.fetchall(
        "SELECT id, region, last_heartbeat_at, applied_epoch, ipv4, ipv6, draining FROM nodes "
        f"WHERE region IN ({marks})",
        sorted(regions),
    )
    healthy = [r for r in rows if node_healthy(r, horizon)]
    failing: dict[str, set[str]] = {}
    if healthy:
        node_marks = ",".join("?" for _ in healthy)
        errors = await db.fetchall(
            f"SELECT node_id, endpoint_id FROM node_endpoint_state WHERE node_id IN ({node_marks}) "
            "AND delivery_error IS NOT NULL",
            [r["id"] for r in healthy],
        )
        region_of = {r["id"]: r["region"] for r in healthy}
        for e in errors:
            failing.setdefault(region_of[e["node_id"]], set()).add(e["endpoint_id"])
    result: dict[str, RegionHealth] = {}
    for region in regions:
        mine = [r for r in healthy if r["region"] == region]
        ipv4: list[str] = []
        ipv6: list[str] = []
        for r in mine:
            ipv4 += [a for a in json.loads(r["ipv4"]) if a not in ipv4]
            ipv6 += [a for a in json.loads(r["ipv6"]) if a not in ipv6]
        result[region] = RegionHealth(
            any(r["region"] == region for r in rows),
            tuple(int(r["applied_epoch"]) for r in mine),
            tuple(ipv4),
            tuple(ipv6),
            frozenset(failing.get(region, set())),
        )
    return result


async def region_health(ctx: Context, db: Executor, region: str) -> RegionHealth:
    return (await regions_health(ctx, db, {region}))[region]


def status_of(row: dict[str, Any], health: RegionHealth) -> str:
    if row["destination_status"] == "invalid" or row["id"] in health.failing:
        return "degraded"
    if health.nodes_known and not health.healthy_epochs:
        return "degraded"
    if any(epoch >= row["config_epoch"] for epoch in health.healthy_epochs):
        return "active"
    return "deploying"


def render(row: dict[str, Any], health: RegionHealth) -> dict[str, Any]:
    status = status_of(row, health)
    serving = status != "deploying"
    return {
        "id": row["id"],
        "region": row["region"],
        "status": status,
        "destination_id": row["destination_id"],
        "destination_name": row["destination_name"],
        "destination_status": row["destination_status"],
        "created_at": fmt_ts(row["created_at"]),
        "dns_ipv4": list(health.ipv4) if serving else [],
        "dns_ipv6": list(health.ipv6) if serving else [],
        "segment_bytes": int(row["segment_bytes"]),
        "segment_max_age_seconds": int(row["segment_max_age_seconds"]),
        "output_formats": json.loads(row["output_formats"]),
        "mqtt_config": json.loads(row["mqtt_config"]) if row["mqtt_config"] else None,
    }


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_mqtt(value: object, problems: list[dict[str, str]]) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(problem("body.mqtt_config", "must be an object or null"))
        return None
    out = dict(MQTT_DEFAULTS)
    for key in value:
        if key not in MQTT_DEFAULTS:
            problems.append(problem(f"body.mqtt_config.{key}", "unknown field"))
    if "enabled" in value:
        if not isinstance(value["enabled"], bool):
            problems.append(problem("body.mqtt_config.enabled", "must be true or false"))
        else:
            out["enabled"] = value["enabled"]
    for key, low, high in (
        ("max_connections", 1, 1_000_000),
        ("keepalive_max_s", 1, 65535),
        ("qos_max", 0, 2),
    ):
        if key in value:
            v = value[key]
            if not _int(v) or not low <= v <= high:
                problems.append(
                    problem(f"body.mqtt_config.{key}", f"must be an integer {low}..{high}")
                )
            else:
                out[key] = v
    return out


async def _check_body(
    ctx: Context,
    account_id: str,
    body: dict[str, Any],
    problems: list[dict[str, str]],
    *,
    create: bool,
) -> dict[str, Any]:
    allowed = {
        "destination_id",
        "segment_bytes",
        "segment_max_age_seconds",
        "output_formats",
        "mqtt_config",
    }
    if create:
        allowed.add("region")
    unknown_fields(body, allowed, problems)
    out: dict[str, Any] = {}
    if create:
        region = body.get("region")
        if not is_region_code(region):
            problems.append(problem("body.region", "must be a three-letter lowercase region code"))
        else:
            out["region"] = region
    if "destination_id" in body:
        dest = body["destination_id"]
        if dest is None and not create:
            out["destination_id"] = None
        elif not is_uuid(dest):  # not a str, or text the store may not hold (NUL on PG)
            problems.append(problem("body.destination_id", "must be a destination id"))
        else:
            row = await ctx.db.fetchone(
                "SELECT id FROM destinations WHERE id = ? AND account_id = ?",
                (dest.lower(), account_id),
            )
            if row is None:
                problems.append(problem("body.destination_id", "no such destination"))
            else:
                out["destination_id"] = row["id"]
    low, high = ctx.settings.segment_bytes_min, ctx.settings.segment_bytes_max
    for key, lo, hi in (
        ("segment_bytes", low, high),
        ("segment_max_age_seconds", 1, SEGMENT_AGE_MAX_S),
    ):
        if key in body and not (body[key] is None and not create):
            v = body[key]
            if not _int(v) or not lo <= v <= hi:
                problems.append(problem(f"body.{key}", f"must be an integer {lo}..{hi}"))
            else:
                out[key] = v
    if "output_formats" in body and not (body["output_formats"] is None and not create):
        formats = body["output_formats"]
        if (
            not isinstance(formats, list)
            or not formats
            or any(f not in OUTPUT_FORMATS for f in formats)
            or len(set(formats)) != len(formats)
        ):
            problems.append(
                problem(
                    "body.output_formats",
                    f"must be a non-empty list of distinct values from {', '.join(OUTPUT_FORMATS)}",
                )
            )
        else:
            out["output_formats"] = formats
    if "mqtt_config" in body:
        out["mqtt_config"] = _check_mqtt(body["mqtt_config"], problems)
    return out


async def _fetch(ctx: Context, account_id: str, endpoint_id: str) -> dict[str, Any]:
    row = await ctx.db.fetchone(
        f"SELECT {_COLUMNS} {_FROM} WHERE e.id = ? AND e.account_id = ? AND e.deleted_at IS NULL",
        (endpoint_id, account_id),
    )
    if row is None:
        raise not_found("endpoint")
    return row


async def _render_rows(ctx: Context, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    health = await regions_health(ctx, ctx.db, {r["region"] for r in rows})
    return [render(r, health[r["region"]]) for r in rows]


async def create(ctx: Context, principal: Principal, body: object) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    data = body_object(body)
    problems: list[dict[str, str]] = []
    fields = await _check_body(ctx, account_id, data, problems, create=True)
    raise_if(problems)
    endpoint_id = new_id()
    now = now_ms()
    mqtt = fields.get("mqtt_config")
    async with ctx.db.transaction() as tx:
        epoch = await ctx.bump_epoch(tx)
        await tx.execute(
            "INSERT INTO endpoints (id, account_id, region, destination_id, segment_bytes, "
            "segment_max_age_seconds, output_formats, mqtt_config, config_epoch, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                endpoint_id,
                account_id,
                fields["region"],
                fields.get("destination_id"),
                fields.get("segment_bytes", SEGMENT_BYTES_DEFAULT),
                fields.get("segment_max_age_seconds", SEGMENT_AGE_DEFAULT_S),
                json.dumps(fields.get("output_formats", ["segments", "parquet"])),
                json.dumps(mqtt) if mqtt is not None else None,
                epoch,
                now,
                now,
            ),
        )
    return (await _render_rows(ctx, [await _fetch(ctx, account_id, endpoint_id)]))[0]


async def list_(ctx: Context, principal: Principal, query: dict[str, list[str]]) -> dict[str, Any]:
    require_scope(principal, *READ)
    account_id = account_of(principal)
    problems: list[dict[str, str]] = []
    page = parse_page(query, problems)
    status = query.get("status", [None])[-1]
    if status is not None and status not in STATUSES:
        problems.append(problem("query.status", f"must be one of {', '.join(STATUSES)}"))
    raise_if(problems)
    where = "WHERE e.account_id = ? AND e.deleted_at IS NULL"
    if status is None:
        total = await ctx.db.fetchone(
            f"SELECT COUNT(*) AS n FROM endpoints e {where}", (account_id,)
        )
        # Deferred join: pick the page's ids from the covering index, then join.
        rows = await ctx.db.fetchall(
            f"SELECT {_COLUMNS} {_FROM} WHERE e.id IN (SELECT id FROM endpoints "
            "WHERE account_id = ? AND deleted_at IS NULL ORDER BY created_at, id "
            "LIMIT ? OFFSET ?) ORDER BY e.created_at, e.id",
            (account_id, page.limit, page.offset),
        )
        return page.wrap(await _render_rows(ctx, rows), int(total["n"]) if total else 0)
    rows = await ctx.db.fetchall(
        f"SELECT {_COLUMNS} {_FROM} {where} ORDER BY e.created_at, e.id", (account_id,)
    )
    matching = [i for i in await _render_rows(ctx, rows) if i["status"] == status]
    return page.wrap(matching[page.offset : page.offset + page.limit], len(matching))


async def get(ctx: Context, principal: Principal, endpoint_id: str) -> dict[str, Any]:
    require_scope(principal, *READ)
    account_id = account_of(principal)
    row = await _fetch(ctx, account_id, check_id(endpoint_id, "endpoint"))
    return (await _render_rows(ctx, [row]))[0]


async def patch(
    ctx: Context, principal: Principal, endpoint_id: str, body: object
) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    endpoint_id = check_id(endpoint_id, "endpoint")
    await _fetch(ctx, account_id, endpoint_id)
    data = body_object(body)
    problems: list[dict[str, str]] = []
    fields = await _check_body(ctx, account_id, data, problems, create=False)
    raise_if(problems)
    if fields:
        stored = {
            k: (json.dumps(v) if k in ("output_formats", "mqtt_config") and v is not None else v)
            for k, v in fields.items()
        }
        async with ctx.db.transaction() as tx:
            epoch = await ctx.bump_epoch(tx)
            sets = ", ".join(f"{k} = ?" for k in stored)
            await tx.execute(
                f"UPDATE endpoints SET {sets}, config_epoch = ?, updated_at = ? "
                "WHERE id = ? AND account_id = ? AND deleted_at IS NULL",
                (*stored.values(), epoch, now_ms(), endpoint_id, account_id),
            )
    return await get(ctx, principal, endpoint_id)


async def delete(ctx: Context, principal: Principal, endpoint_id: str) -> None:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    endpoint_id = check_id(endpoint_id, "endpoint")
    await _fetch(ctx, account_id, endpoint_id)
    async with ctx.db.transaction() as tx:
        # Under the lock attach takes: no binding is inserted after the sweep below.
        await tx.lock(f"endpoint:{endpoint_id}")
        epoch = await ctx.bump_epoch(tx)
        now = now_ms()
        await tx.execute(
            "UPDATE endpoints SET deleted_at = ?, config_epoch = ?, updated_at = ? "
            "WHERE id = ? AND account_id = ?",
            (now, epoch, now, endpoint_id, account_id),
        )
        await tx.execute(
            "UPDATE bindings SET deactivated_at = ? "
            "WHERE endpoint_id = ? AND deactivated_at IS NULL",
            (now, endpoint_id),
        )
