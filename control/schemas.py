"""JSON Schemas of request bodies, responses and query parameters, by operationId."""

from __future__ import annotations

from typing import Any

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {
                "status": {"type": "integer"},
                "code": {"type": "string"},
                "message": {"type": "string"},
                "problems": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["path", "message"],
                        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}

_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
}
_OFFSET = {
    "name": "offset",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "default": 0},
}
PAGINATION_PARAMS: dict[str, list[dict[str, Any]]] = {
    op: [_LIMIT, _OFFSET]
    for op in ("listEndpoints", "listDestinations", "listViews", "listApiKeys", "listDlqFiles")
}
QUERY_PARAMS: dict[str, list[dict[str, Any]]] = {}
REQUEST_BODIES: dict[str, dict[str, Any]] = {}
RESPONSES: dict[str, dict[str, Any]] = {}
