"""aiohttp application: one middleware for auth and errors, routes from `routes.ROUTES`.

Auth per route: `public` (token exchange, JWKS, OpenAPI, health, signed downloads),
`token` (a Bearer RS256 JWT from /v1/token/exchange; scopes checked by the service),
`node` (an API key with the internal `node` scope, as Bearer or X-API-Key).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shared.apikeys import NODE_SCOPE
from shared.tokens import TokenError

from ..auth import Principal
from ..errors import ApiError, Conflict, Forbidden, NotFound, Unauthorized, Unavailable
from ..services import keys
from ..services.common import Context
from ..store.db import Contention, DuplicateKey
from .metrics import install as install_metrics
from .routes import ROUTES, Route

log = logging.getLogger(__name__)
BODY_BYTES_MAX = 8 * 1024 * 1024
CTX: web.AppKey[Context] = web.AppKey("ctx", Context)
ROUTE: web.AppKey[dict[tuple[str, str], Route]] = web.AppKey("routes", dict)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(err: ApiError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s else None
    return json_response(err.body(), err.status, headers)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def authenticate(request: web.Request, route: Route, ctx: Context) -> Principal | None:
    if route.auth == "public":
        return None
    if route.auth == "node":
        key = request.headers.get("X-API-Key") or _bearer(request)
        principal = await keys.authenticate_key(ctx, key)
        if principal is None:
            raise Unauthorized("missing or invalid node key")
        if NODE_SCOPE not in principal.scopes:
            raise Forbidden("this route needs a node key")
        return principal
    token = _bearer(request)
    if token is None:
        raise Unauthorized("missing bearer token")
    try:
        claims = ctx.signer.verifier.verify(token)
    except TokenError as err:
        raise Unauthorized(str(err)) from err
    return Principal(
        account_id=claims.account_id, scopes=frozenset(claims.scopes), actor=claims.actor
    )


@web.middleware
async def api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                raise NotFound("no such route") from exc
            if exc.status == 405:
                err = ApiError("method not allowed")
                err.status, err.code = 405, "method_not_allowed"
                response = error_response(err)
                if "Allow" in exc.headers:
                    response.headers["Allow"] = exc.headers["Allow"]
                return response
            if exc.status == 413:
                err = ApiError(f"request body larger than {BODY_BYTES_MAX} bytes")
                err.status, err.code = 413, "payload_too_large"
                raise err from exc
            raise
    except ApiError as err:
        return error_response(err)
    except DuplicateKey as err:
        # A concurrent writer (maybe another replica) created the same unique thing
        # between our check and our insert; services map the usual cases with their
        # own message, this is the net under the rest.
        log.info("unique violation in %s %s: %s", request.method, request.path, err)
        return error_response(Conflict("a resource with these unique fields already exists"))
    except Contention as err:
        log.warning("store contention in %s %s: %s", request.method, request.path, err)
        return error_response(Unavailable("the store is busy; retry", retry_after_s=1))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(ApiError("internal error"))


def _wrap(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CTX]
        principal = await authenticate(request, route, ctx)
        response: web.StreamResponse = await route.handler(ctx, principal, request)
        return response

    return handle


def create_app(ctx: Context) -> web.Application:
    app = web.Application(middlewares=[api_middleware], client_max_size=BODY_BYTES_MAX)
    app[CTX] = ctx
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _wrap(route))
    install_metrics(app, ctx)  # GET /metrics, outside the API's route table
    return app
