"""The OpenAPI document: valid OpenAPI 3.1, in step with the route table both ways, true to
real responses, and a schemathesis run against a live control plane finds nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hypothesis
import jsonschema  # type: ignore[import-untyped]
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, Phase
from hypothesis.strategies import SearchStrategy
from openapi_spec_validator import validate as validate_spec
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from compiler.jsonpath import parse_jsonpath
from compiler.types import parse_type
from control import schemas
from control.http.app import create_app
from control.http.routes import ROUTES, Route
from control.openapi import document
from control.server import open_context
from control.services import keys
from control.services.common import ControlSettings
from tests.integration.control.conftest import SETTINGS, Api

MINIMAL_VIEW = {"columns": [{"name": "user_id", "type": "VARCHAR", "path": "$.userId"}]}


# ------------------------------------------------------------------ helpers
def _route_pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"{[a-z_]+}", "[^/]+", path) + "$")


_PATTERNS = [(route, _route_pattern(route.path)) for route in ROUTES]


def route_of(method: str, path: str) -> Route:
    for route, pattern in _PATTERNS:
        if route.method == method and pattern.match(path):
            # Literal segments win over parameters (/v1/views/preview vs /v1/views/{id}).
            literal = [
                r for r, p in _PATTERNS if r.method == method and r.path == path and p.match(path)
            ]
            return literal[0] if literal else route
    raise LookupError(f"no route for {method} {path}")


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A JSON Schema 2020-12 validator for `schema`, resolving `#/components/...`."""
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    }
    return jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def response_schema(doc: dict[str, Any], route: Route, status: int) -> dict[str, Any] | None:
    op = doc["paths"][route.path][route.method.lower()]
    response = op["responses"].get(str(status))
    assert response is not None, f"{route.operation_id} answered undocumented {status}"
    content = response.get("content", {}).get("application/json")
    if content is None:
        return None
    return dict(content["schema"])


# ------------------------------------------------------------- (a) validity
@pytest.mark.parametrize(
    "settings",
    [ControlSettings(), SETTINGS, ControlSettings(long_poll_max_s=1.0)],
    ids=["defaults", "test-settings", "short-poll"],
)
def test_the_document_is_valid_openapi_3_1(settings: ControlSettings) -> None:
    doc = document(settings)
    assert doc["openapi"].startswith("3.1.")
    validate_spec(doc)  # picks the OpenAPI 3.1 validator from the version field
    # Every schema is a valid JSON Schema 2020-12 document, references resolve.
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
        validator(doc, {"$ref": f"#/components/schemas/{name}"}).is_valid({})
    json.dumps(doc)  # plain JSON


def test_settings_bounds_reach_the_document() -> None:
    doc = document(replace(SETTINGS, long_poll_max_s=7.0))
    create = doc["paths"]["/v1/endpoints"]["post"]["requestBody"]["content"]
    bytes_schema = create["application/json"]["schema"]["properties"]["segment_bytes"]
    assert (bytes_schema["minimum"], bytes_schema["maximum"]) == (
        SETTINGS.segment_bytes_min,
        SETTINGS.segment_bytes_max,
    )
    params = doc["paths"]["/v1/nodes/{node_id}/config"]["get"]["parameters"]
    wait = next(p for p in params if p["name"] == "wait_s")
    assert wait["schema"]["maximum"] == 7


def _pattern_accepts(pattern: str, text: str) -> bool:
    # ECMA-262 `$` is the end of the text; Python's also matches before a final newline.
    return re.search(pattern, text) is not None and not text.endswith("\n")


_PATH_ALPHABET = hypothesis.strategies.sampled_from(list("$.[]'\"ab-_0191\\\x00\x7f "))


@hypothesis.settings(max_examples=1000, deadline=None, database=None)
@hypothesis.given(
    hypothesis.strategies.one_of(
        hypothesis.strategies.from_regex(schemas._JSONPATH),
        hypothesis.strategies.text(_PATH_ALPHABET, max_size=30).map(lambda t: "$" + t),
    )
)
def test_the_jsonpath_pattern_is_the_parser(text: str) -> None:
    column = schemas.COMPONENTS["ViewDefinition"]["properties"]["columns"]["items"]
    path = column["properties"]["path"]
    try:
        parse_jsonpath(text)
        parsed = True
    except ValueError:
        parsed = False
    documented = len(text) <= path["maxLength"] and _pattern_accepts(path["pattern"], text)
    assert parsed == documented, text


