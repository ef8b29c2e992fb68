"""Destination validation: assume the role with the account's external id, then put
and delete a test object under the prefix. `file://` destinations (the local store of
`edgemq up`) are checked by writing and removing a file under `<dir>/<bucket>/`."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared.offload import BlockingPool

from .s3access import assumed_s3_client

CHECK_TIMEOUT_S = 20.0
_file_pool = BlockingPool("dest-check", threads=1, waiting_max=16)


def _test_key(prefix: str) -> str:
    name = f".edgemq-validation-{uuid.uuid4().hex}"
    return f"{prefix}/{name}" if prefix else name


def _check_local(root: str, bucket: str, prefix: str) -> None:
    path = os.path.join(root, bucket, *_test_key(prefix).split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"edgemq")
        f.flush()
        os.fsync(f.fileno())
    os.unlink(path)


async def check_destination(destination: dict[str, Any]) -> str | None:
    """None when the destination works, else a one-line reason."""
    url = destination.get("endpoint_url")
    try:
        if isinstance(url, str) and url.startswith("file://"):
            await _file_pool.run(
                _check_local,
                url.removeprefix("file://"),
                destination["bucket"],
                destination["prefix"],
            )
            return None
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await _check_s3(destination)
        return None
    except TimeoutError:
        return f"timed out after {CHECK_TIMEOUT_S:g} s"
    except ClientError as err:
        info = err.response.get("Error", {})
        return f"{info.get('Code', 'ClientError')}: {info.get('Message', str(err))}"
    except (BotoCoreError, OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"


async def _check_s3(destination: dict[str, Any]) -> None:
    async with assumed_s3_client(
        destination,
        session_name="edgemq-validation",
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=5,
        read_timeout=10,
    ) as s3:
        key = _test_key(destination["prefix"])
        extra: dict[str, str] = {"ServerSideEncryption": "AES256"}
        if destination.get("kms_key_arn"):
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": destination["kms_key_arn"]}
        await s3.put_object(Bucket=destination["bucket"], Key=key, Body=b"edgemq", **extra)
        await s3.delete_object(Bucket=destination["bucket"], Key=key)
