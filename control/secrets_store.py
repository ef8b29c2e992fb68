"""Secrets all control-plane replicas share, kept in the control store.

A replica-local random secret breaks as soon as two replicas serve one store: a signed
download link made by one would be refused by the other. The first replica creates the
secret under a store lock; every other replica (and every restart) reads the same one.
"""

from __future__ import annotations

import secrets
import time

from .store.db import Database

DOWNLOAD_LINKS = "download-links"


async def shared_secret(db: Database, name: str) -> bytes:
    """The secret called `name`, created (32 random bytes) if the store has none yet."""
    row = await db.fetchone("SELECT value FROM shared_secrets WHERE name = ?", (name,))
    if row is None:
        async with db.transaction() as tx:
            await tx.lock(f"shared-secret:{name}")
            row = await tx.fetchone("SELECT value FROM shared_secrets WHERE name = ?", (name,))
            if row is None:
                value = secrets.token_hex(32)
                await tx.execute(
                    "INSERT INTO shared_secrets (name, value, created_at) VALUES (?, ?, ?)",
                    (name, value, int(time.time() * 1000)),
                )
                row = {"value": value}
    return bytes.fromhex(row["value"])