@hypothesis.settings(max_examples=1000, deadline=None, database=None)
@hypothesis.given(
    hypothesis.strategies.one_of(
        hypothesis.strategies.text(
            hypothesis.strategies.sampled_from(list("DECIMAL(),0123456789 VARCHARdecimal")),
            max_size=16,
        ),
        hypothesis.strategies.from_regex(r"DECIMAL\([0-9]{1,3},[0-9]{1,3}\)", fullmatch=True),
    )
)
def test_every_accepted_column_type_is_documented(text: str) -> None:
    column = schemas.COMPONENTS["ViewDefinition"]["properties"]["columns"]["items"]
    branches = column["properties"]["type"]["anyOf"]
    try:
        parse_type(text)
    except ValueError:
        return
    assert any(
        text in b.get("enum", ()) or ("pattern" in b and _pattern_accepts(b["pattern"], text))
        for b in branches
    ), text


# ----------------------------------------------------- (b) routes ↔ document
def test_routes_and_document_agree_both_ways() -> None:
    doc = document()
    in_doc = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace")
    }
    in_routes = {(route.method, route.path) for route in ROUTES}
    assert in_routes - in_doc == set(), "routes missing from the document"
    assert in_doc - in_routes == set(), "documented operations that are not routed"
    assert len(in_routes) == len(ROUTES), "a route is registered twice"
    ids = [
        op["operationId"]
        for item in doc["paths"].values()
        for op in item.values()
        if "operationId" in op
    ]
    assert len(ids) == len(set(ids)) == len(ROUTES), "operationIds must be unique"
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["operationId"] == route.operation_id
        assert str(route.status) in op["responses"]
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{([a-z_]+)}", route.path))
        schemes = {name for requirement in op["security"] for name in requirement}
        assert (
            schemes
            == {
                "public": set(),
                "token": {"bearerAuth"},
                "node": {"nodeKey", "nodeKeyBearer"},
            }[route.auth]
        )


def test_the_schema_tables_name_only_routed_operations() -> None:
    op_ids = {route.operation_id for route in ROUTES}
    with_body = {route.operation_id for route in ROUTES if route.status != 204}
    assert set(schemas.ERRORS) == op_ids
    assert set(schemas.RESPONSES) == with_body
    assert set(schemas.request_bodies(ControlSettings())) <= op_ids
    assert set(schemas.query_params(ControlSettings())) <= op_ids
    # Every documented error answers with the one Error body.
    for item in document()["paths"].values():
        for op in item.values():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    media = response["content"]["application/json"]["schema"]
                    assert media == {"$ref": "#/components/schemas/Error"}


async def test_the_served_document_is_the_built_one(api: Api) -> None:
    resp = await api.client.get("/openapi/edgemq-openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    # The served document uses the process's settings (segment-size bounds, wait_s).
    assert await resp.json() == json.loads(json.dumps(document(api.ctx.settings)))


# ---------------------------------------------- (c) real responses ↔ schemas
@dataclass
class Checked:
    """Calls the API and validates every answer against the documented schema."""

    api: Api
    doc: dict[str, Any]
    seen: set[tuple[str, int]] = field(default_factory=set)

    async def __call__(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
        raw: bytes | None = None,
        params: Any = None,
        expect: int | None = None,
    ) -> Any:
        if raw is not None:
            headers = {**(headers or {}), "Content-Type": "application/json"}
        resp = await self.api.client.request(
            method, path, json=json_body, data=raw, params=params, headers=headers
        )
        route = route_of(method, path)
        status = resp.status
        body: Any = None
        schema = response_schema(self.doc, route, status)
        if schema is not None:
            assert resp.content_type == "application/json", (route.operation_id, status)
            body = await resp.json()
            errors = sorted(
                validator(self.doc, schema).iter_errors(body), key=lambda e: list(e.path)
            )
            assert not errors, f"{route.operation_id} {status}: " + "; ".join(
                f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]
            )
        elif route.operation_id == "download" and status == 200:
            assert resp.content_type == "application/octet-stream"
            body = await resp.read()
        else:
            assert await resp.read() == b""
        self.seen.add((route.operation_id, status))
        if expect is not None:
            assert status == expect, (route.operation_id, status, body)
        return body


