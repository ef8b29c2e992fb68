"""The node protocol: register, heartbeat, long-polled config snapshot, commit reports.

Nodes authenticate with `node`-scoped API keys (no account). A snapshot carries the
endpoints of the node's region (deleted ones as `accepting: false` until no node holds
their data), their destinations, active bindings with view definitions, ingest key
digests and the JWKS. Commit reports are idempotent on (endpoint, node, epoch, seq).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..auth import Principal
from ..errors import problem
from .common import (
    Context,
    body_object,
    is_region_code,
    new_id,
    not_found,
    now_ms,
    parse_int_param,
    parse_ts,
    raise_if,
    unknown_fields,
)
from .destinations import as_snapshot

COMMITS_PER_REPORT_MAX = 1000
ENDPOINTS_PER_HEARTBEAT_MAX = 100_000
"""Endpoint states one heartbeat may carry (400 above; docs/control-plane.md)."""
_UPSERT_ROWS = 500
"""Endpoint states per INSERT statement (5 parameters each)."""


def _str_list(value: object, path: str, problems: list[dict[str, str]]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 64 for v in value):
        problems.append(problem(path, "must be a list of addresses"))
        return []
    return list(value)


async def register(ctx: Context, principal: Principal, body: object) -> dict[str, Any]:
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(
        data, {"node_id", "region", "http_url", "mqtt_url", "ipv4", "ipv6", "version"}, problems
    )
    region = data.get("region")
    if not is_region_code(region):
        problems.append(problem("body.region", "must be a three-letter lowercase region code"))
    node_id = data.get("node_id") or new_id()
    if not isinstance(node_id, str) or len(node_id) > 64:
        problems.append(problem("body.node_id", "must be a string of at most 64 characters"))
    ipv4 = _str_list(data.get("ipv4", []), "body.ipv4", problems)
    ipv6 = _str_list(data.get("ipv6", []), "body.ipv6", problems)
    for key, max_len in (("http_url", 2048), ("mqtt_url", 2048), ("version", 64)):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > max_len):
            problems.append(
                problem(f"body.{key}", f"must be a string of at most {max_len} characters")
            )
    raise_if(problems)
    now = now_ms()
    # One statement, so a node registering at two replicas at once cannot collide.
    await ctx.db.execute(
        "INSERT INTO nodes (region, http_url, mqtt_url, ipv4, ipv6, version, "
        "last_heartbeat_at, id, registered_at, applied_epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0) "
        "ON CONFLICT (id) DO UPDATE SET region = excluded.region, http_url = excluded.http_url, "
        "mqtt_url = excluded.mqtt_url, ipv4 = excluded.ipv4, ipv6 = excluded.ipv6, "
        "version = excluded.version, last_heartbeat_at = excluded.last_heartbeat_at, draining = 0",
        (
            region,
            data.get("http_url"),
            data.get("mqtt_url"),
            json.dumps(ipv4),
            json.dumps(ipv6),
            data.get("version"),
            now,
            node_id,
            now,
        ),
    )
    interval = ctx.settings.node_heartbeat_interval_s
    return {
        "node_id": node_id,
        "config_epoch": await ctx.config_epoch(),
        "heartbeat_interval_s": int(interval) if interval == int(interval) else interval,
    }


async def _node(ctx: Context, node_id: str) -> dict[str, Any]:
    row = await ctx.db.fetchone("SELECT * FROM nodes WHERE id = ?", (node_id,))
    if row is None:
        raise not_found("node")
    return row


async def heartbeat(
    ctx: Context, principal: Principal, node_id: str, body: object
) -> dict[str, Any]:
    await _node(ctx, node_id)
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(data, {"applied_epoch", "draining", "endpoints"}, problems)
    applied = data.get("applied_epoch", 0)
    if not _is_count(applied):
        problems.append(problem("body.applied_epoch", "must be a non-negative 64-bit integer"))
    if not isinstance(data.get("draining", False), bool):
        problems.append(problem("body.draining", "must be true or false"))
    states = data.get("endpoints", [])
    if (
        not isinstance(states, list)
        or len(states) > ENDPOINTS_PER_HEARTBEAT_MAX
        or not all(
            isinstance(s, dict)
            and isinstance(s.get("endpoint_id"), str)
            and len(s["endpoint_id"]) <= 64
            and _is_count(s.get("unshipped_bytes", 0))
            and isinstance(s.get("delivery_error"), (str, type(None)))
            for s in states
        )
        # One entry per endpoint (the state table is keyed by node and endpoint).
        or len({s["endpoint_id"] for s in states}) != len(states)
    ):
        problems.append(
            problem(
                "body.endpoints",
                "must be a list of {endpoint_id, unshipped_bytes, delivery_error}, "
                f"one per endpoint, at most {ENDPOINTS_PER_HEARTBEAT_MAX}",
            )
        )
        states = []
    raise_if(problems)
    async with ctx.db.transaction() as tx:
        # Heartbeats of one node (a drain's and the periodic one, maybe at two
        # replicas) take turns; each stamps its rows later than any earlier one, then
        # drops the rows it did not stamp: what the node no longer holds. No statement
        # binds a parameter per endpoint (SQLite allows 32766, PostgreSQL 65535).
        await tx.lock(f"node:{node_id}")
        last = await tx.fetchone(
            "SELECT MAX(updated_at) AS at FROM node_endpoint_state WHERE node_id = ?", (node_id,)
        )
        now = max(now_ms(), int(last["at"]) + 1 if last and last["at"] is not None else 0)
        await tx.execute(
            "UPDATE nodes SET last_heartbeat_at = ?, applied_epoch = ?, draining = ? WHERE id = ?",
            (now, applied, int(data.get("draining", False)), node_id),
        )
        states = sorted(states, key=lambda s: str(s["endpoint_id"]))
        for start in range(0, len(states), _UPSERT_ROWS):
            chunk = states[start : start + _UPSERT_ROWS]
            await tx.execute(
                "INSERT INTO node_endpoint_state (node_id, endpoint_id, unshipped_bytes, "
                "delivery_error, updated_at) VALUES "
                + ",".join("(?, ?, ?, ?, ?)" for _ in chunk)
                + " ON CONFLICT (node_id, endpoint_id) DO UPDATE SET "
                "unshipped_bytes = excluded.unshipped_bytes, "
                "delivery_error = excluded.delivery_error, updated_at = excluded.updated_at",
                [
                    value
                    for s in chunk
                    for value in (
                        node_id,
                        s["endpoint_id"],
                        int(s.get("unshipped_bytes", 0)),
                        s.get("delivery_error"),
                        now,
                    )
                ],
            )
        await tx.execute(
            "DELETE FROM node_endpoint_state WHERE node_id = ? AND updated_at < ?", (node_id, now)
        )
    return {"config_epoch": await ctx.config_epoch()}


async def snapshot(ctx: Context, region: str) -> dict[str, Any]:
    epoch = await ctx.config_epoch()
    rows = await ctx.db.fetchall(
        "SELECT e.*, a.tenant FROM endpoints e JOIN accounts a ON a.id = e.account_id "
        "WHERE e.region = ? AND (e.deleted_at IS NULL OR EXISTS (SELECT 1 FROM node_endpoint_state s "
        "WHERE s.endpoint_id = e.id AND s.unshipped_bytes > 0)) ORDER BY e.created_at",
        (region,),
    )
    endpoints = []
    accounts: set[str] = set()
    for e in rows:
        accounts.add(e["account_id"])
        destination = None
        if e["destination_id"]:
            dest = await ctx.db.fetchone(
                "SELECT d.*, a.external_id FROM destinations d JOIN accounts a ON a.id = d.account_id "
                "WHERE d.id = ?",
                (e["destination_id"],),
            )
            destination = as_snapshot(dest) if dest else None
        bindings = await ctx.db.fetchall(
            "SELECT b.id, b.is_required, b.canary_start_ts, v.id AS view_id, v.name, v.version, "
            "v.definition FROM bindings b JOIN views v ON v.id = b.view_id "
            "WHERE b.endpoint_id = ? AND b.deactivated_at IS NULL AND v.status = 'published' "
            "ORDER BY b.activated_at",
            (e["id"],),
        )
        endpoints.append(
            {
                "id": e["id"],
                "account_id": e["account_id"],
                "tenant": int(e["tenant"]),
                "accepting": e["deleted_at"] is None,
                "config_epoch": int(e["config_epoch"]),
                "segment_bytes": int(e["segment_bytes"]),
                "segment_max_age_seconds": int(e["segment_max_age_seconds"]),
                "output_formats": json.loads(e["output_formats"]),
                "mqtt_config": json.loads(e["mqtt_config"]) if e["mqtt_config"] else None,
                "destination": destination,
                "bindings": [
                    {
                        "binding_id": b["id"],
                        "view_id": b["view_id"],
                        "view_name": b["name"],
                        "view_version": int(b["version"]),
                        "is_required": bool(b["is_required"]),
                        "canary_start_ts_ms": b["canary_start_ts"],
                        "definition": json.loads(b["definition"]),
                    }
                    for b in bindings
                ],
            }
        )
    keys = []
    if accounts:
        marks = ",".join("?" for _ in accounts)
        key_rows = await ctx.db.fetchall(
            f"SELECT digest, account_id, scopes FROM api_keys WHERE revoked_at IS NULL "
            f"AND account_id IN ({marks})",
            sorted(accounts),
        )
        keys = [
            {"digest": k["digest"], "account_id": k["account_id"], "scopes": k["scopes"].split(",")}
            for k in key_rows
            if "ingest" in k["scopes"].split(",")
        ]
    return {
        "config_epoch": epoch,
        "region": region,
        "endpoints": endpoints,
        "ingest_keys": keys,
        "jwks": ctx.signer.jwks,
    }


async def config(
    ctx: Context, principal: Principal, node_id: str, query: dict[str, list[str]]
) -> dict[str, Any]:
    node = await _node(ctx, node_id)
    problems: list[dict[str, str]] = []
    after = parse_int_param(query, "after_epoch", problems, default=0, low=0, high=None)
    wait_s = parse_int_param(
        query, "wait_s", problems, default=0, low=0, high=int(ctx.settings.long_poll_max_s)
    )
    raise_if(problems)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        # The event is taken before the epoch is read: a change in between still wakes
        # this poll. Local changes set it at commit; the replica's epoch watcher
        # (`Context.watch_epoch`) sets it for changes made through other replicas.
        changed = ctx.epoch_changed
        if ctx.closing or await ctx.config_epoch() > after or loop.time() >= deadline:
            return await snapshot(ctx, node["region"])
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await changed.wait()
        except TimeoutError:
            pass


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _outcome_problems(v: object, path: str) -> list[dict[str, str]]:
    """A view outcome: `view_id`, the row counts `processed`/`accepted`/`dropped`/`dlq`,
    optional `error_code`/`error_message`, and `dlq_file` {key, bucket, region, bytes}
    naming the DLQ object written for this segment."""
    if not isinstance(v, dict):
        return [problem(path, "must be an object")]
    problems = []
    if not isinstance(v.get("view_id"), str):
        problems.append(problem(f"{path}.view_id", "is required (string)"))
    for key in ("processed", "accepted", "dropped", "dlq"):
        if not _is_count(v.get(key, 0)):
            problems.append(problem(f"{path}.{key}", "must be a non-negative integer"))
    for key in ("error_code", "error_message"):
        if not isinstance(v.get(key), (str, type(None))):
            problems.append(problem(f"{path}.{key}", "must be a string or null"))
    dlq_file = v.get("dlq_file")
    if dlq_file is not None:
        if not isinstance(dlq_file, dict) or not isinstance(dlq_file.get("key"), str):
            problems.append(problem(f"{path}.dlq_file", "must be {key, bucket, region, bytes}"))
        else:
            for key in ("bucket", "region"):
                if not isinstance(dlq_file.get(key), (str, type(None))):
                    problems.append(problem(f"{path}.dlq_file.{key}", "must be a string"))
            if not _is_count(dlq_file.get("bytes", 0)):
                problems.append(problem(f"{path}.dlq_file.bytes", "must be a non-negative integer"))
    return problems


def _commit_problems(c: object, path: str) -> list[dict[str, str]]:
    if not isinstance(c, dict):
        return [problem(path, "must be an object")]
    problems = []
    for key in ("endpoint_id", "manifest_key", "uploaded_at"):
        if not isinstance(c.get(key), str):
            problems.append(problem(f"{path}.{key}", "is required (string)"))
    for key in ("epoch", "seq", "wal_bytes", "frames", "duration_ms"):
        if not _is_count(c.get(key)):
            problems.append(problem(f"{path}.{key}", "is required (non-negative integer)"))
    if not isinstance(c.get("artifacts", {}), dict):
        problems.append(problem(f"{path}.artifacts", "must be an object"))
    views = c.get("views", [])
    if not isinstance(views, list):
        problems.append(problem(f"{path}.views", "must be a list"))
    else:
        for i, v in enumerate(views):
            problems += _outcome_problems(v, f"{path}.views[{i}]")
    if isinstance(c.get("uploaded_at"), str):
        try:
            parse_ts(c["uploaded_at"])
        except ValueError as err:
            problems.append(problem(f"{path}.uploaded_at", str(err)))
    return problems


async def report_commits(
    ctx: Context, principal: Principal, node_id: str, body: object
) -> dict[str, Any]:
    await _node(ctx, node_id)
    data = body_object(body)
    commits = data.get("commits")
    problems: list[dict[str, str]] = []
    if not isinstance(commits, list) or len(commits) > COMMITS_PER_REPORT_MAX:
        problems.append(
            problem("body.commits", f"must be a list of at most {COMMITS_PER_REPORT_MAX} commits")
        )
        commits = []
    for i, c in enumerate(commits):
        problems += _commit_problems(c, f"body.commits[{i}]")
    raise_if(problems)
    stored = 0
    # Rows are written in key order, so concurrent reports overlapping in any order
    # (a retry racing its original at another replica) wait for each other instead of
    # deadlocking; ON CONFLICT DO NOTHING keeps each commit and outcome once.
    ordered = sorted(commits, key=lambda c: (c["endpoint_id"], c["epoch"], c["seq"]))
    async with ctx.db.transaction() as tx:
        for c in ordered:
            endpoint = await tx.fetchone(
                "SELECT id, account_id FROM endpoints WHERE id = ?", (c["endpoint_id"],)
            )
            if endpoint is None:
                continue  # unknown endpoint: acknowledged, nothing to record
            uploaded_us = int(parse_ts(c["uploaded_at"]).timestamp() * 1_000_000)
            stored += await tx.execute(
                "INSERT INTO commits (account_id, endpoint_id, node_id, epoch, seq, wal_bytes, frames, "
                "duration_ms, uploaded_at_us, artifacts, manifest_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (endpoint_id, node_id, epoch, seq) DO NOTHING",
                (
                    endpoint["account_id"],
                    endpoint["id"],
                    node_id,
                    c["epoch"],
                    c["seq"],
                    c["wal_bytes"],
                    c["frames"],
                    c["duration_ms"],
                    uploaded_us,
                    json.dumps(c.get("artifacts", {})),
                    c["manifest_key"],
                ),
            )
            for v in sorted(c.get("views", []), key=lambda v: str(v["view_id"])):
                dlq: dict[str, Any] = v.get("dlq_file") or {}
                await tx.execute(
                    "INSERT INTO view_outcomes (view_id, account_id, endpoint_id, node_id, epoch, seq, "
                    "processed, accepted, dropped, dlq, error_code, error_message, dlq_key, dlq_bucket, "
                    "dlq_region, dlq_bytes, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (view_id, endpoint_id, node_id, epoch, seq) DO NOTHING",
                    (
                        v["view_id"],
                        endpoint["account_id"],
                        endpoint["id"],
                        node_id,
                        c["epoch"],
                        c["seq"],
                        v.get("processed", 0),
                        v.get("accepted", 0),
                        v.get("dropped", 0),
                        v.get("dlq", 0),
                        v.get("error_code"),
                        v.get("error_message"),
                        dlq.get("key"),
                        dlq.get("bucket"),
                        dlq.get("region"),
                        dlq.get("bytes"),
                        uploaded_us // 1000,
                    ),
                )
    return {"acknowledged": len(commits), "stored": stored}
