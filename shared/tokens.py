"""RS256 access tokens: claims, verification pinned to RS256, JWKS handling.

Signing lives in the control plane; verification is shared so ingest nodes check
tokens locally with the JWKS from their config snapshot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm

ALGORITHM = "RS256"
ISSUER = "edgemq"
TTL_DEFAULT_S = 15 * 60
TTL_MAX_S = 24 * 3600
_UNITS = {"s": 1, "m": 60, "h": 3600}


class TokenError(Exception):
    """The token is missing, malformed, expired, signed wrongly or with another alg."""


@dataclass(frozen=True, slots=True)
class Claims:
    account_id: str
    scopes: tuple[str, ...]
    expires_at: int
    token_id: str
    actor: str = ""  # the key's owner, else its name (`created_by` and friends)


def parse_ttl(text: object) -> int:
    """`30s`, `15m`, `1h` (also combined: `1h30m`) → seconds; ValueError otherwise."""
    if not isinstance(text, str) or not text or len(text) > 16:
        raise ValueError("ttl must be a duration string such as '30s', '15m' or '1h'")
    total, number = 0, ""
    for c in text:
        if c.isascii() and c.isdigit():
            number += c
        elif c in _UNITS and number:
            total += int(number) * _UNITS[c]
            number = ""
        else:
            raise ValueError("ttl must be a duration string such as '30s', '15m' or '1h'")
    if number:
        raise ValueError("ttl needs a unit: s, m or h")
    if not 1 <= total <= TTL_MAX_S:
        raise ValueError(f"ttl must be between 1s and {TTL_MAX_S // 3600}h")
    return total


class Verifier:
    """Verifies tokens against a JWKS (dict with "keys"), RS256 only."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self._keys: dict[str, Any] = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") == "RSA" and "kid" in jwk:
                self._keys[jwk["kid"]] = RSAAlgorithm.from_jwk(json.dumps(jwk))

    def verify(self, token: str, *, now: int | None = None) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as err:
            raise TokenError("malformed token") from err
        if header.get("alg") != ALGORITHM:
            raise TokenError("token algorithm must be RS256")
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise TokenError("token signed with an unknown key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss", "jti"]},
            )
        except jwt.ExpiredSignatureError as err:
            raise TokenError("token expired") from err
        except jwt.PyJWTError as err:
            raise TokenError(f"invalid token: {err}") from err
        scopes = claims.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise TokenError("token has no scopes")
        return Claims(
            str(claims["sub"]),
            tuple(scopes),
            int(claims["exp"]),
            str(claims["jti"]),
            str(claims.get("act", "")),
        )
