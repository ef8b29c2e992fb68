"""Data-plane auth (DESIGN.md §2): who is sending, from the node's config snapshot alone.

No I/O and no control-plane calls: API keys are checked against the ingest-key digests
in the snapshot, JWTs against the snapshot's JWKS (RS256 only, `shared.tokens`).

    AuthError(status, code, message)
    ├── 401 unauthorized         missing, malformed, unknown, revoked, expired, badly
    │                            signed; `alg` other than RS256; unknown `kid`; a key
    │                            without the ingest scope; a scheme other than Bearer
    ├── 403 forbidden            a valid token without the `ingest` scope
    └── EndpointNotFound         404 endpoint_not_found: an unknown endpoint and another
                                 account's endpoint answer exactly alike

Decisions:
- `X-API-Key` wins when both it and `Authorization` are sent (`Authorization` is then
  ignored, whatever it holds); an empty header counts as absent.
- A key without the `ingest` scope is 401, not 403: the snapshot only carries ingest
  keys, so such a key is indistinguishable from an unknown one on the node.
- Keys are looked up by SHA-256 digest in a dict rebuilt on `update` (keys are high
  entropy; the digest is then compared again in constant time), not by scanning.
- `update` rebuilds the Verifier only when the JWKS changed; a JWKS that does not parse
  fails closed (no token verifies) and is reported in `jwks_error`.
- `now` (seconds) also refuses tokens whose `exp` is not after it, on top of the wall
  clock check in `shared.tokens` (for MQTT sessions and tests with a fake clock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from shared.apikeys import KEY_PREFIX, digests_equal, key_digest
from shared.tokens import TokenError, Verifier

from .snapshot import EMPTY, Endpoint, IngestKey, Snapshot

INGEST_SCOPE = "ingest"


KNOWN_CALLERS_MAX = 10_000
"""Bound on remembered callers (the cache is dropped whole when full)."""


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


class EndpointNotFound(AuthError):
    def __init__(self) -> None:
        super().__init__(404, "endpoint_not_found", "no such endpoint")


def _unauthorized(message: str) -> AuthError:
    return AuthError(401, "unauthorized", message)


@dataclass(frozen=True, slots=True)
class Caller:
    account_id: str
    method: Literal["api_key", "jwt"]
    expires_at: int | None = None  # a JWT's `exp` (seconds); None for keys


class IngestAuth:
    """Authenticates data-plane callers against the current config snapshot."""

    def __init__(self, snapshot: Snapshot = EMPTY) -> None:
        self._jwks: dict[str, Any] | None = None
        self._verifier = Verifier({})
        self._keys: dict[str, IngestKey] = {}
        # Callers already checked, by the exact secret (cleared with every snapshot):
        # a hot client pays the SHA-256 or the RS256 verification once, not per request.
        self._known: dict[str, Caller] = {}
        self.jwks_error: str | None = None
        self.update(snapshot)

    def update(self, snapshot: Snapshot) -> None:
        self._keys = {k.digest: k for k in snapshot.ingest_keys}
        self._known = {}
        if snapshot.jwks == self._jwks:
            return
        try:
            verifier, error = Verifier(snapshot.jwks), None
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError) as err:
            verifier, error = Verifier({}), f"unusable JWKS: {err}"
        self._verifier, self.jwks_error, self._jwks = verifier, error, snapshot.jwks

    def authenticate_headers(
        self, x_api_key: str | None, authorization: str | None, *, now: int | None = None
    ) -> Caller:
        """The caller behind `X-API-Key` or `Authorization: Bearer <token>`."""
        if x_api_key and x_api_key.strip():
            return self._api_key(x_api_key.strip())
        if not authorization or not authorization.strip():
            raise _unauthorized("send an ingest API key in X-API-Key or a Bearer token")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise _unauthorized("the Authorization scheme must be Bearer")
        if not token.strip():
            raise _unauthorized("the Bearer token is empty")
        return self._token(token.strip(), now)

    def authenticate_secret(self, secret: str, *, now: int | None = None) -> Caller:
        """The caller behind an MQTT password: an `emq_live_` key or an ingest JWT."""
        secret = secret.strip()
        if not secret:
            raise _unauthorized("a key or token is required as the password")
        if secret.startswith(KEY_PREFIX):
            return self._api_key(secret)
        return self._token(secret, now)

    def authorize(self, caller: Caller, endpoint: Endpoint | None) -> Endpoint:
        return authorize(caller, endpoint)

    def _remember(self, secret: str, caller: Caller) -> Caller:
        if len(self._known) >= KNOWN_CALLERS_MAX:
            self._known.clear()
        self._known[secret] = caller
        return caller

    def _api_key(self, key: str) -> Caller:
        known = self._known.get(key)
        if known is not None:
            return known
        digest = key_digest(key)
        found = self._keys.get(digest)
        if found is None or not digests_equal(found.digest, digest):
            raise _unauthorized("invalid API key")
        if INGEST_SCOPE not in found.scopes:
            raise _unauthorized("invalid API key")
        return self._remember(key, Caller(found.account_id, "api_key"))

    def _token(self, token: str, now: int | None) -> Caller:
        known = self._known.get(token)
        if known is not None and known.expires_at is not None:
            if known.expires_at > (time.time() if now is None else now):
                return known
            del self._known[token]
        try:
            claims = self._verifier.verify(token, now=now)
        except TokenError as err:
            raise _unauthorized(str(err)) from err
        if now is not None and claims.expires_at <= now:
            raise _unauthorized("token expired")
        if INGEST_SCOPE not in claims.scopes:
            raise AuthError(403, "forbidden", "the token does not carry the ingest scope")
        return self._remember(token, Caller(claims.account_id, "jwt", claims.expires_at))


def authorize(caller: Caller, endpoint: Endpoint | None) -> Endpoint:
    """The endpoint, if the caller's account owns it; else the same 404 as unknown."""
    if endpoint is None or endpoint.account_id != caller.account_id:
        raise EndpointNotFound()
    return endpoint
