"""Destination validation for real: the control plane assumes the role and puts/deletes a
test object against moto's S3/STS server running as a separate process (on SQLite and
PostgreSQL through the `api` fixture).

What moto checks (moto 5.2.5), and so what these tests can prove:
- by default moto does not authenticate: AssumeRole succeeds for any role ARN (the role
  need not exist, the ExternalId is ignored) and S3 does not check that a KMS key exists.
  The wire format is therefore verified through moto's request recorder: every request
  (headers and body) the server received, e.g. the AssumeRole form with its ExternalId
  and the PutObject SSE headers.
- with IAM authentication switched on (`/moto-api/reset-auth`), moto verifies the SigV4
  signature of the base credentials, the caller's sts:AssumeRole permission, the role's
  trust policy (principal and an `sts:ExternalId` condition) and, for S3 calls made with
  the session credentials, the role's own policies. That proves the role really is
  assumed with the account's external id and that the writes use its credentials.
- moto's IAM authentication does not understand query-string (presigned) signatures, so
  presigned URLs are fetched with authentication off.
"""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

import aiohttp
import pytest

from control.services.presign import presign_get
from tests.integration.control.conftest import Api
from tests.support.moto_server import (  # noqa: F401 (fixtures)
    BASE_KEY_ID,
    MotoServer,
    Recorded,
    access_key_of,
    assume_only_identity,
    assume_role_calls,
    create_bucket,
    create_role,
    iam_auth_fixture,
    moto_fixture,
    moto_server_fixture,
    role_arn_of,
    unique_name,
)


def _role_arn() -> str:
    return role_arn_of(unique_name("role"))


async def _destination(api: Api, moto: MotoServer, bucket: str, **extra: Any) -> dict[str, Any]:
    body = {
        "name": unique_name("dest"),
        "bucket": bucket,
        "prefix": "/raw//events/",
        "region": "us-east-1",
        "role_arn": _role_arn(),
        "endpoint_url": moto.url,
        "path_style": True,
        **extra,
    }
    status, dest = await api.call("POST", "/v1/destinations", json=body)
    assert status == 201, dest
    assert dest["status"] == "pending"
    assert dest["prefix"] == "raw/events"
    return dict(dest)


async def _validate(api: Api, dest_id: str) -> dict[str, Any]:
    status, body = await api.call("POST", f"/v1/destinations/{dest_id}/validate")
    assert status == 200, body
    return dict(body)


async def _rewind_throttle(api: Api, dest_id: str) -> None:
    await api.ctx.db.execute(
        "UPDATE destinations SET last_validation_at = last_validation_at - 31000 WHERE id = ?",
        (dest_id,),
    )


def _puts_to(moto: MotoServer, bucket: str, method: str = "PUT") -> list[Recorded]:
    return [
        r
        for r in moto.requests()
        if r.method == method
        and r.path.startswith(f"/{bucket}/")
        and "/.edgemq-validation-" in r.path
    ]


def _objects(moto: MotoServer, bucket: str) -> list[str]:
    listing = moto.client("s3").list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


async def test_validation_assumes_the_role_and_puts_then_deletes_a_test_object(
    api: Api, moto: MotoServer
) -> None:
    bucket = create_bucket(moto)
    moto.client("s3").put_object(Bucket=bucket, Key="raw/events/existing.parquet", Body=b"x")
    dest = await _destination(api, moto, bucket)

    done = await _validate(api, dest["id"])
    assert done["status"] == "valid"
    assert done["validated_at"] is not None
    assert done["last_error"] is None
    status, got = await api.call("GET", f"/v1/destinations/{dest['id']}")
    assert status == 200
    assert (got["status"], got["validated_at"], got["last_error"]) == (
        "valid",
        done["validated_at"],
        None,
    )

    # The test object is gone; what was there before is untouched.
    assert _objects(moto, bucket) == ["raw/events/existing.parquet"]

    # On the wire: AssumeRole with the account's external id, then PUT + DELETE of the
    # same key under the prefix, signed with the session credentials (not the base key).
    (assume,) = assume_role_calls(moto, dest["role_arn"])
    assert assume["ExternalId"] == dest["external_id"]
    assert assume["RoleSessionName"] == "edgemq-validation"
    (put,) = _puts_to(moto, bucket)
    (delete,) = _puts_to(moto, bucket, "DELETE")
    assert put.path == delete.path
    assert put.path.startswith(f"/{bucket}/raw/events/.edgemq-validation-")
    assert put.header("x-amz-server-side-encryption") == "AES256"
    assert put.header("x-amz-server-side-encryption-aws-kms-key-id") is None
    for request in (put, delete):
        assert request.header("X-Amz-Security-Token")
        assert access_key_of(request) != BASE_KEY_ID


