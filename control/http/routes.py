"""The route table: every operation of the API, its auth kind and its handler.

`control.openapi` builds the OpenAPI document from this table, and a test checks that
the served document and the routes agree both ways.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from ..auth import Principal
from ..errors import Invalid, NotFound, problem
from ..services import (
    bindings,
    destinations,
    endpoints,
    keys,
    nodes,
    observability,
    views,
)
from ..services.common import Context

Handler = Callable[[Context, Principal | None, web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    auth: Literal["public", "token", "node"]
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    status: int = 200


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


async def _body(request: web.Request) -> Any:
    if not request.body_exists:
        return None
    raw = await request.read()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # too deep: 422
        raise Invalid([problem("body", f"not valid JSON: {err}")]) from err
    where = _nul_path(value, "body")
    if where is not None:
        raise Invalid([problem(where, "must not contain NUL characters")])
    return value


def _nul_path(value: Any, path: str) -> str | None:
    """The path of the first string holding U+0000 (no store keeps those), else None."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return where
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return where
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def _query(request: web.Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query.items():
        if "\x00" in key or "\x00" in value:
            raise Invalid([problem(f"query.{key}", "must not contain NUL characters")])
        out.setdefault(key, []).append(value)
    return out


def _p(principal: Principal | None) -> Principal:
    assert principal is not None
    return principal


# ------------------------------------------------------------------ handlers
async def token_exchange(ctx: Context, _: Principal | None, req: web.Request) -> web.StreamResponse:
    return _json(await keys.exchange(ctx, await _body(req)))


async def jwks(ctx: Context, _: Principal | None, req: web.Request) -> web.StreamResponse:
    return _json(ctx.signer.jwks)


async def health(ctx: Context, _: Principal | None, req: web.Request) -> web.StreamResponse:
    await ctx.db.fetchone("SELECT 1 AS ok")
    return _json({"status": "ok"})


async def openapi(ctx: Context, _: Principal | None, req: web.Request) -> web.StreamResponse:
    from ..openapi import document

    return _json(document(ctx.settings))


def _local_object(endpoint_url: str, bucket: str, key: str) -> str | None:
    root = os.path.realpath(os.path.join(endpoint_url.removeprefix("file://"), bucket))
    path = os.path.realpath(os.path.join(root, *key.split("/")))
    if not path.startswith(root + os.sep) or not os.path.isfile(path):
        return None
    return path


async def download(ctx: Context, _: Principal | None, req: web.Request) -> web.StreamResponse:
    found = observability.verify_download(ctx, req.match_info["token"])
    if found is None:
        raise NotFound("download link invalid or expired")
    destination_id, key = found
    row = await ctx.db.fetchone(
        "SELECT bucket, endpoint_url FROM destinations WHERE id = ?", (destination_id,)
    )
    if row is None or not (row["endpoint_url"] or "").startswith("file://"):
        raise NotFound("download link invalid or expired")
    path = await asyncio.to_thread(_local_object, row["endpoint_url"], row["bucket"], key)
    if path is None:
        raise NotFound("object not found")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


def _simple(
    fn: Callable[..., Awaitable[Any]],
    *params: str,
    body: bool = False,
    query: bool = False,
    status: int = 200,
) -> Handler:
    async def handle(
        ctx: Context, principal: Principal | None, req: web.Request
    ) -> web.StreamResponse:
        args: list[Any] = [req.match_info[p] for p in params]
        if any("\x00" in a for a in args):  # no id contains NUL: nothing to find
            raise NotFound("not found")
        if body:
            args.append(await _body(req))
        if query:
            args.append(_query(req))
        result = await fn(ctx, _p(principal), *args)
        if status == 204:
            return web.Response(status=204)
        return _json(result, status)

    return handle


ROUTES: list[Route] = [
    Route(
        "POST",
        "/v1/token/exchange",
        "public",
        token_exchange,
        "exchangeToken",
        "Exchange API key for access token",
        "Auth",
    ),
    Route(
        "GET",
        "/.well-known/jwks.json",
        "public",
        jwks,
        "getJwks",
        "Public token signing keys",
        "Auth",
    ),
    Route(
        "GET",
        "/openapi/edgemq-openapi.json",
        "public",
        openapi,
        "getOpenApi",
        "This document",
        "Meta",
    ),
    Route("GET", "/healthz", "public", health, "health", "Liveness and store check", "Meta"),
    Route(
        "GET",
        "/v1/downloads/{token}",
        "public",
        download,
        "download",
        "Signed download link (local store)",
        "Observability",
    ),
    # API keys
    Route(
        "POST",
        "/v1/api-keys",
        "token",
        _simple(keys.create_key, body=True, status=201),
        "createApiKey",
        "Create an API key (shown once)",
        "Auth",
        201,
    ),
    Route(
        "GET",
        "/v1/api-keys",
        "token",
        _simple(keys.list_keys, query=True),
        "listApiKeys",
        "List API keys",
        "Auth",
    ),
    Route(
        "DELETE",
        "/v1/api-keys/{id}",
        "token",
        _simple(keys.revoke_key, "id", status=204),
        "revokeApiKey",
        "Revoke an API key",
        "Auth",
        204,
    ),
    # Endpoints
    Route(
        "POST",
        "/v1/endpoints",
        "token",
        _simple(endpoints.create, body=True, status=201),
        "createEndpoint",
        "Create an ingest endpoint",
        "Endpoints",
        201,
    ),
    Route(
        "GET",
        "/v1/endpoints",
        "token",
        _simple(endpoints.list_, query=True),
        "listEndpoints",
        "List your ingest endpoints",
        "Endpoints",
    ),
    Route(
        "GET",
        "/v1/endpoints/{id}",
        "token",
        _simple(endpoints.get, "id"),
        "getEndpoint",
        "Get an endpoint",
        "Endpoints",
    ),
    Route(
        "PATCH",
        "/v1/endpoints/{id}",
        "token",
        _simple(endpoints.patch, "id", body=True),
        "updateEndpoint",
        "Update an endpoint",
        "Endpoints",
    ),
    Route(
        "DELETE",
        "/v1/endpoints/{id}",
        "token",
        _simple(endpoints.delete, "id", status=204),
        "deleteEndpoint",
        "Delete an endpoint (drains its data first)",
        "Endpoints",
        204,
    ),
    # Destinations
    Route(
        "POST",
        "/v1/destinations",
        "token",
        _simple(destinations.create, body=True, status=201),
        "createDestination",
        "Create an S3 destination",
        "Destinations",
        201,
    ),
    Route(
        "GET",
        "/v1/destinations",
        "token",
        _simple(destinations.list_, query=True),
        "listDestinations",
        "List your S3 destinations",
        "Destinations",
    ),
    Route(
        "GET",
        "/v1/destinations/{id}",
        "token",
        _simple(destinations.get, "id"),
        "getDestination",
        "Get a destination",
        "Destinations",
    ),
    Route(
        "PATCH",
        "/v1/destinations/{id}",
        "token",
        _simple(destinations.patch, "id", body=True),
        "updateDestination",
        "Update a destination",
        "Destinations",
    ),
    Route(
        "DELETE",
        "/v1/destinations/{id}",
        "token",
        _simple(destinations.delete, "id", status=204),
        "deleteDestination",
        "Delete a destination",
        "Destinations",
        204,
    ),
    Route(
        "POST",
        "/v1/destinations/{id}/validate",
        "token",
        _simple(destinations.validate, "id"),
        "validateDestination",
        "Validate S3 destination connectivity",
        "Destinations",
    ),
    # Views
    Route(
        "POST",
        "/v1/views",
        "token",
        _simple(views.create, body=True, status=201),
        "createView",
        "Create a view definition",
        "Views",
        201,
    ),
    Route(
        "GET",
        "/v1/views",
        "token",
        _simple(views.list_, query=True),
        "listViews",
        "List view definitions",
        "Views",
    ),
    Route(
        "POST",
        "/v1/views/preview",
        "token",
        _simple(views.preview, body=True),
        "previewView",
        "Preview a view against sample data",
        "Views",
    ),
    Route(
        "GET",
        "/v1/views/{id}",
        "token",
        _simple(views.get, "id"),
        "getView",
        "Get a view definition",
        "Views",
    ),
    Route(
        "PATCH",
        "/v1/views/{id}",
        "token",
        _simple(views.patch, "id", body=True),
        "updateView",
        "Update a draft view",
        "Views",
    ),
    Route(
        "DELETE",
        "/v1/views/{id}",
        "token",
        _simple(views.delete, "id", status=204),
        "deleteView",
        "Delete a draft view",
        "Views",
        204,
    ),
    Route(
        "POST",
        "/v1/views/{id}/publish",
        "token",
        _simple(views.publish, "id"),
        "publishView",
        "Publish a view",
        "Views",
    ),
    Route(
        "POST",
        "/v1/views/{id}/archive",
        "token",
        _simple(views.archive, "id"),
        "archiveView",
        "Archive a view",
        "Views",
    ),
    Route(
        "POST",
        "/v1/views/{id}/versions",
        "token",
        _simple(views.new_version, "id", body=True, status=201),
        "createViewVersion",
        "Create a new version of a view",
        "Views",
        201,
    ),
    # Bindings
    Route(
        "POST",
        "/v1/endpoints/{endpoint_id}/views",
        "token",
        _simple(bindings.attach, "endpoint_id", body=True, status=201),
        "attachView",
        "Attach a view to an endpoint",
        "Bindings",
        201,
    ),
    Route(
        "GET",
        "/v1/endpoints/{endpoint_id}/views",
        "token",
        _simple(bindings.list_, "endpoint_id"),
        "listBindings",
        "List view bindings for an endpoint",
        "Bindings",
    ),
    Route(
        "DELETE",
        "/v1/endpoints/{endpoint_id}/views/{binding_id}",
        "token",
        _simple(bindings.detach, "endpoint_id", "binding_id", status=204),
        "detachView",
        "Detach a view from an endpoint",
        "Bindings",
        204,
    ),
    # Observability
    Route(
        "GET",
        "/v1/endpoints/{id}/commits",
        "token",
        _simple(observability.commits, "id", query=True),
        "listCommits",
        "List sealed segments for an endpoint",
        "Observability",
    ),
    Route(
        "GET",
        "/v1/views/{id}/dlq-files",
        "token",
        _simple(observability.dlq_files, "id", query=True),
        "listDlqFiles",
        "List dead letter queue files for a view",
        "Observability",
    ),
    Route(
        "GET",
        "/v1/views/{id}/metrics",
        "token",
        _simple(observability.metrics, "id"),
        "getViewMetrics",
        "Get data quality metrics for a view",
        "Observability",
    ),
    # Node protocol
    Route(
        "POST",
        "/v1/nodes/register",
        "node",
        _simple(nodes.register, body=True),
        "registerNode",
        "Register an ingest node",
        "Nodes",
    ),
    Route(
        "POST",
        "/v1/nodes/{node_id}/heartbeat",
        "node",
        _simple(nodes.heartbeat, "node_id", body=True),
        "nodeHeartbeat",
        "Node heartbeat",
        "Nodes",
    ),
    Route(
        "GET",
        "/v1/nodes/{node_id}/config",
        "node",
        _simple(nodes.config, "node_id", query=True),
        "nodeConfig",
        "Long-poll the config snapshot",
        "Nodes",
    ),
    Route(
        "POST",
        "/v1/nodes/{node_id}/commits",
        "node",
        _simple(nodes.report_commits, "node_id", body=True),
        "reportCommits",
        "Report segment commits",
        "Nodes",
    ),
]
