"""The fleet as an operator sees it (`edgemq status`): nodes and endpoints, read from
the control store.

Endpoint status and DNS addresses come from the control plane's own derivation
(`services.endpoints.regions_health` / `render`), so `edgemq status` and
`GET /v1/endpoints` cannot disagree. A node is healthy by the same rule that feeds
that derivation: it heartbeated within the heartbeat timeout and is not draining.
The timeout is a setting of the control-plane process (30 s by default); pass the
same value here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from typing import Any

from .server import open_read_only
from .services.common import Context, ControlSettings, fmt_ts, now_ms
from .services.endpoints import node_healthy, regions_health, render

_ENDPOINTS = (
    "SELECT e.id, e.account_id, a.name AS account_name, e.region, e.destination_id, "
    "e.segment_bytes, e.segment_max_age_seconds, e.output_formats, e.mqtt_config, "
    "e.config_epoch, e.created_at, d.name AS destination_name, "
    "d.status AS destination_status "
    "FROM endpoints e JOIN accounts a ON a.id = e.account_id "
    "LEFT JOIN destinations d ON d.id = e.destination_id "
    "WHERE e.deleted_at IS NULL"
)


async def fleet(ctx: Context, region: str | None = None) -> dict[str, Any]:
    """Nodes, endpoints and the config epoch; only `region` when given."""
    epoch = await ctx.config_epoch()
    where, args = ("WHERE region = ?", (region,)) if region else ("", ())
    nodes = await ctx.db.fetchall(f"SELECT * FROM nodes {where} ORDER BY region, id", args)
    states = await ctx.db.fetchall(
        "SELECT node_id, endpoint_id, unshipped_bytes, delivery_error FROM node_endpoint_state"
    )
    endpoint_where, endpoint_args = (" AND e.region = ?", (region,)) if region else ("", ())
    endpoints = await ctx.db.fetchall(
        f"{_ENDPOINTS}{endpoint_where} ORDER BY e.region, e.created_at, e.id", endpoint_args
    )
    now = now_ms()
    horizon = now - int(ctx.settings.node_heartbeat_timeout_s * 1000)
    by_node: dict[str, int] = defaultdict(int)
    by_endpoint: dict[str, int] = defaultdict(int)
    errors: dict[str, list[dict[str, str]]] = defaultdict(list)
    for s in states:
        by_node[s["node_id"]] += int(s["unshipped_bytes"])
        by_endpoint[s["endpoint_id"]] += int(s["unshipped_bytes"])
        if s["delivery_error"] is not None:
            errors[s["endpoint_id"]].append(
                {"node_id": s["node_id"], "error": str(s["delivery_error"])}
            )
    health = await regions_health(ctx, ctx.db, {e["region"] for e in endpoints})
    return {
        "config_epoch": epoch,
        "generated_at": fmt_ts(now),
        "heartbeat_timeout_s": ctx.settings.node_heartbeat_timeout_s,
        "nodes": [
            {
                "id": n["id"],
                "region": n["region"],
                "http_url": n["http_url"],
                "mqtt_url": n["mqtt_url"],
                "ipv4": json.loads(n["ipv4"]),
                "ipv6": json.loads(n["ipv6"]),
                "version": n["version"],
                "last_heartbeat_at": fmt_ts(int(n["last_heartbeat_at"])),
                "heartbeat_age_s": round(max(0, now - int(n["last_heartbeat_at"])) / 1000, 1),
                "healthy": node_healthy(n, horizon),
                "draining": bool(n["draining"]),
                "applied_epoch": int(n["applied_epoch"]),
                "unshipped_bytes": by_node.get(n["id"], 0),
            }
            for n in nodes
        ],
        "endpoints": [
            {
                **{
                    k: v
                    for k, v in render(e, health[e["region"]]).items()
                    if k
                    in (
                        "id",
                        "region",
                        "status",
                        "destination_id",
                        "destination_status",
                        "dns_ipv4",
                        "dns_ipv6",
                    )
                },
                "account_id": e["account_id"],
                "account_name": e["account_name"],
                "config_epoch": int(e["config_epoch"]),
                "unshipped_bytes": by_endpoint.get(e["id"], 0),
                "delivery_errors": errors.get(e["id"], []),
            }
            for e in endpoints
        ],
    }


async def fleet_status(
    database_url: str, *, region: str | None = None, heartbeat_timeout_s: float | None = None
) -> dict[str, Any]:
    """`fleet` on the store at `database_url` (SQLite path URL or postgresql://), read
    as it is: no migration, nothing created (`StoreUnavailable` when missing or at
    another schema version)."""
    settings = ControlSettings()
    if heartbeat_timeout_s is not None:
        settings = replace(settings, node_heartbeat_timeout_s=heartbeat_timeout_s)
    async with open_read_only(database_url, settings) as ctx:
        return await fleet(ctx, region)
