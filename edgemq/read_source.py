"""Where `edgemq read` reads committed objects from: a local store directory or an S3
bucket, addressed as one location (`file:///DIR` or `s3://BUCKET/PREFIX`).

Keys given to a source are relative to its location (the destination prefix already
applied). Listing and small reads (manifests) reuse the ingest object stores' code
paths where they fit; segment objects are streamed in fixed-size chunks while their
SHA-256 is computed, so memory stays bounded whatever the segment size. Every blocking
call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.parse
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from ingest.objectstore.base import ObjectNotFound, PermanentStoreError, StoreError
from ingest.objectstore.local import LocalStore, check_key, check_prefix

CHUNK_BYTES = 1024 * 1024
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Fetched:
    """A segment object on local disk: where, how many bytes, their SHA-256."""

    path: str
    size: int
    sha256: str
    temporary: bool


class Source(Protocol):
    location: str

    async def list_dirs(self, prefix: str) -> list[str]:
        """Names of the "folders" directly under `prefix` (`""` or ending in `/`)."""
        ...

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """A small object (a manifest); ObjectNotFound when missing."""
        ...

    async def fetch(self, key: str, scratch_dir: str, progress: Progress) -> Fetched:
        """The object as a local file with its size and SHA-256; ObjectNotFound when
        missing. `progress(n)` is called (on the loop) as bytes arrive."""
        ...

    async def close(self) -> None: ...


def _hash_chunk(f: BinaryIO, digest: Any, out: BinaryIO | None) -> int:
    chunk = f.read(CHUNK_BYTES)
    digest.update(chunk)
    if out is not None:
        out.write(chunk)
    return len(chunk)


class LocalSource:
    """`file:///DIR`: DIR holds the keys (a local store's `<root>/<bucket>[/<prefix>]`)."""

    def __init__(self, directory: str) -> None:
        self.location = f"file://{directory}"
        self.directory = directory
        parent, name = os.path.split(directory.rstrip("/") or "/")
        self._store = LocalStore(parent or "/", name or ".")

    def _path(self, key: str) -> str:
        check_key(key)
        return os.path.join(self.directory, *key.split("/"))

    async def list_dirs(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        base = os.path.join(self.directory, *prefix.split("/"))

        def scan() -> list[str]:
            try:
                return sorted(e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
            except (FileNotFoundError, NotADirectoryError):
                return []

        return await asyncio.to_thread(scan)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self._store.list_keys(prefix)

    async def get_bytes(self, key: str) -> bytes:
        return await self._store.get_bytes(key)

    async def fetch(self, key: str, scratch_dir: str, progress: Progress) -> Fetched:
        # Hashed in place (no copy); the frames are then read from the same file.
        path = self._path(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        digest = hashlib.sha256()
        size = 0
        try:
            while n := await asyncio.to_thread(_hash_chunk, f, digest, None):
                size += n
                progress(n)
        finally:
            await asyncio.to_thread(f.close)
        return Fetched(path, size, digest.hexdigest(), temporary=False)

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class S3Options:
    endpoint_url: str | None = None
    region: str | None = None
    addressing: str = "auto"  # auto | path | virtual
    role_arn: str | None = None
    external_id: str | None = None
    timeout_s: float = 60.0


class S3Source:
    """`s3://BUCKET/PREFIX` with the default credential chain (environment, profile,
    instance or pod role), or a role assumed with it when `role_arn` is given."""

    def __init__(self, bucket: str, prefix: str, options: S3Options) -> None:
        self.location = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.bucket = bucket
        self.prefix = prefix
        self.options = options
        self._stack = AsyncExitStack()
        self._client: Any = None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _s3(self) -> Any:
        if self._client is not None:
            return self._client
        import aioboto3
        from botocore.config import Config

        o = self.options
        addressing = o.addressing
        if addressing == "auto" and o.endpoint_url:
            addressing = "path"  # S3-compatible stores (MinIO, moto) rarely resolve vhosts
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": addressing},
            connect_timeout=min(o.timeout_s, 10.0),
            read_timeout=o.timeout_s,
            retries={"mode": "standard", "total_max_attempts": 4},
        )
        session = aioboto3.Session()
        creds: dict[str, str] = {}
        if o.role_arn:
            args: dict[str, Any] = {"RoleArn": o.role_arn, "RoleSessionName": "edgemq-read"}
            if o.external_id:
                args["ExternalId"] = o.external_id
            async with session.client(
                "sts", region_name=o.region, endpoint_url=o.endpoint_url, config=config
            ) as sts:
                answer = await self._mapped(sts.assume_role(**args), f"assume {o.role_arn}")
            c = answer["Credentials"]
            creds = {
                "aws_access_key_id": c["AccessKeyId"],
                "aws_secret_access_key": c["SecretAccessKey"],
                "aws_session_token": c["SessionToken"],
            }
        self._client = await self._stack.enter_async_context(
            session.client(
                "s3", region_name=o.region, endpoint_url=o.endpoint_url, config=config, **creds
            )
        )
        return self._client

    @staticmethod
    async def _mapped(call: Any, what: str) -> Any:
        from botocore.exceptions import ClientError

        from ingest.objectstore.s3 import error_code, store_error

        try:
            return await call
        except ClientError as err:
            if error_code(err) in ("NoSuchKey", "404"):
                raise ObjectNotFound(what) from None
            raise store_error(err, what) or err from err
        except Exception as err:
            mapped = store_error(err, what)
            if mapped is None:
                raise
            raise mapped from err

    async def _list(self, prefix: str, delimiter: bool) -> list[str]:
        check_prefix(prefix)
        s3 = await self._s3()
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        if delimiter:
            args["Delimiter"] = "/"
        base = f"{self.prefix}/" if self.prefix else ""
        found: list[str] = []
        token: str | None = None
        while True:
            page = await self._mapped(
                s3.list_objects_v2(**args, **({"ContinuationToken": token} if token else {})),
                f"list s3://{self.bucket}/{full}",
            )
            if delimiter:
                found += [
                    p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                ]
            else:
                found += [o["Key"][len(base) :] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(found)

    async def list_dirs(self, prefix: str) -> list[str]:
        return await self._list(prefix, delimiter=True)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self._list(prefix, delimiter=False)

    async def _open(self, key: str) -> Any:
        check_key(key)
        s3 = await self._s3()
        full = self._key(key)
        answer = await self._mapped(
            s3.get_object(Bucket=self.bucket, Key=full), f"s3://{self.bucket}/{full}"
        )
        return answer["Body"]

    async def get_bytes(self, key: str) -> bytes:
        body = await self._open(key)
        try:
            return bytes(await body.read())
        finally:
            body.close()

    async def fetch(self, key: str, scratch_dir: str, progress: Progress) -> Fetched:
        body = await self._open(key)
        path = os.path.join(scratch_dir, "segment.wal.zst")
        digest = hashlib.sha256()
        size = 0
        out = await asyncio.to_thread(open, path, "wb")
        try:
            while chunk := await self._mapped(body.read(CHUNK_BYTES), f"read {key}"):
                await asyncio.to_thread(out.write, chunk)
                digest.update(chunk)
                size += len(chunk)
                progress(len(chunk))
        finally:
            body.close()
            await asyncio.to_thread(out.close)
        return Fetched(path, size, digest.hexdigest(), temporary=True)

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()


def open_source(url: str, s3: S3Options) -> Source:
    """The source for `file:///DIR` or `s3://BUCKET[/PREFIX]`; ValueError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"{url}: a file URL names an absolute directory: file:///DIR")
        path = urllib.parse.unquote(parts.path)
        if not os.path.isdir(path):
            raise ValueError(f"{url}: no such directory")
        return LocalSource(path.rstrip("/") or "/")
    if parts.scheme == "s3":
        prefix = parts.path.strip("/")
        if not parts.netloc or (prefix and ".." in prefix.split("/")):
            raise ValueError(f"{url}: expected s3://BUCKET[/PREFIX]")
        return S3Source(parts.netloc, prefix, s3)
    raise ValueError(f"{url}: the destination must be file:///DIR or s3://BUCKET[/PREFIX]")


__all__ = ["Fetched", "ObjectNotFound", "PermanentStoreError", "StoreError", "open_source"]
