"""Presigned GET URLs for objects in a customer's bucket (assumed-role credentials)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .s3access import assumed_s3_client


async def presign_get(destination: dict[str, Any], key: str, expires_s: int) -> str | None:
    """None when the role cannot be assumed (the file is listed without a link)."""
    try:
        async with assumed_s3_client(
            destination, session_name="edgemq-download", duration_s=max(900, expires_s)
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
