"""The OpenAPI 3.1 document of what is implemented, built from the route table and the
schemas in `control.schemas` (tests check routes ↔ document both ways)."""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

from .schemas import (
    COMPONENTS,
    ERROR_DESCRIPTIONS,
    ERRORS,
    PATH_PARAMS,
    RESPONSES,
    query_params,
    ref,
    request_bodies,
)
from .services.common import ControlSettings

if TYPE_CHECKING:
    from .http.routes import Route

_PARAM = re.compile(r"{([a-z_]+)}")
_SUCCESS = {200: "Success", 201: "Created", 204: "No content"}


def document(settings: ControlSettings | None = None) -> dict[str, Any]:
    """The document; bounds that depend on settings (segment sizes, long-poll limit) are
    those of `settings` (defaults when None)."""
    from .http.routes import ROUTES

    settings = settings or ControlSettings()
    bodies = request_bodies(settings)
    queries = query_params(settings)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, bodies, queries)
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "EdgeMQ (self-hosted) control plane",
                "version": "0.1.0",
                "description": "Endpoints, S3 destinations, views, bindings, commits, DLQ "
                "files, metrics, API keys and the node protocol. Errors share one JSON body.",
            },
            "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
            "paths": paths,
            "components": {
                "schemas": COMPONENTS,
                "securitySchemes": {
                    "bearerAuth": {
                        "type": "http",
                        "scheme": "bearer",
                        "bearerFormat": "JWT",
                        "description": "An access token from POST /v1/token/exchange",
                    },
                    "nodeKey": {
                        "type": "apiKey",
                        "in": "header",
                        "name": "X-API-Key",
                        "description": "An API key with the internal node scope",
                    },
                    "nodeKeyBearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "The node key sent as a Bearer credential instead",
                    },
                },
            },
        }
    )


def _operation(
    route: Route,
    bodies: dict[str, tuple[dict[str, Any], bool]],
    queries: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    op_id = route.operation_id
    op: dict[str, Any] = {"operationId": op_id, "summary": route.summary, "tags": [route.tag]}
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name]}
        for name in _PARAM.findall(route.path)
    ]
    params += queries.get(op_id, [])
    if params:
        op["parameters"] = params
    if op_id in bodies:
        schema, required = bodies[op_id]
        op["requestBody"] = {
            "required": required,
            "content": {"application/json": {"schema": schema}},
        }
    ok: dict[str, Any] = {"description": _SUCCESS.get(route.status, "Success")}
    if route.status != 204:
        media = "application/octet-stream" if op_id == "download" else "application/json"
        ok["content"] = {media: {"schema": RESPONSES[op_id]}}
    responses: dict[str, Any] = {str(route.status): ok}
    for status in sorted(ERRORS[op_id]):
        response: dict[str, Any] = {
            "description": ERROR_DESCRIPTIONS[status],
            "content": {"application/json": {"schema": ref("Error")}},
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds until a retry can succeed",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        responses[str(status)] = response
    op["responses"] = responses
    if route.auth == "token":
        op["security"] = [{"bearerAuth": []}]
    elif route.auth == "node":
        op["security"] = [{"nodeKey": []}, {"nodeKeyBearer": []}]
    else:
        op["security"] = []
    return op
