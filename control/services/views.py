"""Views: drafts, versions, publish/archive, preview; names unique per account."""

from __future__ import annotations

import json
from typing import Any

from compiler import (
    PREVIEW_LIMITS,
    DefinitionInvalid,
    ViewDefinition,
    ViewExecutionError,
    load_definition_text,
    parse_definition,
    run_preview,
)
from compiler.materialize import check_runs
from shared.offload import BlockingPool

from ..auth import Principal
from ..errors import Conflict, Invalid, problem
from ..store.db import Executor
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
STATUSES = ("draft", "published", "archived")
FORMATS = ("yaml", "json")
TAGS_MAX = 32
TAG_CHARS_MAX = 64
DESCRIPTION_CHARS_MAX = 2000
# DuckDB work (preview, publish checks) runs here: bounded, off the event loop.
duckdb_pool = BlockingPool("views", threads=2, waiting_max=32)


def _definition_problems(err: DefinitionInvalid) -> list[dict[str, str]]:
    return [problem(f"body.{p.path}", p.message) for p in err.problems]


def check_definition(raw: object, fmt: str) -> tuple[Any, ViewDefinition]:
    """The stored form (an object) and its parsed model; Invalid with every problem."""
    try:
        obj = load_definition_text(raw, fmt) if isinstance(raw, str) else raw  # type: ignore[arg-type]
        return obj, parse_definition(obj)
    except DefinitionInvalid as err:
        raise Invalid(_definition_problems(err)) from err


def _tags(value: object, problems: list[dict[str, str]]) -> list[str]:
    if (
        not isinstance(value, list)
        or len(value) > TAGS_MAX
        or not all(isinstance(t, str) and 0 < len(t) <= TAG_CHARS_MAX for t in value)
    ):
        problems.append(problem("body.tags", f"must be a list of at most {TAGS_MAX} short strings"))
        return []
    return list(dict.fromkeys(value))


def _description(body: dict[str, Any], problems: list[dict[str, str]]) -> str | None:
    value = body.get("description")
    if value is not None and (not isinstance(value, str) or len(value) > DESCRIPTION_CHARS_MAX):
        problems.append(
            problem(
                "body.description",
                f"must be a string of at most {DESCRIPTION_CHARS_MAX} characters",
            )
        )
        return None
    return value


def render(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "version": int(row["version"]),
        "definition": json.loads(row["definition"]),
        "format": row["format"],
        "status": row["status"],
        "description": row["description"],
        "tags": json.loads(row["tags"]),
        "created_by": row["created_by"],
        "created_at": fmt_ts(row["created_at"]),
        "published_at": fmt_ts(row["published_at"]),
    }


def lineage_lock(account_id: str, name: str) -> str:
    """The lock serializing creation and new versions of one view name."""
    return f"view-name:{account_id}:{name}"


async def fetch(db: Executor, account_id: str, view_id: str) -> dict[str, Any]:
    row = await db.fetchone(
        "SELECT * FROM views WHERE id = ? AND account_id = ?", (view_id, account_id)
    )
    if row is None:
        raise not_found("view")
    return row


async def _set_tags(tx: Executor, view_id: str, tags: list[str]) -> None:
    await tx.execute("DELETE FROM view_tags WHERE view_id = ?", (view_id,))
    for tag in tags:
        await tx.execute("INSERT INTO view_tags (view_id, tag) VALUES (?, ?)", (view_id, tag))


async def create(ctx: Context, principal: Principal, body: object) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(data, {"name", "description", "definition", "format", "tags"}, problems)
    name = data.get("name")
    from compiler.definition import is_valid_name

    if not is_valid_name(name):
        problems.append(
            problem(
                "body.name",
                "must be lowercase letters, digits and underscores, starting with a letter "
                "(at most 63)",
            )
        )
    fmt = data.get("format", "yaml")
    if fmt not in FORMATS:
        problems.append(problem("body.format", "must be yaml or json"))
        fmt = "yaml"
    description = _description(data, problems)
    tags = _tags(data.get("tags", []), problems)
    stored: Any = None
    if "definition" not in data:
        problems.append(problem("body.definition", "is required"))
    else:
        try:
            stored, _ = check_definition(data["definition"], fmt)
        except Invalid as err:
            problems += err.problems or []
    raise_if(problems)
    view_id = new_id()
    async with ctx.db.transaction() as tx:
        await tx.lock(lineage_lock(account_id, str(name)))
        if await tx.fetchone(
            "SELECT id FROM views WHERE account_id = ? AND name = ?", (account_id, name)
        ):
            raise Conflict("a view with this name exists; create a new version instead")
        await tx.execute(
            "INSERT INTO views (id, account_id, name, version, definition, format, status, "
            "description, tags, created_by, created_at) "
            "VALUES (?, ?, ?, 1, ?, ?, 'draft', ?, ?, ?, ?)",
            (
                view_id,
                account_id,
                name,
                json.dumps(stored),
                fmt,
                description,
                json.dumps(tags),
                principal.actor,
                now_ms(),
            ),
        )
        await _set_tags(tx, view_id, tags)
    return render(await fetch(ctx.db, account_id, view_id))


