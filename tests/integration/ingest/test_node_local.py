"""The ingest node end to end against the local store: HTTP in, WAL, sealed segments
delivered as .wal.zst + raw Parquet + view Parquet + DLQ, manifest written last,
commit reports in the control plane's commits list."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import zstandard

from ingest.manifest import parse_manifest
from tests.support.stack import (
    ControlPlane,
    control_plane,
    node_settings,
    running_node,
    wait_for,
)

VIEW = {
    "columns": [
        {"name": "device", "type": "VARCHAR", "path": "$.device", "required": True},
        {"name": "temp", "type": "DOUBLE", "path": "$.temp", "cast_failures": "dlq"},
    ],
    "filters": [{"condition": "temp < 100"}],
}


def _files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    key: str,
    ctype: str = "application/x-ndjson",
) -> tuple[int, Any]:
    async with session.post(url, data=body, headers={"X-API-Key": key, "Content-Type": ctype}) as r:
        return r.status, await r.json()


async def _setup(cp: ControlPlane, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    dest = await cp.local_destination(str(out))
    endpoint = await cp.endpoint(dest["id"])
    view = await cp.published_view("readings", VIEW)
    await cp.bind(endpoint["id"], view["id"])
    return endpoint, view


async def test_records_posted_over_http_land_as_segments_raw_and_view_parquet_with_a_manifest(
    tmp_path: Path,
) -> None:
    out = tmp_path / "objects"
    async with control_plane(str(tmp_path)) as cp:
        endpoint, view = await _setup(cp, out)
        async with running_node(node_settings(cp, str(tmp_path / "node"))) as node:
            await wait_for(lambda: node.endpoints.snapshot.endpoint(endpoint["id"]), what="config")
            await wait_for(
                lambda: node.endpoints.snapshot.endpoint(endpoint["id"]).bindings, what="binding"
            )
            lines = [json.dumps({"device": f"d{i}", "temp": i}) for i in range(150)]
            lines += ['{"device": null, "temp": 1}', '{"device": "x", "temp": "hot"}']
            url = f"{node.http_url}/ingest/{endpoint['id']}"
            async with aiohttp.ClientSession() as s:
                status, answer = await _post(s, url, ("\n".join(lines) + "\n").encode(), cp.api_key)
            assert status == 200, answer
            assert answer["accepted"] == 152
            commits = await wait_for(
                lambda: cp.commits(endpoint["id"]), timeout_s=30, what="a commit"
            )
            # The local segment goes once the report is acknowledged.
            wal_dir = tmp_path / "node" / "wal" / endpoint["id"]
            await wait_for(
                lambda: not [n for n in os.listdir(wal_dir) if n.endswith(".wal")],
                what="the committed segment to be deleted",
            )
        root = out / "lake"
        files = _files(root)
        manifests = [f for f in files if "/commits/" in f]
        assert len(manifests) == 1
        manifest = parse_manifest((root / manifests[0]).read_bytes())
        listed = sorted(a.key for a in manifest.artifacts)
        assert listed == sorted(f for f in files if f not in manifests), (
            "manifest lists exactly the objects"
        )
        assert manifest.frames == 152
        seg = next(a for a in manifest.artifacts if a.kind == "segment")
        raw_bytes = zstandard.ZstdDecompressor().decompress((root / seg.key).read_bytes())
        assert len(raw_bytes) == manifest.wal_bytes
        raw = next(a for a in manifest.artifacts if a.kind == "parquet")
        rows = duckdb.sql(
            f"SELECT payload FROM read_parquet('{root / raw.key}') ORDER BY frame_index"
        ).fetchall()
        assert [r[0] for r in rows] == lines
        view_files = [a for a in manifest.artifacts if a.kind == "view"]
        accepted = duckdb.sql(
            f"SELECT count(*) FROM read_parquet({[str(root / a.key) for a in view_files]})"
        ).fetchall()
        assert accepted == [(100,)]
        dlq = next(a for a in manifest.artifacts if a.kind == "dlq")
        reasons = duckdb.sql(
            f"SELECT reason.code FROM read_parquet('{root / dlq.key}') ORDER BY frame_index"
        ).fetchall()
        assert [r[0] for r in reasons] == ["required_missing", "cast_failed"]
        (outcome,) = manifest.views
        assert (outcome.processed, outcome.accepted, outcome.dropped, outcome.dlq) == (
            152,
            100,
            50,
            2,
        )
        assert commits[0]["seq"] == manifest.seq
        assert commits[0]["artifacts"]["parquet"]["rows"] == 152
        metrics = await cp.call("GET", f"/v1/views/{view['id']}/metrics")
        assert metrics["aggregated"]["all_time"]["dlq"] == 2
