"""The ingest node end to end against moto's S3/STS server (a separate process): HTTP in,
WAL, sealed segments delivered under an assumed role as .wal.zst + raw Parquet + view
Parquet + DLQ with a manifest written last, commit reports in the control plane.
Then with the fault proxy between node and S3: transient 5xx, ambiguous PUTs
(applied upstream, connection reset before the answer) and a permanently missing bucket.

Every test reconciles a client-side ledger against the committed output
(tests/support/ledger.py) and prints its line.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
import zstandard

from ingest.manifest import Manifest
from ingest.node import Node
from ingest.settings import Limits
from tests.support.fault_proxy import FaultProxy
from tests.support.ledger import (
    OK,
    Ledger,
    Reconciliation,
    Record,
    S3Reader,
    load_manifests,
    reconcile_async,
)
from tests.support.moto_server import (  # noqa: F401 (fixtures)
    ACCOUNT,
    MotoServer,
    assume_only_identity,
    create_bucket,
    create_role,
    iam_auth_fixture,
    moto_fixture,
    moto_server_fixture,
    role_arn_of,
    unique_name,
)
from tests.support.stack import (
    SEGMENT_BYTES_MIN,
    ControlPlane,
    control_plane,
    node_settings,
    running_node,
    wait_for,
)

PREFIX = "lake/edgemq"
VIEW = {
    "columns": [
        {"name": "device", "type": "VARCHAR", "path": "$.device", "required": True},
        {"name": "temp", "type": "DOUBLE", "path": "$.temp", "cast_failures": "dlq"},
    ],
    "filters": [{"condition": "temp < 100"}],
}


@dataclass
class Lake:
    bucket: str
    destination: dict[str, Any]
    endpoint: dict[str, Any]
    view: dict[str, Any] | None


async def _aws(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A synchronous boto3 call off the loop (the control plane runs on it)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def _lake(
    cp: ControlPlane,
    moto: MotoServer,
    *,
    endpoint_url: str,
    principal: str = f"arn:aws:iam::{ACCOUNT}:root",
    views: bool = True,
    bucket: str | None = None,
    segment_bytes: int = SEGMENT_BYTES_MIN * 4,
) -> Lake:
    """A bucket, a role trusting `principal` with the account's external id, a validated
    destination, an endpoint and (with `views`) a published view bound to it."""
    bucket = await _aws(create_bucket, moto, bucket)
    role = unique_name("role")
    role_arn = role_arn_of(role)
    dest = await cp.call(
        "POST",
        "/v1/destinations",
        {
            "name": unique_name("dest"),
            "bucket": bucket,
            "prefix": PREFIX,
            "region": "us-east-1",
            "role_arn": role_arn,
            "endpoint_url": endpoint_url,
            "path_style": True,
        },
    )
    # The external id the control plane (and so the node) sends with AssumeRole.
    external_id = (await cp.call("GET", f"/v1/destinations/{dest['id']}"))["external_id"]
    assert external_id
    await _aws(
        create_role,
        moto,
        name=role,
        principal=principal,
        external_id=external_id,
        actions=["s3:PutObject", "s3:DeleteObject", "s3:GetObject"],
        resource=f"arn:aws:s3:::{bucket}/{PREFIX}/*",
    )
    validated = await cp.call("POST", f"/v1/destinations/{dest['id']}/validate")
    assert (validated["status"], validated["last_error"]) == ("valid", None), validated
    formats = ["segments", "parquet", "parquet_views"] if views else ["segments", "parquet"]
    endpoint = await cp.endpoint(dest["id"], output_formats=formats, segment_bytes=segment_bytes)
    view = None
    if views:
        view = await cp.published_view(unique_name("view").replace("-", "_"), VIEW)
        await cp.bind(endpoint["id"], view["id"])
    return Lake(bucket, {**dest, "external_id": external_id}, endpoint, view)


async def _configured(node: Node, lake: Lake) -> None:
    def ready() -> bool:
        endpoint = node.endpoints.snapshot.endpoint(lake.endpoint["id"])
        return endpoint is not None and (lake.view is None or bool(endpoint.bindings))

    await wait_for(ready, what="the endpoint (and its binding) in the node's config")


def _readings(ledger: Ledger, n: int) -> list[Record]:
    """Records the view accepts (temp < 100) or drops (temp >= 100)."""
    return ledger.records(n, lambda i: {"device": f"d{i % 5}", "temp": i % 150})


def _dlq_mix(ledger: Ledger) -> tuple[list[Record], list[Record]]:
    """NDJSON records the view sends to the DLQ, and opaque (not JSON) ones."""
    missing = ledger.records(3, lambda i: {"device": None, "temp": 1})
    uncastable = ledger.records(3, lambda i: {"device": "x", "temp": "hot"})
    opaque = [ledger.opaque("not json"), ledger.opaque("also not json")]
    return missing + uncastable, opaque


async def _send(
    ledger: Ledger, session: aiohttp.ClientSession, url: str, key: str, batches: list[list[Record]]
) -> list[int | None]:
    statuses = []
    for batch in batches:
        statuses.append(await ledger.post(session, url, batch, headers={"X-API-Key": key}))
    return statuses


def _wal_files_empty(wal_dir: str) -> bool:
    """No sealed segment left and the open one (if any) holds nothing (blocking)."""
    names = os.listdir(wal_dir)
    return not any(n.endswith(".wal") for n in names) and all(
        os.path.getsize(os.path.join(wal_dir, n)) == 0 for n in names if n.endswith(".wal.open")
    )


def _wal_bytes(data_dir: str, endpoint_id: str) -> int:
    """Bytes of the endpoint's segment files on disk (blocking)."""
    wal_dir = os.path.join(data_dir, "wal", endpoint_id)
    return sum(
        os.path.getsize(os.path.join(wal_dir, n))
        for n in os.listdir(wal_dir)
        if n.endswith((".wal", ".wal.open"))
    )


