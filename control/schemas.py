"""JSON Schemas (OpenAPI 3.1 / JSON Schema 2020-12) of what the services accept and return.

One place for every schema of the document `control.openapi` builds:

- `COMPONENTS`: the named schemas (`#/components/schemas/<name>`), each written once and
  referenced wherever it is used (an `Endpoint` is the body of create/get/patch and the
  item of the list);
- `request_bodies(settings)`, `query_params(settings)`: per operationId, with the bounds
  that depend on `ControlSettings` (segment sizes, the long-poll limit);
- `RESPONSES`: the success body per operationId; `ERRORS`: the error statuses each
  operation can answer, all with the one `Error` body;
- `PATH_PARAMS`: the schema of each path parameter name.

The schemas mirror the checks in `control/services/*.py` exactly: a request the schema
rejects is answered 4xx, and the fields listed for a response are the fields returned.
Services answer 422 for unknown body fields, hence `additionalProperties: false`, except
where a service ignores extra fields (the node protocol's heartbeat entries and commit
reports). Integers stored in BIGINT columns carry the int64 maximum.
"""

from __future__ import annotations

from typing import Any

from compiler.definition import (
    COLUMNS_MAX,
    DEFINITION_BYTES_MAX,
    FILTERS_MAX,
    NAME_CHARS_MAX,
    PARTITIONS_MAX,
    RESERVED_NAMES,
    TRANSFORMS,
    VIRTUAL_COLUMNS,
    VIRTUAL_TARGETS,
)
from compiler.jsonpath import INDEX_MAX, PATH_CHARS_MAX, STEPS_MAX
from compiler.preview import SAMPLE_BYTES_MAX, SAMPLES_MAX
from compiler.types import DECIMAL_PRECISION_MAX, SIMPLE_TYPES
from shared.apikeys import SCOPES
from shared.tokens import TTL_MAX_S

from .services.common import LIMIT_DEFAULT, LIMIT_MAX, ControlSettings
from .services.endpoints import MQTT_DEFAULTS, OUTPUT_FORMATS, SEGMENT_AGE_MAX_S
from .services.endpoints import STATUSES as ENDPOINT_STATUSES
from .services.nodes import COMMITS_PER_REPORT_MAX
from .services.views import DESCRIPTION_CHARS_MAX, FORMATS, TAG_CHARS_MAX, TAGS_MAX
from .services.views import STATUSES as VIEW_STATUSES

Schema = dict[str, Any]

# Integer query parameters are read as at most 12 digits (`parse_int_param`).
QUERY_INT_MAX = 999_999_999_999
DESTINATION_STATUSES = ("pending", "valid", "invalid")
BINDING_STATUSES = ("active", "inactive")
ERROR_CODES = (
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "payload_too_large",
    "validation_failed",
    "throttled",
    "internal_error",
    "unavailable",
)


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """`schema` or null, with the type as a type array (OpenAPI 3.1)."""
    out = dict(schema)
    if "$ref" in out:
        return {"anyOf": [out, {"type": "null"}]}
    kind = out["type"]
    out["type"] = [*kind, "null"] if isinstance(kind, list) else [kind, "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def obj(
    properties: dict[str, Schema],
    *,
    required: list[str] | None = None,
    closed: bool = True,
    description: str | None = None,
) -> Schema:
    """An object; `required=None` means every property is always present (responses)."""
    out: Schema = {"type": "object"}
    if description:
        out["description"] = description
    out["required"] = list(properties) if required is None else required
    out["properties"] = properties
    if closed:
        out["additionalProperties"] = False
    return out


def nullable_body(properties: dict[str, Schema], *, description: str) -> Schema:
    """An optional object body, every property optional; JSON null reads as {}."""
    out = obj(properties, required=[], description=description)
    out["type"] = ["object", "null"]
    return out


def _page(item: Schema) -> Schema:
    return obj(
        {
            "items": {"type": "array", "items": item},
            "total": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX},
            "offset": {"type": "integer", "minimum": 0},
            "next_offset": {"type": ["integer", "null"], "minimum": 0},
        }
    )


