"""One JSON error body for every error, and tenant isolation: another account's id
answers 404 on every id-taking route of the route table (DESIGN.md §2)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from control.http.routes import ROUTES, Route
from tests.integration.control.conftest import Api

RANDOM_ID = "00000000-0000-4000-8000-000000000000"
DEFINITION = {"columns": [{"name": "user_id", "type": "VARCHAR", "path": "$.userId"}]}
CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_failed",
    429: "throttled",
}


def _assert_error_body(status: int, body: Any, expected: int) -> None:
    assert status == expected, body
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == (
        {"status", "code", "message", "problems"}
        if expected == 422
        else {
            "status",
            "code",
            "message",
        }
    ), error
    assert error["status"] == expected
    assert error["code"] == CODES[expected]
    assert isinstance(error["message"], str)
    assert error["message"].strip()
    if expected == 422:
        assert isinstance(error["problems"], list)
        assert error["problems"]
        for item in error["problems"]:
            assert set(item) == {"path", "message"}, item
            assert isinstance(item["path"], str)
            assert item["path"]
            assert isinstance(item["message"], str)
            assert item["message"]


async def _raw(
    api: Api,
    method: str,
    path: str,
    *,
    scope: str | None = "admin",
    data: bytes | None = None,
    json: Any = None,
    key: str | None = None,
) -> tuple[int, Any, Any]:
    headers = {} if scope is None else await api.headers(scope, key)
    if data is not None:
        headers["Content-Type"] = "application/json"
    resp = await api.client.request(method, path, headers=headers, data=data, json=json)
    assert resp.content_type == "application/json", (method, path, resp.status)
    return resp.status, await resp.json(), resp.headers


async def _create(api: Api, path: str, body: Any, key: str | None = None) -> Any:
    status, created = await api.call("POST", path, json=body, key=key)
    assert status == 201, (path, created)
    return created


async def _published_view(api: Api, name: str, key: str | None = None) -> Any:
    view = await _create(api, "/v1/views", {"name": name, "definition": DEFINITION}, key)
    status, published = await api.call("POST", f"/v1/views/{view['id']}/publish", key=key)
    assert status == 200, published
    return published


# -------------------------------------------------------------- error bodies
async def test_every_error_status_answers_the_one_json_error_body(api: Api, tmp_path: Path) -> None:
    destination = await _create(
        api,
        "/v1/destinations",
        {
            "name": "local",
            "bucket": "lake",
            "region": "local",
            "role_arn": "arn:none",
            "endpoint_url": f"file://{tmp_path}",
        },
    )
    assert (await api.call("POST", f"/v1/destinations/{destination['id']}/validate"))[0] == 200
    dup = {"name": "local", "bucket": "b", "region": "r", "role_arn": "a"}
    cases: list[tuple[int, str, str, str | None, Any]] = [
        (401, "GET", "/v1/endpoints", None, None),
        (401, "DELETE", f"/v1/destinations/{destination['id']}", None, None),
        (
            401,
            "POST",
            "/v1/token/exchange",
            None,
            {"api_key": "emq_live_" + "0" * 32, "scope": "admin"},
        ),
        (403, "GET", "/v1/api-keys", "metrics", None),
        (403, "POST", "/v1/endpoints", "ingest", {"region": "iad"}),
        (
            403,
            "POST",
            "/v1/token/exchange",
            None,
            {"api_key": await api.key_with("ingest"), "scope": "admin"},
        ),
        (404, "GET", f"/v1/endpoints/{RANDOM_ID}", "admin", None),
        (404, "PATCH", f"/v1/destinations/{RANDOM_ID}", "admin", {"name": "x"}),
        (404, "DELETE", f"/v1/api-keys/{RANDOM_ID}", "admin", None),
        (404, "GET", f"/v1/views/{RANDOM_ID}", "metrics", None),
        (404, "GET", "/v1/nowhere", "admin", None),
        (404, "GET", "/v2/endpoints", None, None),
        (404, "GET", "/", None, None),
        (404, "POST", "/v1/endpoints/x/y/z", "admin", {}),
        (405, "PUT", "/v1/endpoints", "admin", {}),
        (405, "DELETE", "/v1/destinations", "admin", None),
        (405, "POST", "/.well-known/jwks.json", None, None),
        (405, "GET", "/v1/token/exchange", None, None),
        (409, "POST", "/v1/destinations", "admin", dup),
        (422, "POST", "/v1/endpoints", "admin", {"region": "nowhere"}),
        (422, "GET", "/v1/destinations", "admin", None),  # with a bad limit, below
        (422, "POST", "/v1/token/exchange", None, {"scope": "admin"}),
        (422, "POST", "/v1/api-keys", "admin", {"name": "k", "scopes": []}),
        (429, "POST", f"/v1/destinations/{destination['id']}/validate", "admin", None),
    ]
    for expected, method, path, scope, body in cases:
        url = path + ("?limit=0" if (expected, path) == (422, "/v1/destinations") else "")
        status, answer, headers = await _raw(api, method, url, scope=scope, json=body)
        _assert_error_body(status, answer, expected)
        if expected == 429:
            assert 1 <= int(headers["Retry-After"]) <= 30
    # A 422's message names its first problem.
    status, body, _ = await _raw(api, "POST", "/v1/endpoints", json={"region": "IAD"})
    _assert_error_body(status, body, 422)
    assert body["error"]["problems"][0]["path"] == "body.region"
    assert "body.region" in body["error"]["message"]


async def test_a_body_over_the_size_limit_answers_413_in_the_error_body(api: Api) -> None:
    from control.http.app import BODY_BYTES_MAX

    payload = io.BytesIO(b'{"region": "' + b"x" * BODY_BYTES_MAX + b'"}')
    resp = await api.client.post(
        "/v1/endpoints",
        data=payload,
        headers={**await api.headers(), "Content-Type": "application/json"},
    )
    _assert_error_body(resp.status, await resp.json(), 413)


async def test_malformed_json_bodies_answer_422_naming_body_on_every_writing_route(
    api: Api,
) -> None:
    endpoint = await _create(api, "/v1/endpoints", {"region": "iad"})
    destination = await _create(
        api, "/v1/destinations", {"name": "d", "bucket": "b", "region": "r", "role_arn": "a"}
    )
    routes = [
        ("POST", "/v1/token/exchange", None),
        ("POST", "/v1/endpoints", "admin"),
        ("PATCH", f"/v1/endpoints/{endpoint['id']}", "admin"),
        ("POST", "/v1/destinations", "admin"),
        ("PATCH", f"/v1/destinations/{destination['id']}", "admin"),
        ("POST", "/v1/api-keys", "admin"),
    ]
    bad_bodies = [b'{"region": ', b"not json", b"\xff\xfe{}", b"[]", b'"iad"', b"null", b"42"]
    for method, path, scope in routes:
        for data in bad_bodies:
            status, body, _ = await _raw(api, method, path, scope=scope, data=data)
            _assert_error_body(status, body, 422)
            assert [p["path"] for p in body["error"]["problems"]] == ["body"], (path, data)
    # Nothing was changed by any of them.
    status, got = await api.call("GET", f"/v1/endpoints/{endpoint['id']}")
    assert (status, got) == (200, endpoint)
    status, listing = await api.call("GET", "/v1/destinations")
    assert [d["name"] for d in listing["items"]] == ["d"]


async def test_integer_query_parameters_with_stray_signs_answer_422_not_500(api: Api) -> None:
    """Regression: '--5' once passed the digit check and int() raised (a 500)."""
    for query in ("limit=--5", "offset=--1", "limit=-", "limit=+5", "offset=5-"):
        status, body, _ = await _raw(api, "GET", f"/v1/destinations?{query}")
        _assert_error_body(status, body, 422)
        assert [p["path"] for p in body["error"]["problems"]] == [f"query.{query.split('=')[0]}"], (
            query
        )


async def test_a_405_names_the_allowed_methods_in_allow(api: Api) -> None:
    """RFC 9110 §15.5.6: a 405 must carry Allow (the JSON rewrite once dropped it)."""
    resp = await api.client.put("/v1/endpoints", headers=await api.headers())
    _assert_error_body(resp.status, await resp.json(), 405)
    assert set(resp.headers.get("Allow", "").replace(" ", "").split(",")) >= {"GET", "POST"}
    resp = await api.client.post("/.well-known/jwks.json")
    assert resp.status == 405
    assert "GET" in resp.headers.get("Allow", "")


# ------------------------------------------------------------------ isolation
ID_ROUTES = [r for r in ROUTES if "{" in r.path and r.auth == "token"]
PARAM = re.compile(r"\{(\w+)\}")
KIND_BY_COLLECTION = {
    "endpoints": "endpoint",
    "destinations": "destination",
    "views": "view",
    "api-keys": "api_key",
}
# A plausible, valid request body per writing route, so that a route which forgot the
# account check would act (and answer 2xx) instead of failing validation first.
BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/v1/endpoints/{id}"): {"segment_max_age_seconds": 5},
    ("PATCH", "/v1/destinations/{id}"): {"name": "hijacked"},
    ("PATCH", "/v1/views/{id}"): {"description": "hijacked"},
    ("POST", "/v1/views/{id}/versions"): {"description": "hijacked"},
    ("POST", "/v1/endpoints/{endpoint_id}/views"): "MY_VIEW",
}


def _fill(route: Route, ids: dict[str, str]) -> str:
    """The route's path with the victim's ids; fails loudly for a parameter it cannot fill."""
    collection = route.path.split("/")[2]

    def victim_id(match: re.Match[str]) -> str:
        name = match.group(1)
        kind = KIND_BY_COLLECTION.get(collection) if name == "id" else name.removesuffix("_id")
        if kind not in ids:
            pytest.fail(
                f"no other-account id for {{{name}}} in {route.method} {route.path}: "
                "teach this isolation test about the new route"
            )
        return ids[kind]

    return PARAM.sub(victim_id, route.path)


async def _victim(api: Api) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Another account with one of everything; returns its key, ids and views of them."""
    key = await api.new_account("globex")
    destination = await _create(
        api,
        "/v1/destinations",
        {"name": "globex-lake", "bucket": "globex-bucket", "region": "r", "role_arn": "a"},
        key,
    )
    endpoint = await _create(
        api, "/v1/endpoints", {"region": "iad", "destination_id": destination["id"]}, key
    )
    view = await _published_view(api, "globex_events", key)
    binding = await _create(
        api, f"/v1/endpoints/{endpoint['id']}/views", {"view_id": view["id"]}, key
    )
    api_key = await _create(api, "/v1/api-keys", {"name": "globex-ci", "scopes": ["ingest"]}, key)
    ids = {
        "endpoint": endpoint["id"],
        "destination": destination["id"],
        "view": view["id"],
        "binding": binding["id"],
        "api_key": api_key["id"],
    }
    return key, ids, {"api_key": api_key["api_key"]}


