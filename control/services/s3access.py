"""S3 access as EdgeMQ has it: assume the destination's role with the account's
external id, then an S3 client with those temporary credentials (path-style when asked,
SigV4 always — botocore would presign with SigV2 in us-east-1, which S3 refuses for
buckets created since June 2020)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
from botocore.config import Config


@asynccontextmanager
async def assumed_s3_client(
    destination: dict[str, Any], *, session_name: str, duration_s: int = 900, **config: Any
) -> AsyncIterator[Any]:
    session = aioboto3.Session()
    url = destination.get("endpoint_url")
    async with session.client("sts", region_name=destination["region"], endpoint_url=url) as sts:
        assumed = await sts.assume_role(
            RoleArn=destination["role_arn"],
            RoleSessionName=session_name,
            ExternalId=destination["external_id"],
            DurationSeconds=duration_s,
        )
    creds = assumed["Credentials"]
    client_config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if destination["path_style"] else "auto"},
        **config,
    )
    async with session.client(
        "s3",
        region_name=destination["region"],
        endpoint_url=url,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        config=client_config,
    ) as s3:
        yield s3