UUID: Schema = {"type": "string", "format": "uuid"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
INT: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
# Stored in BIGINT columns.
INT64_MAX = 2**63 - 1
COUNT64: Schema = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
STRING: Schema = {"type": "string"}
# Text the stores can hold (PostgreSQL text has no NUL); "not blank" as `str.strip()`.
NO_NUL = "^[^\\x00]*$"
NOT_BLANK_NO_NUL = "^[^\\x00]*[^\\s\\x00][^\\x00]*$"
REGION_CODE: Schema = {
    "type": "string",
    "minLength": 3,
    "maxLength": 3,
    "pattern": "^[a-z]{3}$",
    "description": "Three-letter lowercase region code (e.g. iad, lhr, fra)",
}
# `raw.get("filters") or []`: every false-y JSON value reads as "none".
_FALSY: Schema = {"enum": [None, False, 0, "", [], {}]}

# ------------------------------------------------------------------ components
_ERROR_BODY = obj(
    {
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "code": {"type": "string", "enum": list(ERROR_CODES)},
        "message": STRING,
        "problems": {
            "type": "array",
            "description": "Only on 422: every problem found, by request location.",
            "items": obj({"path": STRING, "message": STRING}),
        },
    },
    required=["status", "code", "message"],
)
ERROR: Schema = obj({"error": _ERROR_BODY})

_MQTT_LIMITS = {"max_connections": (1, 1_000_000), "keepalive_max_s": (1, 65535), "qos_max": (0, 2)}


def _mqtt(*, request: bool) -> Schema:
    props: dict[str, Schema] = {"enabled": {"type": "boolean"}}
    for key, (low, high) in _MQTT_LIMITS.items():
        props[key] = {"type": "integer", "minimum": low, "maximum": high}
    if request:
        for key, value in MQTT_DEFAULTS.items():
            props[key] = {**props[key], "default": value}
        return obj(props, required=[], description="Omitted fields take their defaults.")
    return obj(props)


_ENDPOINT = obj(
    {
        "id": UUID,
        "region": REGION_CODE,
        "status": {
            "type": "string",
            "enum": list(ENDPOINT_STATUSES),
            "description": "Computed when read from node health and applied config epochs.",
        },
        "destination_id": nullable(UUID),
        "destination_name": {"type": ["string", "null"]},
        "destination_status": nullable({"type": "string", "enum": list(DESTINATION_STATUSES)}),
        "created_at": TIMESTAMP,
        "dns_ipv4": {"type": "array", "items": STRING},
        "dns_ipv6": {"type": "array", "items": STRING},
        "segment_bytes": COUNT,
        "segment_max_age_seconds": {"type": "integer", "minimum": 1},
        "output_formats": {
            "type": "array",
            "items": {"type": "string", "enum": list(OUTPUT_FORMATS)},
        },
        "mqtt_config": nullable(ref("MqttConfig")),
    }
)

_DESTINATION_PROPS: dict[str, Schema] = {
    "id": UUID,
    "name": STRING,
    "bucket": STRING,
    "prefix": {"type": "string", "description": "Normalised: no leading/trailing slashes."},
    "region": STRING,
    "role_arn": STRING,
    "external_id": {"type": "string", "description": "Per-account external id for AssumeRole."},
    "kms_key_arn": {"type": ["string", "null"]},
    "path_style": {"type": "boolean"},
    "endpoint_url": {"type": ["string", "null"]},
    "status": {"type": "string", "enum": list(DESTINATION_STATUSES)},
    "validated_at": nullable(TIMESTAMP),
    "last_error": {"type": ["string", "null"]},
    "created_at": TIMESTAMP,
    "updated_at": TIMESTAMP,
}
_REF_COUNT: dict[str, Schema] = {
    "ref_count": {**COUNT, "description": "Endpoints that reference this destination."}
}

_VIEW_NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": NAME_CHARS_MAX,
    "pattern": "^[a-z][a-z0-9_]*$",
}
# Exactly what `compiler.jsonpath.parse_jsonpath` accepts (with maxLength).
_JSONPATH = (
    "^\\$("
    "\\.[A-Za-z0-9_-]+"
    "|\\['[^'\"\\\\\\x00-\\x1f\\x7f]+'\\]"
    '|\\["[^"\\\\\\x00-\\x1f\\x7f]+"\\]'
    "|\\[0*([0-9]{1,6}|1000000)\\]"
    f"){{0,{STEPS_MAX}}}$"
)
_COLUMN = {
    "type": "object",
    "required": ["name", "type"],
    "properties": {
        "name": {**_VIEW_NAME, "not": {"enum": sorted(RESERVED_NAMES)}},
        "type": {
            "anyOf": [
                {"type": "string", "enum": sorted(SIMPLE_TYPES)},
                {
                    "type": "string",
                    "pattern": "^DECIMAL\\((0?[1-9]|[12][0-9]|3[0-8]),([0-2]?[0-9]|3[0-8])\\)$",
                    "description": "scale <= precision",
                },
                {
                    "type": "string",
                    "pattern": "[^A-Z0-9(),]",
                    "description": "Other spellings of those: case and whitespace are "
                    "ignored (`decimal( 10, 2 )`)",
                },
            ],
            "description": f"A DuckDB type; DECIMAL(p,s) with 1 <= p <= "
            f"{DECIMAL_PRECISION_MAX} and 0 <= s <= p",
        },
        "path": {
            "type": "string",
            "maxLength": PATH_CHARS_MAX,
            "pattern": _JSONPATH,
            "description": f"JSONPath subset: $, .key, ['key'], [\"key\"], [n] (n <= "
            f"{INDEX_MAX}); at most {STEPS_MAX} steps",
        },
        "source": {
            "type": "string",
            "enum": list(VIRTUAL_COLUMNS),
            "description": "A virtual column; the type must be one it can be read as: "
            + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in VIRTUAL_TARGETS.items()),
        },
        "required": {"type": "boolean", "default": False},
        "cast_failures": {"type": ["string", "null"], "enum": ["null", "dlq", "drop", None]},
        "default": {
            "type": ["string", "number", "boolean", "null"],
            "description": "Must fit the column type (numbers in range, dates as ISO text)",
        },
    },
    "oneOf": [{"required": ["path"]}, {"required": ["source"]}],
    "additionalProperties": False,
}
_FILTER = obj(
    {
        "condition": {"type": "string", "pattern": "\\S"},
        "description": {"type": ["string", "null"]},
    },
    required=["condition"],
)
_PARTITION = obj(
    {
        "column": STRING,
        "transform": {"type": "string", "enum": list(TRANSFORMS), "default": "identity"},
    },
    required=["column"],
)
_VIEW_DEFINITION = obj(
    {
        "columns": {"type": "array", "minItems": 1, "maxItems": COLUMNS_MAX, "items": _COLUMN},
        "filters": {
            "anyOf": [
                {"type": "array", "maxItems": FILTERS_MAX, "items": ref("ViewFilter")},
                _FALSY,
            ],
            "description": "All ANDed together; any false-y value means none.",
        },
        "partitions": {
            "anyOf": [
                {"type": "array", "maxItems": PARTITIONS_MAX, "items": ref("ViewPartition")},
                _FALSY,
            ],
            "description": "Any false-y value means none.",
        },
    },
    required=["columns"],
)
_DEFINITION_INPUT: Schema = {
    "anyOf": [
        ref("ViewDefinition"),
        {
            "type": "string",
            "maxLength": DEFINITION_BYTES_MAX,
            "description": "The definition as YAML or JSON text, read per `format`.",
        },
    ]
}
_VIEW_PROPS: dict[str, Schema] = {
    "id": UUID,
    "name": _VIEW_NAME,
    "version": {"type": "integer", "minimum": 1},
    "definition": {"type": "object", "description": "The definition as stored (an object)."},
    "format": {"type": "string", "enum": list(FORMATS)},
    "status": {"type": "string", "enum": list(VIEW_STATUSES)},
    "description": {"type": ["string", "null"]},
    "tags": {"type": "array", "items": STRING},
    "created_by": STRING,
    "created_at": TIMESTAMP,
    "published_at": nullable(TIMESTAMP),
}
_VIEW_VERSION = obj(
    {
        "id": UUID,
        "version": {"type": "integer", "minimum": 1},
        "status": {"type": "string", "enum": list(VIEW_STATUSES)},
        "published_at": nullable(TIMESTAMP),
        "created_by": STRING,
    }
)
_VIEW_ENDPOINT = obj(
    {
        "id": UUID,
        "region": REGION_CODE,
        "binding_id": UUID,
        "is_required": {"type": "boolean"},
        "activated_at": TIMESTAMP,
        "canary_start_ts": nullable(TIMESTAMP),
    }
)

