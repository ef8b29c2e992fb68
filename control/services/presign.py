"""Presigned GET URLs for objects in a customer's bucket (assumed-role credentials)."""

from __future__ import annotations

from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


async def presign_get(destination: dict[str, Any], key: str, expires_s: int) -> str | None:
    """None when the role cannot be assumed (the file is listed without a link)."""
    session = aioboto3.Session()
    url = destination.get("endpoint_url")
    try:
        async with session.client(
            "sts", region_name=destination["region"], endpoint_url=url
        ) as sts:
            assumed = await sts.assume_role(
                RoleArn=destination["role_arn"],
                RoleSessionName="edgemq-download",
                ExternalId=destination["external_id"],
                DurationSeconds=max(900, expires_s),
            )
        creds = assumed["Credentials"]
        # SigV4 explicitly: botocore presigns with SigV2 in us-east-1 by default, which
        # S3 refuses for buckets created since June 2020.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if destination["path_style"] else "auto"},
        )
        async with session.client(
            "s3",
            region_name=destination["region"],
            endpoint_url=url,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            config=config,
        ) as s3:
            return str(
                await s3.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": destination["bucket"], "Key": key},
                    ExpiresIn=expires_s,
                )
            )
    except (ClientError, BotoCoreError):
        return None
