"""`edgemq up`: everything on one machine with embedded defaults.

First start: a SQLite control store in DIR, an account with one API key holding all
three scopes (printed once), a local destination (a filesystem object store laid out
like S3 under DIR/objects) and a demo endpoint with short sealing; all of it written
to DIR/bootstrap.json (mode 0600). Later starts reuse them. Then the control plane
serves until Ctrl-C / SIGTERM.

The ingest node (HTTP/MQTT into the WAL, delivery into the object store) joins `up`
when it lands; until then `up` runs the control plane, and the WAL and view compiler
are available as libraries and through `edgemq segment cat`.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from typing import Any

from control.server import open_context, serve
from control.services import destinations, endpoints, keys
from control.services.common import Context, ControlSettings

BOOTSTRAP = "bootstrap.json"
LOCAL_BUCKET = "edgemq-local"
LOCAL_REGION = "loc"
DEMO_SEGMENT_AGE_S = 5
DEMO_SEGMENT_BYTES = 1024 * 1024


def _settings(host: str, control_port: int) -> ControlSettings:
    return ControlSettings(segment_bytes_min=64 * 1024, public_url=f"http://{host}:{control_port}")


async def _bootstrap(
    ctx: Context, data_dir: str, host: str, ports: dict[str, int]
) -> dict[str, Any]:
    from control.auth import Principal

    account = await keys.create_account(ctx, "default")
    key = await keys.insert_key(
        ctx,
        account_id=account["id"],
        name="bootstrap",
        owner=None,
        scopes=["ingest", "metrics", "admin"],
    )
    admin = Principal(account_id=account["id"], scopes=frozenset({"admin"}), actor="bootstrap")
    output_dir = os.path.join(data_dir, "objects")
    dest = await destinations.create(
        ctx,
        admin,
        {
            "name": "local",
            "bucket": LOCAL_BUCKET,
            "region": "local",
            "role_arn": "arn:aws:iam::000000000000:role/local",
            "endpoint_url": f"file://{output_dir}",
        },
    )
    await destinations.validate(ctx, admin, dest["id"])
    endpoint = await endpoints.create(
        ctx,
        admin,
        {
            "region": LOCAL_REGION,
            "destination_id": dest["id"],
            "segment_bytes": DEMO_SEGMENT_BYTES,
            "segment_max_age_seconds": DEMO_SEGMENT_AGE_S,
            "output_formats": ["segments", "parquet", "parquet_views"],
            "mqtt_config": {"enabled": True},
        },
    )
    return {
        "account_id": account["id"],
        "api_key": key["api_key"],
        "control_url": f"http://{host}:{ports['control']}",
        "ingest_url": f"http://{host}:{ports['ingest']}",
        "mqtt_url": f"mqtt://{host}:{ports['mqtt']}",
        "endpoint_id": endpoint["id"],
        "destination_id": dest["id"],
        "output_dir": output_dir,
    }


def _write_private(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


async def run_up(
    data_dir: str, host: str, control_port: int, ingest_port: int, mqtt_port: int
) -> int:
    await asyncio.to_thread(os.makedirs, data_dir, exist_ok=True)
    database_url = f"sqlite:///{os.path.join(data_dir, 'control.db')}"
    settings = _settings(host, control_port)
    path = os.path.join(data_dir, BOOTSTRAP)
    boot = await asyncio.to_thread(_read, path)
    if boot is None:
        async with open_context(database_url, settings) as ctx:
            ports = {"control": control_port, "ingest": ingest_port, "mqtt": mqtt_port}
            boot = await _bootstrap(ctx, data_dir, host, ports)
        await asyncio.to_thread(_write_private, path, boot)
        print(f"first start: created an account, an API key and a demo endpoint ({path})")
        print(f"API key (shown once, also in {BOOTSTRAP}): {boot['api_key']}")
    else:
        print(f"reusing {path}")
    print(json.dumps({k: v for k, v in boot.items() if k != "api_key"}, indent=2))
    get = "python3 -c 'import json,sys;print(json.load(sys.stdin)[sys.argv[1]])'"
    hint = [
        "try:",
        f"  KEY=$({get} api_key < {path})",
        f"  TOKEN=$(curl -s -X POST {boot['control_url']}/v1/token/exchange"
        " -H 'Content-Type: application/json'"
        """ -d '{"api_key":"'$KEY'","scope":"admin"}'"""
        f" | {get} access_token)",
        f'  curl -s {boot["control_url"]}/v1/endpoints -H "Authorization: Bearer $TOKEN"',
        "(HTTP/MQTT ingest joins `edgemq up` with the ingest node; Ctrl-C stops the control plane.)",
    ]
    print("\n".join(hint))
    await serve(database_url, host, control_port, replace(settings))
    return 0


def up(data_dir: str, host: str, control_port: int, ingest_port: int, mqtt_port: int) -> int:
    return asyncio.run(
        run_up(os.path.abspath(data_dir), host, control_port, ingest_port, mqtt_port)
    )