_BINDING = obj(
    {
        "id": UUID,
        "endpoint_id": UUID,
        "view_id": UUID,
        "view_name": STRING,
        "view_version": {"type": "integer", "minimum": 1},
        "is_required": {"type": "boolean"},
        "activated_at": TIMESTAMP,
        "activated_by": STRING,
        "deactivated_at": nullable(TIMESTAMP),
        "canary_start_ts": nullable(TIMESTAMP),
        "status": {"type": "string", "enum": list(BINDING_STATUSES)},
    }
)

_API_KEY_PROPS: dict[str, Schema] = {
    "id": UUID,
    "name": STRING,
    "owner": {"type": ["string", "null"]},
    "scopes": {"type": "array", "items": {"type": "string", "enum": list(SCOPES)}},
    "prefix": {"type": "string", "description": "The first characters of the key."},
    "created_at": TIMESTAMP,
    "revoked_at": nullable(TIMESTAMP),
}

_COMMIT = obj(
    {
        "id": STRING,
        "node_id": STRING,
        "epoch": COUNT,
        "seq": COUNT,
        "wal_bytes": COUNT,
        "frames": COUNT,
        "duration_ms": COUNT,
        "uploaded_at": TIMESTAMP,
        "manifest_key": STRING,
        "artifacts": {"type": "object", "description": "As reported by the node."},
    }
)

