"""Token exchange, the JWT it mints, the JWKS, and who may call what (DESIGN.md §2).

The attack matrix forges tokens by hand: every forgery is built by the same helper that
builds a *valid* token (`_mint` with the server's own key), and a control test shows that
valid one is accepted, so each 401 below is caused by the one thing the forgery changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from control.http.routes import ROUTES
from control.services import keys
from tests.integration.control.conftest import Api

MANAGEMENT_ROUTE = "/v1/endpoints"
RANDOM_ID = "00000000-0000-4000-8000-000000000000"


# ------------------------------------------------------------------ helpers
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _claims(api: Api, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "edgemq",
        "sub": api.account_id,
        "scopes": ["admin"],
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def _server_key(api: Api) -> tuple[str, rsa.RSAPrivateKey]:
    """The control plane's current signing key, read from the store."""
    kid = api.ctx.signer.kid
    row = await api.ctx.db.fetchone("SELECT private_pem FROM signing_keys WHERE kid = ?", (kid,))
    assert row is not None
    key = serialization.load_pem_private_key(row["private_pem"].encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return kid, key


async def _mint(
    api: Api,
    *,
    key: rsa.RSAPrivateKey | None = None,
    kid: str | None = None,
    **claims: Any,
) -> str:
    server_kid, server_key = await _server_key(api)
    return jwt.encode(
        _claims(api, **claims),
        key or server_key,
        algorithm="RS256",
        headers={"kid": kid or server_kid},
    )


async def _jwks(api: Api) -> dict[str, Any]:
    resp = await api.client.get("/.well-known/jwks.json")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def _get_with(api: Api, authorization: str | None, path: str = MANAGEMENT_ROUTE) -> Any:
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await api.client.get(path, headers=headers)
    return resp.status, await resp.json()


async def _exchange(api: Api, body: Any) -> tuple[int, Any]:
    resp = await api.client.post("/v1/token/exchange", json=body)
    return resp.status, await resp.json()


def _assert_error(body: Any, status: int) -> None:
    assert set(body) == {"error"}
    assert body["error"]["status"] == status
    assert isinstance(body["error"]["code"], str)
    assert body["error"]["code"]
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


def _problem_paths(body: Any) -> set[str]:
    return {p["path"] for p in body["error"]["problems"]}


def _concrete(path: str) -> str:
    """A route path with every `{param}` replaced by a well-formed, unknown UUID."""
    parts = [RANDOM_ID if p.startswith("{") else p for p in path.split("/")]
    return "/".join(parts)


MANAGEMENT_ROUTES = [r for r in ROUTES if r.auth == "token"]
READS = {(r.method, r.path) for r in MANAGEMENT_ROUTES if r.method == "GET"}
# Preview saves nothing; DESIGN.md §2 lets metrics tokens use it like a read.
METRICS_ALLOWED = READS | {("POST", "/v1/views/preview")}
WRITE_ROUTES = [r for r in MANAGEMENT_ROUTES if (r.method, r.path) not in METRICS_ALLOWED]


# ------------------------------------------------------------ token exchange
async def test_exchange_returns_a_bearer_token_that_lives_15_minutes_by_default(api: Api) -> None:
    status, body = await _exchange(api, {"api_key": api.admin_key, "scope": "admin"})

    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 60


async def test_ttl_duration_strings_set_expires_in_and_the_token_lifetime(api: Api) -> None:
    for ttl, seconds in (("30s", 30), ("15m", 900), ("1h", 3600), ("24h", 86400)):
        status, body = await _exchange(
            api, {"api_key": api.admin_key, "scope": "metrics", "ttl": ttl}
        )
        assert status == 200, (ttl, body)
        assert body["expires_in"] == seconds, ttl
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == seconds, ttl


BAD_TTLS: list[object] = [
    "25h",
    "86401s",
    "1441m",
    "0s",
    "15",
    "m",
    "1d",
    "fifteen",
    "",
    "-5m",
    "1.5h",
    900,
    True,
]


async def test_a_malformed_zero_or_longer_than_24h_ttl_is_rejected_with_422(api: Api) -> None:
    for ttl in BAD_TTLS:
        status, body = await _exchange(
            api, {"api_key": api.admin_key, "scope": "admin", "ttl": ttl}
        )
        assert status == 422, (ttl, body)
        _assert_error(body, 422)
        assert _problem_paths(body) == {"body.ttl"}, ttl


async def test_an_unknown_malformed_or_node_api_key_answers_401(api: Api) -> None:
    unknown = "emq_live_" + "A" * 32
    for candidate in (unknown, "emq_live_short", "not-a-key", api.admin_key + "x"):
        status, body = await _exchange(api, {"api_key": candidate, "scope": "admin"})
        assert status == 401, candidate
        _assert_error(body, 401)
    # Node keys serve the node protocol only: no account, no management token.
    node_key = (await keys.create_node_key(api.ctx, "node-1"))["api_key"]
    status, body = await _exchange(api, {"api_key": node_key, "scope": "admin"})
    assert status == 401
    status, body = await _exchange(api, {"api_key": node_key, "scope": "node"})
    assert status == 422
    assert _problem_paths(body) == {"body.scope"}


async def test_a_revoked_api_key_answers_401(api: Api) -> None:
    created = await keys.insert_key(
        api.ctx, account_id=api.account_id, name="soon-revoked", owner=None, scopes=["admin"]
    )
    assert (await _exchange(api, {"api_key": created["api_key"], "scope": "admin"}))[0] == 200

    status, _ = await api.call("DELETE", f"/v1/api-keys/{created['id']}")
    assert status == 204
    status, body = await _exchange(api, {"api_key": created["api_key"], "scope": "admin"})
    assert status == 401
    _assert_error(body, 401)


async def test_a_scope_the_key_does_not_carry_answers_403(api: Api) -> None:
    metrics_only = await api.key_with("metrics")

    for scope in ("admin", "ingest"):
        status, body = await _exchange(api, {"api_key": metrics_only, "scope": scope})
        assert status == 403, scope
        _assert_error(body, 403)
    status, _ = await _exchange(api, {"api_key": metrics_only, "scope": "metrics"})
    assert status == 200


async def test_missing_and_invalid_exchange_fields_answer_422_naming_each_field(
    api: Api,
) -> None:
    status, body = await _exchange(api, {})
    assert status == 422
    _assert_error(body, 422)
    assert _problem_paths(body) == {"body.api_key", "body.scope"}

    status, body = await _exchange(api, {"api_key": api.admin_key})
    assert (status, _problem_paths(body)) == (422, {"body.scope"})
    status, body = await _exchange(api, {"scope": "admin"})
    assert (status, _problem_paths(body)) == (422, {"body.api_key"})
    status, body = await _exchange(api, {"api_key": api.admin_key, "scope": "root"})
    assert (status, _problem_paths(body)) == (422, {"body.scope"})
    status, body = await _exchange(api, {"api_key": 42, "scope": "admin"})
    assert (status, _problem_paths(body)) == (422, {"body.api_key"})
    status, body = await _exchange(
        api, {"api_key": api.admin_key, "scope": "admin", "audience": "x"}
    )
    assert (status, _problem_paths(body)) == (422, {"body.audience"})
    status, body = await _exchange(api, ["admin"])
    assert (status, _problem_paths(body)) == (422, {"body"})

    resp = await api.client.post("/v1/token/exchange")
    assert resp.status == 422
    assert _problem_paths(await resp.json()) == {"body"}


# ------------------------------------------------------------------ the JWT
async def test_the_token_claims_name_the_account_and_exactly_the_one_scope_asked_for(
    api: Api,
) -> None:
    jtis = set()
    for scope in ("ingest", "metrics", "admin", "admin"):
        status, body = await _exchange(api, {"api_key": api.admin_key, "scope": scope})
        assert status == 200
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["iss"] == "edgemq"
        assert claims["sub"] == api.account_id
        assert claims["scopes"] == [scope]
        assert isinstance(claims["iat"], int)
        assert isinstance(claims["exp"], int)
        assert isinstance(claims["jti"], str)
        jtis.add(claims["jti"])
    assert len(jtis) == 4  # every token gets its own jti


async def test_tokens_are_rs256_with_a_kid_the_public_jwks_publishes_and_verifies(
    api: Api,
) -> None:
    token = await api.token("metrics")

    jwks = await _jwks(api)  # no Authorization header: the JWKS is public
    assert jwks["keys"]
    for jwk in jwks["keys"]:
        assert jwk["kty"] == "RSA"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    signing = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(token, signing.key, algorithms=["RS256"], issuer="edgemq")
    assert claims["scopes"] == ["metrics"]
    assert claims["sub"] == api.account_id


# ------------------------------------------------------------- attack matrix
async def test_a_token_minted_with_the_server_key_and_proper_claims_is_accepted(
    api: Api,
) -> None:
    """Control for the forgeries below: the minting helper itself produces good tokens."""
    status, body = await _get_with(api, f"Bearer {await _mint(api)}")
    assert status == 200, body
    assert body["total"] == 0


async def test_a_missing_or_garbage_bearer_token_or_a_raw_api_key_answers_401(api: Api) -> None:
    for authorization in (
        None,
        "",
        "Bearer",
        "Bearer    ",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer eyJhbGciOiJSUzI1NiJ9..",
    ):
        status, body = await _get_with(api, authorization)
        assert status == 401, authorization
        _assert_error(body, 401)
    # An API key is not a token: management routes take only exchanged JWTs.
    assert (await _get_with(api, f"Bearer {api.admin_key}"))[0] == 401
    resp = await api.client.get(MANAGEMENT_ROUTE, headers={"X-API-Key": api.admin_key})
    assert resp.status == 401


async def test_an_unsigned_alg_none_token_answers_401(api: Api) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": api.ctx.signer.kid}
    for signature in ("", _b64(b"x")):
        token = f"{_segment(header)}.{_segment(_claims(api))}.{signature}"
        status, body = await _get_with(api, f"Bearer {token}")
        assert status == 401, signature
        _assert_error(body, 401)


async def test_an_hs256_token_keyed_with_the_rsa_public_key_pem_answers_401(api: Api) -> None:
    jwk = next(k for k in (await _jwks(api))["keys"] if k["kid"] == api.ctx.signer.kid)
    public = RSAAlgorithm.from_jwk(json.dumps(jwk))
    assert isinstance(public, rsa.RSAPublicKey)
    for encoding, fmt in (
        (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        (serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
    ):
        secret = public.public_bytes(encoding, fmt)
        header = {"alg": "HS256", "typ": "JWT", "kid": api.ctx.signer.kid}
        signing_input = f"{_segment(header)}.{_segment(_claims(api))}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        status, body = await _get_with(api, f"Bearer {signing_input}.{_b64(mac)}")
        assert status == 401
        _assert_error(body, 401)


async def test_a_token_whose_signature_does_not_match_its_content_answers_401(api: Api) -> None:
    """A metrics token rewritten to claim `admin` keeps its (now wrong) signature."""
    token = await api.token("metrics")
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["scopes"] = ["admin"]

    status, body = await _get_with(api, f"Bearer {header}.{_segment(claims)}.{signature}")
    assert status == 401
    _assert_error(body, 401)

    token = await _mint(api)
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0xFF
    status, body = await _get_with(api, f"Bearer {header}.{payload}.{_b64(bytes(raw))}")
    assert status == 401


async def test_an_expired_token_answers_401(api: Api) -> None:
    now = int(time.time())
    token = await _mint(api, iat=now - 3600, exp=now - 60)

    status, body = await _get_with(api, f"Bearer {token}")
    assert status == 401
    _assert_error(body, 401)


async def test_a_token_with_an_unknown_kid_answers_401(api: Api) -> None:
    for kid in ("not-a-published-kid", api.ctx.signer.kid + "0"):
        status, body = await _get_with(api, f"Bearer {await _mint(api, kid=kid)}")
        assert status == 401, kid
        _assert_error(body, 401)
    _, key = await _server_key(api)
    no_kid = jwt.encode(_claims(api), key, algorithm="RS256")
    assert (await _get_with(api, f"Bearer {no_kid}"))[0] == 401


async def test_a_token_signed_by_another_rsa_key_under_the_real_kid_answers_401(
    api: Api,
) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    status, body = await _get_with(api, f"Bearer {await _mint(api, key=stranger)}")
    assert status == 401
    _assert_error(body, 401)


async def test_a_server_signed_token_with_a_foreign_issuer_or_missing_claim_answers_401(
    api: Api,
) -> None:
    for overrides in (
        {"iss": "someone-else"},
        {"iss": None},
        {"exp": None},
        {"sub": None},
        {"jti": None},
        {"iat": None},
    ):
        status, body = await _get_with(api, f"Bearer {await _mint(api, **overrides)}")
        assert status == 401, overrides
        _assert_error(body, 401)


# ------------------------------------------------------------------- scopes
async def test_an_ingest_token_is_forbidden_on_every_management_route(api: Api) -> None:
    headers = await api.headers("ingest")
    assert MANAGEMENT_ROUTES
    for route in MANAGEMENT_ROUTES:
        resp = await api.client.request(
            route.method, _concrete(route.path), headers=headers, json={}
        )
        body = await resp.json()
        assert resp.status == 403, (route.method, route.path, body)
        _assert_error(body, 403)


async def test_a_metrics_token_is_forbidden_on_every_write_route(api: Api) -> None:
    headers = await api.headers("metrics")
    assert WRITE_ROUTES
    for route in WRITE_ROUTES:
        resp = await api.client.request(
            route.method, _concrete(route.path), headers=headers, json={}
        )
        body = await resp.json()
        assert resp.status == 403, (route.method, route.path, body)
        _assert_error(body, 403)


async def test_a_metrics_token_may_read_endpoints_destinations_and_other_reads(api: Api) -> None:
    status, destination = await api.call(
        "POST",
        "/v1/destinations",
        json={"name": "lake", "bucket": "b", "region": "us-east-1", "role_arn": "arn:r"},
    )
    assert status == 201
    status, endpoint = await api.call(
        "POST", "/v1/endpoints", json={"region": "iad", "destination_id": destination["id"]}
    )
    assert status == 201

    for path in (
        "/v1/endpoints",
        f"/v1/endpoints/{endpoint['id']}",
        "/v1/destinations",
        f"/v1/destinations/{destination['id']}",
    ):
        status, body = await api.call("GET", path, scope="metrics")
        assert status == 200, (path, body)
    status, body = await api.call("GET", "/v1/destinations", scope="metrics")
    assert [d["id"] for d in body["items"]] == [destination["id"]]
    assert body["items"][0]["ref_count"] == 1
    # Every other read route lets a metrics token through (unknown ids then answer 404).
    headers = await api.headers("metrics")
    for method, path in sorted(READS - {("GET", "/v1/api-keys")}):
        resp = await api.client.request(method, _concrete(path), headers=headers)
        assert resp.status in (200, 404), (method, path, await resp.text())


async def test_a_metrics_token_cannot_change_endpoints_or_destinations(api: Api) -> None:
    status, destination = await api.call(
        "POST",
        "/v1/destinations",
        json={"name": "lake", "bucket": "b", "region": "us-east-1", "role_arn": "arn:r"},
    )
    status, endpoint = await api.call("POST", "/v1/endpoints", json={"region": "iad"})

    attempts = [
        ("POST", "/v1/endpoints", {"region": "iad"}),
        ("PATCH", f"/v1/endpoints/{endpoint['id']}", {"segment_max_age_seconds": 5}),
        ("DELETE", f"/v1/endpoints/{endpoint['id']}", None),
        ("POST", "/v1/destinations", {"name": "x", "bucket": "b", "region": "r", "role_arn": "a"}),
        ("PATCH", f"/v1/destinations/{destination['id']}", {"name": "renamed"}),
        ("DELETE", f"/v1/destinations/{destination['id']}", None),
        ("POST", f"/v1/destinations/{destination['id']}/validate", None),
        ("GET", "/v1/api-keys", None),
        ("POST", "/v1/api-keys", {"name": "k", "scopes": ["admin"]}),
    ]
    for method, path, body in attempts:
        status, answer = await api.call(method, path, scope="metrics", json=body)
        assert status == 403, (method, path, answer)
        _assert_error(answer, 403)

    status, still = await api.call("GET", f"/v1/endpoints/{endpoint['id']}")
    assert status == 200
    assert still["segment_max_age_seconds"] == 60
    status, listing = await api.call("GET", "/v1/destinations")
    assert [d["name"] for d in listing["items"]] == ["lake"]
