"""`edgemq read` (a subprocess) over what a real ingest node committed: to the local
store, and to S3 (moto's server, a separate process, reached under an assumed role).

Records are compared as multisets with what was sent. Delivery is at-least-once, so a
crash could legitimately repeat a segment; these tests crash nothing, so the multisets
must be equal. A segment whose manifest is deleted is not committed and must be absent;
a corrupted object must stop the read with exit 1 naming it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.moto_server import (  # noqa: F401 (fixtures)
    ACCOUNT,
    MotoServer,
    moto_fixture,
    moto_server_fixture,
)
from tests.support.processes import ROOT, child_env, run_cli
from tests.support.stack import ControlPlane, control_plane, node_settings, running_node, wait_for

BATCHES = 4
PER_BATCH = 60
PREFIX = "exports/edgemq"


@dataclass
class Committed:
    cp: ControlPlane
    endpoint_id: str
    node_id: str
    sent: list[str]
    opaque: list[bytes]


def _lines(batch: int) -> list[str]:
    """NDJSON records, some of them not ASCII, with key orders the reader must keep."""
    out = []
    for i in range(PER_BATCH):
        n = batch * PER_BATCH + i
        if n % 7 == 0:
            out.append(json.dumps({"z": n, "a": "grüße ✓", "nested": {"k": [n, None]}}))
        else:
            out.append(json.dumps({"n": n, "batch": batch, "pad": "x" * (n % 40)}))
    return out


@asynccontextmanager
async def _committed(
    tmp_path: Path, destination: Any, *, batches: int = BATCHES, opaque: tuple[bytes, ...] = ()
) -> AsyncIterator[Committed]:
    """A control plane and a node; `batches` NDJSON batches, each sent only once the
    previous one is committed (so each batch is its own segment), and the `opaque`
    records (octet-stream) with the first, all committed."""
    async with control_plane(str(tmp_path)) as cp:
        dest = await destination(cp)
        endpoint = await cp.endpoint(dest["id"], output_formats=["segments", "parquet"])
        async with running_node(node_settings(cp, str(tmp_path / "node"))) as node:
            await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint["id"]), what="config")
            sent: list[str] = []
            url = f"{node.http_url}/ingest/{endpoint['id']}"

            async def committed_frames() -> int:
                return sum(int(c["frames"]) for c in await cp.commits(endpoint["id"]))

            async def all_committed() -> bool:
                return await committed_frames() == len(sent) + len(opaque)

            async with aiohttp.ClientSession() as s:
                for b in range(batches):
                    lines = _lines(b)
                    body = ("\n".join(lines) + "\n").encode()
                    headers = {"X-API-Key": cp.api_key, "Content-Type": "application/x-ndjson"}
                    async with s.post(url, data=body, headers=headers) as r:
                        assert r.status == 200, await r.text()
                    sent += lines
                    for record in opaque if b == 0 else ():
                        octets = {
                            "X-API-Key": cp.api_key,
                            "Content-Type": "application/octet-stream",
                        }
                        async with s.post(url, data=record, headers=octets) as r:
                            assert r.status == 200, await r.text()
                    # The batch is committed (its segment sealed) before the next is sent.
                    await wait_for(all_committed, timeout_s=60, what=f"batch {b} committed")
            yield Committed(cp, endpoint["id"], node.node_id, sent, list(opaque))


def _read_sync(*args: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli("read", *args, text=False)


async def _read(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(_read_sync, *args)


async def _ok(*args: str) -> subprocess.CompletedProcess[bytes]:
    done = await _read(*args)
    assert done.returncode == 0, done.stderr.decode()
    return done


def _records(stdout: bytes) -> list[str]:
    return stdout.decode().splitlines()


async def _local(tmp_path: Path) -> Any:
    async def make(cp: ControlPlane) -> dict[str, Any]:
        return await cp.local_destination(str(tmp_path / "objects"))

    return make


TEXT = "plain text, not JSON ✓".encode()
BINARY = b"\xff\x00\xfe binary"


def _canonical(line: str | bytes) -> str:
    return json.dumps(json.loads(line), sort_keys=True)


def _closed_pipe_sync(*args: str) -> subprocess.CompletedProcess[bytes]:
    """`edgemq read … | head -c 0`: the reader of stdout is gone before it writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "edgemq", "read", *args],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)