_DLQ_FILE = obj(
    {
        "endpoint_id": UUID,
        "endpoint_name": STRING,
        "node_id": STRING,
        "segment_seq": INT,
        "s3_key": STRING,
        "s3_bucket": {"type": ["string", "null"]},
        "region": {"type": ["string", "null"]},
        "bytes": INT,
        "rows": INT,
        "created_at": TIMESTAMP,
        "download_url": {
            "type": ["string", "null"],
            "description": "Presigned GET (1 hour); null when the role cannot be assumed.",
        },
    }
)

_COUNTS = obj({k: INT for k in ("processed", "accepted", "dropped", "dlq")})
_ENDPOINT_METRICS = obj(
    {
        "endpoint_id": UUID,
        "endpoint_name": STRING,
        "last_24h": ref("RowCounts"),
        "all_time": ref("RowCounts"),
        "error_rate_pct": {"type": "number"},
        "has_errors": {"type": "boolean"},
        "error_count_24h": COUNT,
        "total_error_count": COUNT,
        "last_error_at": nullable(TIMESTAMP),
        "last_error_code": {"type": ["string", "null"]},
        "last_error_message": {"type": ["string", "null"]},
        "last_updated_at": TIMESTAMP,
    }
)

_PREVIEW_COLUMN = obj(
    {
        "name": STRING,
        "type": STRING,
        "nullCount": COUNT,
        "totalCount": COUNT,
        "nullRate": {"type": "number", "minimum": 0, "maximum": 1},
        "sampleValues": {"type": "array"},
    }
)

_JWK = {
    "type": "object",
    "required": ["kty", "kid", "alg", "use", "n", "e"],
    "properties": {
        "kty": {"const": "RSA"},
        "kid": STRING,
        "alg": {"const": "RS256"},
        "use": {"const": "sig"},
        "n": STRING,
        "e": STRING,
        "key_ops": {"type": "array", "items": STRING},
    },
    "additionalProperties": False,
}

_SNAPSHOT_DESTINATION = obj(
    {
        k: _DESTINATION_PROPS[k]
        for k in (
            "id",
            "bucket",
            "prefix",
            "region",
            "role_arn",
            "external_id",
            "kms_key_arn",
            "path_style",
            "endpoint_url",
            "status",
        )
    }
)
_SNAPSHOT_ENDPOINT = obj(
    {
        "id": UUID,
        "account_id": UUID,
        "tenant": {"type": "integer", "minimum": 1, "maximum": 0xFFFF_FFFF},
        "accepting": {"type": "boolean", "description": "false once deleted (still draining)"},
        "config_epoch": COUNT,
        "segment_bytes": COUNT,
        "segment_max_age_seconds": COUNT,
        "output_formats": _ENDPOINT["properties"]["output_formats"],
        "mqtt_config": nullable(ref("MqttConfig")),
        "destination": nullable(ref("SnapshotDestination")),
        "bindings": {
            "type": "array",
            "items": obj(
                {
                    "binding_id": UUID,
                    "view_id": UUID,
                    "view_name": STRING,
                    "view_version": {"type": "integer", "minimum": 1},
                    "is_required": {"type": "boolean"},
                    "canary_start_ts_ms": {"type": ["integer", "null"]},
                    "definition": {"type": "object"},
                }
            ),
        },
    }
)

COMPONENTS: dict[str, Schema] = {
    "Error": ERROR,
    "MqttConfig": _mqtt(request=False),
    "MqttConfigInput": _mqtt(request=True),
    "Endpoint": _ENDPOINT,
    "Destination": obj(_DESTINATION_PROPS),
    "DestinationWithRefCount": obj({**_DESTINATION_PROPS, **_REF_COUNT}),
    "ViewDefinition": _VIEW_DEFINITION,
    "ViewFilter": _FILTER,
    "ViewPartition": _PARTITION,
    "View": obj(_VIEW_PROPS),
    "ViewListItem": obj(
        {**_VIEW_PROPS, "usage_count": {**COUNT, "description": "Active bindings."}}
    ),
    "ViewDetail": obj(
        {
            **_VIEW_PROPS,
            "versions": {"type": "array", "items": _VIEW_VERSION},
            "endpoints": {"type": "array", "items": _VIEW_ENDPOINT},
        }
    ),
    "Binding": _BINDING,
    "ApiKey": obj(_API_KEY_PROPS),
    "ApiKeyCreated": obj(
        {
            **_API_KEY_PROPS,
            "api_key": {"type": "string", "description": "The key itself, shown only once."},
        }
    ),
    "Commit": _COMMIT,
    "DlqFile": _DLQ_FILE,
    "RowCounts": _COUNTS,
    "EndpointViewMetrics": _ENDPOINT_METRICS,
    "PreviewColumn": _PREVIEW_COLUMN,
    "Jwk": _JWK,
    "SnapshotDestination": _SNAPSHOT_DESTINATION,
    "SnapshotEndpoint": _SNAPSHOT_ENDPOINT,
}

