"""S3Store through the fault proxy (tests/support/fault_proxy.py) in front of moto: each
fault class maps to the error the delivery loop expects, and the proxy itself forwards
what S3 clients send (chunked bodies, `Expect: 100-continue`) byte for byte.

The store is warmed up first (AssumeRole and one HEAD pass), and faults are aimed at the
bucket's paths only, so STS calls are not hit unless a test means to.
"""

from __future__ import annotations

import os
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
import pytest

from ingest.objectstore.base import PermanentStoreError, StoreError, TransientStoreError
from ingest.objectstore.s3 import S3Store
from tests.contract.test_object_store import s3_destination
from tests.support.fault_proxy import Exchange, FaultProxy
from tests.support.moto_server import (  # noqa: F401 (fixtures)
    MotoServer,
    moto_fixture,
    moto_server_fixture,
)
from tests.support.moto_server import unique_name as unique

MIB = 1024 * 1024


@dataclass
class Rig:
    moto: MotoServer
    proxy: FaultProxy
    bucket: str
    stores: list[S3Store]

    def store(self, **options: object) -> S3Store:
        destination = msgspec.structs.replace(
            s3_destination(self.moto, self.bucket), endpoint_url=self.proxy.url
        )
        store = S3Store(destination, **options)  # type: ignore[arg-type]
        self.stores.append(store)
        return store

    def to_bucket(self, method: str, target: str) -> bool:
        return target.startswith(f"/{self.bucket}/")

    def upstream(self, key: str) -> bytes | None:
        s3 = self.moto.client("s3")
        try:
            return bytes(s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None


@pytest.fixture
async def rig(moto: MotoServer) -> AsyncIterator[Rig]:
    bucket = unique("bucket")
    moto.client("s3").create_bucket(Bucket=bucket)
    port = urllib.parse.urlsplit(moto.url).port
    assert port is not None
    proxy = FaultProxy("127.0.0.1", port, io_timeout_s=30.0)
    await proxy.start()
    rig = Rig(moto, proxy, bucket, [])
    try:
        yield rig
    finally:
        for store in rig.stores:
            await store.close()
        await proxy.stop()


async def warm(rig: Rig, **options: object) -> S3Store:
    store = rig.store(**options)
    assert await store.head("warm-up") is None
    assert [e.action for e in rig.proxy.log[-2:]] == ["pass", "pass"]
    return store


@pytest.mark.parametrize(
    ("action", "error", "code"),
    [
        ("error_503", TransientStoreError, "SlowDown"),
        ("error_500", TransientStoreError, "InternalError"),
        ("error:403:AccessDenied", PermanentStoreError, "AccessDenied"),
        ("error:404:NoSuchBucket", PermanentStoreError, "NoSuchBucket"),
        ("error:400:RequestTimeout", TransientStoreError, "RequestTimeout"),
        ("error:403:KMS.DisabledException", PermanentStoreError, "KMS.DisabledException"),
    ],
)
async def test_an_s3_error_answer_maps_to_its_class_and_the_next_put_succeeds(
    rig: Rig, action: str, error: type[StoreError], code: str
) -> None:
    store = await warm(rig)
    rig.proxy.fail_next(1, action, when=rig.to_bucket)
    with pytest.raises(error) as caught:
        await store.put_bytes("k", b"data", content_type="x")
    assert type(caught.value) is error
    assert caught.value.code == code
    assert rig.upstream("k") is None  # answered by the proxy, never forwarded

    await store.put_bytes("k", b"data", content_type="x")
    assert rig.upstream("k") == b"data"
    assert [(e.method, e.action) for e in rig.proxy.log[-2:]] == [("PUT", action), ("PUT", "pass")]


async def test_an_expired_token_is_transient_and_the_role_is_assumed_again(rig: Rig) -> None:
    store = await warm(rig)
    rig.proxy.fail_next(1, "error:400:ExpiredToken", when=rig.to_bucket)
    with pytest.raises(TransientStoreError) as caught:
        await store.put_bytes("k", b"data", content_type="x")
    assert caught.value.code == "ExpiredToken"
    assert store.assume_count == 1

    await store.put_bytes("k", b"data", content_type="x")
    assert store.assume_count == 2
    assert [(e.method, e.path) for e in rig.proxy.log[-2:]] == [
        ("POST", "/"),
        ("PUT", "/" + rig.bucket + "/k"),
    ]


async def test_sts_unavailable_is_transient_and_recovers(rig: Rig) -> None:
    store = rig.store()
    rig.proxy.fail_next(1, "error_503")
    with pytest.raises(TransientStoreError) as caught:
        await store.put_bytes("k", b"data", content_type="x")
    assert "assume role" in str(caught.value)
    await store.put_bytes("k", b"data", content_type="x")
    assert rig.upstream("k") == b"data"


async def test_aiohttp_retries_an_idempotent_request_once_after_a_reset(rig: Rig) -> None:
    # aiohttp (RFC 9112 §9.3.1) resends PUT/GET/HEAD/DELETE once when the connection is
    # reset, below botocore: a single reset never reaches the store. Harmless for S3
    # (deterministic keys, identical bytes), and why the tests below reset twice.
    store = await warm(rig)
    rig.proxy.fail_next(1, "reset_before", when=rig.to_bucket)
    await store.put_bytes("k", b"data", content_type="x")
    assert rig.upstream("k") == b"data"
    assert [e.action for e in rig.proxy.log if e.method == "PUT"] == ["reset_before", "pass"]


async def test_a_reset_before_forwarding_is_transient_and_writes_nothing(rig: Rig) -> None:
    store = await warm(rig)
    rig.proxy.fail_next(2, "reset_before", when=rig.to_bucket)
    with pytest.raises(TransientStoreError):
        await store.put_bytes("k", b"data", content_type="x")
    assert rig.upstream("k") is None
    assert [e.action for e in rig.proxy.log if e.method == "PUT"] == ["reset_before"] * 2


async def test_an_ambiguous_put_is_transient_though_applied_and_the_retry_is_identical(
    rig: Rig,
) -> None:
    store = await warm(rig)
    payload = os.urandom(64 * 1024)
    rig.proxy.fail_next(2, "reset_after", when=rig.to_bucket)  # aiohttp's own retry too
    with pytest.raises(TransientStoreError):
        await store.put_bytes("seg-00000001", payload, content_type="x", metadata={"n": "1"})
    assert rig.upstream("seg-00000001") == payload  # it happened; the client cannot know

    await store.put_bytes("seg-00000001", payload, content_type="x", metadata={"n": "1"})
    assert await store.get_bytes("seg-00000001") == payload
    info = await store.head("seg-00000001")
    assert info is not None
    assert dict(info.metadata) == {"n": "1"}
    puts = [e.action for e in rig.proxy.log if e.method == "PUT"]
    assert puts == ["reset_after", "reset_after", "pass"]


async def test_a_blackholed_request_times_out_as_a_transient_error(rig: Rig) -> None:
    store = await warm(rig, read_timeout_s=0.5)
    rig.proxy.fail_next(1, "blackhole", when=rig.to_bucket)
    started = time.monotonic()
    with pytest.raises(TransientStoreError) as caught:
        await store.put_bytes("k", b"data", content_type="x")
    assert time.monotonic() - started < 10
    assert "Timeout" in caught.value.code
    await store.put_bytes("k", b"data", content_type="x")
    assert rig.upstream("k") == b"data"


async def test_a_delay_shorter_than_the_timeout_only_slows_the_call(rig: Rig) -> None:
    store = await warm(rig, read_timeout_s=5.0)
    rig.proxy.fail_next(1, "delay:0.2", when=rig.to_bucket)
    started = time.monotonic()
    await store.put_bytes("k", b"data", content_type="x")
    assert time.monotonic() - started >= 0.2
    assert rig.proxy.log[-1] == Exchange("PUT", f"/{rig.bucket}/k", "delay:0.2")


async def test_a_truncated_body_is_a_transient_error_not_short_data(rig: Rig) -> None:
    store = await warm(rig)
    payload = os.urandom(256 * 1024)
    await store.put_bytes("k", payload, content_type="x")
    rig.proxy.fail_next(1, "truncate", when=lambda m, t: m == "GET" and rig.to_bucket(m, t))
    with pytest.raises(TransientStoreError):
        await store.get_bytes("k")
    assert await store.get_bytes("k") == payload


async def test_a_failed_part_aborts_the_multipart_upload(rig: Rig, tmp_path: Path) -> None:
    store = await warm(rig, multipart_threshold_bytes=5 * MIB, part_bytes=5 * MIB)
    data = os.urandom(11 * MIB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)

    rig.proxy.fail_next(1, "error_503", when=lambda m, t: m == "PUT" and "partNumber=2" in t)
    with pytest.raises(TransientStoreError):
        await store.put_file("big", str(path), content_type="x")
    s3 = rig.moto.client("s3")
    assert s3.list_multipart_uploads(Bucket=rig.bucket).get("Uploads", []) == []
    assert rig.upstream("big") is None
    assert [e.method for e in rig.proxy.log[-4:]] == ["POST", "PUT", "PUT", "DELETE"]

    await store.put_file("big", str(path), content_type="x")
    assert rig.upstream("big") == data


async def test_puts_under_a_seeded_random_fault_schedule_all_land_intact(rig: Rig) -> None:
    seed = int(os.environ.get("EDGEMQ_TEST_SEED", random.randrange(2**32)))
    store = await warm(rig)
    rates = {"error_503": 0.15, "error_500": 0.1, "reset_before": 0.1, "reset_after": 0.15}
    rig.proxy.random_schedule(seed, rates, when=rig.to_bucket)
    rng = random.Random(seed)
    objects = {f"r/{i:03d}": rng.randbytes(rng.randrange(1, 50_000)) for i in range(30)}
    failures = 0
    for key, payload in objects.items():
        for _attempt in range(100):
            try:
                await store.put_bytes(key, payload, content_type="x")
                break
            except TransientStoreError:
                failures += 1
        else:
            raise AssertionError(f"seed {seed}: {key} never succeeded")

    rig.proxy.clear()
    assert await store.list_keys("r/") == sorted(objects)
    for key, payload in objects.items():
        assert rig.upstream(key) == payload, f"seed {seed}"
    # Every faulted request was followed by another attempt (ours, or aiohttp's own
    # retry after a reset) and every key ended with one that passed.
    puts = [e for e in rig.proxy.log if e.method == "PUT"]
    faults = [e for e in puts if e.action != "pass"]
    assert len(puts) == len(objects) + len(faults), f"seed {seed}"
    assert failures <= len(faults), f"seed {seed}"


# -- the proxy on its own ------------------------------------------------------------------


async def _put_raw(proxy: FaultProxy, target: str, **kwargs: object) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{proxy.url}{target}", **kwargs) as resp,  # type: ignore[arg-type]
    ):
        return resp.status, await resp.read()