async def list_(ctx: Context, principal: Principal, query: dict[str, list[str]]) -> dict[str, Any]:
    require_scope(principal, *READ)
    account_id = account_of(principal)
    problems: list[dict[str, str]] = []
    page = parse_page(query, problems)
    status = query.get("status", ["published"])[-1]
    if status not in STATUSES:
        problems.append(problem("query.status", f"must be one of {', '.join(STATUSES)}"))
    raise_if(problems)
    where = ["v.account_id = ?", "v.status = ?"]
    params: list[Any] = [account_id, status]
    if "name" in query:
        where.append("v.name = ?")
        params.append(query["name"][-1])
    for tag in dict.fromkeys(query.get("tag", [])):
        where.append("EXISTS (SELECT 1 FROM view_tags t WHERE t.view_id = v.id AND t.tag = ?)")
        params.append(tag)
    clause = " AND ".join(where)
    total = await ctx.db.fetchone(f"SELECT COUNT(*) AS n FROM views v WHERE {clause}", params)
    rows = await ctx.db.fetchall(
        f"SELECT v.*, (SELECT COUNT(*) FROM bindings b WHERE b.view_id = v.id AND "
        f"b.deactivated_at IS NULL) AS usage_count FROM views v WHERE {clause} "
        "ORDER BY v.name, v.version LIMIT ? OFFSET ?",
        (*params, page.limit, page.offset),
    )
    items = []
    for row in rows:
        item = render(row)
        item["usage_count"] = int(row["usage_count"])
        items.append(item)
    return page.wrap(items, int(total["n"]) if total else 0)


async def get(ctx: Context, principal: Principal, view_id: str) -> dict[str, Any]:
    require_scope(principal, *READ)
    account_id = account_of(principal)
    row = await fetch(ctx.db, account_id, check_id(view_id, "view"))
    item = render(row)
    versions = await ctx.db.fetchall(
        "SELECT id, version, status, published_at, created_by FROM views "
        "WHERE account_id = ? AND name = ? ORDER BY version",
        (account_id, row["name"]),
    )
    item["versions"] = [
        {
            "id": v["id"],
            "version": int(v["version"]),
            "status": v["status"],
            "published_at": fmt_ts(v["published_at"]),
            "created_by": v["created_by"],
        }
        for v in versions
    ]
    bindings = await ctx.db.fetchall(
        "SELECT b.id, b.endpoint_id, b.is_required, b.activated_at, b.canary_start_ts, e.region "
        "FROM bindings b JOIN endpoints e ON e.id = b.endpoint_id "
        "WHERE b.view_id = ? AND b.deactivated_at IS NULL ORDER BY b.activated_at",
        (row["id"],),
    )
    item["endpoints"] = [
        {
            "id": b["endpoint_id"],
            "region": b["region"],
            "binding_id": b["id"],
            "is_required": bool(b["is_required"]),
            "activated_at": fmt_ts(b["activated_at"]),
            "canary_start_ts": fmt_ts(b["canary_start_ts"]),
        }
        for b in bindings
    ]
    return item


async def patch(ctx: Context, principal: Principal, view_id: str, body: object) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    view_id = check_id(view_id, "view")
    row = await fetch(ctx.db, account_id, view_id)
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(data, {"description", "definition", "tags"}, problems)
    if row["status"] != "draft":
        raise Invalid(
            [problem("status", "only draft views can be updated; create a new version")],
            "only draft views can be updated",
        )
    updates: dict[str, Any] = {}
    if "description" in data:
        updates["description"] = _description(data, problems)
    tags = None
    if "tags" in data:
        tags = _tags(data["tags"], problems)
        updates["tags"] = json.dumps(tags)
    if "definition" in data:
        try:
            stored, _ = check_definition(data["definition"], row["format"])
            updates["definition"] = json.dumps(stored)
        except Invalid as err:
            problems += err.problems or []
    raise_if(problems)
    if updates:
        async with ctx.db.transaction() as tx:
            sets = ", ".join(f"{k} = ?" for k in updates)
            changed = await tx.execute(
                f"UPDATE views SET {sets} WHERE id = ? AND status = 'draft'",
                (*updates.values(), view_id),
            )
            if not changed:
                raise Invalid([problem("status", "the view is no longer a draft")])
            if tags is not None:
                await _set_tags(tx, view_id, tags)
    return render(await fetch(ctx.db, account_id, view_id))


async def delete(ctx: Context, principal: Principal, view_id: str) -> None:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    view_id = check_id(view_id, "view")
    await fetch(ctx.db, account_id, view_id)
    async with ctx.db.transaction() as tx:
        await tx.execute("DELETE FROM view_tags WHERE view_id = ?", (view_id,))
        deleted = await tx.execute(
            "DELETE FROM views WHERE id = ? AND account_id = ? AND status = 'draft'",
            (view_id, account_id),
        )
        if not deleted:
            raise Invalid(
                [problem("status", "only draft views can be deleted; archive it")],
                "the view is not in draft status",
            )


