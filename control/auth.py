"""Keys, signing keys and tokens on the control-plane side.

- API keys: created with `shared.apikeys`, stored as SHA-256 digests; the plaintext is
  returned once.
- Signing keys: RSA 2048, generated on first start and kept in the store; the newest
  active key signs, every key not retired more than TTL_MAX ago stays in the JWKS so
  tokens it signed keep verifying after a rotation.
- Principals: who is calling (account, scopes, the name recorded in `created_by`).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.tokens import ALGORITHM, ISSUER, TTL_MAX_S, Verifier

from .store.db import Database, Executor


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str | None  # None for node keys (they serve every account of a region)
    scopes: frozenset[str]
    actor: str  # the key's owner e-mail, else its name
    key_id: str | None = None


def _now_ms() -> int:
    return int(time.time() * 1000)


class Signer:
    """Holds the signing keys loaded from (or first created in) the store."""

    def __init__(
        self, kid: str, private_key: rsa.RSAPrivateKey | None, jwks: dict[str, Any]
    ) -> None:
        self.kid = kid
        self._private_key = private_key
        self.jwks = jwks
        self.verifier = Verifier(jwks)

    @classmethod
    async def load(cls, db: Database, *, create: bool = True) -> Signer:
        """The store's signing keys; the first one is created when there is none, unless
        `create` is False (read-only use: a signer that verifies nothing, issues nothing)."""
        rows = await db.fetchall(
            "SELECT kid, private_pem, public_jwk, created_at, retired_at FROM signing_keys "
            "ORDER BY created_at"
        )
        active = [r for r in rows if r["retired_at"] is None]
        if not active and not create:
            return cls("", None, {"keys": []})
        if not active:
            async with db.transaction() as tx:
                # Replicas starting together on an empty store: the first creates the
                # key under the lock, the others find it (one key, one JWKS for all).
                await tx.lock("signing-keys")
                again = await tx.fetchone(
                    "SELECT kid FROM signing_keys WHERE retired_at IS NULL LIMIT 1"
                )
                if again is None:
                    await cls._create(tx)
            rows = await db.fetchall(
                "SELECT kid, private_pem, public_jwk, created_at, retired_at FROM signing_keys "
                "ORDER BY created_at"
            )
            active = [r for r in rows if r["retired_at"] is None]
        newest = active[-1]
        horizon = _now_ms() - TTL_MAX_S * 1000
        jwks = {
            "keys": [
                json.loads(r["public_jwk"])
                for r in rows
                if r["retired_at"] is None or r["retired_at"] > horizon
            ]
        }
        private = serialization.load_pem_private_key(newest["private_pem"].encode(), None)
        assert isinstance(private, rsa.RSAPrivateKey)
        return cls(newest["kid"], private, jwks)

    @staticmethod
    async def _create(db: Executor) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        kid = hashlib.sha256(f"{public['n']}.{public['e']}".encode()).hexdigest()[:16]
        public.update({"kid": kid, "alg": ALGORITHM, "use": "sig"})
        await db.execute(
            "INSERT INTO signing_keys (kid, private_pem, public_jwk, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (kid, pem, json.dumps(public), _now_ms()),
        )

    def issue(self, *, account_id: str, scope: str, ttl_s: int, actor: str) -> tuple[str, int]:
        if not 1 <= ttl_s <= TTL_MAX_S:
            raise ValueError("ttl out of range")
        if self._private_key is None:
            raise RuntimeError("this signer was opened read-only on a store without keys")
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": account_id,
            "scopes": [scope],
            "iat": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
            "act": actor,
        }
        token = jwt.encode(
            claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid}
        )
        return token, ttl_s