async def _drained(node: Node, endpoint_id: str, *, timeout_s: float = 60.0) -> None:
    """Everything the WAL held is committed and acknowledged (the local copy is gone).
    The files are checked too: while a segment is being sealed the WAL's byte count
    can read 0 for a moment (the new open segment exists, the sealed one is not
    registered yet), but the sealed file is already on disk."""
    wal_dir = os.path.join(node.settings.data_dir, "wal", endpoint_id)

    async def done() -> bool:
        runtime = node.endpoints.get(endpoint_id)
        if runtime is None or runtime.wal.unshipped_bytes or not runtime.delivery.idle:
            return False
        return len(node.outbox) == 0 and await asyncio.to_thread(_wal_files_empty, wal_dir)

    await wait_for(done, timeout_s=timeout_s, what="delivery to drain")


async def _status_is(cp: ControlPlane, endpoint_id: str, status: str) -> bool:
    got = await cp.call("GET", f"/v1/endpoints/{endpoint_id}")
    return bool(got["status"] == status)


async def _metric(session: aiohttp.ClientSession, node: Node, name: str, **labels: str) -> float:
    async with session.get(node.http_url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{" if labels else name + " "):
            series, _, value = line.rpartition(" ")
            if not labels or all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
    return total


def _reader(moto: MotoServer, bucket: str) -> S3Reader:
    return S3Reader(moto.client("s3"), bucket, PREFIX + "/")


async def _reconcile(
    ledger: Ledger, cp: ControlPlane, moto: MotoServer, lake: Lake
) -> tuple[Reconciliation, dict[str, Manifest]]:
    reader = _reader(moto, lake.bucket)
    manifests = await asyncio.to_thread(load_manifests, reader)
    commits = await cp.commits(lake.endpoint["id"])
    result = await reconcile_async(
        ledger, reader, commits={lake.endpoint["id"]: commits}, manifests=manifests
    )
    print(result.line())
    return result, manifests


def _assert_clean(result: Reconciliation) -> None:
    assert result.must_be_zero() == {}, result.line()
    assert (result.unlisted, result.unreported, result.duplicates) == (0, 0, 0), result.line()
    assert result.ok > 0, result.line()
    assert result.manifests > 0, result.line()


@asynccontextmanager
async def _proxy(moto: MotoServer) -> AsyncIterator[FaultProxy]:
    parts = urllib.parse.urlsplit(moto.url)
    assert parts.hostname is not None
    assert parts.port is not None
    async with FaultProxy(parts.hostname, parts.port) as proxy:
        yield proxy


def _put_to(bucket: str, marker: str) -> Any:
    def when(method: str, target: str) -> bool:
        return method == "PUT" and target.startswith(f"/{bucket}/") and marker in target

    return when


# --------------------------------------------------------------------- happy path
async def test_records_land_in_s3_under_the_assumed_role_with_views_dlq_and_manifests(
    tmp_path: Path, iam_auth: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto = iam_auth
    # The node's (and control plane's) own identity may assume roles and nothing else:
    # every S3 write below must go through the destination's role.
    user_arn = await _aws(assume_only_identity, moto, monkeypatch, "node")
    ledger = Ledger()
    async with control_plane(str(tmp_path)) as cp:
        lake = await _lake(cp, moto, endpoint_url=moto.url, principal=user_arn)
        assert lake.view is not None
        endpoint_id = lake.endpoint["id"]
        moto.set_iam_auth(True)
        async with (
            running_node(node_settings(cp, str(tmp_path / "node"))) as node,
            aiohttp.ClientSession() as http,
        ):
            await _configured(node, lake)
            url = f"{node.http_url}/ingest/{endpoint_id}"
            dlq_json, opaque = _dlq_mix(ledger)
            readings = [_readings(ledger, 250) for _ in range(8)]
            statuses = await _send(ledger, http, url, cp.api_key, [*readings[:4], dlq_json])
            for record in opaque:  # one opaque record per octet-stream request
                statuses.append(
                    await ledger.post(
                        http,
                        url,
                        [record],
                        headers={"X-API-Key": cp.api_key},
                        content_type="application/octet-stream",
                    )
                )
            # A definite refusal: one bad line makes the whole request a 400.
            refused = [*ledger.records(5), ledger.opaque("{broken")]
            statuses.append(
                await ledger.post(http, url, refused, headers={"X-API-Key": cp.api_key})
            )
            statuses += await _send(ledger, http, url, cp.api_key, readings[4:])
            assert statuses == [200] * 7 + [400] + [200] * 4
            await _drained(node, endpoint_id)
            await wait_for(lambda: _status_is(cp, endpoint_id, "active"), what="active")
        moto.set_iam_auth(False)

        s3 = moto.client("s3")
        result, manifests = await _reconcile(ledger, cp, moto, lake)
        _assert_clean(result)
        assert result.failed == 6
        assert result.rows == result.ok == 2008

        # The node assumed the role with the account's external id and wrote with the
        # session's credentials (moto checked the trust policy and the role's policy).
        node_assumes = [
            r.form()
            for r in moto.requests()
            if r.method == "POST"
            and r.body.startswith(b"Action=AssumeRole")
            and r.form().get("RoleSessionName") == "edgemq-node"
            and r.form().get("RoleArn") == lake.destination["role_arn"]
        ]
        assert node_assumes
        assert all(f["ExternalId"] == lake.destination["external_id"] for f in node_assumes)
        puts = [
            r
            for r in moto.requests()
            if r.method == "PUT" and r.path.startswith(f"/{lake.bucket}/{PREFIX}/")
        ]
        assert puts
        assert all(r.header("X-Amz-Security-Token") for r in puts)
        base_key = os.environ["AWS_ACCESS_KEY_ID"]  # the user's (assume_only_identity)
        assert all(base_key not in (r.header("Authorization") or "") for r in puts)

        # Every object under the prefix is a manifest or named by one (and, per the
        # reconciliation, exists with the manifest's size and sha256).
        listed = set(await asyncio.to_thread(_reader(moto, lake.bucket).list_keys))
        named = {a.key for m in manifests.values() for a in m.artifacts}
        assert listed == named | set(manifests)
        assert len(manifests) >= 2, "several segments"
        seqs = sorted(m.seq for m in manifests.values())
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

        for manifest in manifests.values():
            (segment,) = [a for a in manifest.artifacts if a.kind == "segment"]
            head = await _aws(s3.head_object, Bucket=lake.bucket, Key=segment.key)
            assert head["ContentType"] == "application/zstd"
            assert head["ServerSideEncryption"] == "AES256"
            assert head["Metadata"] == {
                "sha256": segment.sha256,
                "source": f"seg-{manifest.seq:08d}.wal",
            }
            body = await _aws(_reader(moto, lake.bucket).read, segment.key)
            assert len(zstandard.ZstdDecompressor().decompress(body)) == manifest.wal_bytes
            for artifact in manifest.artifacts:
                info = await _aws(s3.head_object, Bucket=lake.bucket, Key=artifact.key)
                assert info["ServerSideEncryption"] == "AES256"
                assert info["Metadata"]["sha256"] == artifact.sha256

        # The view's typed Parquet holds exactly the accepted rows.
        opaque_ids = {r.id for r in opaque}
        ok_payloads = [json.loads(ledger.sent[i].payload) for i in ledger.ids(OK) - opaque_ids]
        expected = sorted(
            (p["device"], float(p["temp"]))
            for p in ok_payloads
            if isinstance(p.get("device"), str)
            and isinstance(p.get("temp"), int | float)
            and p["temp"] < 100
        )
        view_dir = tmp_path / "views"
        view_dir.mkdir()
        paths = []
        for n, artifact in enumerate(
            a for m in manifests.values() for a in m.artifacts if a.kind == "view"
        ):
            path = view_dir / f"{n}.parquet"
            path.write_bytes(await _aws(_reader(moto, lake.bucket).read, artifact.key))
            paths.append(str(path))
        with duckdb.connect() as db:
            rows = db.execute("SELECT device, temp FROM read_parquet(?)", [paths]).fetchall()
        assert sorted(rows) == expected
        totals = collections.Counter[str]()
        for m in manifests.values():
            (outcome,) = m.views
            totals.update(
                processed=outcome.processed,
                accepted=outcome.accepted,
                dropped=outcome.dropped,
                dlq=outcome.dlq,
            )
        assert totals == {
            "processed": 2008,
            "accepted": len(expected),
            "dropped": 2008 - len(expected) - 8,
            "dlq": 8,
        }

        # The DLQ files, through the control plane's presigned links, over plain HTTP.
        dlq = await cp.call("GET", f"/v1/views/{lake.view['id']}/dlq-files")
        assert dlq["total"] == len(dlq["files"]) >= 1
        reasons: collections.Counter[str] = collections.Counter()
        payloads = set()
        async with aiohttp.ClientSession() as plain:
            for n, f in enumerate(dlq["files"]):
                assert f["s3_bucket"] == lake.bucket
                assert f["download_url"].startswith(f"{moto.url}/{lake.bucket}/")
                async with plain.get(f["download_url"]) as r:
                    assert r.status == 200, await r.text()
                    data = await r.read()
                path = tmp_path / f"dlq-{n}.parquet"
                path.write_bytes(data)
                with duckdb.connect() as db:
                    for code, payload, blob in db.execute(
                        "SELECT reason.code, payload, payload_bytes FROM read_parquet(?)",
                        [str(path)],
                    ).fetchall():
                        reasons[code] += 1
                        payloads.add(payload.encode() if payload is not None else bytes(blob))
        assert reasons == {"required_missing": 3, "cast_failed": 3, "invalid_json": 2}
        assert payloads == {r.payload for r in dlq_json + opaque}


# ------------------------------------------------------------------- S3 faults
async def test_random_503s_and_500s_on_puts_are_retried_until_everything_lands(
    tmp_path: Path, moto: MotoServer
) -> None:
    seed = int(os.environ.get("EDGEMQ_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed} (replay with EDGEMQ_TEST_SEED={seed})")
    ledger = Ledger()
    async with control_plane(str(tmp_path)) as cp, _proxy(moto) as proxy:
        # Small segments: more PUTs, so more of them meet a fault.
        lake = await _lake(cp, moto, endpoint_url=proxy.url, segment_bytes=SEGMENT_BYTES_MIN)
        proxy.random_schedule(
            seed,
            {"error_503": 0.12, "error_500": 0.08},
            when=_put_to(lake.bucket, f"/{PREFIX}/"),
        )
        async with (
            running_node(node_settings(cp, str(tmp_path / "node"))) as node,
            aiohttp.ClientSession() as http,
        ):
            await _configured(node, lake)
            url = f"{node.http_url}/ingest/{lake.endpoint['id']}"
            statuses = await _send(
                ledger, http, url, cp.api_key, [_readings(ledger, 250) for _ in range(8)]
            )
            assert statuses == [200] * 8
            await _drained(node, lake.endpoint["id"], timeout_s=90)
            injected = [e for e in proxy.log if e.action in ("error_503", "error_500")]
            retries = await _metric(http, node, "edgemq_delivery_retries_total", kind="transient")
        assert injected, f"seed {seed}: no fault was injected"
        assert retries >= 1, f"seed {seed}: {len(injected)} faults but no retry counted"
        print(f"faults injected={len(injected)} retries={retries}")
        result, _manifests = await _reconcile(ledger, cp, moto, lake)
        _assert_clean(result)
        assert result.rows == result.ok == 2000


async def test_ambiguous_puts_of_a_manifest_and_an_artifact_land_once_per_key(
    tmp_path: Path, moto: MotoServer
) -> None:
    ledger = Ledger()
    async with control_plane(str(tmp_path)) as cp, _proxy(moto) as proxy:
        lake = await _lake(cp, moto, endpoint_url=proxy.url)
        # Applied by S3, answered by a reset: twice each, as aiohttp resends once.
        proxy.fail_next(2, "reset_after", when=_put_to(lake.bucket, "/commits/"))
        proxy.fail_next(2, "reset_after", when=_put_to(lake.bucket, "/parquet/"))
        async with (
            running_node(node_settings(cp, str(tmp_path / "node"))) as node,
            aiohttp.ClientSession() as http,
        ):
            await _configured(node, lake)
            url = f"{node.http_url}/ingest/{lake.endpoint['id']}"
            statuses = await _send(
                ledger, http, url, cp.api_key, [_readings(ledger, 250) for _ in range(4)]
            )
            assert statuses == [200] * 4
            await _drained(node, lake.endpoint["id"])
        resets = [e for e in proxy.log if e.action == "reset_after"]
        assert len(resets) == 4, "\n".join(map(str, proxy.log))
        assert {("/commits/" in e.path, "/parquet/" in e.path) for e in resets} == {
            (True, False),
            (False, True),
        }
        result, _manifests = await _reconcile(ledger, cp, moto, lake)
        _assert_clean(result)
        assert result.rows == result.ok == 1000
        # The reset PUTs did reach S3: their keys were written again by the retries.
        put_counts = collections.Counter(
            urllib.parse.unquote(r.path)
            for r in moto.requests()
            if r.method == "PUT" and r.path.startswith(f"/{lake.bucket}/{PREFIX}/")
        )
        for e in resets:
            assert put_counts[urllib.parse.unquote(e.path.split("?")[0])] >= 3, e


async def test_a_missing_bucket_degrades_the_endpoint_keeps_the_data_and_heals_when_it_returns(
    tmp_path: Path, moto: MotoServer
) -> None:
    ledger = Ledger()
    s3 = moto.client("s3")
    backlog_max = 160 * 1024
    settings_limits = Limits(disk_reserve_bytes=16 * 1024 * 1024, unshipped_bytes_max=backlog_max)
    async with control_plane(str(tmp_path)) as cp:
        lake = await _lake(cp, moto, endpoint_url=moto.url, views=False)
        endpoint_id = lake.endpoint["id"]
        await _aws(s3.delete_bucket, Bucket=lake.bucket)  # valid when checked, gone now
        settings = node_settings(cp, str(tmp_path / "node"), limits=settings_limits)
        async with running_node(settings) as node, aiohttp.ClientSession() as http:
            await _configured(node, lake)
            url = f"{node.http_url}/ingest/{endpoint_id}"
            statuses: list[int | None] = []
            for _ in range(200):  # ~3.5 KiB a request: the bound is reached well before
                statuses += await _send(ledger, http, url, cp.api_key, [_readings(ledger, 50)])
                if statuses[-1] != 200:
                    break
            first_refusal = statuses.index(503)
            assert set(statuses[:first_refusal]) == {200}, statuses
            assert first_refusal >= 10, statuses
            runtime = node.endpoints.get(endpoint_id)
            assert runtime is not None
            assert runtime.wal.sealed_segments(), "the data is kept locally"
            held = await asyncio.to_thread(_wal_bytes, node.settings.data_dir, endpoint_id)
            assert held > backlog_max

            await wait_for(
                lambda: _status_is(cp, endpoint_id, "degraded"),
                what="the endpoint to show degraded",
            )
            assert "NoSuchBucket" in (runtime.delivery.error or "")
            assert await _metric(http, node, "edgemq_delivery_retries_total", kind="permanent") >= 1
            assert await cp.commits(endpoint_id) == []

            await _aws(s3.create_bucket, Bucket=lake.bucket)
            await _drained(node, endpoint_id)

            await wait_for(
                lambda: _status_is(cp, endpoint_id, "active"),
                what="the endpoint to be active again",
            )
            assert await _send(ledger, http, url, cp.api_key, [_readings(ledger, 50)]) == [200]
            await _drained(node, endpoint_id)
        result, _ = await _reconcile(ledger, cp, moto, lake)
        _assert_clean(result)
        assert result.failed == 50
        assert result.rows == result.ok == 50 * first_refusal + 50