async def test_real_responses_match_the_documented_schemas(api: Api, tmp_path: Path) -> None:
    call = Checked(api, document(api.ctx.settings))
    admin = await api.headers("admin")
    node_key = (await keys.create_node_key(api.ctx, "node-1"))["api_key"]
    node = {"X-API-Key": node_key}

    # Auth
    token = await call(
        "POST",
        "/v1/token/exchange",
        json_body={"api_key": api.admin_key, "scope": "metrics", "ttl": "5m"},
        expect=200,
    )
    metrics = {"Authorization": f"Bearer {token['access_token']}"}
    await call("POST", "/v1/token/exchange", json_body={"api_key": "nope"}, expect=422)
    await call(
        "POST",
        "/v1/token/exchange",
        json_body={"api_key": "emq_live_" + "x" * 32, "scope": "admin"},
        expect=401,
    )
    await call("GET", "/.well-known/jwks.json", expect=200)
    await call("GET", "/healthz", expect=200)
    await call(
        "POST",
        "/v1/api-keys",
        headers=admin,
        json_body={"name": "ci", "owner": "ci@example.com", "scopes": ["ingest"]},
        expect=201,
    )
    await call("GET", "/v1/api-keys", headers=admin, expect=200)

    # Destinations (a local store, so validation is real and quick)
    dest = await call(
        "POST",
        "/v1/destinations",
        headers=admin,
        json_body={
            "name": "lake",
            "bucket": "lake",
            "prefix": "/events/",
            "region": "us-east-1",
            "role_arn": "arn:aws:iam::123456789012:role/EdgeMq",
            "endpoint_url": f"file://{tmp_path}",
        },
        expect=201,
    )
    await call(
        "POST",
        "/v1/destinations",
        headers=admin,
        json_body={"name": "lake", "bucket": "b", "region": "r", "role_arn": "a"},
        expect=409,
    )
    await call("POST", f"/v1/destinations/{dest['id']}/validate", headers=admin, expect=200)
    await call("POST", f"/v1/destinations/{dest['id']}/validate", headers=admin, expect=429)
    await call("GET", "/v1/destinations", headers=admin, expect=200)
    await call("GET", f"/v1/destinations/{dest['id']}", headers=metrics, expect=200)
    await call(
        "PATCH",
        f"/v1/destinations/{dest['id']}",
        headers=admin,
        json_body={"kms_key_arn": None, "path_style": True},
        expect=200,
    )

    # Endpoints
    endpoint = await call(
        "POST",
        "/v1/endpoints",
        headers=admin,
        json_body={
            "region": "iad",
            "destination_id": dest["id"],
            "mqtt_config": {"qos_max": 0},
            "output_formats": ["segments", "parquet", "parquet_views"],
        },
        expect=201,
    )
    await call("POST", "/v1/endpoints", headers=admin, json_body={"region": "IAD"}, expect=422)
    await call(
        "POST", "/v1/endpoints", headers=admin, raw=b"[" * 100_000 + b"]" * 100_000, expect=422
    )
    await call("POST", "/v1/endpoints", headers=metrics, json_body={"region": "iad"}, expect=403)
    await call("GET", "/v1/endpoints", expect=401)
    await call("GET", "/v1/endpoints", headers=admin, params={"status": "deploying"}, expect=200)
    await call("GET", f"/v1/endpoints/{endpoint['id']}", headers=admin, expect=200)
    await call(
        "PATCH",
        f"/v1/endpoints/{endpoint['id']}",
        headers=admin,
        json_body={"mqtt_config": None, "segment_max_age_seconds": 30},
        expect=200,
    )
    await call(
        "GET", "/v1/endpoints/00000000-0000-4000-8000-000000000000", headers=admin, expect=404
    )
    await call("DELETE", f"/v1/destinations/{dest['id']}", headers=admin, expect=409)

    # Views and bindings
    view = await call(
        "POST",
        "/v1/views",
        headers=admin,
        json_body={
            "name": "user_events",
            "definition": MINIMAL_VIEW,
            "tags": ["a", "b"],
            "description": "d",
        },
        expect=201,
    )
    await call(
        "POST",
        "/v1/views",
        headers=admin,
        json_body={"name": "user_events", "definition": MINIMAL_VIEW},
        expect=409,
    )
    await call(
        "POST",
        "/v1/views/preview",
        headers=metrics,
        json_body={"definition": MINIMAL_VIEW, "samples": ['{"userId": "u1"}', "not json"]},
        expect=200,
    )
    await call(
        "PATCH", f"/v1/views/{view['id']}", headers=admin, json_body={"tags": ["a"]}, expect=200
    )
    await call("POST", f"/v1/views/{view['id']}/publish", headers=admin, expect=200)
    await call("GET", "/v1/views", headers=admin, params=[("tag", "a")], expect=200)
    binding = await call(
        "POST",
        f"/v1/endpoints/{endpoint['id']}/views",
        headers=admin,
        json_body={"view_id": view["id"], "canary_start_ts": "2026-01-15T10:30:00Z"},
        expect=201,
    )
    await call(
        "POST",
        f"/v1/endpoints/{endpoint['id']}/views",
        headers=admin,
        json_body={"view_id": view["id"]},
        expect=409,
    )
    await call("GET", f"/v1/endpoints/{endpoint['id']}/views", headers=admin, expect=200)
    await call("GET", f"/v1/views/{view['id']}", headers=admin, expect=200)
    version = await call(
        "POST", f"/v1/views/{view['id']}/versions", headers=admin, json_body={}, expect=201
    )
    await call("DELETE", f"/v1/views/{view['id']}", headers=admin, expect=422)
    await call("DELETE", f"/v1/views/{version['id']}", headers=admin, expect=204)

    # Node protocol, commits, metrics
    reg = await call(
        "POST",
        "/v1/nodes/register",
        headers=node,
        json_body={"node_id": "node-a", "region": "iad", "ipv4": ["192.0.2.1"]},
        expect=200,
    )
    await call("POST", "/v1/nodes/register", headers=admin, json_body={"region": "iad"}, expect=401)
    await call(
        "POST",
        f"/v1/nodes/{reg['node_id']}/heartbeat",
        headers=node,
        json_body={"applied_epoch": reg["config_epoch"], "endpoints": []},
        expect=200,
    )
    await call("GET", f"/v1/nodes/{reg['node_id']}/config", headers=node, expect=200)
    now, later = "2026-01-15T10:30:00.000Z", "2026-01-15T10:31:00+01:00"
    commit = {
        "endpoint_id": endpoint["id"],
        "manifest_key": "m/1.json",
        "uploaded_at": now,
        "epoch": 1,
        "seq": 1,
        "wal_bytes": 10,
        "frames": 1,
        "duration_ms": 3,
        "artifacts": {"parquet": {"key": "p/1.parquet", "bytes": 5}},
        "views": [
            {
                "view_id": view["id"],
                "processed": 3,
                "accepted": 1,
                "dropped": 1,
                "dlq": 1,
                "error_code": "cast_failed",
                "error_message": "amount: not a number",
                "dlq_file": {"key": "dlq/seg-1.parquet", "bucket": "lake", "bytes": 4},
            }
        ],
    }
    (tmp_path / "lake" / "dlq").mkdir(parents=True)
    (tmp_path / "lake" / "dlq" / "seg-1.parquet").write_bytes(b"PAR1")
    await call(
        "POST",
        f"/v1/nodes/{reg['node_id']}/commits",
        headers=node,
        json_body={"commits": [commit, {**commit, "seq": 2, "uploaded_at": later, "views": []}]},
        expect=200,
    )
    page = await call(
        "GET",
        f"/v1/endpoints/{endpoint['id']}/commits",
        headers=admin,
        params={"limit": 1},
        expect=200,
    )
    await call(
        "GET",
        f"/v1/endpoints/{endpoint['id']}/commits",
        headers=admin,
        params={"before": page["next_cursor"]},
        expect=200,
    )
    await call(
        "GET",
        f"/v1/endpoints/{endpoint['id']}/commits",
        headers=admin,
        params={"before": "x"},
        expect=422,
    )
    await call("GET", f"/v1/views/{view['id']}/metrics", headers=metrics, expect=200)
    dlq = await call("GET", f"/v1/views/{view['id']}/dlq-files", headers=admin, expect=200)
    assert dlq["total"] == 1, dlq
    link = dlq["files"][0]["download_url"].removeprefix(api.ctx.settings.public_url)
    assert await call("GET", link, expect=200) == b"PAR1"
    await call("GET", "/v1/downloads/not-a-token", expect=404)

    # Tear-down paths
    await call(
        "DELETE", f"/v1/endpoints/{endpoint['id']}/views/{binding['id']}", headers=admin, expect=204
    )
    await call("POST", f"/v1/views/{view['id']}/archive", headers=admin, expect=200)
    await call("DELETE", f"/v1/endpoints/{endpoint['id']}", headers=admin, expect=204)

    required = {
        ("exchangeToken", 200),
        ("exchangeToken", 401),
        ("exchangeToken", 422),
        ("createEndpoint", 201),
        ("listEndpoints", 200),
        ("getEndpoint", 200),
        ("createDestination", 201),
        ("listDestinations", 200),
        ("getDestination", 200),
        ("createView", 201),
        ("listViews", 200),
        ("getView", 200),
        ("attachView", 201),
        ("listBindings", 200),
        ("listCommits", 200),
        ("getViewMetrics", 200),
        ("listDlqFiles", 200),
        ("download", 200),
        ("getEndpoint", 404),
        ("createDestination", 409),
        ("validateDestination", 429),
        ("listEndpoints", 401),
        ("createEndpoint", 403),
    }
    assert required <= call.seen, required - call.seen