async def test_a_missing_bucket_makes_the_destination_invalid(api: Api, moto: MotoServer) -> None:
    dest = await _destination(api, moto, unique_name("missing"))
    done = await _validate(api, dest["id"])
    assert done["status"] == "invalid"
    assert done["validated_at"] is None
    assert done["last_error"].startswith("NoSuchBucket")

    # Fixing the bucket is a critical change: back to pending, error cleared.
    bucket = create_bucket(moto)
    status, patched = await api.call(
        "PATCH", f"/v1/destinations/{dest['id']}", json={"bucket": bucket}
    )
    assert status == 200, patched
    assert (patched["status"], patched["last_error"]) == ("pending", None)
    await _rewind_throttle(api, dest["id"])
    again = await _validate(api, dest["id"])
    assert (again["status"], again["last_error"]) == ("valid", None)


async def test_sse_kms_puts_the_test_object_with_the_key(api: Api, moto: MotoServer) -> None:
    key_arn = moto.client("kms").create_key(Description="edgemq test")["KeyMetadata"]["Arn"]
    bucket = create_bucket(moto, versioned=True)
    dest = await _destination(api, moto, bucket, kms_key_arn=key_arn)
    assert dest["kms_key_arn"] == key_arn

    done = await _validate(api, dest["id"])
    assert (done["status"], done["last_error"]) == ("valid", None)

    # The request carried aws:kms and the key ...
    (put,) = _puts_to(moto, bucket)
    assert put.header("x-amz-server-side-encryption") == "aws:kms"
    assert put.header("x-amz-server-side-encryption-aws-kms-key-id") == key_arn
    # ... and S3 stored it so: the bucket is versioned, so the deleted test object's
    # version survives behind a delete marker and can be inspected.
    s3 = moto.client("s3")
    assert _objects(moto, bucket) == []
    versions = s3.list_object_versions(Bucket=bucket)
    (version,) = versions["Versions"]
    (marker,) = versions["DeleteMarkers"]
    assert version["Key"] == marker["Key"] == urllib.parse.unquote(put.path.split("/", 2)[2])
    head = s3.head_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_arn


async def test_a_garbage_role_arn_is_invalid(api: Api, moto: MotoServer) -> None:
    # botocore refuses a RoleArn shorter than 20 characters before sending anything
    # (moto itself would accept any string, see the module docstring).
    dest = await _destination(api, moto, create_bucket(moto), role_arn="not-a-role")
    done = await _validate(api, dest["id"])
    assert done["status"] == "invalid"
    assert done["last_error"].startswith("ParamValidationError")
    assert "RoleArn" in done["last_error"]


