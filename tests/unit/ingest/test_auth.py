"""ingest.auth: API keys and JWTs checked against the config snapshot, and the
cross-account rule. Real tokens come from the control plane's Signer; malicious ones
are crafted with PyJWT (and by hand where PyJWT refuses, e.g. HS256 keyed with a PEM)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

import ingest.auth as auth_module
from control.auth import Signer
from ingest.auth import AuthError, Caller, EndpointNotFound, IngestAuth, authorize
from ingest.snapshot import Endpoint, IngestKey, Snapshot
from shared.apikeys import generate_key, key_digest
from shared.tokens import ISSUER

ACCOUNT = "acc_a"
OTHER_ACCOUNT = "acc_b"


def make_signer(kid: str) -> tuple[Signer, rsa.RSAPrivateKey]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    public.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return Signer(kid, private, {"keys": [public]}), private


@pytest.fixture(scope="module")
def signer_and_key() -> tuple[Signer, rsa.RSAPrivateKey]:
    return make_signer("kid-1")


@pytest.fixture(scope="module")
def stranger_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def signer(signer_and_key: tuple[Signer, rsa.RSAPrivateKey]) -> Signer:
    return signer_and_key[0]


@pytest.fixture
def private_key(signer_and_key: tuple[Signer, rsa.RSAPrivateKey]) -> rsa.RSAPrivateKey:
    return signer_and_key[1]


KEYS = {name: generate_key() for name in ("ingest", "metrics", "revoked", "other_account")}


def endpoint(endpoint_id: str, account_id: str) -> Endpoint:
    return Endpoint(
        id=endpoint_id,
        account_id=account_id,
        tenant=1,
        accepting=True,
        config_epoch=1,
        segment_bytes=1 << 20,
        segment_max_age_seconds=60,
    )


def snapshot(jwks: dict[str, Any], *, keys: tuple[str, ...] = ("ingest", "metrics")) -> Snapshot:
    scopes = {"ingest": ("ingest",), "metrics": ("metrics",), "other_account": ("ingest",)}
    owners = {"other_account": OTHER_ACCOUNT}
    return Snapshot(
        config_epoch=1,
        region="eu-1",
        endpoints=(endpoint("ep-a", ACCOUNT), endpoint("ep-b", OTHER_ACCOUNT)),
        ingest_keys=tuple(
            IngestKey(key_digest(KEYS[k]), owners.get(k, ACCOUNT), scopes[k]) for k in keys
        ),
        jwks=jwks,
    )


@pytest.fixture
def auth(signer: Signer) -> IngestAuth:
    return IngestAuth(snapshot(signer.jwks, keys=("ingest", "metrics", "other_account")))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": ACCOUNT,
        "scopes": ["ingest"],
        "iat": now,
        "exp": now + 300,
        "jti": "jti-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_keyed_with_public_pem(private_key: rsa.RSAPrivateKey) -> str:
    """The classic key-confusion token: HMAC over the RS256 public key's PEM. PyJWT
    refuses to build it, so it is assembled by hand."""
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "kid-1"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def rs256(key: rsa.RSAPrivateKey, kid: str | None = "kid-1", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm="RS256", headers=headers)


def refused(call: Callable[[], object]) -> AuthError:
    with pytest.raises(AuthError) as info:
        call()
    return info.value


# ------------------------------------------------------------------ the happy paths
def test_an_ingest_api_key_authenticates_as_its_account(auth: IngestAuth) -> None:
    caller = auth.authenticate_headers(KEYS["ingest"], None)
    assert caller == Caller(ACCOUNT, "api_key", None)


def test_an_ingest_token_from_the_control_plane_authenticates_with_its_expiry(
    auth: IngestAuth, signer: Signer
) -> None:
    token, ttl_s = signer.issue(account_id=ACCOUNT, scope="ingest", ttl_s=600, actor="dev")
    caller = auth.authenticate_headers(None, f"Bearer {token}")
    assert (caller.account_id, caller.method) == (ACCOUNT, "jwt")
    assert caller.expires_at is not None
    assert abs(caller.expires_at - (int(time.time()) + ttl_s)) <= 5


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive_and_spaces_are_tolerated(
    auth: IngestAuth, signer: Signer, scheme: str
) -> None:
    token, _ = signer.issue(account_id=ACCOUNT, scope="ingest", ttl_s=60, actor="dev")
    assert auth.authenticate_headers("", f"  {scheme}   {token}  ").method == "jwt"


# ------------------------------------------------------------------ the attack matrix
TOKEN_ATTACKS: dict[str, Callable[[rsa.RSAPrivateKey, rsa.RSAPrivateKey], str]] = {
    "alg none": lambda key, _: jwt.encode(
        claims(), None, algorithm="none", headers={"kid": "kid-1"}
    ),
    "alg none, unsigned but with a signature part": lambda key, _: (
        jwt.encode(claims(), None, algorithm="none", headers={"kid": "kid-1"}) + "c2ln"
    ),
    "HS256 keyed with the public key PEM": lambda key, _: hs256_keyed_with_public_pem(key),
    "RS512 with the right key": lambda key, _: jwt.encode(
        claims(), key, algorithm="RS512", headers={"kid": "kid-1"}
    ),
    "bad signature (another key, known kid)": lambda _, stranger: rs256(stranger),
    "signature of another token": lambda key, _: (
        rs256(key).rsplit(".", 1)[0] + "." + rs256(key, sub="acc_x").rsplit(".", 1)[1]
    ),
    "payload swapped after signing": lambda key, _: ".".join(
        [
            rs256(key).split(".")[0],
            b64(json.dumps(claims(sub=OTHER_ACCOUNT)).encode()),
            rs256(key).split(".")[2],
        ]
    ),
    "expired": lambda key, _: rs256(key, iat=int(time.time()) - 600, exp=int(time.time()) - 60),
    "not valid yet (future nbf)": lambda key, _: rs256(key, nbf=int(time.time()) + 600),
    "unknown kid": lambda key, _: rs256(key, kid="kid-unknown"),
    "no kid": lambda key, _: rs256(key, kid=None),
    "another issuer": lambda key, _: rs256(key, iss="someone-else"),
    "no exp": lambda key, _: rs256(key, exp=None),
    "no sub": lambda key, _: rs256(key, sub=None),
    "no jti": lambda key, _: rs256(key, jti=None),
    "scopes not a list": lambda key, _: rs256(key, scopes="ingest"),
    "garbage": lambda key, _: "not.a.jwt",
    "one segment": lambda key, _: "abc",
}


@pytest.mark.parametrize("attack", list(TOKEN_ATTACKS))
def test_forged_or_invalid_tokens_are_401(
    auth: IngestAuth,
    private_key: rsa.RSAPrivateKey,
    stranger_key: rsa.RSAPrivateKey,
    attack: str,
) -> None:
    token = TOKEN_ATTACKS[attack](private_key, stranger_key)
    for call in (
        lambda: auth.authenticate_headers(None, f"Bearer {token}"),
        lambda: auth.authenticate_secret(token),
    ):
        err = refused(call)
        assert (err.status, err.code) == (401, "unauthorized")


@pytest.mark.parametrize("scope", ["metrics", "admin"])
def test_a_valid_token_without_the_ingest_scope_is_403(
    auth: IngestAuth, signer: Signer, scope: str
) -> None:
    token, _ = signer.issue(account_id=ACCOUNT, scope=scope, ttl_s=60, actor="dev")
    for call in (
        lambda: auth.authenticate_headers(None, f"Bearer {token}"),
        lambda: auth.authenticate_secret(token),
    ):
        err = refused(call)
        assert (err.status, err.code) == (403, "forbidden")


@pytest.mark.parametrize(
    ("x_api_key", "authorization"),
    [
        (None, None),
        ("", ""),
        ("  ", "  "),
        (None, "Bearer"),
        (None, "Bearer    "),
        (None, "Basic dXNlcjpwYXNz"),
        (None, f"Basic {KEYS['ingest']}"),
        (None, KEYS["ingest"]),
        (None, f"ApiKey {KEYS['ingest']}"),
        (KEYS["revoked"], None),
        (KEYS["metrics"], None),
        ("emq_live_" + "x" * 32, None),
        ("not-a-key", None),
        (KEYS["revoked"], "Bearer whatever"),
    ],
    ids=[
        "nothing",
        "empty headers",
        "blank headers",
        "bearer without token",
        "bearer with blanks",
        "basic",
        "basic carrying a key",
        "bare key in authorization",
        "other scheme carrying a key",
        "revoked key",
        "key without ingest scope",
        "well-formed unknown key",
        "garbage key",
        "bad key wins over authorization",
    ],
)
def test_missing_unknown_or_misplaced_credentials_are_401(
    auth: IngestAuth, x_api_key: str | None, authorization: str | None
) -> None:
    err = refused(lambda: auth.authenticate_headers(x_api_key, authorization))
    assert (err.status, err.code) == (401, "unauthorized")


def test_an_api_key_wins_when_both_headers_are_sent(auth: IngestAuth, signer: Signer) -> None:
    other, _ = signer.issue(account_id=OTHER_ACCOUNT, scope="ingest", ttl_s=60, actor="x")
    assert auth.authenticate_headers(KEYS["ingest"], f"Bearer {other}").account_id == ACCOUNT
    assert auth.authenticate_headers(KEYS["ingest"], "Basic garbage").method == "api_key"


def test_a_key_whose_snapshot_entry_lacks_the_ingest_scope_is_401_like_an_unknown_one(
    auth: IngestAuth,
) -> None:
    unknown = refused(lambda: auth.authenticate_headers(KEYS["revoked"], None))
    no_scope = refused(lambda: auth.authenticate_headers(KEYS["metrics"], None))
    assert no_scope.to_json() == unknown.to_json()


def test_now_refuses_a_token_that_has_expired_by_then(auth: IngestAuth, signer: Signer) -> None:
    token, ttl_s = signer.issue(account_id=ACCOUNT, scope="ingest", ttl_s=60, actor="dev")
    now = int(time.time())
    assert auth.authenticate_secret(token, now=now).method == "jwt"
    err = refused(lambda: auth.authenticate_secret(token, now=now + ttl_s + 5))
    assert (err.status, err.code) == (401, "unauthorized")
    assert "expired" in err.message


# ------------------------------------------------------------------ MQTT passwords
def test_an_mqtt_password_may_be_an_ingest_key_or_an_ingest_token(
    auth: IngestAuth, signer: Signer
) -> None:
    assert auth.authenticate_secret(KEYS["ingest"]) == Caller(ACCOUNT, "api_key")
    token, _ = signer.issue(account_id=ACCOUNT, scope="ingest", ttl_s=60, actor="dev")
    caller = auth.authenticate_secret(f" {token} ")
    assert (caller.account_id, caller.method) == (ACCOUNT, "jwt")
    assert caller.expires_at is not None


@pytest.mark.parametrize(
    "secret", ["", "   ", KEYS["revoked"], KEYS["metrics"], "emq_live_", "password"]
)
def test_a_bad_mqtt_password_is_401(auth: IngestAuth, secret: str) -> None:
    err = refused(lambda: auth.authenticate_secret(secret))
    assert (err.status, err.code) == (401, "unauthorized")


# ------------------------------------------------------------------ snapshots
def test_a_key_removed_from_the_snapshot_stops_working_at_once(
    auth: IngestAuth, signer: Signer
) -> None:
    assert auth.authenticate_headers(KEYS["ingest"], None).account_id == ACCOUNT
    auth.update(snapshot(signer.jwks, keys=("metrics",)))
    err = refused(lambda: auth.authenticate_headers(KEYS["ingest"], None))
    assert err.status == 401


def test_a_rotated_jwks_verifies_new_tokens_and_drops_retired_keys(
    auth: IngestAuth, signer: Signer
) -> None:
    new_signer, _ = make_signer("kid-2")
    old_token, _ = signer.issue(account_id=ACCOUNT, scope="ingest", ttl_s=60, actor="dev")
    new_token, _ = new_signer.issue(account_id=ACCOUNT, scope="ingest", ttl_s=60, actor="dev")
    assert refused(lambda: auth.authenticate_secret(new_token)).status == 401
    both = {"keys": signer.jwks["keys"] + new_signer.jwks["keys"]}
    auth.update(snapshot(both))
    assert auth.authenticate_secret(old_token).method == "jwt"
    assert auth.authenticate_secret(new_token).method == "jwt"
    auth.update(snapshot(new_signer.jwks))
    assert refused(lambda: auth.authenticate_secret(old_token)).status == 401
    assert auth.authenticate_secret(new_token).method == "jwt"


def test_the_verifier_is_rebuilt_only_when_the_jwks_changes(
    monkeypatch: pytest.MonkeyPatch, signer: Signer
) -> None:
    built: list[dict[str, Any]] = []
    real = auth_module.Verifier

    def counting(jwks: dict[str, Any]) -> Any:
        built.append(jwks)
        return real(jwks)

    monkeypatch.setattr(auth_module, "Verifier", counting)
    auth = IngestAuth()
    built.clear()
    auth.update(snapshot(signer.jwks))
    auth.update(snapshot(json.loads(json.dumps(signer.jwks)), keys=("ingest",)))
    assert len(built) == 1
    auth.update(snapshot({"keys": []}))
    assert len(built) == 2


def test_an_unusable_jwks_fails_closed_and_is_reported(signer: Signer) -> None:
    auth = IngestAuth(snapshot(signer.jwks))
    token, _ = signer.issue(account_id=ACCOUNT, scope="ingest", ttl_s=60, actor="dev")
    broken = {"keys": [{"kty": "RSA", "kid": "kid-1", "n": "!!", "e": "AQAB"}]}
    auth.update(snapshot(broken))
    assert auth.jwks_error is not None
    assert refused(lambda: auth.authenticate_secret(token)).status == 401
    assert auth.authenticate_secret(KEYS["ingest"]).method == "api_key"
    auth.update(snapshot(signer.jwks))
    assert auth.jwks_error is None
    assert auth.authenticate_secret(token).method == "jwt"


def test_a_node_without_a_snapshot_refuses_everyone(signer: Signer) -> None:
    token, _ = signer.issue(account_id=ACCOUNT, scope="ingest", ttl_s=60, actor="dev")
    auth = IngestAuth()
    assert refused(lambda: auth.authenticate_secret(token)).status == 401
    assert refused(lambda: auth.authenticate_headers(KEYS["ingest"], None)).status == 401


# ------------------------------------------------------------------ endpoints
def test_a_caller_may_use_its_own_accounts_endpoint(auth: IngestAuth) -> None:
    caller = auth.authenticate_headers(KEYS["ingest"], None)
    ep = endpoint("ep-a", ACCOUNT)
    assert authorize(caller, ep) is ep
    assert auth.authorize(caller, ep) is ep


def test_another_accounts_endpoint_looks_exactly_like_an_unknown_one(
    auth: IngestAuth, signer: Signer
) -> None:
    by_key = auth.authenticate_headers(KEYS["other_account"], None)
    token, _ = signer.issue(account_id=OTHER_ACCOUNT, scope="ingest", ttl_s=60, actor="x")
    by_token = auth.authenticate_headers(None, f"Bearer {token}")
    unknown = refused(lambda: authorize(by_key, None))
    assert isinstance(unknown, EndpointNotFound)
    assert (unknown.status, unknown.code) == (404, "endpoint_not_found")
    for caller in (by_key, by_token):
        assert caller.account_id == OTHER_ACCOUNT
        cross = refused(lambda caller=caller: auth.authorize(caller, endpoint("ep-a", ACCOUNT)))
        assert type(cross) is type(unknown)
        assert cross.to_json() == unknown.to_json()
        assert str(cross) == str(unknown)


def test_auth_errors_have_the_control_planes_json_shape() -> None:
    err = AuthError(401, "unauthorized", "invalid API key")
    assert err.to_json() == {
        "error": {"status": 401, "code": "unauthorized", "message": "invalid API key"}
    }
