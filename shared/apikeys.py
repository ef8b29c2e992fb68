"""API key format and digests, shared by the control plane (which issues keys) and
ingest nodes (which check them against digests in their config snapshot).

A key is `emq_live_` + 32 base62 characters (≈190 bits): high entropy, so a plain
SHA-256 digest is enough to store it, and lookups go by digest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

KEY_PREFIX = "emq_live_"
KEY_RANDOM_CHARS = 32
_BASE62 = string.digits + string.ascii_letters
SCOPES = ("ingest", "metrics", "admin")
NODE_SCOPE = "node"


def generate_key() -> str:
    return KEY_PREFIX + "".join(secrets.choice(_BASE62) for _ in range(KEY_RANDOM_CHARS))


def looks_like_key(text: str) -> bool:
    body = text[len(KEY_PREFIX) :]
    return (
        text.startswith(KEY_PREFIX)
        and len(body) == KEY_RANDOM_CHARS
        and all(c in _BASE62 for c in body)
    )


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def display_prefix(key: str) -> str:
    """What lists show of a key: enough to recognise it, useless to use it."""
    return key[: len(KEY_PREFIX) + 4]