# ------------------------------------------------- (d) schemathesis, live
# A control plane on SQLite served by aiohttp in this test's event loop; schemathesis
# (synchronous, `requests`) runs in a worker thread against it. Every operation is fuzzed
# with positive and negative data (fixed seed, bounded examples); operations with path
# ids run a second time with the ids of real objects so cases get past the 404. Auth is
# fixed per operation: a Bearer admin token, or the node key in X-API-Key.
# EDGEMQ_FUZZ_SEED / EDGEMQ_FUZZ_SCALE explore other seeds and longer runs locally;
# by default the run is fixed and bounded to stay well under two minutes.
SEED = int(os.environ.get("EDGEMQ_FUZZ_SEED", "20260115"))
_SCALE = float(os.environ.get("EDGEMQ_FUZZ_SCALE", "1"))
MAX_EXAMPLES = {"positive": round(30 * _SCALE), "negative": round(20 * _SCALE)}
# nodeConfig long-polls up to `wait_s`, whose documented maximum is long_poll_max_s: a
# one-second limit keeps every poll (and the run) short while the route is still fuzzed.
FUZZ_SETTINGS = ControlSettings(long_poll_max_s=1.0)
# Not fuzzed:
# - download: the token is an HMAC-signed, expiring link; a generated one can never be
#   valid, so every case is the same 404 (a real link is checked in the test above).
EXCLUDED = {"download"}
# Negative data rejection holds without false positives because the request schemas
# mirror the services' checks (also for their quirks: false-y `filters`, `node_id`).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@dataclass
class Live:
    base_url: str
    admin_headers: dict[str, str]
    node_headers: dict[str, str]
    real_ids: dict[str, dict[str, str]]


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    async with open_context(f"sqlite:///{tmp_path}/control.db", FUZZ_SETTINGS) as ctx:
        server = TestServer(create_app(ctx))
        client = TestClient(server)
        await client.start_server()
        base = str(server.make_url("")).rstrip("/")
        ctx.settings = replace(ctx.settings, public_url=base)
        try:
            account = await keys.create_account(ctx, "fuzz")
            admin_key = await keys.insert_key(
                ctx,
                account_id=account["id"],
                name="admin",
                owner="admin@example.com",
                scopes=["admin", "metrics", "ingest"],
            )
            node_key = await keys.create_node_key(ctx, "fuzz-node")
            resp = await client.post(
                "/v1/token/exchange",
                json={"api_key": admin_key["api_key"], "scope": "admin", "ttl": "1h"},
            )
            admin = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
            node = {"X-API-Key": node_key["api_key"]}
            real_ids = await _seed(client, admin, node, tmp_path)
            yield Live(base, admin, node, real_ids)
        finally:
            await client.close()