async def publish(ctx: Context, principal: Principal, view_id: str) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    view_id = check_id(view_id, "view")
    row = await fetch(ctx.db, account_id, view_id)
    if row["status"] != "draft":
        raise Invalid(
            [problem("status", f"only draft views can be published (this one is {row['status']})")]
        )
    _, definition = check_definition(json.loads(row["definition"]), "json")
    try:
        await duckdb_pool.run(check_runs, definition, PREVIEW_LIMITS)
    except ViewExecutionError as err:
        raise Invalid([problem("body.definition", str(err))]) from err
    changed = await ctx.db.execute(
        "UPDATE views SET status = 'published', published_at = ? WHERE id = ? AND status = 'draft'",
        (now_ms(), view_id),
    )
    if not changed:
        raise Invalid([problem("status", "the view is no longer a draft")])
    return render(await fetch(ctx.db, account_id, view_id))


async def archive(ctx: Context, principal: Principal, view_id: str) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    view_id = check_id(view_id, "view")
    row = await fetch(ctx.db, account_id, view_id)
    if row["status"] != "published":
        raise Invalid(
            [
                problem(
                    "status", f"only published views can be archived (this one is {row['status']})"
                )
            ]
        )
    async with ctx.db.transaction() as tx:
        # Under the lock attach takes: no binding is inserted after the sweep below.
        await tx.lock(f"view:{view_id}")
        now = now_ms()
        archived = await tx.execute(
            "UPDATE views SET status = 'archived' WHERE id = ? AND status = 'published'",
            (view_id,),
        )
        if not archived:
            raise Invalid([problem("status", "the view is no longer published")])
        detached = await tx.execute(
            "UPDATE bindings SET deactivated_at = ? WHERE view_id = ? AND deactivated_at IS NULL",
            (now, view_id),
        )
        if detached:
            epoch = await ctx.bump_epoch(tx)
            await tx.execute(
                "UPDATE endpoints SET config_epoch = ? WHERE id IN "
                "(SELECT endpoint_id FROM bindings WHERE view_id = ? AND deactivated_at = ?)",
                (epoch, view_id, now),
            )
    return render(await fetch(ctx.db, account_id, view_id))


async def new_version(
    ctx: Context, principal: Principal, view_id: str, body: object
) -> dict[str, Any]:
    require_scope(principal, "admin")
    account_id = account_of(principal)
    view_id = check_id(view_id, "view")
    row = await fetch(ctx.db, account_id, view_id)
    data = body_object(body if body is not None else {})
    problems: list[dict[str, str]] = []
    unknown_fields(data, {"copy_from_version", "description"}, problems)
    source_version = data.get("copy_from_version")
    if source_version is not None and (
        not isinstance(source_version, int)
        or isinstance(source_version, bool)
        or source_version < 1
    ):
        problems.append(problem("body.copy_from_version", "must be a version number (>= 1)"))
    description = _description(data, problems)
    raise_if(problems)
    new_view_id = new_id()
    async with ctx.db.transaction() as tx:
        # Versions of one lineage are numbered under its lock: concurrent requests
        # (any replica) get distinct, contiguous numbers.
        await tx.lock(lineage_lock(account_id, row["name"]))
        lineage = await tx.fetchall(
            "SELECT * FROM views WHERE account_id = ? AND name = ? ORDER BY version",
            (account_id, row["name"]),
        )
        source = lineage[-1]
        if source_version is not None:
            found = [v for v in lineage if int(v["version"]) == source_version]
            if not found:
                raise Invalid(
                    [problem("body.copy_from_version", f"version {source_version} does not exist")]
                )
            source = found[0]
        version = int(lineage[-1]["version"]) + 1
        await tx.execute(
            "INSERT INTO views (id, account_id, name, version, definition, format, status, "
            "description, tags, created_by, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 'draft', ?, ?, ?, ?)",
            (
                new_view_id,
                account_id,
                row["name"],
                version,
                source["definition"],
                source["format"],
                description if "description" in data else source["description"],
                source["tags"],
                principal.actor,
                now_ms(),
            ),
        )
        await _set_tags(tx, new_view_id, json.loads(source["tags"]))
    return render(await fetch(ctx.db, account_id, new_view_id))


async def preview(ctx: Context, principal: Principal, body: object) -> dict[str, Any]:
    require_scope(principal, "admin", "metrics")
    data = body_object(body)
    problems: list[dict[str, str]] = []
    unknown_fields(data, {"definition", "samples", "format"}, problems)
    if "definition" not in data:
        problems.append(problem("body.definition", "is required"))
    if "samples" not in data:
        problems.append(problem("body.samples", "is required"))
    raise_if(problems)
    definition, _ = check_definition(
        data["definition"], data.get("format", "yaml") if data.get("format") in FORMATS else "yaml"
    )
    try:
        return await duckdb_pool.run(run_preview, definition, data["samples"])
    except DefinitionInvalid as err:
        raise Invalid(_definition_problems(err)) from err