async def _snapshot(api: Api, key: str, ids: dict[str, str]) -> dict[str, Any]:
    """What the victim sees of its own resources (must not change under attack)."""
    out: dict[str, Any] = {}
    for name, path in (
        ("endpoint", f"/v1/endpoints/{ids['endpoint']}"),
        ("destination", f"/v1/destinations/{ids['destination']}"),
        ("view", f"/v1/views/{ids['view']}"),
        ("bindings", f"/v1/endpoints/{ids['endpoint']}/views"),
        ("keys", "/v1/api-keys"),
        ("views", "/v1/views"),
    ):
        status, body = await api.call("GET", path, key=key)
        assert status == 200, (path, body)
        out[name] = body
    return out


def test_the_isolation_route_list_covers_every_resource_kind() -> None:
    paths = {r.path for r in ID_ROUTES}
    for expected in (
        "/v1/endpoints/{id}",
        "/v1/destinations/{id}",
        "/v1/destinations/{id}/validate",
        "/v1/views/{id}",
        "/v1/endpoints/{endpoint_id}/views",
        "/v1/endpoints/{endpoint_id}/views/{binding_id}",
        "/v1/endpoints/{id}/commits",
        "/v1/views/{id}/dlq-files",
        "/v1/views/{id}/metrics",
        "/v1/api-keys/{id}",
    ):
        assert expected in paths
    # Routes with path parameters left out are exactly the non-management ones.
    skipped = {(r.method, r.path, r.auth) for r in ROUTES if "{" in r.path} - {
        (r.method, r.path, r.auth) for r in ID_ROUTES
    }
    assert all(auth in ("node", "public") for _, _, auth in skipped)
    assert ("GET", "/v1/downloads/{token}", "public") in skipped