# ------------------------------------------------------------------- requests
_DESCRIPTION_INPUT: Schema = {"type": ["string", "null"], "maxLength": DESCRIPTION_CHARS_MAX}
_TAGS_INPUT: Schema = {
    "type": "array",
    "maxItems": TAGS_MAX,
    "items": {"type": "string", "minLength": 1, "maxLength": TAG_CHARS_MAX},
    "description": "Duplicates are dropped.",
}


def _endpoint_body(settings: ControlSettings, *, create: bool) -> Schema:
    def maybe_null(schema: Schema) -> Schema:
        return schema if create else nullable(schema)

    props: dict[str, Schema] = {}
    if create:
        props["region"] = REGION_CODE
    props["destination_id"] = maybe_null(
        {**UUID, "description": "An existing destination of this account"}
    )
    props["segment_bytes"] = maybe_null(
        {
            "type": "integer",
            "minimum": settings.segment_bytes_min,
            "maximum": settings.segment_bytes_max,
            "description": "WAL segment size in bytes; applies on the next rotation",
        }
    )
    props["segment_max_age_seconds"] = maybe_null(
        {"type": "integer", "minimum": 1, "maximum": SEGMENT_AGE_MAX_S}
    )
    props["output_formats"] = maybe_null(
        {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string", "enum": list(OUTPUT_FORMATS)},
        }
    )
    props["mqtt_config"] = nullable(ref("MqttConfigInput"))
    return obj(
        props,
        required=["region"] if create else [],
        description=None
        if create
        else "null leaves a field unchanged, except mqtt_config "
        "(null disables MQTT) and destination_id (null unbinds).",
    )


_DESTINATION_TEXT = {
    "name": 200,
    "bucket": 63,
    "prefix": 512,
    "region": 64,
    "role_arn": 2048,
    "kms_key_arn": 2048,
    "endpoint_url": 2048,
}


def _destination_body(*, create: bool) -> Schema:
    props: dict[str, Schema] = {}
    for name, max_len in _DESTINATION_TEXT.items():
        text: Schema = {
            "type": "string",
            "maxLength": max_len,
            "pattern": NO_NUL if name == "prefix" else NOT_BLANK_NO_NUL,
        }
        if name == "endpoint_url":
            text["pattern"] = "^(https?|file)://[^\\x00]*$"
            text["description"] = "Custom S3 endpoint, or file://<dir> for a local store"
        if name in ("kms_key_arn", "endpoint_url"):
            text = nullable(text)
        props[name] = text
    props["path_style"] = {"type": "boolean", "default": False}
    return obj(props, required=["name", "bucket", "region", "role_arn"] if create else [])