async def test_the_proxy_forwards_chunked_bodies_and_answers_expect_continue(rig: Rig) -> None:
    payload = os.urandom(300_000)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 65_536):
            yield payload[start : start + 65_536]

    status, _ = await _put_raw(rig.proxy, f"/{rig.bucket}/chunked", data=chunks())
    assert status == 200
    assert rig.upstream("chunked") == payload

    status, _ = await _put_raw(rig.proxy, f"/{rig.bucket}/expect", data=payload, expect100=True)
    assert status == 200
    assert rig.upstream("expect") == payload


async def test_the_proxy_answers_s3_style_errors_and_keeps_the_connection(rig: Rig) -> None:
    rig.proxy.fail_next(2, "error_503")
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(f"{rig.proxy.url}/{rig.bucket}/x") as resp:
                assert resp.status == 503
                assert b"<Code>SlowDown</Code>" in await resp.read()
        async with http.get(f"{rig.proxy.url}/{rig.bucket}/x") as resp:
            assert resp.status == 404  # forwarded: moto's NoSuchKey
    assert [e.action for e in rig.proxy.log] == ["error_503", "error_503", "pass"]


def test_the_proxy_refuses_unknown_actions() -> None:
    proxy = FaultProxy("127.0.0.1", 1)
    for bad in ("explode", "delay:-1", "error:200:Ok", "error:503:Bad Code"):
        with pytest.raises(ValueError):  # noqa: PT011
            proxy.fail_next(1, bad)
    rule: Callable[[str, str], bool] = lambda m, t: True  # noqa: E731
    with pytest.raises(ValueError):  # noqa: PT011
        proxy.set_rule(rule, "nope")