async def _seed(
    client: TestClient[Any, Any], admin: dict[str, str], node: dict[str, str], root: Path
) -> dict[str, dict[str, str]]:
    """Real objects, so fuzzing also reaches past the 404 of unknown ids."""

    async def post(path: str, body: Any, headers: dict[str, str] = admin) -> Any:
        resp = await client.post(path, json=body, headers=headers)
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()

    dest = await post(
        "/v1/destinations",
        {
            "name": "seed",
            "bucket": "seed",
            "region": "us-east-1",
            "role_arn": "arn:aws:iam::123456789012:role/Seed",
            "endpoint_url": f"file://{root}",
        },
    )
    endpoint = await post("/v1/endpoints", {"region": "iad", "destination_id": dest["id"]})
    view = await post("/v1/views", {"name": "seed", "definition": MINIMAL_VIEW})
    draft = await post("/v1/views", {"name": "seed_draft", "definition": MINIMAL_VIEW})
    await post(f"/v1/views/{view['id']}/publish", None)
    binding = await post(f"/v1/endpoints/{endpoint['id']}/views", {"view_id": view["id"]})
    reg = await post("/v1/nodes/register", {"node_id": "fuzz-node", "region": "iad"}, node)
    return {
        # Operations fuzzed a second time with these path parameters.
        "getEndpoint": {"id": endpoint["id"]},
        "updateEndpoint": {"id": endpoint["id"]},
        "listCommits": {"id": endpoint["id"]},
        "getDestination": {"id": dest["id"]},
        "updateDestination": {"id": dest["id"]},
        "getView": {"id": view["id"]},
        "updateView": {"id": draft["id"]},
        "createViewVersion": {"id": view["id"]},
        "listDlqFiles": {"id": view["id"]},
        "getViewMetrics": {"id": view["id"]},
        "attachView": {"endpoint_id": endpoint["id"]},
        "listBindings": {"endpoint_id": endpoint["id"]},
        "detachView": {"endpoint_id": endpoint["id"], "binding_id": binding["id"]},
        "nodeHeartbeat": {"node_id": reg["node_id"]},
        "nodeConfig": {"node_id": reg["node_id"]},
        "reportCommits": {"node_id": reg["node_id"]},
    }


