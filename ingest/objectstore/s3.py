"""The S3 store (aioboto3): assume the destination's role, then one long-lived client.

Credentials: STS AssumeRole with the destination's role ARN and external id, using the
node's own base credentials (the default chain: environment, profile, instance or pod
role) and the destination's region and endpoint. The temporary credentials are cached
and refreshed once they are within `refresh_margin_s` of expiry, measured from just
before AssumeRole on the injected `Clock`'s monotonic scale (immune to wall-clock skew;
tests move time without sleeping). Refreshing is single-flight (callers wait
on one lock while one of them assumes the role). Each set of credentials gets one S3
client; a replaced client is closed once the calls still using it have finished.
ExpiredToken (and its relatives) drops the cached credentials and is transient: the
next call assumes the role again.

Client: SigV4, path-style addressing when the destination asks for it, connect/read
timeouts and a bounded connection pool as constructor arguments, and no botocore
retries (`total_max_attempts=1`): the caller owns retries, backoff and the degraded
state. botocore's default CRC32 request checksums are switched off (several
S3-compatible stores reject them, notably on multipart); every PUT and part carries a
Content-MD5 instead, which every S3 implementation verifies (BadDigest → transient).
Below botocore, aiohttp resends an idempotent request (PUT, GET, HEAD, DELETE) once when
the connection is reset (RFC 9112 §9.3.1): harmless here, every write is idempotent, but
a reset surfaces as TransientStoreError only when both attempts fail.

Uploads: a file up to `multipart_threshold_bytes` is one PUT; above, a multipart upload
of `part_bytes` parts read one at a time with `os.pread` in a worker thread (one part in
memory). Any failure aborts the upload (best effort: a bucket lifecycle rule
AbortIncompleteMultipartUpload covers an abort that itself fails). Encryption: SSE-S3
(AES256) by default, SSE-KMS with the destination's key.

Errors (the tree of ingest.objectstore.base):
- PermanentStoreError: AccessDenied, NoSuchBucket, bad or malformed credentials and
  signatures, KMS.* errors, other 4xx, invalid parameters, no base credentials, STS
  refusing AssumeRole;
- TransientStoreError: 5xx, SlowDown and other throttling, RequestTimeout, BadDigest,
  ExpiredToken, connection errors, resets, timeouts, truncated or unparsable responses;
- ObjectNotFound from `get_bytes` for NoSuchKey; `head` returns None on 404 (HEAD
  responses carry no error code, so a missing bucket also reads as None there).
Keys are checked like the local store's (ingest.objectstore.local.check_key), so a key
layout that works on one store works on the other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aioboto3
import aiohttp
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from ingest.objectstore.base import (
    ObjectInfo,
    ObjectNotFound,
    PermanentStoreError,
    StoreError,
    TransientStoreError,
)
from ingest.objectstore.local import SourceFileError, check_key, check_prefix
from ingest.snapshot import Destination
from shared.clock import SYSTEM_CLOCK, Clock

MIB = 1024 * 1024
MIN_PART_BYTES = 5 * MIB
MAX_PARTS = 10_000
CREDENTIAL_CODES = frozenset(
    "ExpiredToken ExpiredTokenException InvalidToken TokenRefreshRequired".split()
)
PERMANENT_CODES = frozenset(
    "AccessDenied AccountProblem AllAccessDisabled AuthorizationHeaderMalformed "
    "InvalidAccessKeyId InvalidBucketName InvalidClientTokenId NoSuchBucket "
    "PermanentRedirect RegionDisabledException SignatureDoesNotMatch".split()
)
TRANSIENT_CODES = frozenset(
    "BadDigest IncompleteBody InternalError NoSuchUpload OperationAborted "
    "RequestLimitExceeded RequestTimeout ServiceUnavailable SlowDown Throttling "
    "ThrottlingException TooManyRequests".split()
)
_CALLER_ERRORS = (NoCredentialsError, PartialCredentialsError, ParamValidationError, NoRegionError)


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def http_status(err: ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def store_error(err: BaseException, what: str) -> StoreError | None:
    """The StoreError for an exception of botocore/aiohttp, None if it is none of theirs."""
    if isinstance(err, ClientError):
        code, status = error_code(err), http_status(err)
        message = f"{what}: {code or status}: {err}"
        if code in CREDENTIAL_CODES or code in TRANSIENT_CODES:
            return TransientStoreError(message, code=code)
        if code in PERMANENT_CODES or code.startswith("KMS."):
            return PermanentStoreError(message, code=code)
        if status >= 500 or status == 429:
            return TransientStoreError(message, code=code or str(status))
        if 400 <= status < 500:
            return PermanentStoreError(message, code=code or str(status))
        return TransientStoreError(message, code=code or str(status))
    if isinstance(err, _CALLER_ERRORS):
        return PermanentStoreError(f"{what}: {err}", code=type(err).__name__)
    if isinstance(err, BotoCoreError | aiohttp.ClientError | TimeoutError | OSError):
        return TransientStoreError(f"{what}: {err!r}", code=type(err).__name__)
    if type(err).__name__ == "ResponseParserError":  # botocore.parsers, not exported
        return TransientStoreError(f"{what}: {err}", code="ResponseParserError")
    return None


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _read_part(fd: int, offset: int, length: int) -> tuple[bytes, str]:
    """`length` bytes at `offset` and their Content-MD5 (blocking)."""
    chunks = []
    done = 0
    try:
        while done < length:
            chunk = os.pread(fd, length - done, offset + done)
            if not chunk:
                raise OSError(f"file ended at {offset + done}, expected {offset + length}")
            chunks.append(chunk)
            done += len(chunk)
    except OSError as err:
        raise SourceFileError(err) from err
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return data, _md5(data)


@dataclass(eq=False)
class _Lease:
    """One S3 client and the credentials it signs with."""

    client: Any
    stack: AsyncExitStack
    expires_s: float  # on the store's clock's monotonic scale
    users: int = 0
    retired: bool = False
    closed: bool = False


class S3Store:
    """An ObjectStore over one S3 bucket (see the module docstring)."""

    def __init__(
        self,
        destination: Destination,
        *,
        session_name: str = "edgemq-node",
        clock: Clock = SYSTEM_CLOCK,
        multipart_threshold_bytes: int = 8 * MIB,
        part_bytes: int = 8 * MIB,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        max_pool_connections: int = 16,
        session_duration_s: int = 3600,
        refresh_margin_s: float = 300.0,
    ) -> None:
        if part_bytes < MIN_PART_BYTES or multipart_threshold_bytes < 1:
            raise ValueError("part_bytes >= 5 MiB (S3's minimum) and a positive threshold")
        if refresh_margin_s >= session_duration_s:
            raise ValueError("refresh_margin_s must be shorter than session_duration_s")
        self.destination = destination
        self.bucket = destination.bucket
        self.session_name = session_name
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.part_bytes = part_bytes
        self.session_duration_s = session_duration_s
        self.refresh_margin_s = refresh_margin_s
        self._clock = clock
        self._session = aioboto3.Session()
        common: dict[str, Any] = {
            "connect_timeout": connect_timeout_s,
            "read_timeout": read_timeout_s,
            "retries": {"mode": "standard", "total_max_attempts": 1},
        }
        self._sts_config = Config(**common)
        self._s3_config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if destination.path_style else "auto"},
            max_pool_connections=max_pool_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **common,
        )
        self._lock = asyncio.Lock()
        self._current: _Lease | None = None
        self._leases: set[_Lease] = set()
        self._closed = False
        self.assume_count = 0

    # -- credentials and clients -----------------------------------------------------

    async def _assume(self) -> dict[str, Any]:
        d = self.destination
        args: dict[str, Any] = {
            "RoleArn": d.role_arn,
            "RoleSessionName": self.session_name,
            "DurationSeconds": self.session_duration_s,
        }
        if d.external_id:
            args["ExternalId"] = d.external_id
        try:
            async with self._session.client(
                "sts", region_name=d.region, endpoint_url=d.endpoint_url, config=self._sts_config
            ) as sts:
                response = await sts.assume_role(**args)
        except Exception as err:
            mapped = store_error(err, f"assume role {d.role_arn}")
            if mapped is None:
                raise
            raise mapped from err
        self.assume_count += 1
        return dict(response["Credentials"])

    async def _open_lease(self) -> _Lease:
        # The lifetime is measured on our own clock from before the call (STS grants the
        # duration asked for or refuses), so a skewed wall clock cannot make us late.
        expires_s = self._clock.monotonic() + self.session_duration_s
        creds = await self._assume()
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            self._session.client(
                "s3",
                region_name=self.destination.region,
                endpoint_url=self.destination.endpoint_url,
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                config=self._s3_config,
            )
        )
        lease = _Lease(client, stack, expires_s)
        self._leases.add(lease)
        return lease

    async def _acquire(self) -> _Lease:
        async with self._lock:
            if self._closed:
                raise RuntimeError("S3Store used after close()")
            lease = self._current
            if lease is None or lease.expires_s - self._clock.monotonic() < self.refresh_margin_s:
                fresh = await self._open_lease()
                self._current = fresh
                if lease is not None:
                    await self._retire(lease)
                lease = fresh
            lease.users += 1
            return lease

    async def _retire(self, lease: _Lease) -> None:
        lease.retired = True
        if self._current is lease:
            self._current = None
        if lease.users == 0 and not lease.closed:
            lease.closed = True
            self._leases.discard(lease)
            await lease.stack.aclose()

    async def _release(self, lease: _Lease) -> None:
        lease.users -= 1
        if lease.retired:
            await self._retire(lease)

    @asynccontextmanager
    async def _call(self, what: str) -> AsyncIterator[Any]:
        """An S3 client for one operation, with the operation's errors mapped."""
        lease = await self._acquire()
        try:
            yield lease.client
        except SourceFileError as wrapped:
            raise wrapped.err from None
        except Exception as err:
            mapped = store_error(err, what)
            if mapped is None:
                raise
            if mapped.code in CREDENTIAL_CODES:
                lease.retired = True
                if self._current is lease:
                    self._current = None
            raise mapped from err
        finally:
            await self._release(lease)

    def _write_args(
        self, key: str, content_type: str, metadata: Mapping[str, str] | None
    ) -> dict[str, Any]:
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentType": content_type,
            "Metadata": dict(metadata or {}),
        }
        if self.destination.kms_key_arn:
            args["ServerSideEncryption"] = "aws:kms"
            args["SSEKMSKeyId"] = self.destination.kms_key_arn
        else:
            args["ServerSideEncryption"] = "AES256"
        return args

    # -- the ObjectStore API -----------------------------------------------------------

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        check_key(key)
        args = self._write_args(key, content_type, metadata)
        async with self._call(f"put {key}") as s3:
            await s3.put_object(Body=data, ContentMD5=_md5(data), **args)

    async def put_file(
        self,
        key: str,
        path: str,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        check_key(key)
        args = self._write_args(key, content_type, metadata)
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size <= self.multipart_threshold_bytes:
                data, md5 = await asyncio.to_thread(_read_part, fd, 0, size)
                async with self._call(f"put {key}") as s3:
                    await s3.put_object(Body=data, ContentMD5=md5, **args)
            else:
                async with self._call(f"multipart put {key}") as s3:
                    await self._multipart(s3, fd, size, args)
        finally:
            os.close(fd)

    async def _multipart(self, s3: Any, fd: int, size: int, args: dict[str, Any]) -> None:
        where = {"Bucket": args["Bucket"], "Key": args["Key"]}
        upload_id = (await s3.create_multipart_upload(**args))["UploadId"]
        try:
            part_bytes = max(self.part_bytes, -(-size // MAX_PARTS))
            parts = []
            for number, offset in enumerate(range(0, size, part_bytes), start=1):
                length = min(part_bytes, size - offset)
                data, md5 = await asyncio.to_thread(_read_part, fd, offset, length)
                done = await s3.upload_part(
                    UploadId=upload_id, PartNumber=number, Body=data, ContentMD5=md5, **where
                )
                del data
                parts.append({"ETag": done["ETag"], "PartNumber": number})
            await s3.complete_multipart_upload(
                UploadId=upload_id, MultipartUpload={"Parts": parts}, **where
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one to report
                await s3.abort_multipart_upload(UploadId=upload_id, **where)
            raise

    async def get_bytes(self, key: str) -> bytes:
        check_key(key)
        async with self._call(f"get {key}") as s3:
            try:
                response = await s3.get_object(Bucket=self.bucket, Key=key)
            except ClientError as err:
                if error_code(err) in ("NoSuchKey", "404"):
                    raise ObjectNotFound(key) from None
                raise
            body = response["Body"]
            try:
                return bytes(await body.read())
            finally:
                body.close()

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        async with self._call(f"head {key}") as s3:
            try:
                response = await s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as err:
                if http_status(err) == 404 or error_code(err) in ("NoSuchKey", "404"):
                    return None
                raise
        return ObjectInfo(key, int(response["ContentLength"]), dict(response.get("Metadata", {})))

    async def list_keys(self, prefix: str, *, limit: int = 100_000) -> list[str]:
        check_prefix(prefix)
        keys: list[str] = []
        async with self._call(f"list {prefix}") as s3:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(str(o["Key"]) for o in page.get("Contents", []))
                if len(keys) > limit:
                    raise PermanentStoreError(
                        f"more than {limit} keys under {prefix!r}", code="TooManyKeys"
                    )
        return sorted(keys)

    async def delete(self, key: str) -> None:
        check_key(key)
        async with self._call(f"delete {key}") as s3:
            await s3.delete_object(Bucket=self.bucket, Key=key)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            self._current = None
            leases, self._leases = self._leases, set()
            for lease in leases:
                if not lease.closed:
                    lease.closed = True
                    await lease.stack.aclose()