def request_bodies(settings: ControlSettings) -> dict[str, tuple[Schema, bool]]:
    """Per operationId: (body schema, whether a body is required)."""
    return {
        "exchangeToken": (
            obj(
                {
                    "api_key": {"type": "string", "minLength": 1},
                    "scope": {"type": "string", "enum": list(SCOPES)},
                    "ttl": {
                        "type": ["string", "null"],
                        "maxLength": 16,
                        "pattern": "^([0-9]+[smh])+$",
                        "description": f"Duration such as 15m, 1h, 1h30m (1s..{TTL_MAX_S // 3600}h); "
                        "default 15m",
                    },
                },
                required=["api_key", "scope"],
            ),
            True,
        ),
        "createApiKey": (
            obj(
                {
                    "name": {"type": "string", "maxLength": 200, "pattern": NOT_BLANK_NO_NUL},
                    "owner": {
                        "type": ["string", "null"],
                        "maxLength": 320,
                        "pattern": "^[^\\x00]*@[^\\x00]*$",
                        "description": "An e-mail address",
                    },
                    "scopes": {
                        "type": "array",
                        "minItems": 1,
                        "uniqueItems": True,
                        "items": {"type": "string", "enum": list(SCOPES)},
                    },
                },
                required=["name", "scopes"],
            ),
            True,
        ),
        "createEndpoint": (_endpoint_body(settings, create=True), True),
        "updateEndpoint": (_endpoint_body(settings, create=False), True),
        "createDestination": (_destination_body(create=True), True),
        "updateDestination": (_destination_body(create=False), True),
        "createView": (
            obj(
                {
                    "name": _VIEW_NAME,
                    "description": _DESCRIPTION_INPUT,
                    "definition": _DEFINITION_INPUT,
                    "format": {"type": "string", "enum": list(FORMATS), "default": "yaml"},
                    "tags": _TAGS_INPUT,
                },
                required=["name", "definition"],
            ),
            True,
        ),
        "updateView": (
            obj(
                {
                    "description": _DESCRIPTION_INPUT,
                    "definition": _DEFINITION_INPUT,
                    "tags": _TAGS_INPUT,
                },
                required=[],
                description="Only draft views can be updated.",
            ),
            True,
        ),
        "createViewVersion": (
            nullable_body(
                {
                    "copy_from_version": {
                        "type": ["integer", "null"],
                        "minimum": 1,
                        "description": "Defaults to the latest version",
                    },
                    "description": _DESCRIPTION_INPUT,
                },
                description="Optional: no body (or null) is the same as {}.",
            ),
            False,
        ),
        "previewView": (
            obj(
                {
                    "definition": _DEFINITION_INPUT,
                    "samples": {
                        "type": "array",
                        "maxItems": SAMPLES_MAX,
                        "items": {"type": "string", "maxLength": SAMPLE_BYTES_MAX},
                        "description": f"Raw payloads, at most {SAMPLE_BYTES_MAX} bytes each",
                    },
                    "format": {
                        "description": "How a string definition is read: json, else YAML.",
                    },
                },
                required=["definition", "samples"],
            ),
            True,
        ),
        "attachView": (
            obj(
                {
                    "view_id": {**UUID, "description": "A published view"},
                    "is_required": {"type": "boolean", "default": False},
                    "canary_start_ts": nullable(TIMESTAMP),
                },
                required=["view_id"],
            ),
            True,
        ),
        "registerNode": (
            obj(
                {
                    "node_id": {
                        "anyOf": [{"type": "string", "maxLength": 64}, _FALSY],
                        "description": "Omitted (or any false-y value): the control plane "
                        "assigns one",
                    },
                    "region": REGION_CODE,
                    "http_url": {"type": ["string", "null"], "maxLength": 2048},
                    "mqtt_url": {"type": ["string", "null"], "maxLength": 2048},
                    "ipv4": {"type": "array", "items": {"type": "string", "maxLength": 64}},
                    "ipv6": {"type": "array", "items": {"type": "string", "maxLength": 64}},
                    "version": {"type": ["string", "null"], "maxLength": 64},
                },
                required=["region"],
            ),
            True,
        ),
        "nodeHeartbeat": (
            obj(
                {
                    "applied_epoch": {**COUNT64, "default": 0},
                    "draining": {"type": "boolean", "default": False},
                    "endpoints": {
                        "type": "array",
                        "description": "One entry per endpoint",
                        "items": obj(
                            {
                                "endpoint_id": STRING,
                                "unshipped_bytes": {**COUNT64, "default": 0},
                                "delivery_error": {"type": ["string", "null"]},
                            },
                            required=["endpoint_id"],
                            closed=False,
                        ),
                    },
                },
                required=[],
            ),
            True,
        ),
        "reportCommits": (
            obj(
                {
                    "commits": {
                        "type": "array",
                        "maxItems": COMMITS_PER_REPORT_MAX,
                        "items": _commit_report(),
                    }
                },
                required=["commits"],
                closed=False,
            ),
            True,
        ),
    }


def _commit_report() -> Schema:
    outcome = obj(
        {
            "view_id": STRING,
            "processed": {**COUNT64, "default": 0},
            "accepted": {**COUNT64, "default": 0},
            "dropped": {**COUNT64, "default": 0},
            "dlq": {**COUNT64, "default": 0, "description": "Rows sent to the DLQ"},
            "error_code": {"type": ["string", "null"]},
            "error_message": {"type": ["string", "null"]},
            "dlq_file": nullable(
                obj(
                    {
                        "key": STRING,
                        "bucket": {"type": ["string", "null"]},
                        "region": {"type": ["string", "null"]},
                        "bytes": {**COUNT64, "default": 0},
                    },
                    required=["key"],
                    closed=False,
                    description="The DLQ object written for this segment",
                )
            ),
        },
        required=["view_id"],
        closed=False,
    )
    return obj(
        {
            "endpoint_id": STRING,
            "manifest_key": STRING,
            "uploaded_at": TIMESTAMP,
            "epoch": COUNT64,
            "seq": COUNT64,
            "wal_bytes": COUNT64,
            "frames": COUNT64,
            "duration_ms": COUNT64,
            "artifacts": {"type": "object", "default": {}},
            "views": {"type": "array", "items": outcome, "default": []},
        },
        required=[
            "endpoint_id",
            "manifest_key",
            "uploaded_at",
            "epoch",
            "seq",
            "wal_bytes",
            "frames",
            "duration_ms",
        ],
        closed=False,
        description="Idempotent on (endpoint_id, node, epoch, seq); unknown endpoints are "
        "acknowledged and not stored.",
    )