async def test_another_accounts_id_answers_404_on_every_id_route_and_changes_nothing(
    api: Api,
) -> None:
    victim_key, ids, secrets = await _victim(api)
    my_view = await _published_view(api, "acme_events")
    before = await _snapshot(api, victim_key, ids)
    leaks = [*ids.values(), "globex-lake", "globex-bucket", "globex_events", "globex-ci"]

    for route in ID_ROUTES:
        path = _fill(route, ids)
        body = BODIES.get((route.method, route.path))
        if body == "MY_VIEW":
            body = {"view_id": my_view["id"]}
        scopes = ["admin", "metrics"] if route.method == "GET" else ["admin"]
        for scope in scopes:
            resp = await api.client.request(
                route.method, path, json=body, headers=await api.headers(scope)
            )
            text = await resp.text()
            assert resp.status == 404, (scope, route.method, route.path, text)
            _assert_error_body(resp.status, await resp.json(), 404)
            for secret in leaks:
                if secret in path:
                    continue  # echoing what the caller sent reveals nothing
                assert secret not in text, (route.method, route.path, secret)

    assert await _snapshot(api, victim_key, ids) == before
    resp = await api.client.post(
        "/v1/token/exchange", json={"api_key": secrets["api_key"], "scope": "ingest"}
    )
    assert resp.status == 200  # the victim's key was not revoked


