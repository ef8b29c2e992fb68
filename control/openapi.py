"""The OpenAPI 3.1 document of what is implemented, built from the route table and the
schemas in `control.schemas` (tests check routes ↔ document both ways)."""

from __future__ import annotations

import re
from typing import Any

from .schemas import ERROR, PAGINATION_PARAMS, QUERY_PARAMS, REQUEST_BODIES, RESPONSES

_PARAM = re.compile(r"{([a-z_]+)}")


def document() -> dict[str, Any]:
    from .http.routes import ROUTES

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": [route.tag],
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(route.path)
        ]
        params += QUERY_PARAMS.get(route.operation_id, [])
        if route.operation_id in PAGINATION_PARAMS:
            params += PAGINATION_PARAMS[route.operation_id]
        if params:
            op["parameters"] = params
        if route.operation_id in REQUEST_BODIES:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": REQUEST_BODIES[route.operation_id]}},
            }
        ok: dict[str, Any] = {"description": "Success"}
        if route.status != 204:
            schema = RESPONSES.get(route.operation_id, {"type": "object"})
            media = (
                "application/octet-stream"
                if route.operation_id == "download"
                else "application/json"
            )
            ok["content"] = {media: {"schema": schema}}
        responses: dict[str, Any] = {str(route.status): ok}
        for status in _errors(route):
            responses[status] = {
                "description": "Error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        op["responses"] = responses
        if route.auth == "token":
            op["security"] = [{"bearerAuth": []}]
        elif route.auth == "node":
            op["security"] = [{"nodeKey": []}]
        else:
            op["security"] = []
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "EdgeMQ (self-hosted) control plane",
            "version": "0.1.0",
            "description": "Endpoints, S3 destinations, views, bindings, commits, DLQ files, "
            "metrics, API keys and the node protocol. Errors share one JSON body.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "nodeKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def _errors(route: Any) -> list[str]:
    statuses: list[str] = []
    if route.auth != "public":
        statuses += ["401", "403"]
    if route.operation_id == "exchangeToken":
        statuses += ["401", "403"]
    if "{" in route.path:
        statuses.append("404")
    if route.method in ("POST", "PATCH", "GET") and route.operation_id not in (
        "getJwks",
        "getOpenApi",
        "health",
        "download",
    ):
        statuses.append("422")
    if route.operation_id in (
        "createDestination",
        "updateDestination",
        "deleteDestination",
        "createView",
        "attachView",
    ):
        statuses.append("409")
    if route.operation_id == "validateDestination":
        statuses.append("429")
    return sorted(set(statuses))