# ------------------------------------------------------------------ parameters
def _query(name: str, schema: Schema, description: str | None = None) -> Schema:
    param: Schema = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        param["description"] = description
    return param


_LIMIT = _query(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX, "default": LIMIT_DEFAULT},
    "Maximum number of items to return",
)
_OFFSET = _query(
    "offset",
    {"type": "integer", "minimum": 0, "maximum": QUERY_INT_MAX, "default": 0},
    "Number of items to skip",
)


def query_params(settings: ControlSettings) -> dict[str, list[Schema]]:
    return {
        "listApiKeys": [_LIMIT, _OFFSET],
        "listEndpoints": [
            _query("status", {"type": "string", "enum": list(ENDPOINT_STATUSES)}),
            _LIMIT,
            _OFFSET,
        ],
        "listDestinations": [_LIMIT, _OFFSET],
        "listViews": [
            _query(
                "status",
                {"type": "string", "enum": list(VIEW_STATUSES), "default": "published"},
            ),
            _query("name", STRING, "Exact view name"),
            {
                **_query(
                    "tag",
                    {"type": "array", "items": STRING},
                    "Views carrying every given tag (repeat the parameter)",
                ),
                "style": "form",
                "explode": True,
            },
            _LIMIT,
            _OFFSET,
        ],
        "listCommits": [
            _LIMIT,
            _query(
                "before",
                TIMESTAMP,
                "Commits uploaded before this time: an ISO 8601 date-time with a zone, "
                "e.g. the previous page's next_cursor",
            ),
        ],
        "listDlqFiles": [_LIMIT, _OFFSET],
        "nodeConfig": [
            _query(
                "after_epoch",
                {"type": "integer", "minimum": 0, "maximum": QUERY_INT_MAX, "default": 0},
                "Answer at once when the config epoch is past this one",
            ),
            _query(
                "wait_s",
                {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": int(settings.long_poll_max_s),
                    "default": 0,
                },
                "Otherwise wait up to this long for a change",
            ),
        ],
    }


PATH_PARAMS: dict[str, Schema] = {
    "id": UUID,
    "endpoint_id": UUID,
    "binding_id": UUID,
    "node_id": {"type": "string", "minLength": 1},
    "token": {"type": "string", "minLength": 1},
}

# ------------------------------------------------------------------- responses
RESPONSES: dict[str, Schema] = {
    "exchangeToken": obj(
        {
            "access_token": {"type": "string", "description": "RS256 JWT"},
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer", "minimum": 1, "maximum": TTL_MAX_S},
        }
    ),
    "getJwks": obj({"keys": {"type": "array", "items": ref("Jwk")}}),
    "getOpenApi": {"type": "object", "description": "This OpenAPI 3.1 document"},
    "health": obj({"status": {"const": "ok"}}),
    "download": {"type": "string", "contentMediaType": "application/octet-stream"},
    "createApiKey": ref("ApiKeyCreated"),
    "listApiKeys": _page(ref("ApiKey")),
    "createEndpoint": ref("Endpoint"),
    "listEndpoints": _page(ref("Endpoint")),
    "getEndpoint": ref("Endpoint"),
    "updateEndpoint": ref("Endpoint"),
    "createDestination": ref("Destination"),
    "listDestinations": _page(ref("DestinationWithRefCount")),
    "getDestination": ref("DestinationWithRefCount"),
    "updateDestination": ref("Destination"),
    "validateDestination": ref("Destination"),
    "createView": ref("View"),
    "listViews": _page(ref("ViewListItem")),
    "previewView": obj(
        {
            "success": {"type": "boolean", "description": "false: the view failed to run"},
            "rows": {"type": "array", "items": {"type": "object"}},
            "columns": {"type": "array", "items": ref("PreviewColumn")},
            "rowCount": COUNT,
            "compiledSql": STRING,
            "warnings": {"type": "array", "items": STRING},
            "errors": {"type": "array", "items": STRING},
            "executionTimeMs": {"type": "number", "minimum": 0},
        }
    ),
    "getView": ref("ViewDetail"),
    "updateView": ref("View"),
    "publishView": ref("View"),
    "archiveView": ref("View"),
    "createViewVersion": ref("View"),
    "attachView": ref("Binding"),
    "listBindings": obj(
        {
            "items": {
                "type": "array",
                "items": ref("Binding"),
                "description": "Active and detached bindings",
            }
        }
    ),
    "listCommits": obj(
        {
            "items": {"type": "array", "items": ref("Commit")},
            "next_cursor": {
                **nullable(TIMESTAMP),
                "description": "Pass as `before` for the next page; null on the last page",
            },
        }
    ),
    "listDlqFiles": obj(
        {
            "view_id": UUID,
            "view_name": STRING,
            "view_version": {"type": "integer", "minimum": 1},
            "files": {"type": "array", "items": ref("DlqFile")},
            "total": COUNT,
        }
    ),
    "getViewMetrics": obj(
        {
            "view_id": UUID,
            "view_name": STRING,
            "view_version": {"type": "integer", "minimum": 1},
            "endpoints": {"type": "array", "items": ref("EndpointViewMetrics")},
            "aggregated": obj(
                {
                    "last_24h": ref("RowCounts"),
                    "all_time": ref("RowCounts"),
                    "error_rate_pct": {"type": "number"},
                    "has_errors": {"type": "boolean"},
                    "total_error_count_24h": COUNT,
                }
            ),
        }
    ),
    "registerNode": obj(
        {
            "node_id": STRING,
            "config_epoch": COUNT,
            "heartbeat_interval_s": {"type": "number", "exclusiveMinimum": 0},
        }
    ),
    "nodeHeartbeat": obj({"config_epoch": COUNT}),
    "nodeConfig": obj(
        {
            "config_epoch": COUNT,
            "region": REGION_CODE,
            "endpoints": {"type": "array", "items": ref("SnapshotEndpoint")},
            "ingest_keys": {
                "type": "array",
                "items": obj(
                    {
                        "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "account_id": UUID,
                        "scopes": {"type": "array", "items": STRING},
                    }
                ),
            },
            "jwks": obj({"keys": {"type": "array", "items": ref("Jwk")}}),
        }
    ),
    "reportCommits": obj(
        {
            "acknowledged": COUNT,
            "stored": {**COUNT, "description": "New commits (repeats are not stored twice)"},
        }
    ),
}