async def test_the_role_is_assumed_with_the_accounts_external_id(
    api: Api, iam_auth: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto = iam_auth
    bucket = create_bucket(moto)
    # The control plane's own identity: may assume roles, has no S3 permissions at all.
    user_arn = assume_only_identity(moto, monkeypatch, "control")

    status, probe = await api.call(
        "POST",
        "/v1/destinations",
        json={
            "name": "probe",
            "bucket": bucket,
            "region": "us-east-1",
            "role_arn": _role_arn(),
        },
    )
    assert status == 201
    external_id = probe["external_id"]

    def role(external: str, actions: list[str]) -> str:
        resource = f"arn:aws:s3:::{bucket}/raw/events/*"
        return create_role(
            moto, principal=user_arn, external_id=external, actions=actions, resource=resource
        )

    writer = role(external_id, ["s3:PutObject", "s3:DeleteObject"])
    other_tenant = role("someone-elses-external-id", ["s3:PutObject", "s3:DeleteObject"])
    reader = role(external_id, ["s3:GetObject"])
    good = await _destination(api, moto, bucket, role_arn=writer)
    wrong_external = await _destination(api, moto, bucket, role_arn=other_tenant)
    no_write = await _destination(api, moto, bucket, role_arn=reader)

    moto.set_iam_auth(True)
    ok = await _validate(api, good["id"])
    refused = await _validate(api, wrong_external["id"])
    read_only = await _validate(api, no_write["id"])
    moto.set_iam_auth(False)

    assert (ok["status"], ok["last_error"]) == ("valid", None)
    assert refused["status"] == "invalid"
    assert refused["last_error"].startswith("AccessDenied")
    assert "sts:AssumeRole" in refused["last_error"]
    assert read_only["status"] == "invalid"
    assert read_only["last_error"].startswith("AccessDenied")
    assert _objects(moto, bucket) == []


async def test_a_critical_patch_after_validation_resets_to_pending(
    api: Api, moto: MotoServer
) -> None:
    bucket = create_bucket(moto)
    dest = await _destination(api, moto, bucket)
    assert (await _validate(api, dest["id"]))["status"] == "valid"
    path = f"/v1/destinations/{dest['id']}"

    # Not critical, or critical but unchanged: stays valid.
    for body in ({"name": unique_name("renamed")}, {"path_style": True, "bucket": bucket}):
        status, same = await api.call("PATCH", path, json=body)
        assert status == 200, same
        assert same["status"] == "valid"
        assert same["validated_at"] is not None

    for body in (
        {"prefix": "other"},
        {"kms_key_arn": "arn:aws:kms:us-east-1:123456789012:key/k"},
        {"endpoint_url": moto.url + "/"},
        {"role_arn": _role_arn()},
    ):
        await _rewind_throttle(api, dest["id"])
        assert (await _validate(api, dest["id"]))["status"] == "valid"
        status, patched = await api.call("PATCH", path, json=body)
        assert status == 200, patched
        assert (patched["status"], patched["validated_at"], patched["last_error"]) == (
            "pending",
            None,
            None,
        ), body


async def test_validation_is_throttled_to_one_per_30_s(api: Api, moto: MotoServer) -> None:
    bucket = create_bucket(moto)
    dest = await _destination(api, moto, bucket)
    path = f"/v1/destinations/{dest['id']}/validate"
    assert (await _validate(api, dest["id"]))["status"] == "valid"

    resp = await api.client.post(path, headers=await api.headers())
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 30
    error = (await resp.json())["error"]
    assert error["code"] == "throttled"
    assert "30 s" in error["message"]
    # A throttled call does not touch the bucket and does not change the status.
    assert len(_puts_to(moto, bucket)) == 1
    _, got = await api.call("GET", f"/v1/destinations/{dest['id']}")
    assert got["status"] == "valid"

    # Once the interval has passed, validation runs again.
    await _rewind_throttle(api, dest["id"])
    assert (await _validate(api, dest["id"]))["status"] == "valid"
    assert len(_puts_to(moto, bucket)) == 2


async def test_presigned_get_downloads_the_object(api: Api, moto: MotoServer) -> None:
    bucket = create_bucket(moto)
    dest = await _destination(api, moto, bucket)
    key = "raw/events/dlq/node-1/000042.parquet"
    payload = uuid.uuid4().bytes * 64
    moto.client("s3").put_object(Bucket=bucket, Key=key, Body=payload)
    # The row as observability.dlq_files passes it (path_style stored as an int).
    row = await api.ctx.db.fetchone(
        "SELECT d.*, a.external_id FROM destinations d JOIN accounts a ON a.id = d.account_id "
        "WHERE d.id = ?",
        (dest["id"],),
    )
    assert row is not None

    url = await presign_get(row, key, 3600)
    assert url is not None
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}" == moto.url
    assert parts.path == f"/{bucket}/{key}"  # path style
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["3600"]
    assert query["X-Amz-Security-Token"]  # signed with the assumed role's session
    assert not query["X-Amz-Credential"][0].startswith(BASE_KEY_ID)
    (assume,) = assume_role_calls(moto, dest["role_arn"])
    assert (assume["ExternalId"], assume["RoleSessionName"]) == (
        dest["external_id"],
        "edgemq-download",
    )

    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == payload

    # A role that cannot be assumed yields no link.
    assert await presign_get({**row, "role_arn": "bad"}, key, 3600) is None
