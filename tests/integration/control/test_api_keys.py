"""API keys over the API: created by admins and shown once, listed without secrets,
revoked (after which token exchange refuses them)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

import jwt

from tests.integration.control.conftest import Api

KEY_FORMAT = re.compile(r"^emq_live_[0-9A-Za-z]{32}$")
KEY_FIELDS = {"id", "name", "owner", "scopes", "prefix", "created_at", "revoked_at"}


async def _create_key(api: Api, **fields: Any) -> Any:
    body = {"name": "ci", "scopes": ["ingest"], **fields}
    status, created = await api.call("POST", "/v1/api-keys", json=body)
    assert status == 201, created
    return created


async def _exchange(api: Api, key: str, scope: str) -> tuple[int, Any]:
    resp = await api.client.post("/v1/token/exchange", json={"api_key": key, "scope": scope})
    return resp.status, await resp.json()


async def test_an_admin_creates_a_key_that_is_returned_once_in_full(api: Api) -> None:
    status, created = await api.call(
        "POST",
        "/v1/api-keys",
        json={"name": "ci", "owner": "ci@acme.example", "scopes": ["ingest", "metrics"]},
    )

    assert status == 201
    assert set(created) == KEY_FIELDS | {"api_key"}
    assert KEY_FORMAT.match(created["api_key"])
    assert str(uuid.UUID(created["id"])) == created["id"]
    assert (created["name"], created["owner"]) == ("ci", "ci@acme.example")
    assert created["scopes"] == ["ingest", "metrics"]
    assert created["revoked_at"] is None
    assert created["api_key"].startswith(created["prefix"])
    assert len(created["prefix"]) < len(created["api_key"])

    # The key works for exactly its scopes, on the creator's account.
    status, token = await _exchange(api, created["api_key"], "metrics")
    assert status == 200
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["sub"] == api.account_id
    assert (await _exchange(api, created["api_key"], "ingest"))[0] == 200
    assert (await _exchange(api, created["api_key"], "admin"))[0] == 403

    second = await _create_key(api)
    assert second["api_key"] != created["api_key"]
    assert KEY_FORMAT.match(second["api_key"])


async def test_the_key_list_shows_metadata_but_never_a_secret_or_its_digest(api: Api) -> None:
    created = await _create_key(api, name="reader", scopes=["metrics"])

    resp = await api.client.get("/v1/api-keys", headers=await api.headers())
    assert resp.status == 200
    text = await resp.text()
    listing = json.loads(text)
    assert (listing["total"], listing["limit"], listing["offset"]) == (2, 50, 0)
    assert listing["next_offset"] is None
    by_id = {k["id"]: k for k in listing["items"]}
    assert set(by_id[created["id"]]) == KEY_FIELDS
    assert by_id[created["id"]] == {k: v for k, v in created.items() if k != "api_key"}
    assert {k["name"] for k in listing["items"]} == {"admin-key", "reader"}
    for secret in (created["api_key"], api.admin_key):
        assert secret not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text

    status, page = await api.call("GET", "/v1/api-keys", params={"limit": 1})
    assert (status, len(page["items"]), page["next_offset"]) == (200, 1, 1)
    status, page = await api.call("GET", "/v1/api-keys", params={"limit": 1, "offset": 1})
    assert (status, len(page["items"]), page["next_offset"]) == (200, 1, None)
    status, body = await api.call("GET", "/v1/api-keys", params={"limit": 500})
    assert status == 422
    assert [p["path"] for p in body["error"]["problems"]] == ["query.limit"]


async def test_a_revoked_key_can_no_longer_be_exchanged_and_shows_revoked_at(api: Api) -> None:
    created = await _create_key(api, scopes=["admin"])
    assert (await _exchange(api, created["api_key"], "admin"))[0] == 200
    epoch = await api.ctx.config_epoch()

    resp = await api.client.delete(f"/v1/api-keys/{created['id']}", headers=await api.headers())
    assert resp.status == 204
    assert await resp.read() == b""
    status, body = await _exchange(api, created["api_key"], "admin")
    assert status == 401
    assert body["error"]["status"] == 401
    assert await api.ctx.config_epoch() > epoch  # nodes drop the key's digest

    status, listing = await api.call("GET", "/v1/api-keys")
    revoked = next(k for k in listing["items"] if k["id"] == created["id"])
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", revoked["revoked_at"])
    admin = next(k for k in listing["items"] if k["name"] == "admin-key")
    assert admin["revoked_at"] is None
    assert (await _exchange(api, api.admin_key, "admin"))[0] == 200
    for missing in (str(uuid.uuid4()), "emq_live_x", "1"):
        status, body = await api.call("DELETE", f"/v1/api-keys/{missing}")
        assert (status, body["error"]["code"]) == (404, "not_found"), missing


async def test_scopes_must_be_a_non_empty_subset_of_ingest_metrics_and_admin(api: Api) -> None:
    for scopes in (
        [],
        ["node"],
        ["root"],
        ["admin", "node"],
        "admin",
        ["admin", "admin"],
        None,
        [1],
    ):
        status, body = await api.call(
            "POST", "/v1/api-keys", json={"name": "bad", "scopes": scopes}
        )
        assert status == 422, scopes
        assert [p["path"] for p in body["error"]["problems"]] == ["body.scopes"], scopes
    for scopes in (["ingest"], ["metrics"], ["admin"], ["ingest", "metrics", "admin"]):
        assert (await _create_key(api, scopes=scopes))["scopes"] == scopes


async def test_a_key_needs_a_name_and_a_valid_owner_and_nothing_else(api: Api) -> None:
    for body, path in (
        ({"scopes": ["admin"]}, "body.name"),
        ({"name": "", "scopes": ["admin"]}, "body.name"),
        ({"name": "  ", "scopes": ["admin"]}, "body.name"),
        ({"name": 5, "scopes": ["admin"]}, "body.name"),
        ({"name": "k\x00", "scopes": ["admin"]}, "body.name"),  # NUL was a 500 on PostgreSQL
        ({"name": "k", "owner": "a\x00@b.example", "scopes": ["admin"]}, "body.owner"),
        ({"name": "k", "owner": "not-an-email", "scopes": ["admin"]}, "body.owner"),
        ({"name": "k", "scopes": ["admin"], "expires": "never"}, "body.expires"),
        (["k"], "body"),
    ):
        status, answer = await api.call("POST", "/v1/api-keys", json=body)
        assert status == 422, body
        assert [p["path"] for p in answer["error"]["problems"]] == [path], body
    status, listing = await api.call("GET", "/v1/api-keys")
    assert listing["total"] == 1  # only the fixture's key: nothing was created


async def test_only_an_admin_token_may_create_list_or_revoke_keys(api: Api) -> None:
    created = await _create_key(api, scopes=["ingest"])
    for scope in ("metrics", "ingest"):
        for method, path, body in (
            ("POST", "/v1/api-keys", {"name": "sneaky", "scopes": ["admin"]}),
            ("GET", "/v1/api-keys", None),
            ("DELETE", f"/v1/api-keys/{created['id']}", None),
        ):
            status, answer = await api.call(method, path, scope=scope, json=body)
            assert status == 403, (scope, method)
            assert answer["error"]["code"] == "forbidden"
    status, listing = await api.call("GET", "/v1/api-keys")
    assert listing["total"] == 2
    assert all(k["revoked_at"] is None for k in listing["items"])