# ---------------------------------------------------------------------- errors
_TOKEN = (401, 403)
_BODY = (413, 422)
ERRORS: dict[str, tuple[int, ...]] = {
    "exchangeToken": (401, 403, *_BODY),
    "getJwks": (),
    "getOpenApi": (),
    "health": (),
    "download": (404,),
    "createApiKey": (*_TOKEN, *_BODY),
    "listApiKeys": (*_TOKEN, 422),
    "revokeApiKey": (*_TOKEN, 404),
    "createEndpoint": (*_TOKEN, *_BODY),
    "listEndpoints": (*_TOKEN, 422),
    "getEndpoint": (*_TOKEN, 404),
    "updateEndpoint": (*_TOKEN, 404, *_BODY),
    "deleteEndpoint": (*_TOKEN, 404),
    "createDestination": (*_TOKEN, 409, *_BODY),
    "listDestinations": (*_TOKEN, 422),
    "getDestination": (*_TOKEN, 404),
    "updateDestination": (*_TOKEN, 404, 409, *_BODY),
    "deleteDestination": (*_TOKEN, 404, 409),
    "validateDestination": (*_TOKEN, 404, 429),
    "createView": (*_TOKEN, 409, *_BODY),
    "listViews": (*_TOKEN, 422),
    "previewView": (*_TOKEN, *_BODY),
    "getView": (*_TOKEN, 404),
    "updateView": (*_TOKEN, 404, *_BODY),
    "deleteView": (*_TOKEN, 404, 422),
    "publishView": (*_TOKEN, 404, 422),
    "archiveView": (*_TOKEN, 404, 422),
    "createViewVersion": (*_TOKEN, 404, *_BODY),
    "attachView": (*_TOKEN, 404, 409, *_BODY),
    "listBindings": (*_TOKEN, 404),
    "detachView": (*_TOKEN, 404),
    "listCommits": (*_TOKEN, 404, 422),
    "listDlqFiles": (*_TOKEN, 404, 422),
    "getViewMetrics": (*_TOKEN, 404),
    "registerNode": (*_TOKEN, *_BODY),
    "nodeHeartbeat": (*_TOKEN, 404, *_BODY),
    "nodeConfig": (*_TOKEN, 404, 422),
    "reportCommits": (*_TOKEN, 404, *_BODY),
}
ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "Missing or invalid credentials",
    403: "Insufficient permissions (scope, or a node key on the management API)",
    404: "Resource not found (also: another account's resource, or a malformed id)",
    409: "Conflict with the current state",
    413: "Request body larger than 8 MiB",
    422: "Request validation failed (`problems` lists every problem)",
    429: "Throttled (see Retry-After)",
}