async def test_another_accounts_binding_under_my_own_endpoint_answers_404(api: Api) -> None:
    victim_key, ids, _ = await _victim(api)
    mine = await _create(api, "/v1/endpoints", {"region": "iad"})

    status, body, _ = await _raw(
        api, "DELETE", f"/v1/endpoints/{mine['id']}/views/{ids['binding']}"
    )
    _assert_error_body(status, body, 404)
    status, bindings = await api.call(
        "GET", f"/v1/endpoints/{ids['endpoint']}/views", key=victim_key
    )
    assert [(b["id"], b["status"]) for b in bindings["items"]] == [(ids["binding"], "active")]


async def test_another_accounts_ids_in_request_bodies_cannot_be_used(api: Api) -> None:
    victim_key, ids, _ = await _victim(api)
    mine = await _create(api, "/v1/endpoints", {"region": "iad"})

    status, body, _ = await _raw(
        api, "POST", f"/v1/endpoints/{mine['id']}/views", json={"view_id": ids["view"]}
    )
    assert status in (404, 422), body
    status, body, _ = await _raw(
        api, "PATCH", f"/v1/endpoints/{mine['id']}", json={"destination_id": ids["destination"]}
    )
    _assert_error_body(status, body, 422)
    status, theirs = await api.call("GET", f"/v1/destinations/{ids['destination']}", key=victim_key)
    assert theirs["ref_count"] == 1
    status, mine_now = await api.call("GET", f"/v1/endpoints/{mine['id']}/views")
    assert mine_now["items"] == []


async def test_lists_show_only_the_callers_own_resources(api: Api) -> None:
    victim_key, ids, _ = await _victim(api)
    own = await _create(api, "/v1/endpoints", {"region": "iad"})

    for path, expected_total in (
        ("/v1/endpoints", 1),
        ("/v1/destinations", 0),
        ("/v1/views", 0),
        ("/v1/api-keys", 1),
    ):
        status, listing = await api.call("GET", path)
        assert (status, listing["total"]) == (200, expected_total), path
        assert not {i["id"] for i in listing["items"]} & set(ids.values()), path
    status, listing = await api.call("GET", "/v1/endpoints")
    assert [i["id"] for i in listing["items"]] == [own["id"]]
    status, theirs = await api.call("GET", "/v1/endpoints", key=victim_key)
    assert [i["id"] for i in theirs["items"]] == [ids["endpoint"]]


async def test_nul_characters_in_queries_and_bodies_answer_422_on_every_store(api: Api) -> None:
    status, body = await api.call("GET", "/v1/views", params={"name": "a\x00b"})
    assert status == 422
    assert body["error"]["problems"][0]["path"] == "query.name"
    status, body = await api.call(
        "POST", "/v1/views", json={"name": "v", "definition": {"columns": []}, "tags": ["x\x00"]}
    )
    assert status == 422
    assert body["error"]["problems"] == [
        {"path": "body.tags[0]", "message": "must not contain NUL characters"}
    ]