async def test_read_returns_exactly_the_committed_records_across_segments(
    tmp_path: Path,
) -> None:
    async with _committed(tmp_path, await _local(tmp_path), opaque=(TEXT, BINARY)) as c:
        where = ["--destination", f"file://{tmp_path / 'objects' / 'lake'}"]
        where += ["--endpoint", c.endpoint_id]
        done = await _ok(*where, "--progress")
        lines = _records(done.stdout)
        # JSON records come out exactly as sent; opaque ones as JSON strings.
        expected = [
            *c.sent,
            json.dumps(TEXT.decode()),
            json.dumps(base64.b64encode(BINARY).decode()),
        ]
        assert collections.Counter(map(_canonical, lines)) == collections.Counter(
            map(_canonical, expected)
        )
        assert collections.Counter(c.sent) - collections.Counter(lines) == collections.Counter()
        manifests = list((tmp_path / "objects" / "lake").rglob("commits/**/*.json"))
        assert len(manifests) >= BATCHES  # several segments were read
        stderr = done.stderr.decode()
        total = len(manifests)
        records = len(c.sent) + len(c.opaque)
        assert "\r[" in stderr, stderr  # the bar was drawn
        assert f"{total}/{total} segments" in stderr
        assert f"reading manifests {total}/{total}" in stderr
        assert f"{records} records from {total} committed segments" in stderr

        # No bar unless asked for (stderr is not a terminal here) or with --no-progress.
        quiet = await _ok(*where)
        assert quiet.stderr == b""
        assert quiet.stdout == done.stdout  # the same order every time
        assert (await _ok(*where, "--progress", "--no-progress")).stderr == b""

        # --with-meta: where each record came from; --output writes a file.
        out = tmp_path / "export.ndjson"
        await _ok(*where, "--with-meta", "--output", str(out), "--region", "loc")
        meta = [json.loads(line) for line in out.read_text().splitlines()]
        assert not (tmp_path / "export.ndjson.partial").exists()
        assert collections.Counter(_canonical(json.dumps(m["payload"])) for m in meta) == (
            collections.Counter(map(_canonical, expected))
        )
        encodings = collections.Counter(m["encoding"] for m in meta)
        assert encodings == {"json": len(c.sent), "utf-8": 1, "base64": 1}
        assert {m["node_id"] for m in meta} == {c.node_id}
        assert len({(m["epoch"], m["seq"]) for m in meta}) == total
        assert all(m["topic"] is None for m in meta)

        # --since/--until select by record time.
        times = sorted({m["ts_ms"] for m in meta})
        since, until = times[len(times) // 3], times[2 * len(times) // 3]
        window = await _ok(*where, "--since", str(since), "--until", str(until))
        inside = [json.dumps(m["payload"]) for m in meta if since <= m["ts_ms"] < until]
        got = _records(window.stdout)
        assert collections.Counter(map(_canonical, got)) == collections.Counter(
            map(_canonical, inside)
        )
        assert 0 < len(got) < records

        # --node and --format raw: the payload bytes themselves.
        raw = await _ok(*where, "--node", c.node_id, "--format", "raw")
        assert collections.Counter(raw.stdout.split(b"\n")[:-1]) == collections.Counter(
            [line.encode() for line in c.sent] + [TEXT, BINARY]
        )
        assert (await _ok(*where, "--node", "no-such-node")).stdout == b""

        # A reader that goes away early (`| head`) is not an error.
        gone = await asyncio.to_thread(_closed_pipe_sync, *where)
        assert (gone.returncode, gone.stderr) == (0, b"")


async def test_a_segment_without_manifest_is_not_read_and_corruption_is_exit_1(
    tmp_path: Path,
) -> None:
    async with _committed(tmp_path, await _local(tmp_path), batches=3) as c:
        lake = tmp_path / "objects" / "lake"
        where = ["--destination", f"file://{lake}", "--endpoint", c.endpoint_id]
        meta = [json.loads(line) for line in _records((await _ok(*where, "--with-meta")).stdout)]
        seqs = sorted({m["seq"] for m in meta})
        assert len(seqs) >= 3
        # Uncommit the second segment: its manifest goes, its objects stay.
        [manifest] = list(lake.rglob(f"commits/{c.node_id}/*/seg-{seqs[1]:08d}.json"))
        manifest.unlink()
        [segment] = list(lake.rglob(f"segments/{c.node_id}/*/seg-{seqs[1]:08d}.wal.zst"))
        assert segment.exists()
        done = await _ok(*where)
        expected = [json.dumps(m["payload"]) for m in meta if m["seq"] != seqs[1]]
        got = [json.dumps(json.loads(line)) for line in _records(done.stdout)]
        assert collections.Counter(got) == collections.Counter(expected)
        assert len(got) < len(meta)

        # Flip one byte of the third segment: exit 1 naming the object.
        [bad] = list(lake.rglob(f"segments/{c.node_id}/*/seg-{seqs[2]:08d}.wal.zst"))
        data = bytearray(bad.read_bytes())
        data[len(data) // 2] ^= 0x40
        bad.write_bytes(bytes(data))
        failed = await _read(*where, "--output", str(tmp_path / "out.ndjson"))
        assert failed.returncode == 1
        stderr = failed.stderr.decode()
        assert str(bad.relative_to(lake)) in stderr
        assert "sha256" in stderr
        assert not (tmp_path / "out.ndjson").exists()  # only FILE.partial, never FILE

        # Usage errors are exit 2.
        assert (
            await _read("--endpoint", c.endpoint_id, "--destination", "ftp://x")
        ).returncode == 2
        assert (await _read(*where, "--since", "yesterday")).returncode == 2


def _trust(external_id: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
                }
            ],
        }
    )


