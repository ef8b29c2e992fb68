"""The ObjectStore contract, run against every implementation: LocalStore in a temporary
directory and S3Store against moto's S3/STS/KMS server running as a separate process.

Each backend also exposes its own view of what was stored (`raw_keys`: the directory
tree or moto's listing through boto3), so a test can check the store against the
ground truth and not only against itself. S3-only and local-only behaviour (wire
headers, credentials, temporary files, atomicity) follows the shared suite.

moto (5.2.5) notes: without IAM authentication moto accepts any AssumeRole (the role
need not exist, the external id is ignored), so the external id is checked on the wire
through moto's request recorder, and once with authentication on, where moto enforces
the role's trust policy and its `sts:ExternalId` condition.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ingest.objectstore.base import (
    ObjectNotFound,
    ObjectStore,
    PermanentStoreError,
    StoreError,
)
from ingest.objectstore.factory import open_store
from ingest.objectstore.local import TEMP_PREFIX, LocalStore
from ingest.objectstore.s3 import S3Store
from ingest.snapshot import Destination
from shared.clock import ManualClock
from tests.support.moto_server import (  # noqa: F401 (fixtures)
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

MIB = 1024 * 1024
PART_BYTES = 5 * MIB  # S3's minimum part size; the test threshold is the same


def s3_destination(moto: MotoServer, bucket: str, **extra: Any) -> Destination:
    fields: dict[str, Any] = {
        "id": unique_name("dest"),
        "bucket": bucket,
        "region": "us-east-1",
        "role_arn": role_arn_of(unique_name("role")),
        "external_id": unique_name("ext"),
        "path_style": True,
        "endpoint_url": moto.url,
        **extra,
    }
    return Destination(**fields)


def requests_to(moto: MotoServer, bucket: str, method: str) -> list[Recorded]:
    return [r for r in moto.requests() if r.method == method and r.path.startswith(f"/{bucket}/")]


@dataclass
class Backend:
    """One implementation under test, with its own view of what is stored."""

    name: str
    make: Callable[..., ObjectStore]  # another store on this backend (options vary)
    raw_keys: Callable[[], list[str]]
    moto: MotoServer | None = None
    root: Path | None = None
    opened: list[ObjectStore] = field(default_factory=list)

    def open(self, **options: Any) -> ObjectStore:
        store = self.make(**options)
        self.opened.append(store)
        return store


def _local_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "objects"
    (root / "bucket").mkdir(parents=True)

    def make(bucket: str = "bucket", **_: Any) -> ObjectStore:
        return LocalStore(str(root), bucket)

    def raw_keys() -> list[str]:
        out = []
        for directory, _dirs, files in os.walk(root / "bucket"):
            rel = os.path.relpath(directory, root / "bucket")
            out += [name if rel == "." else f"{rel}/{name}" for name in files]
        return sorted(out)

    return Backend("local", make, raw_keys, root=root)


def _s3_backend(moto: MotoServer) -> Backend:
    bucket = create_bucket(moto)
    destination = s3_destination(moto, bucket)

    def make(bucket: str = bucket, **options: Any) -> ObjectStore:
        options.setdefault("multipart_threshold_bytes", PART_BYTES)
        options.setdefault("part_bytes", PART_BYTES)
        changes = {"bucket": bucket, **options.pop("destination_fields", {})}
        return S3Store(msgspec.structs.replace(destination, **changes), **options)

    def raw_keys() -> list[str]:
        listing = moto.client("s3").list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    return Backend("s3", make, raw_keys, moto=moto)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return _local_backend(tmp_path)
    return _s3_backend(request.getfixturevalue("moto"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[ObjectStore]:
    try:
        yield backend.open()
    finally:
        for opened in backend.opened:
            await opened.close()


@pytest.fixture
def big_file(tmp_path: Path) -> tuple[str, bytes]:
    data = os.urandom(11 * MIB + 12345)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return str(path), data


# -- the shared contract -----------------------------------------------------------------


async def test_put_get_head_round_trip_bytes_and_metadata(store: ObjectStore) -> None:
    payload = os.urandom(4096)
    meta = {"sha256": "ab" * 32, "source": "seg-00000001.wal"}
    await store.put_bytes("raw/a/obj.bin", payload, content_type="application/zstd", metadata=meta)

    assert await store.get_bytes("raw/a/obj.bin") == payload
    info = await store.head("raw/a/obj.bin")
    assert info is not None
    assert (info.key, info.size_bytes, dict(info.metadata)) == ("raw/a/obj.bin", 4096, meta)


async def test_an_empty_object_round_trips(store: ObjectStore) -> None:
    await store.put_bytes("empty", b"", content_type="application/octet-stream")
    assert await store.get_bytes("empty") == b""
    info = await store.head("empty")
    assert info is not None
    assert (info.size_bytes, dict(info.metadata)) == (0, {})


async def test_rewriting_a_key_with_the_same_bytes_is_idempotent_and_new_bytes_win(
    store: ObjectStore, backend: Backend
) -> None:
    for _ in range(3):
        await store.put_bytes("k/seg.json", b"same", content_type="application/json")
    assert await store.get_bytes("k/seg.json") == b"same"
    assert backend.raw_keys() == ["k/seg.json"]

    await store.put_bytes("k/seg.json", b"newer", content_type="application/json")
    assert await store.get_bytes("k/seg.json") == b"newer"
    assert backend.raw_keys() == ["k/seg.json"]


async def test_put_file_below_the_threshold_stores_the_file(
    store: ObjectStore, backend: Backend, tmp_path: Path
) -> None:
    data = os.urandom(PART_BYTES)  # exactly the threshold: still a single PUT
    path = tmp_path / "small.bin"
    path.write_bytes(data)
    await store.put_file("f/small.bin", str(path), content_type="x", metadata={"n": "1"})

    assert await store.get_bytes("f/small.bin") == data
    info = await store.head("f/small.bin")
    assert info is not None
    assert (info.size_bytes, dict(info.metadata)) == (len(data), {"n": "1"})
    if backend.moto is not None:
        assert requests_to(backend.moto, store.bucket, "POST") == []  # no multipart


async def test_put_file_above_the_threshold_stores_the_whole_file(
    store: ObjectStore, backend: Backend, big_file: tuple[str, bytes]
) -> None:
    path, data = big_file
    await store.put_file("f/big.bin", path, content_type="x", metadata={"sha256": "00"})

    assert await store.get_bytes("f/big.bin") == data
    info = await store.head("f/big.bin")
    assert info is not None
    assert (info.size_bytes, dict(info.metadata)) == (len(data), {"sha256": "00"})
    assert backend.raw_keys() == ["f/big.bin"]
    if backend.moto is not None:
        # Multipart for real: three parts of 5, 5 and ~1 MiB, and an ETag that says so.
        head = backend.moto.client("s3").head_object(Bucket=store.bucket, Key="f/big.bin")
        assert head["ETag"].strip('"').endswith("-3")
        parts = [
            r for r in requests_to(backend.moto, store.bucket, "PUT") if "partNumber=" in r.url
        ]
        assert sorted(len(r.body) for r in parts) == sorted(
            [PART_BYTES, PART_BYTES, len(data) - 2 * PART_BYTES]
        )
        assert all(r.header("Content-MD5") for r in parts)


async def test_list_keys_is_sorted_and_honours_the_prefix(
    store: ObjectStore,
) -> None:
    keys = ["a/b/2.bin", "a/b/10.bin", "a/c.bin", "a/bz/x", "ab", "b/1", "a/b/sub/deep.bin"]
    for key in keys:
        await store.put_bytes(key, key.encode(), content_type="x")

    assert await store.list_keys("") == sorted(keys)
    assert await store.list_keys("a/") == sorted(k for k in keys if k.startswith("a/"))
    assert await store.list_keys("a/b") == ["a/b/10.bin", "a/b/2.bin", "a/b/sub/deep.bin", "a/bz/x"]
    assert await store.list_keys("a/b/") == ["a/b/10.bin", "a/b/2.bin", "a/b/sub/deep.bin"]
    assert await store.list_keys("a/b/1") == ["a/b/10.bin"]
    assert await store.list_keys("zz/") == []


async def test_list_keys_beyond_the_limit_is_an_error(store: ObjectStore) -> None:
    for i in range(4):
        await store.put_bytes(f"l/{i}", b"x", content_type="x")
    assert await store.list_keys("l/", limit=4) == ["l/0", "l/1", "l/2", "l/3"]
    with pytest.raises(StoreError) as caught:
        await store.list_keys("l/", limit=3)
    assert caught.value.code == "TooManyKeys"


async def test_delete_removes_the_object_and_a_missing_key_is_fine(
    store: ObjectStore, backend: Backend
) -> None:
    await store.put_bytes("d/one", b"1", content_type="x")
    await store.put_bytes("d/two", b"2", content_type="x")
    await store.delete("d/one")
    await store.delete("d/one")
    await store.delete("never/was")
    assert await store.list_keys("d/") == ["d/two"]
    assert backend.raw_keys() == ["d/two"]
    assert await store.head("d/one") is None


async def test_a_missing_key_reads_as_not_found(store: ObjectStore) -> None:
    await store.put_bytes("dir/present", b"x", content_type="x")
    with pytest.raises(ObjectNotFound):
        await store.get_bytes("dir/absent")
    with pytest.raises(ObjectNotFound):
        await store.get_bytes("dir")  # a "directory" is not an object
    assert await store.head("dir/absent") is None
    assert await store.head("dir") is None


async def test_a_missing_bucket_is_a_permanent_error(backend: Backend, store: ObjectStore) -> None:
    missing = backend.open(bucket=unique_name("missing"))
    with pytest.raises(PermanentStoreError) as put:
        await missing.put_bytes("k", b"x", content_type="x")
    assert put.value.code == "NoSuchBucket"
    with pytest.raises(PermanentStoreError):
        await missing.get_bytes("k")
    with pytest.raises(PermanentStoreError):
        await missing.list_keys("")


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a/../b", "..", "a//b", "a/", "./a", "a/\x00b", f"a/{TEMP_PREFIX}{'0' * 32}"],
)
async def test_unsafe_keys_are_refused_before_any_io(
    store: ObjectStore, backend: Backend, key: str
) -> None:
    with pytest.raises(PermanentStoreError) as caught:
        await store.put_bytes(key, b"x", content_type="x")
    assert caught.value.code == "InvalidKey"
    with pytest.raises(PermanentStoreError):
        await store.get_bytes(key)
    assert backend.raw_keys() == []


async def test_a_missing_source_file_is_the_callers_error_not_the_stores(
    store: ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        await store.put_file("k", str(tmp_path / "nope"), content_type="x")


async def test_concurrent_puts_all_land(store: ObjectStore, backend: Backend) -> None:
    keys = [f"c/{i:03d}" for i in range(24)]
    await asyncio.gather(*(store.put_bytes(k, k.encode(), content_type="x") for k in keys))
    assert await store.list_keys("c/") == keys
    assert backend.raw_keys() == keys
    if isinstance(store, S3Store):
        assert store.assume_count == 1  # one refresh for everyone (single-flight)


# -- S3 only ---------------------------------------------------------------------------


@pytest.fixture
async def s3(moto: MotoServer) -> AsyncIterator[Backend]:
    backend = _s3_backend(moto)
    try:
        yield backend
    finally:
        for opened in backend.opened:
            await opened.close()


async def test_s3_assumes_the_role_with_the_external_id_and_signs_with_its_credentials(
    s3: Backend,
) -> None:
    assert s3.moto is not None
    store = s3.open(session_name="node-7")
    assert isinstance(store, S3Store)
    await store.put_bytes("k", b"x", content_type="x")

    (assume,) = assume_role_calls(s3.moto, store.destination.role_arn)
    assert assume["ExternalId"] == store.destination.external_id
    assert assume["RoleSessionName"] == "node-7"
    assert assume["DurationSeconds"] == "3600"
    (put,) = requests_to(s3.moto, store.bucket, "PUT")
    assert put.header("X-Amz-Security-Token")
    assert access_key_of(put) != os.environ["AWS_ACCESS_KEY_ID"]


async def test_s3_puts_carry_sse_s3_by_default(s3: Backend, big_file: tuple[str, bytes]) -> None:
    assert s3.moto is not None
    store = s3.open()
    await store.put_bytes("small", b"x", content_type="x")
    await store.put_file("big", big_file[0], content_type="x")

    (put, *parts) = requests_to(s3.moto, store.bucket, "PUT")
    (create, _complete) = requests_to(s3.moto, store.bucket, "POST")
    assert "uploads" in create.url
    for request in (put, create):
        assert request.header("x-amz-server-side-encryption") == "AES256"
        assert request.header("x-amz-server-side-encryption-aws-kms-key-id") is None
    assert len(parts) == 3
    head = s3.moto.client("s3").head_object(Bucket=store.bucket, Key="big")
    assert head["ServerSideEncryption"] == "AES256"


async def test_s3_puts_carry_sse_kms_with_the_destinations_key(
    s3: Backend, big_file: tuple[str, bytes]
) -> None:
    assert s3.moto is not None
    key_arn = s3.moto.client("kms").create_key(Description="edgemq")["KeyMetadata"]["Arn"]
    store = s3.open(destination_fields={"kms_key_arn": key_arn})
    await store.put_bytes("small", b"x", content_type="x")
    await store.put_file("big", big_file[0], content_type="x")

    (put, *_parts) = requests_to(s3.moto, store.bucket, "PUT")
    (create, _complete) = requests_to(s3.moto, store.bucket, "POST")
    for request in (put, create):
        assert request.header("x-amz-server-side-encryption") == "aws:kms"
        assert request.header("x-amz-server-side-encryption-aws-kms-key-id") == key_arn
    for key in ("small", "big"):
        head = s3.moto.client("s3").head_object(Bucket=store.bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn)


async def test_s3_credentials_are_refreshed_within_five_minutes_of_expiry(s3: Backend) -> None:
    assert s3.moto is not None
    clock = ManualClock()
    store = s3.open(clock=clock)
    assert isinstance(store, S3Store)
    role = store.destination.role_arn

    await store.put_bytes("k1", b"1", content_type="x")
    clock.advance(3600 - 300 - 5)  # 5 min 5 s left: still good
    await store.put_bytes("k2", b"2", content_type="x")
    assert len(assume_role_calls(s3.moto, role)) == 1

    clock.advance(10)  # 4 min 55 s left: time to refresh
    await store.put_bytes("k3", b"3", content_type="x")
    await store.put_bytes("k4", b"4", content_type="x")
    assert len(assume_role_calls(s3.moto, role)) == 2
    assert store.assume_count == 2

    signers = [access_key_of(r) for r in requests_to(s3.moto, store.bucket, "PUT")]
    assert signers[0] == signers[1] != signers[2] == signers[3]
    assert await store.list_keys("") == ["k1", "k2", "k3", "k4"]


async def test_s3_a_trust_policy_demanding_another_external_id_refuses_the_role(
    iam_auth: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto = iam_auth
    bucket = create_bucket(moto)
    user_arn = assume_only_identity(moto, monkeypatch, "node")
    role_arn = create_role(
        moto,
        principal=user_arn,
        external_id="the-right-one",
        actions=["s3:PutObject"],
        resource=f"arn:aws:s3:::{bucket}/*",
    )

    good = S3Store(s3_destination(moto, bucket, role_arn=role_arn, external_id="the-right-one"))
    wrong = S3Store(s3_destination(moto, bucket, role_arn=role_arn, external_id="someone-else"))
    moto.set_iam_auth(True)
    try:
        await good.put_bytes("ok", b"x", content_type="x")
        with pytest.raises(PermanentStoreError) as refused:
            await wrong.put_bytes("no", b"x", content_type="x")
    finally:
        moto.set_iam_auth(False)
        await good.close()
        await wrong.close()
    assert refused.value.code == "AccessDenied"
    assert "assume role" in str(refused.value)
    listing = moto.client("s3").list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listing.get("Contents", [])] == ["ok"]


async def test_s3_store_refuses_use_after_close(s3: Backend) -> None:
    store = s3.open()
    await store.put_bytes("k", b"x", content_type="x")
    await store.close()
    with pytest.raises(RuntimeError):
        await store.head("k")


# -- local only ------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Backend:
    return _local_backend(tmp_path)


def raw_names(root: Path) -> list[str]:
    """Every file under root, temporary ones included."""
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
    )


async def test_local_puts_leave_no_temporary_files(
    local: Backend, big_file: tuple[str, bytes]
) -> None:
    assert local.root is not None
    store = local.open()
    await store.put_bytes("a/b/c", b"x", content_type="x")
    await store.put_bytes("a/b/c", b"y", content_type="x")
    await store.put_file("a/big", big_file[0], content_type="x")
    assert raw_names(local.root / "bucket") == ["a/b/c", "a/big"]


async def test_local_a_failed_write_leaves_no_temporary_file(local: Backend) -> None:
    assert local.root is not None
    store = local.open()
    too_big = {"m": "v" * 70_000}  # beyond the xattr value limit: setxattr fails
    with pytest.raises(StoreError):
        await store.put_bytes("a/k", b"x", content_type="x", metadata=too_big)
    assert raw_names(local.root / "bucket") == []
    assert await store.head("a/k") is None


async def test_local_an_object_and_a_directory_of_the_same_name_conflict(local: Backend) -> None:
    store = local.open()
    await store.put_bytes("a/b", b"x", content_type="x")
    with pytest.raises(PermanentStoreError) as under_object:
        await store.put_bytes("a/b/c", b"x", content_type="x")
    with pytest.raises(PermanentStoreError) as over_dir:
        await store.put_bytes("a", b"x", content_type="x")
    assert under_object.value.code == over_dir.value.code == "KeyConflict"


async def _wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_local_readers_never_see_a_partial_object(local: Backend, tmp_path: Path) -> None:
    """The source is a FIFO, so the put is held half-way for as long as the test likes."""
    assert local.root is not None
    store = local.open()
    bucket_dir = local.root / "bucket"
    await store.put_bytes("obj/k", b"old version", content_type="x")
    fifo = tmp_path / "source.fifo"
    os.mkfifo(fifo)
    first, second = os.urandom(3 * MIB), os.urandom(2 * MIB)

    put = asyncio.create_task(store.put_file("obj/k", str(fifo), content_type="x"))
    writer = await asyncio.to_thread(open, fifo, "wb")
    try:
        await asyncio.to_thread(writer.write, first)
        await asyncio.to_thread(writer.flush)

        def half_written() -> bool:
            temps = [n for n in os.listdir(bucket_dir / "obj") if n.startswith(TEMP_PREFIX)]
            return bool(temps) and os.path.getsize(bucket_dir / "obj" / temps[0]) == len(first)

        await _wait_for(half_written, "the first half in the temporary file")
        assert not put.done()
        # Mid-write: the temporary file is there on disk, but no reader sees it.
        assert await store.list_keys("") == ["obj/k"]
        assert await store.list_keys("obj/") == ["obj/k"]
        assert await store.get_bytes("obj/k") == b"old version"
        info = await store.head("obj/k")
        assert info is not None
        assert info.size_bytes == len(b"old version")

        await asyncio.to_thread(writer.write, second)
    finally:
        await asyncio.to_thread(writer.close)
    await asyncio.wait_for(put, 30)
    assert await store.get_bytes("obj/k") == first + second
    assert raw_names(bucket_dir) == ["obj/k"]


async def test_local_metadata_lives_in_extended_attributes(local: Backend) -> None:
    assert local.root is not None
    store = local.open()
    await store.put_bytes("m", b"x", content_type="x", metadata={"SHA256": "ff"})
    path = local.root / "bucket" / "m"
    assert os.getxattr(path, "user.edgemq.sha256") == b"ff"
    info = await store.head("m")
    assert info is not None
    assert dict(info.metadata) == {"sha256": "ff"}  # names lower-cased, as S3 does


# -- the factory ---------------------------------------------------------------------------


async def test_open_store_picks_the_local_store_for_file_urls(tmp_path: Path) -> None:
    dest = Destination(
        id="d", bucket="b", region="local", role_arn="", endpoint_url=f"file://{tmp_path}"
    )
    store = open_store(dest)
    try:
        assert isinstance(store, LocalStore)
        await store.put_bytes("x/y", b"z", content_type="x")  # creates the bucket directory
        assert (tmp_path / "b" / "x" / "y").read_bytes() == b"z"
    finally:
        await store.close()

    nested = Destination(
        id="d", bucket="b", region="local", role_arn="", endpoint_url=f"file://{tmp_path}/new/dir"
    )
    fresh = open_store(nested)
    await fresh.put_bytes("k", b"x", content_type="x")  # creates the root too
    assert (tmp_path / "new" / "dir" / "b" / "k").read_bytes() == b"x"


async def test_open_store_picks_s3_for_everything_else(moto: MotoServer) -> None:
    dest = s3_destination(moto, "b")
    store = open_store(dest, session_name="node-1", part_bytes=6 * MIB)
    try:
        assert isinstance(store, S3Store)
        assert (store.session_name, store.part_bytes, store.bucket) == ("node-1", 6 * MIB, "b")
    finally:
        await store.close()
