"""The object-store contract delivery writes through (litestream-style: a handful of
methods, one contract test suite run against every implementation).

Keys are full object keys (the destination prefix already applied). Writes are whole
objects: a reader never sees a partial one (S3 semantics; the local store writes a
temporary file, fsyncs it and renames it). Rewriting a key with the same bytes is the
retry path, so puts must be idempotent.

Errors (raised by every implementation, never logged and swallowed):

    StoreError
    ├── TransientStoreError   5xx, throttling, timeouts, resets: retry with backoff
    └── PermanentStoreError   AccessDenied, NoSuchBucket, bad credentials: keep the
                              data, mark the endpoint degraded, retry slowly
ObjectNotFound (a KeyError) is what `get_bytes` raises for a missing key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class StoreError(Exception):
    """An object-store call failed; `code` is the S3 error code or an errno name."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class TransientStoreError(StoreError):
    """Worth retrying soon."""


class PermanentStoreError(StoreError):
    """Will not heal by retrying soon (permissions, missing bucket)."""


class ObjectNotFound(KeyError):
    """No object under that key."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size_bytes: int
    metadata: Mapping[str, str] = field(default_factory=dict)


class ObjectStore(Protocol):
    """Where a destination's objects live (S3 or a local directory laid out like S3)."""

    bucket: str

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Store `data` under `key` (small objects: manifests, test objects)."""
        ...

    async def put_file(
        self,
        key: str,
        path: str,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Store the file at `path` under `key`, streamed from disk with bounded memory
        (multipart above the part size on S3)."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFound if there is none."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Size and user metadata of an object, None when it does not exist."""
        ...

    async def list_keys(self, prefix: str, *, limit: int = 100_000) -> list[str]:
        """Keys under `prefix`, sorted, at most `limit` (StoreError beyond it)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove an object; a missing key is not an error."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...