@dataclass
class Fuzzer:
    live: Live
    session: requests.Session
    failures: list[str] = field(default_factory=list)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def run(
        self,
        op_id: str,
        strategy: SearchStrategy[schemathesis.Case[Any]],
        mode: schemathesis.GenerationMode,
        label: str,
    ) -> None:
        def send(case: schemathesis.Case[Any]) -> None:
            response = case.call_and_validate(
                base_url=self.live.base_url, session=self.session, checks=CHECKS, timeout=30
            )
            self.statuses[op_id][response.status_code] += 1

        test = hypothesis.seed(SEED)(
            hypothesis.settings(
                max_examples=MAX_EXAMPLES[mode.value],
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                print_blob=False,
            )(hypothesis.given(case=strategy)(send))
        )
        started = time.monotonic()
        try:
            test()
        except hypothesis.errors.Unsatisfiable:
            # Negative mode with nothing to make invalid (no body, no free parameters).
            assert mode.is_negative, label
        except (Exception, BaseExceptionGroup) as err:  # every operation runs; report all
            self.failures.append(f"{label}: {err}")
        finally:
            self.seconds[op_id] += time.monotonic() - started


def _fuzz(live: Live) -> Fuzzer:
    schema = schemathesis.openapi.from_dict(document(FUZZ_SETTINGS))
    auth = {route.operation_id: route.auth for route in ROUTES}
    headers = {"token": live.admin_headers, "node": live.node_headers, "public": {}}
    with requests.Session() as session:
        fuzzer = Fuzzer(live, session)
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]
            op_id = schema.get_operation_id(operation)
            assert op_id is not None
            if op_id in EXCLUDED:
                continue
            variants: list[dict[str, str] | None] = [None]
            if op_id in live.real_ids:
                variants.append(live.real_ids[op_id])
            for path_parameters in variants:
                for mode in schemathesis.GenerationMode:
                    strategy = operation.as_strategy(
                        generation_mode=mode,
                        headers=dict(headers[auth[op_id]]),
                        path_parameters=path_parameters,
                    )
                    label = f"{operation.label} [{mode.value}]"
                    if path_parameters:
                        label += " (real ids)"
                    fuzzer.run(op_id, strategy, mode, label)
    return fuzzer


async def test_schemathesis_finds_nothing(live: Live) -> None:
    started = time.monotonic()
    fuzzer = await asyncio.to_thread(_fuzz, live)
    elapsed = time.monotonic() - started
    failures, statuses = fuzzer.failures, fuzzer.statuses
    print(f"schemathesis: {elapsed:.1f} s")
    for op_id, counter in sorted(statuses.items()):
        print(f"  {op_id}: {fuzzer.seconds[op_id]:.1f} s {dict(sorted(counter.items()))}")
    calls = sum(sum(c.values()) for c in statuses.values())
    assert not failures, f"{len(failures)} failing operations:\n\n" + "\n\n".join(failures)
    assert calls > 1000 * min(_SCALE, 1), calls
    # The cases reach the services (auth works, generated bodies can be valid).
    for op_id in ("createApiKey", "createEndpoint", "createDestination", "registerNode"):
        assert statuses[op_id][201 if op_id.startswith("create") else 200] > 0, op_id
    for op_id in ("listViews", "nodeConfig", "nodeHeartbeat", "updateDestination"):
        assert statuses[op_id][200] > 0, op_id