async def test_read_from_s3_under_the_default_chain_and_an_assumed_role(
    tmp_path: Path, moto: MotoServer
) -> None:
    bucket = f"edgemq-read-{uuid.uuid4().hex[:12]}"
    role = f"edgemq-read-{uuid.uuid4().hex[:8]}"
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/{role}"
    s3, iam = moto.client("s3"), moto.client("iam")
    holder: dict[str, str] = {}

    async def destination(cp: ControlPlane) -> dict[str, Any]:
        await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
        dest = await cp.call(
            "POST",
            "/v1/destinations",
            {
                "name": "s3",
                "bucket": bucket,
                "prefix": PREFIX,
                "region": "us-east-1",
                "role_arn": role_arn,
                "endpoint_url": moto.url,
                "path_style": True,
            },
        )
        external_id = (await cp.call("GET", f"/v1/destinations/{dest['id']}"))["external_id"]
        holder["external_id"] = external_id
        await asyncio.to_thread(
            iam.create_role, RoleName=role, AssumeRolePolicyDocument=_trust(external_id)
        )
        validated = await cp.call("POST", f"/v1/destinations/{dest['id']}/validate")
        assert validated["status"] == "valid", validated
        return dict(dest)

    async with _committed(tmp_path, destination, batches=2) as c:
        s3_args = ["--s3-endpoint-url", moto.url, "--s3-region", "us-east-1"]
        where = ["--destination", f"s3://{bucket}/{PREFIX}", "--endpoint", c.endpoint_id]
        done = await _ok(*where, *s3_args, "--progress")
        assert collections.Counter(_records(done.stdout)) == collections.Counter(c.sent)
        assert "\r[" in done.stderr.decode()
        assumed = await _ok(
            *where, *s3_args, "--role-arn", role_arn, "--external-id", holder["external_id"]
        )
        assert assumed.stdout == done.stdout
        # The wrong prefix finds nothing committed.
        empty = await _ok(
            "--destination", f"s3://{bucket}/other", "--endpoint", c.endpoint_id, *s3_args
        )
        assert empty.stdout == b""

        # A corrupted object in the bucket is exit 1, named.
        listed = await asyncio.to_thread(s3.list_objects_v2, Bucket=bucket, Prefix=PREFIX)
        key = next(o["Key"] for o in listed["Contents"] if o["Key"].endswith(".wal.zst"))
        await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=b"not a segment")
        failed = await _read(*where, *s3_args)
        assert failed.returncode == 1
        assert key.removeprefix(PREFIX + "/") in failed.stderr.decode()
